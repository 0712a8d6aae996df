"""Run every walkthrough notebook in ``notebooks/`` top to bottom, as a new user would.

Each notebook is copied into a temporary directory and executed with nbclient in a fresh kernel
of this interpreter (a kernelspec written for the test, so a ``python3`` kernel registered
elsewhere cannot substitute another Python). Every notebook ends with a cell of ``assert``s on
its own results and prints ``all checks passed``; the test checks that line, the figures of the
notebooks that plot, and that the committed files carry no outputs.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

MISSING = "install the notebooks extra: pip install -e '.[notebooks]'"
nbformat = pytest.importorskip("nbformat", reason=MISSING)
nbclient = pytest.importorskip("nbclient", reason=MISSING)
pytest.importorskip("ipykernel", reason=MISSING)
pytest.importorskip("matplotlib", reason=MISSING)

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
# Each notebook takes a few minutes on 2 CPU cores; a cell stuck far beyond that is a failure.
CELL_TIMEOUT_S = 300
# Figures (PNG outputs) each notebook must show at least.
FIGURES = {"02_sensitivity_search": 3, "03_2to4_retraining": 1}
KERNEL_NAME = "lightning-prune-test"
CHECK_EXECUTABLE = "import sys\nprint('kernel executable:', sys.executable)"


def test_the_four_walkthroughs_exist():
    assert [path.stem for path in NOTEBOOKS] == [
        "01_channel_pruning",
        "02_sensitivity_search",
        "03_2to4_retraining",
        "04_migrating_from_amct",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path):
    notebook = json.loads(path.read_text(encoding="utf-8"))
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for index, cell in enumerate(code_cells):
        where = f"{path.name}, code cell {index}"
        assert cell["outputs"] == [], f"{where} has outputs; run nbstripout before committing"
        assert cell["execution_count"] is None, f"{where} has an execution count; run nbstripout"
    # Nothing tied to the machine it was last run on: the generic python3 kernel (not a kernelspec
    # of someone's virtualenv), no editor state such as vscode's interpreter path.
    extra = set(notebook["metadata"]) - {"kernelspec", "language_info"}
    assert not extra, f"{path.name}: machine- or editor-specific notebook metadata {sorted(extra)}"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


@pytest.fixture(scope="module")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data dir holding one kernelspec: this interpreter running ipykernel."""
    root = tmp_path_factory.mktemp("jupyter")
    spec_dir = root / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lightning_prune tests",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec), encoding="utf-8")
    return root


def _text_outputs(cell: dict) -> str:
    return "".join(
        output.get("text", "") for output in cell.get("outputs", []) if output.get("output_type") == "stream"
    )


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(
    path: Path, tmp_path: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch
):
    workdir = tmp_path / "work"
    workdir.mkdir()
    copy = workdir / path.name
    shutil.copyfile(path, copy)
    notebook = nbformat.read(copy, as_version=4)
    notebook.cells.append(nbformat.v4.new_code_cell(CHECK_EXECUTABLE))

    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))  # searched before any other kernelspec
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")  # jupyter_core warns unless a choice is made
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the notebooks' mkdtemp() outputs land here
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    # OpenMP threads that sleep instead of spinning while they wait: on a shared (CI) machine the
    # spinning makes torch several times slower; results are unchanged.
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name=KERNEL_NAME,
        resources={"metadata": {"path": str(workdir)}},
    )
    try:
        client.execute()
    finally:
        nbformat.write(notebook, workdir / f"executed_{path.name}")  # kept for debugging a failure

    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert f"kernel executable: {sys.executable}" in _text_outputs(code_cells[-1])
    assert "all checks passed" in _text_outputs(code_cells[-2]), _text_outputs(code_cells[-2])
    errors = [o for cell in code_cells for o in cell.outputs if o.get("output_type") == "error"]
    assert not errors
    figures = sum("image/png" in o.get("data", {}) for cell in code_cells for o in cell.outputs)
    assert figures >= FIGURES.get(path.stem, 0)
