"""``ChannelPruneSearch`` + ``StructuredSparsityRetrain`` under DDP: 2 CPU processes (gloo), run as a subprocess.

``Trainer(strategy="ddp")`` starts the other ranks by re-running the command line, which inside
pytest would re-run the whole session; so ``tests/ddp_scripts/channel_ddp_fit.py`` runs the fits
(mask and compact mode: uninterrupted, first epoch, resumed from ``last.ckpt``) and writes per-rank
digests, and these tests compare them.

What DDP makes exactly reproducible, and what it does not: parameters, channel masks and step
counters are identical on every rank (DDP broadcasts rank 0's weights when it wraps the model and
all-reduces gradients). BatchNorm running statistics are not: DDP broadcasts rank 0's buffers at the
start of every forward, then each rank updates them with its own batch, so after the last step each
rank holds its own. ``sync_batchnorm=True`` would make them global, but ``SyncBatchNorm`` runs on GPUs
only. Resuming is exact: the resumed run ends bit for bit like the uninterrupted one, on both ranks,
running statistics included (the data order comes from ``DistributedSampler``'s seed and epoch).
"""

import hashlib
from pathlib import Path

import pytest
import torch
import torch.distributed
from ddp_scripts.launch import needs_gloo, run_ddp_script

from lightning_prune.config import RetrainConfig
from lightning_prune.record import read_record

SCRIPT = Path(__file__).resolve().parents[1] / "ddp_scripts" / "channel_ddp_fit.py"
MODES = ("mask", "compact")
PHASES = tuple(f"{mode}_{phase}" for mode in MODES for phase in ("full", "first", "resumed"))
SEARCHED = tuple(f"{mode}_{phase}" for mode in MODES for phase in ("full", "first"))
SEARCH_FILES = ("searched_prune.cfg", "searched_prune.record.txt", "searched_prune.cfg.search.json")

pytestmark = needs_gloo


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp_channels")
    digests = run_ddp_script(SCRIPT, out, PHASES, timeout=180)
    return out, digests


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _f64(values: list[float]) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def _is_bn_running_stat(name: str) -> bool:
    return name.endswith((".running_mean", ".running_var"))


def test_ranks_differ_in_weights_and_data_but_reduced_sensitivities_agree(ddp_run):
    _, digests = ddp_run
    for phase in SEARCHED:
        rank0, rank1 = digests[phase, 0], digests[phase, 1]
        assert rank0["initial"] != rank1["initial"], phase
        # test_iteration: 2 batches each, from the module's own dataloader: not the same batches.
        assert len(rank0["search_batches"]) == len(rank1["search_batches"]) == 2, phase
        assert not set(rank0["search_batches"]) & set(rank1["search_batches"]), phase
        local0, local1 = rank0["scores"]["local"], rank1["scores"]["local"]
        assert local0.keys() == local1.keys(), phase
        assert len(local0) == 3, phase  # groups: stem.0 + conv2, conv1, conv3
        for gid in local0:
            assert local0[gid] != local1[gid], (phase, gid)
            # strategy.reduce(sum): every rank holds exactly rank 0's + rank 1's local scores.
            total = (_f64(local0[gid]) + _f64(local1[gid])).tolist()
            reduced0, reduced1 = rank0["scores"]["reduced"][gid], rank1["scores"]["reduced"][gid]
            assert reduced0 == reduced1 == total, (phase, gid)


def test_every_rank_searches_the_same_channels_and_masks_them(ddp_run):
    _, digests = ddp_run
    for phase in SEARCHED:
        rank0, rank1 = digests[phase, 0], digests[phase, 1]
        # The search's own result, on each rank (before StructuredSparsityRetrain's rank-0 broadcast).
        assert rank0["search_plan"] == rank1["search_plan"], phase
        assert rank0["groups"] == rank1["groups"], phase
        pruned = {gid: index for gid, index in rank0["search_plan"].items() if index}
        assert len(pruned) >= 2, phase
        residual = [g for g in rank0["groups"] if len(g[1]) == 2]  # stem.0 and conv2 meet at the add
        assert len(residual) == 1, phase
        assert residual[0][3] < residual[0][2], phase
        assert rank0["plan"] == rank1["plan"] == pruned, phase
    for phase in PHASES:
        assert digests[phase, 0]["masks_at_start"] == digests[phase, 1]["masks_at_start"], phase
    assert digests["mask_full", 0]["masks_at_start"]  # ChannelMask buffers on every pruned layer
    assert not digests["compact_full", 0]["masks_at_start"]  # compact: channels removed, no masks


def test_training_batches_are_sharded_across_ranks(ddp_run):
    _, digests = ddp_run
    for phase, batches in (("full", 8), ("first", 4), ("resumed", 4)):  # 4 batches per rank and epoch
        for mode in MODES:
            rank0, rank1 = (digests[f"{mode}_{phase}", r]["train_batches"] for r in (0, 1))
            assert len(rank0) == len(rank1) == batches, (mode, phase)
            assert not set(rank0) & set(rank1), (mode, phase)


