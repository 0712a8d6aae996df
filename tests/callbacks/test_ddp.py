"""``StructuredSparsityRetrain`` under DDP: 2 CPU processes (gloo), run as a subprocess.

``Trainer(strategy="ddp")`` starts the other ranks by re-running the command line, which inside
pytest would re-run the whole session; so ``tests/ddp_scripts/nm_ddp_fit.py`` runs the fits and
writes per-rank digests of masks and weights, and these tests compare them.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed

SCRIPT = Path(__file__).resolve().parents[1] / "ddp_scripts" / "nm_ddp_fit.py"
PHASES = ("full", "first", "resumed")

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend",
)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(out)],
        capture_output=True, text=True, timeout=150, cwd=out, check=False,
    )  # fmt: skip
    log = out / "ddp.log"
    log.write_text(result.stdout + result.stderr)
    other_ranks = "\n".join(line for line in log.read_text().splitlines() if not line.startswith("[rank0]"))
    assert result.returncode == 0, f"{log}, without [rank0] lines:\n{other_ranks[-4000:]}"
    digests = {
        (phase, rank): json.loads((out / f"{phase}_rank{rank}.json").read_text())
        for phase in PHASES
        for rank in (0, 1)
    }
    return out, digests


def test_ranks_start_from_different_weights_and_prune_identically(ddp_run):
    _, digests = ddp_run
    for phase in PHASES:
        rank0, rank1 = digests[phase, 0], digests[phase, 1]
        assert rank0["initial"] != rank1["initial"], phase
        assert rank0["masks_at_start"] == rank1["masks_at_start"], phase
        assert rank0["final"] == rank1["final"], phase  # masks, weights and step counters


def test_masks_are_refreshed_during_training(ddp_run):
    _, digests = ddp_run
    full = digests["full", 0]
    assert full["steps"] == {"0": 8, "2": 8, "4": 8}  # 2 epochs x 4 batches per rank, update_freq=3
    final_masks = {name.split(".")[0]: d for name, d in full["final"].items() if name.endswith(".mask")}
    assert final_masks != full["masks_at_start"]


def test_record_is_written_by_rank_zero_only(ddp_run):
    out, _ = ddp_run
    for phase in PHASES:
        assert (out / f"{phase}_record_rank0.txt").is_file(), phase
        assert not (out / f"{phase}_record_rank1.txt").exists(), phase


def test_resumed_run_ends_like_the_uninterrupted_run(ddp_run):
    _, digests = ddp_run
    assert digests["first", 0]["steps"] == {"0": 4, "2": 4, "4": 4}
    assert digests["resumed", 0]["final"] == digests["full", 0]["final"]
    assert digests["resumed", 0]["steps"] == digests["full", 0]["steps"]
