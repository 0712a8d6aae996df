"""Train the dense SmallResNet baseline on Fashion-MNIST (CPU) and save its weights.

Writes into ``--out``:

* ``small_resnet_dense.pt``: ``torch.save`` of the *backbone's* ``state_dict`` (keys like
  ``layer1.0.conv1.weight``), loadable with ``SmallResNet(**arch_kwargs).load_state_dict(...)``;
* ``metrics.json``: test/val accuracy, wall time, and the settings used.

Usage::

    python examples/train_dense.py --epochs 6 --batch-size 128 --out outputs/dense
    # quick timing run on a subset:
    python examples/train_dense.py --epochs 1 --train-subset 5000 --out outputs/dense_quick
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import lightning as L
import torch

from lightning_prune.demos import FashionMNISTDataModule, ImageClassifier, SmallResNet

STATE_DICT_NAME = "small_resnet_dense.pt"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--out", type=Path, default=Path("outputs/dense"))
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--train-subset", type=int, default=None, help="train on this many images only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--blocks-per-stage", type=int, default=1, help="residual blocks in each of the 3 stages"
    )
    parser.add_argument("--results-json", type=Path, default=None, help="also copy the metrics JSON here")
    return parser.parse_args(argv)


class EpochTimer(L.Callback):
    """Record (and print) the wall time of every training epoch, validation included."""

    def __init__(self) -> None:
        self.epoch_seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning runs the epoch-end validation before this hook, so val_acc is this epoch's.
        self.epoch_seconds.append(time.perf_counter() - self._start)
        val_acc = float(trainer.callback_metrics.get("val_acc", float("nan")))
        print(
            f"epoch {trainer.current_epoch}: val_acc={val_acc:.4f} ({self.epoch_seconds[-1]:.1f} s)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    L.seed_everything(args.seed, verbose=False)
    datamodule = FashionMNISTDataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, train_subset=args.train_subset, seed=args.seed
    )
    module = ImageClassifier(arch="small_resnet", lr=args.lr, weight_decay=args.weight_decay)
    if args.blocks_per_stage != 1:  # only then: a second init would change the recorded 1-block run's weights
        module.model = SmallResNet(blocks_per_stage=args.blocks_per_stage)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        default_root_dir=args.out,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    train_seconds = time.perf_counter() - start
    val_acc = float(trainer.callback_metrics["val_acc"])
    test_acc = float(trainer.test(module, datamodule=datamodule, verbose=False)[0]["test_acc"])

    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), args.out / STATE_DICT_NAME)
    metrics = {
        "model": f"SmallResNet(in_channels=1, num_classes=10, widths=(16, 32, 64), blocks_per_stage={args.blocks_per_stage})",
        "dataset": "Fashion-MNIST",
        "test_acc": round(test_acc, 4),
        "val_acc": round(val_acc, 4),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "train_subset": args.train_subset,
        "seed": args.seed,
        "train_seconds": round(train_seconds, 1),
        "epoch_seconds": [round(seconds, 1) for seconds in timer.epoch_seconds],
        "torch_threads": torch.get_num_threads(),
        "state_dict": str(args.out / STATE_DICT_NAME),
        "command": "python examples/train_dense.py " + " ".join(argv or []),
    }
    text = json.dumps(metrics, indent=2) + "\n"
    (args.out / "metrics.json").write_text(text)
    if args.results_json is not None:
        args.results_json.parent.mkdir(parents=True, exist_ok=True)
        args.results_json.write_text(text)
    print(text, end="")
    return metrics


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
