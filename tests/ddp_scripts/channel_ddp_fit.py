"""Search and retrain channel pruning under DDP on 2 CPU processes; used by ``test_ddp_channels.py``.

Usage: ``python channel_ddp_fit.py OUT_DIR``. Lightning starts rank 1 by re-running this script, so
both ranks go through the same fits, each with ``ChannelPruneSearch`` + ``StructuredSparsityRetrain``
in one Trainer, for ``channel_mode`` ``"mask"`` and ``"compact"`` (phase prefix ``mask_`` /
``compact_``):

* ``full``: 2 epochs without interruption (the search runs in ``setup``);
* ``first``: the first epoch only (the search runs again, in its own directory), saving ``last.ckpt``;
* ``resumed``: a fresh Trainer over the same ``default_root_dir`` as ``first``, 2 epochs,
  ``ckpt_path=last.ckpt``: the search of ``first`` must be reused, not run again.

Each rank starts from its own random weights (seeded by rank), and its search batches come from the
module's own ``train_dataloader()``, shuffled by the rank's own generator, so both the weights and the
data each rank scores differ; training batches come from Lightning's ``DistributedSampler`` shards.
The retrain record goes to a per-rank file, ``OUT_DIR/<phase>_record_rank<r>.txt`` (the callback
writes on rank 0 only); the search's ``.cfg``, record and stamp too (other ranks search into a scratch dir).

Each rank writes ``OUT_DIR/<phase>_rank<r>.json``: digests of the initial weights, of the batches
seen by the search and by training, the local (per-rank) and the reduced channel sensitivities, the
search's plan (``None`` when the search did not run), the retrain plan, the channel masks and
parameter shapes when training starts, every tensor of the final ``state_dict``, and every file the
rank wrote through ``lightning_prune``'s atomic writer or ``Path.write_text`` (path, SHA-256).
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_prune.record
import lightning_prune.search.output
from lightning_prune.callbacks import ChannelPruneSearch, StructuredSparsityRetrain
from lightning_prune.callbacks.channel_prune_search import TrainingStepSensitivity
from lightning_prune.channel_masks import ChannelMask
from lightning_prune.search import TaylorLossSensitivity

SEARCH_CFG = "compress_ratio: 2.5 ascend_optimized: false max_prune_ratio: 0.75 test_iteration: 2\n"

# ---- spies: what each rank writes, and its sensitivities before and after the reduction ----
WRITES: list[tuple[str, str]] = []
SCORES: dict[str, dict[str, list[float]]] = {}


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _spy_atomic_write(original):
    def atomic_write(path, data):
        WRITES.append((os.fspath(path), _sha(data)))
        return original(path, data)

    return atomic_write


lightning_prune.record.atomic_write = _spy_atomic_write(lightning_prune.record.atomic_write)
lightning_prune.search.output.atomic_write = _spy_atomic_write(lightning_prune.search.output.atomic_write)
_path_write_text = Path.write_text


def _write_text(self, data, *args, **kwargs):  # the search's stamp is written with Path.write_text
    WRITES.append((os.fspath(self), _sha(data.encode())))
    return _path_write_text(self, data, *args, **kwargs)


Path.write_text = _write_text


def _spy_scores(cls, key):
    original = cls.get_sensitivity

    def get_sensitivity(self, groups):
        scores = original(self, groups)
        SCORES[key] = {str(gid): value.double().flatten().tolist() for gid, value in scores.items()}
        return scores

    cls.get_sensitivity = get_sensitivity


# TrainingStepSensitivity.get_sensitivity = reduce(TaylorLossSensitivity.get_sensitivity) over ranks.
_spy_scores(TaylorLossSensitivity, "local")
_spy_scores(TrainingStepSensitivity, "reduced")


# ---- model and data ----
class ResidualNet(nn.Module):
    """conv-bn-relu stem, one residual block (add couples stem and conv2), a strided conv, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv3 = nn.Conv2d(16, 24, 3, stride=2, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 4)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class ResidualModule(pl.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)  # also seeds the shuffle of the search's batches (global generator)
        self.model = ResidualNet()
        self.example_input_array = torch.zeros(1, 3, 8, 8)
        self.seen: list[str] = []  # digests of every batch training_step saw, search included

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(_digest(x))
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 3, 8, 8, generator=generator)
        y = torch.randint(0, 4, (64,), generator=generator)
        # Under DDP Lightning swaps in a DistributedSampler: 32 samples, 4 batches per rank and epoch.
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)


class AtTrainStart(pl.Callback):
    """What holds when training starts: after setup, the rank-0 broadcast and any checkpoint restore."""

    def on_train_start(self, trainer, pl_module):
        self.search_batches = len(pl_module.seen)
        self.masks = _masks(pl_module.model)
        self.shapes = _shapes(pl_module.model)


def _digest(tensor: torch.Tensor) -> str:
    return _sha(tensor.detach().cpu().contiguous().numpy().tobytes())


def _masks(network: nn.Module) -> dict[str, str]:
    return {name: _digest(m.mask) for name, m in network.named_modules() if isinstance(m, ChannelMask)}


def _shapes(network: nn.Module) -> dict[str, list[int]]:
    return {name: list(t.shape) for name, t in network.state_dict().items()}


def fit(out: Path, phase: str, mode: str, root: str, max_epochs: int, ckpt_path: str | None = None) -> None:
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher in rank 1
    WRITES.clear()
    SCORES.clear()
    module = ResidualModule(seed=100 + rank)
    initial = {name: _digest(t) for name, t in module.model.state_dict().items()}
    search = ChannelPruneSearch(str(out / "search.cfg"), target="model")
    retrain = StructuredSparsityRetrain(
        record_file=str(out / f"{phase}_record_rank{rank}.txt"), target="model", channel_mode=mode
    )
    at_start = AtTrainStart()
    trainer = pl.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out / root,
        callbacks=[
            search,
            retrain,
            ModelCheckpoint(dirpath=out / root / "checkpoints", save_last=True),
            at_start,
        ],
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    result = {
        "initial": initial,
        "search_batches": module.seen[: at_start.search_batches],
        "train_batches": module.seen[at_start.search_batches :],
        "scores": dict(SCORES),
        "search_plan": None if search.result is None else {str(g): i for g, i in search.result.plan.items()},
        "groups": None
        if search.result is None
        else [
            [g.group_id, list(g.producers), g.channels_before, g.channels_after] for g in search.result.groups
        ],
        "output_cfg": os.path.relpath(search.output_cfg, out),
        "plan": {str(gid): index for gid, index in retrain.pruning.channel_plan.items()},
        "masks_at_start": at_start.masks,
        "shapes_at_start": at_start.shapes,
        "final": {name: _digest(t) for name, t in module.model.state_dict().items()},
        "final_shapes": _shapes(module.model),
        "writes": [[os.path.relpath(path, out), sha] for path, sha in WRITES],
    }
    _path_write_text(out / f"{phase}_rank{trainer.global_rank}.json", json.dumps(result, indent=1))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    if int(os.environ.get("LOCAL_RANK", "0")) == 0:
        _path_write_text(out / "search.cfg", SEARCH_CFG)
    for mode in ("mask", "compact"):
        fit(out, f"{mode}_full", mode, root=f"{mode}_full", max_epochs=2)
        fit(out, f"{mode}_first", mode, root=f"{mode}_first", max_epochs=1)
        last = out / f"{mode}_first" / "checkpoints" / "last.ckpt"
        fit(out, f"{mode}_resumed", mode, root=f"{mode}_first", max_epochs=2, ckpt_path=str(last))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