def test_final_weights_and_masks_are_identical_across_ranks(ddp_run):
    _, digests = ddp_run
    for phase in PHASES:
        final0, final1 = digests[phase, 0]["final"], digests[phase, 1]["final"]
        assert final0.keys() == final1.keys(), phase
        differing = {name for name in final0 if final0[name] != final1[name]}
        # Only BatchNorm running statistics are rank-local (see the module docstring).
        assert all(_is_bn_running_stat(name) for name in differing), (phase, sorted(differing))
        assert digests[phase, 0]["final_shapes"] == digests[phase, 1]["final_shapes"], phase
    masks = [name for name in digests["mask_full", 0]["final"] if name.endswith(".mask")]
    assert len(masks) >= 6, masks  # producers, their BatchNorms and consumers of both pruned groups


def test_search_outputs_and_record_are_written_once(ddp_run):
    out, digests = ddp_run
    for phase in SEARCHED:
        root = out / phase
        assert sorted(p.name for p in root.glob("*searched_prune*")) == sorted(SEARCH_FILES), phase
        assert not list(root.glob(".*.tmp")), phase  # no atomic-write leftovers
        RetrainConfig.from_file(str(root / "searched_prune.cfg"))  # a valid retrain config
        search_record = read_record(root / "searched_prune.record.txt")
        assert search_record.channel_group, phase
        writes = {rank: dict(digests[phase, rank]["writes"]) for rank in (0, 1)}
        # Every rank searches, but only rank 0 writes the .cfg, its record and the reuse stamp; the
        # other ranks' search writes go to a scratch directory outside the run's directory.
        for name in SEARCH_FILES:
            assert writes[0][f"{phase}/{name}"] == _sha(root / name), (phase, name)
        assert not [path for path in writes[1] if not path.startswith("..")], (phase, writes[1])
    for phase in PHASES:
        record = read_record(out / f"{phase}_record_rank0.txt")
        assert not (out / f"{phase}_record_rank1.txt").exists(), phase
        assert not any("record_rank" in path for path, _ in digests[phase, 1]["writes"]), phase
        root = phase.replace("resumed", "first")  # the resumed fit reuses the first fit's search
        search_record = read_record(out / root / "searched_prune.record.txt")
        assert list(record.channel_group) == list(search_record.channel_group), phase


def test_resumed_fit_reuses_the_search_and_ends_like_the_uninterrupted_fit(ddp_run):
    out, digests = ddp_run
    for mode in MODES:
        first_files = {name: _sha(out / f"{mode}_first" / name) for name in SEARCH_FILES}
        for rank in (0, 1):
            full, first, resumed = (
                digests[f"{mode}_{phase}", rank] for phase in ("full", "first", "resumed")
            )
            # The fresh Trainer found the first fit's .cfg and its .search.json stamp (same model
            # structure and search config): no sensitivity, no search, no search file written.
            assert resumed["search_plan"] is None, (mode, rank)
            assert resumed["scores"] == {}, (mode, rank)
            assert resumed["search_batches"] == [], (mode, rank)
            assert resumed["output_cfg"] == first["output_cfg"] == f"{mode}_first/searched_prune.cfg"
            assert not any("searched_prune" in path for path, _ in resumed["writes"]), (mode, rank)
            # So the files on disk are still the bytes the first fit's rank 0 wrote.
            written = {
                path: sha for path, sha in first["writes"] if path.startswith(f"{mode}_first/searched_prune")
            }
            on_disk = {f"{mode}_first/{name}": sha for name, sha in first_files.items()}
            assert written == (on_disk if rank == 0 else {}), (mode, rank)
            # Same channels throughout, and the run continues where the first epoch stopped.
            assert resumed["plan"] == first["plan"] == full["plan"], (mode, rank)
            masks = (resumed["masks_at_start"], first["masks_at_start"], full["masks_at_start"])
            assert masks[0] == masks[1] == masks[2], (mode, rank)
            assert resumed["shapes_at_start"] == first["final_shapes"], (mode, rank)
            assert first["train_batches"] + resumed["train_batches"] == full["train_batches"], (mode, rank)
            # Exact on both ranks, every tensor (BatchNorm statistics included).
            assert resumed["final"] == full["final"], (mode, rank)


def test_compact_ranks_hold_identical_compact_shapes(ddp_run):
    _, digests = ddp_run
    dense = digests["mask_full", 0]["final_shapes"]  # mask mode keeps the dense shapes
    for phase in ("compact_full", "compact_first", "compact_resumed"):
        shapes = [digests[phase, r]["shapes_at_start"] for r in (0, 1)]
        assert shapes[0] == shapes[1] == digests[phase, 0]["final_shapes"], phase
    compact = digests["compact_full", 0]["final_shapes"]
    for _, producers, before, after in digests["compact_full", 0]["groups"]:
        for producer in producers:
            assert dense[f"{producer}.parametrizations.weight.original"][0] == before, producer
            assert compact[f"{producer}.weight"][0] == after, producer
    assert sum(map(_numel, compact.values())) < sum(
        _numel(shape) for name, shape in dense.items() if not name.endswith(".mask")
    )


def _numel(shape: list[int]) -> int:
    return int(torch.Size(shape).numel())
