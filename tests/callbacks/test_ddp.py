"""``StructuredSparsityRetrain`` under DDP: 2 CPU processes (gloo), run as a subprocess.

``Trainer(strategy="ddp")`` starts the other ranks by re-running the command line, which inside
pytest would re-run the whole session; so ``tests/ddp_scripts/nm_ddp_fit.py`` runs the fits and
writes per-rank digests of masks and weights, and these tests compare them.
"""

from pathlib import Path

import pytest
from ddp_scripts.launch import needs_gloo, run_ddp_script

SCRIPT = Path(__file__).resolve().parents[1] / "ddp_scripts" / "nm_ddp_fit.py"
PHASES = ("full", "first", "resumed")

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    digests = run_ddp_script(SCRIPT, out, PHASES, timeout=150)
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
