"""Fit a tiny model with ``StructuredSparsityRetrain`` under DDP on 2 CPU processes; used by ``test_ddp.py``.

Usage: ``python nm_ddp_fit.py OUT_DIR``. Lightning starts rank 1 by re-running this script, so both
ranks go through the same three fits:

* ``full``: 2 epochs without interruption;
* ``first``: the first epoch only, saving ``last.ckpt``;
* ``resumed``: 2 epochs, resumed from that ``last.ckpt`` (``ckpt_path=``).

Each rank starts from its own random weights (seeded by rank) and writes the record to its own
file, ``OUT_DIR/<phase>_record_rank<r>.txt`` (the callback writes on rank 0 only), and
``OUT_DIR/<phase>_rank<r>.json``: SHA-256 digests of the initial weights, of the masks when training
starts and of every tensor of the final ``state_dict`` (masks included), and the masks' step counters.
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

from lightning_prune.callbacks import StructuredSparsityRetrain
from lightning_prune.sparsity import nm_sparse_layers

CFG = "prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 update_freq: 3 } } }\n"


class TinyModule(pl.LightningModule):
    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.model = nn.Sequential(
            nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4)
        )

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(64, 16, generator=generator)
        y = torch.randint(0, 4, (64,), generator=generator)
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True)  # 4 batches per rank


class MasksAtStart(pl.Callback):
    """Digests of the masks the pruning callback chose in ``setup`` (after its rank-0 broadcast)."""

    def on_train_start(self, trainer, pl_module):
        self.digests = {name: _digest(mask.mask) for name, mask in nm_sparse_layers(pl_module.model).items()}


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def fit(out: Path, phase: str, max_epochs: int, ckpt_path: str | None = None) -> None:
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher in rank 1
    module = TinyModule(seed=100 + rank)
    initial = {name: _digest(t) for name, t in module.model.state_dict().items()}
    at_start = MasksAtStart()
    trainer = pl.Trainer(
        strategy="ddp",
        devices=2,
        accelerator="cpu",
        max_epochs=max_epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=out / phase,
        callbacks=[
            StructuredSparsityRetrain(
                config=str(out / "prune.cfg"),
                record_file=str(out / f"{phase}_record_rank{rank}.txt"),
                target="model",
            ),
            ModelCheckpoint(dirpath=out / phase / "checkpoints", save_last=True),
            at_start,
        ],
    )
    trainer.fit(module, ckpt_path=ckpt_path)
    result = {
        "initial": initial,
        "masks_at_start": at_start.digests,
        "final": {name: _digest(t) for name, t in module.model.state_dict().items()},
        "steps": {name: int(mask.steps) for name, mask in nm_sparse_layers(module.model).items()},
    }
    (out / f"{phase}_rank{trainer.global_rank}.json").write_text(json.dumps(result, indent=1))


def main(out: Path) -> None:
    torch.set_num_threads(1)
    (out / "prune.cfg").write_text(CFG)
    fit(out, "full", max_epochs=2)
    fit(out, "first", max_epochs=1)
    fit(out, "resumed", max_epochs=2, ckpt_path=str(out / "first" / "checkpoints" / "last.ckpt"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
