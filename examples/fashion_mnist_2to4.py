"""2:4 sparsity retraining on Fashion-MNIST: dense -> one-shot 2:4 -> 2:4 retrain -> ONNX.

NVIDIA ASP's recipe, driven by an AMCT-style .cfg through the ``StructuredSparsityRetrain``
callback: prune the trained dense model once (keep the 2 largest |w| of every 4 input-channel
weights), retrain with the masks fixed, export the ONNX model with the zeros baked in.

Usage (from the repository root)::

    python examples/fashion_mnist_2to4.py                      # trains the dense model first if needed
    python examples/fashion_mnist_2to4.py --dense outputs/dense/small_resnet_dense.pt --retrain-epochs 3

Writes ``--out``/``record.txt``, ``small_resnet_2to4_deploy_model.onnx`` and ``results.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import onnxruntime as ort
import torch

from lightning_prune import RetrainConfig, StructuredSparsityRetrain, save_prune_retrain_model
from lightning_prune.demos import FashionMNISTDataModule, ImageClassifier
from lightning_prune.functional.nm import nm_mask_is_valid
from lightning_prune.sparsity import apply_nm_sparsity, nm_sparse_layers

CONFIG = "recipes/configs/sparse_2to4.cfg"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", type=Path, default=Path("outputs/dense/small_resnet_dense.pt"))
    parser.add_argument("--dense-epochs", type=int, default=6, help="used only when --dense does not exist")
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--retrain-lr", type=float, default=0.01)
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", type=Path, default=Path("outputs/fashion_mnist_2to4"))
    parser.add_argument("--results-json", type=Path, default=Path("results/fashion_mnist_2to4.json"))
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def make_trainer(out: Path, epochs: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        callbacks=callbacks or [],
        default_root_dir=out,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


def evaluate(module: ImageClassifier, data: FashionMNISTDataModule, out: Path) -> float:
    return float(make_trainer(out, 1).test(module, datamodule=data, verbose=False)[0]["test_acc"])


def train_dense(args: argparse.Namespace, data: FashionMNISTDataModule) -> None:
    print(f"No dense weights at {args.dense}: training the dense model for {args.dense_epochs} epochs.")
    module = ImageClassifier(arch="small_resnet", lr=0.05)
    make_trainer(args.out / "dense", args.dense_epochs).fit(module, datamodule=data)
    args.dense.parent.mkdir(parents=True, exist_ok=True)
    torch.save(module.model.state_dict(), args.dense)


def load_dense(args: argparse.Namespace, **hparams: float) -> ImageClassifier:
    module = ImageClassifier(arch="small_resnet", **hparams)
    module.model.load_state_dict(torch.load(args.dense, weights_only=True))
    return module


def one_shot_2to4(args: argparse.Namespace, data: FashionMNISTDataModule) -> float:
    """Accuracy right after pruning, before any retraining."""
    module = load_dense(args)
    specs = RetrainConfig.from_file(args.config).resolve(module.model)
    apply_nm_sparsity(module.model, specs)
    return evaluate(module, data, args.out)


def onnx_max_difference(module: ImageClassifier, onnx_file: Path, data: FashionMNISTDataModule) -> float:
    images, _ = next(iter(data.test_dataloader()))
    session = ort.InferenceSession(str(onnx_file))
    (onnx_logits,) = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    with torch.no_grad():
        torch_logits = module.model.eval()(images).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())


def main() -> None:
    args = parse_args()
    L.seed_everything(args.seed, verbose=False)
    data = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128)
    if not args.dense.exists():
        train_dense(args, data)

    dense_acc = evaluate(load_dense(args), data, args.out)
    one_shot_acc = one_shot_2to4(args, data)

    module = load_dense(args, lr=args.retrain_lr, max_epochs_for_schedule=args.retrain_epochs)
    sparsity = StructuredSparsityRetrain(
        config=args.config, record_file=str(args.out / "record.txt"), target="model"
    )
    started = time.perf_counter()
    make_trainer(args.out, args.retrain_epochs, [sparsity]).fit(module, datamodule=data)
    retrain_seconds = time.perf_counter() - started
    retrained_acc = evaluate(module, data, args.out)

    sparse = nm_sparse_layers(module.model)
    pattern_ok = all(
        nm_mask_is_valid(module.model.get_submodule(name).weight != 0, mask.n, mask.m, mask.axis)
        for name, mask in sparse.items()
    )
    save_prune_retrain_model(copy.deepcopy(module.model), str(args.out / "small_resnet_2to4"), torch.zeros(1, 1, 28, 28),
                             input_names=["images"], output_names=["logits"],
                             dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    onnx_file = args.out / "small_resnet_2to4_deploy_model.onnx"
    results = {
        "dataset": "Fashion-MNIST (10k test images)",
        "model": "SmallResNet widths (16, 32, 64), 1 block per stage",
        "config": args.config,
        "sparse_layers": len(sparse),
        "masked_weights": int(sum((~mask.mask).sum() for mask in sparse.values())),
        "dense_test_acc": round(dense_acc * 100, 2),
        "one_shot_2to4_test_acc": round(one_shot_acc * 100, 2),
        "retrained_2to4_test_acc": round(retrained_acc * 100, 2),
        "retrained_minus_dense_points": round((retrained_acc - dense_acc) * 100, 2),
        "retrain_epochs": args.retrain_epochs,
        "retrain_lr": args.retrain_lr,
        "retrain_seconds": round(retrain_seconds, 1),
        "zero_pattern_valid": pattern_ok,
        "onnx_file": str(onnx_file),
        "onnx_max_abs_difference": onnx_max_difference(module, onnx_file, data),
        "command": "python examples/fashion_mnist_2to4.py",
    }
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    args.results_json.write_text(json.dumps(results, indent=2) + "\n")
    width = max(map(len, results))
    print("\n".join(f"{key:<{width}}  {value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
