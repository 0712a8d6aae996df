"""Automatic channel-prune search vs. uniform ratios vs. Torch-Pruning, at 2.0x fewer MACs, on Fashion-MNIST.

The dense SmallResNet (widths 16/32/64, one residual block per stage) is pruned four ways to the
same MACs (Conv + Linear multiply-accumulates per sample, ``lightning_prune.search.count_macs``):

1. ``searched``: ``auto_channel_prune_search`` (first-order Taylor sensitivity of the training
   loss, cross-entropy, on ``--search-batches`` training batches; greedy search on exact MACs).
   The ``ChannelPruneSearch`` callback (the product path, which takes the same batches from the
   train dataloader and the LightningModule's own ``training_step`` loss) is checked to pick the
   very same channels.
2. ``uniform_l2``: our BalancedL2Norm ``filter_pruner`` with one ``prune_ratio`` for every
   group, bisected to 2.0x.
3. ``tp_uniform_l2``: Torch-Pruning ``MetaPruner`` + ``MagnitudeImportance(p=2)``, one ratio for
   every group (``global_pruning=False``), the classifier ignored, ratio bisected to 2.0x.
4. ``tp_global_taylor``: Torch-Pruning ``MetaPruner`` + ``TaylorImportance()`` with
   ``global_pruning=True``, gradients of the same loss on the same batches, ratio bisected to 2.0x.

Every variant then goes through the same procedure: test accuracy right after pruning (BatchNorm
statistics as the dense model left them), after ``recalibrate_batchnorm`` on the search's batches,
and after retraining the compact model (same epochs, optimizer, schedule, seed and data order).

Usage (from the repository root)::

    python examples/fashion_mnist_search_vs_tp.py --quick              # timing run: 5k images, 1 epoch
    python examples/fashion_mnist_search_vs_tp.py --retrain-epochs 3 --train-subset 20000

Writes ``--results-json`` and ``--results-md``; scratch files (configs, records) go to ``--out``.
Needs ``pip install --no-deps torch-pruning``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import lightning as L
import torch
import torch_pruning as tp
from torch import Tensor, nn

import lightning_prune
from lightning_prune import ChannelPruneSearch, StructuredSparsityRetrain, create_prune_retrain_model
from lightning_prune.batchnorm import recalibrate_batchnorm
from lightning_prune.demos import FashionMNISTDataModule, ImageClassifier, SmallResNet
from lightning_prune.search import (
    SensitivityBase,
    TaylorLossSensitivity,
    auto_channel_prune_search,
    count_macs,
)
from lightning_prune.summary import count_parameters

VARIANTS = ("searched", "searched_amct_criterion", "uniform_l2", "tp_uniform_l2", "tp_global_taylor")
NOTES_MARKER = "<!-- notes: kept when the script rewrites this file -->"
LABELS = {
    "searched": "ours, searched (Taylor on the training loss, greedy on exact MACs)",
    "searched_amct_criterion": "ours, searched, but with AMCT's sensitivity: "
    "TaylorLossSensitivity(criterion='abs', batch_statistics=False)",
    "uniform_l2": "ours, uniform ratio, BalancedL2Norm",
    "tp_uniform_l2": "Torch-Pruning, uniform ratio, MagnitudeImportance(p=2)",
    "tp_global_taylor": "Torch-Pruning, global_pruning, TaylorImportance",
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dense", type=Path, default=Path("outputs/dense/small_resnet_dense.pt"))
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument(
        "--blocks-per-stage", type=int, default=1, help="SmallResNet depth of the --dense weights"
    )
    parser.add_argument("--compress-ratio", type=float, default=2.0)
    parser.add_argument(
        "--max-prune-ratio",
        type=float,
        default=0.8,
        help="per-group cap for the search, and max_pruning_ratio for Torch-Pruning",
    )
    parser.add_argument(
        "--search-batches", type=int, default=8, help="test_iteration: batches of --batch-size"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--retrain-lr", type=float, default=0.01)
    parser.add_argument(
        "--train-subset",
        type=int,
        default=None,
        help="train on this many of the 55k training images (same subset for every variant)",
    )
    parser.add_argument(
        "--tp-taylor-grads",
        choices=("eval", "batchstat"),
        default="batchstat",
        help="BatchNorm statistics for Torch-Pruning's Taylor gradients",
    )
    parser.add_argument("--no-retrain", action="store_true", help="prune and recalibrate only")
    parser.add_argument(
        "--quick", action="store_true", help="timing run: --train-subset 5000, 1 retrain epoch"
    )
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="data order, search batches, retraining (the data split stays seed 0)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs/search_vs_tp"))
    parser.add_argument(
        "--results-json",
        type=Path,
        default=None,
        help="default results/search_vs_torch_pruning.json (…_quick.json with --quick)",
    )
    parser.add_argument("--results-md", type=Path, default=None)
    args = parser.parse_args()
    if args.quick:
        args.train_subset = args.train_subset or 5000
        args.retrain_epochs = 1
    suffix = "_quick" if args.quick else ""
    args.results_json = args.results_json or Path(f"results/search_vs_torch_pruning{suffix}.json")
    args.results_md = args.results_md or args.results_json.with_suffix(".md")
    return args


# ---- evaluation ---------------------------------------------------------------------------------------


@torch.inference_mode()
def test_accuracy(model: nn.Module, data: FashionMNISTDataModule) -> float:
    """Top-1 accuracy (%) on the 10k test images, eval mode."""
    was_training = model.training
    model.eval()
    images, labels = data.test_dataset.tensors
    correct = sum(
        int((model(x).argmax(1) == y).sum())
        for x, y in zip(images.split(1000), labels.split(1000), strict=True)
    )
    model.train(was_training)
    return 100.0 * correct / len(labels)


def search_batches(
    data: FashionMNISTDataModule, seed: int, count: int
) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """The first ``count`` batches of the train loader shuffled with ``seed``, also as ``[inputs, labels]``.

    These are the batches ``ChannelPruneSearch`` takes; every variant is searched, scored and
    BN-recalibrated on them.
    """
    data.seed = seed
    loader = iter(data.train_dataloader())
    batches = [next(loader) for _ in range(count)]
    return batches, [torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])]


def load_dense(path: Path, blocks_per_stage: int = 1) -> nn.Module:
    model = SmallResNet(blocks_per_stage=blocks_per_stage)
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def make_trainer(out: Path, epochs: int, callbacks: list | None = None) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, callbacks=callbacks or [],
                     default_root_dir=out, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False,
                     limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip


# ---- MACs-matched pruning -----------------------------------------------------------------------------


def bisect_ratio(
    prune: Callable[[float], nn.Module],
    example: Tensor,
    dense_macs: int,
    target: float,
    high: float,
    iterations: int = 24,
) -> tuple[float, nn.Module]:
    """The ratio in ``[0, high]`` whose pruned model's MACs ratio is closest to ``target``.

    Bisection finds the boundary between the largest ratio below ``target`` and the smallest at
    or above it; removing one more channel can move the MACs ratio by several percent (a channel
    of a 28x28 layer), so the closer of the two (in log terms) is returned.
    """
    low, below, above = 0.0, None, None
    for _ in range(iterations):
        mid = (low + high) / 2
        model = prune(mid)
        achieved = dense_macs / count_macs(model, example)
        if achieved >= target:
            high, above = mid, (mid, model, achieved)
        else:
            low, below = mid, (mid, model, achieved)
    if above is None:
        model = prune(high)
        above = (high, model, dense_macs / count_macs(model, example))
    if below is not None and abs(math.log(below[2] / target)) < abs(math.log(above[2] / target)):
        return below[0], below[1]
    return above[0], above[1]


def write_uniform_cfg(path: Path, ratio: float) -> None:
    path.write_text(
        "# Uniform BalancedL2Norm channel pruning, ratio bisected to the MACs target.\n"
        f"prune_config {{ filter_pruner {{ balanced_l2_norm_filter_prune {{ prune_ratio: {ratio!r} "
        "ascend_optimized: false } } }\n"
    )


def ours_uniform(
    dense: nn.Module, example: Tensor, dense_macs: int, args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    cfg = args.out / "uniform_l2.cfg"

    def prune(ratio: float) -> nn.Module:
        write_uniform_cfg(cfg, ratio)
        return create_prune_retrain_model(
            dense, (example,), str(cfg), str(args.out / "uniform_l2.record.txt")
        )

    ratio, model = bisect_ratio(prune, example, dense_macs, args.compress_ratio, high=0.95)
    write_uniform_cfg(cfg, ratio)
    create_prune_retrain_model(dense, (example,), str(cfg), str(args.out / "uniform_l2.record.txt"))
    return model, {"prune_ratio": ratio, "config": str(cfg)}


def ours_searched(
    dense: nn.Module,
    search_data: list[Tensor],
    args: argparse.Namespace,
    sensitivity: SensitivityBase,
    name: str,
) -> tuple[nn.Module, dict]:
    search_cfg = args.out / "search.cfg"
    search_cfg.write_text(
        f"compress_ratio: {args.compress_ratio} ascend_optimized: false "
        f"max_prune_ratio: {args.max_prune_ratio} test_iteration: {args.search_batches}\n"
    )
    output_cfg = args.out / f"{name}.cfg"
    result = auto_channel_prune_search(
        dense, str(search_cfg), search_data, str(output_cfg), sensitivity=sensitivity
    )
    example = search_data[0][:1]
    model = create_prune_retrain_model(
        dense, (example,), str(output_cfg), str(args.out / f"{name}.retrain_record.txt")
    )
    groups = [
        {"producers": list(g.producers), "channels": f"{g.channels_after}/{g.channels_before}"}
        for g in result.groups
    ]
    return model, {
        "search_config": str(search_cfg),
        "output_cfg": str(output_cfg),
        "groups": groups,
        "search_seconds": round(sum(result.timings.values()), 2),
        "plan": result.plan,
        "search_achieved_ratio": result.achieved_ratio,
    }


def callback_plan(dense: nn.Module, data: FashionMNISTDataModule, args: argparse.Namespace) -> dict:
    """The plan the ``ChannelPruneSearch`` callback picks in ``Trainer.fit`` (no training step taken)."""
    module = ImageClassifier(arch="small_resnet")
    module.model = copy.deepcopy(dense).train()
    search = ChannelPruneSearch(
        str(args.out / "search.cfg"), output_cfg=str(args.out / "callback_searched.cfg"), target="model"
    )
    retrain = StructuredSparsityRetrain(
        target="model", channel_mode="compact", record_file=str(args.out / "callback_record.txt")
    )
    stamp = Path(f"{search.output_cfg}.search.json")
    stamp.unlink(missing_ok=True)  # always search again
    make_trainer(args.out / "callback", 0, [search, retrain]).fit(module, datamodule=data)
    return search.result.plan


def tp_prune(
    dense: nn.Module,
    example: Tensor,
    importance: tp.importance.Importance,
    ratio: float,
    global_pruning: bool,
    max_ratio: float,
    grads: dict[str, Tensor] | None = None,
) -> nn.Module:
    model = copy.deepcopy(dense)
    if grads is not None:
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio,
                                  global_pruning=global_pruning, max_pruning_ratio=max_ratio,
                                  ignored_layers=[model.fc])  # fmt: skip
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model


def taylor_grads(dense: nn.Module, batches: Sequence[tuple[Tensor, Tensor]], mode: str) -> dict[str, Tensor]:
    """Sum over the batches of d CE(model(x), y) / d param; BN on running (``eval``) or batch statistics."""
    model = copy.deepcopy(dense).eval()
    model.zero_grad(set_to_none=True)
    loss_fn = nn.CrossEntropyLoss()
    for m in model.modules():  # a copy: its BatchNorm buffers may change
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train(mode == "batchstat")
    for x, y in batches:
        loss_fn(model(x), y).backward()
    return {name: p.grad.detach().clone() for name, p in model.named_parameters()}


def tp_uniform(
    dense: nn.Module, example: Tensor, dense_macs: int, args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    prune = lambda r: tp_prune(
        dense, example, tp.importance.MagnitudeImportance(p=2), r, False, args.max_prune_ratio
    )
    ratio, model = bisect_ratio(prune, example, dense_macs, args.compress_ratio, high=args.max_prune_ratio)
    return model, {"pruning_ratio": ratio, "global_pruning": False, "max_pruning_ratio": args.max_prune_ratio}


def tp_taylor(
    dense: nn.Module, example: Tensor, dense_macs: int, batches: Sequence, args: argparse.Namespace
) -> tuple[nn.Module, dict]:
    grads = taylor_grads(dense, batches, args.tp_taylor_grads)
    prune = lambda r: tp_prune(
        dense, example, tp.importance.TaylorImportance(), r, True, args.max_prune_ratio, grads
    )
    ratio, model = bisect_ratio(prune, example, dense_macs, args.compress_ratio, high=args.max_prune_ratio)
    return model, {
        "pruning_ratio": ratio,
        "global_pruning": True,
        "max_pruning_ratio": args.max_prune_ratio,
        "gradients": f"BN on {'batch' if args.tp_taylor_grads == 'batchstat' else 'running'} statistics",
    }


# ---- retraining ---------------------------------------------------------------------------------------


def retrain(
    model: nn.Module, data: FashionMNISTDataModule, args: argparse.Namespace, name: str
) -> tuple[nn.Module, float]:
    if args.no_retrain:
        return model.eval(), 0.0
    L.seed_everything(args.seed, verbose=False)
    module = ImageClassifier(
        arch="small_resnet", lr=args.retrain_lr, max_epochs_for_schedule=args.retrain_epochs
    )
    module.model = model.train()  # Lightning keeps the modes it is given: eval-mode BN would not train
    started = time.perf_counter()
    make_trainer(args.out / name, args.retrain_epochs).fit(module, datamodule=data)
    return module.model.eval(), time.perf_counter() - started


def channel_widths(model: nn.Module) -> dict[str, int]:
    return {name: m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ---- report -------------------------------------------------------------------------------------------


def checks(rows: dict[str, dict], dense_acc: float) -> dict[str, bool | None]:
    """The issue's targets, for each searched variant against the uniform and Torch-Pruning baselines."""
    baselines = [k for k in ("uniform_l2", "tp_uniform_l2", "tp_global_taylor") if k in rows]
    out: dict[str, bool | None] = {}
    for searched in (k for k in ("searched", "searched_amct_criterion") if k in rows):
        for stage, label in (
            ("acc_pruned", "after prune (no BN recal)"),
            ("acc_bn_recal", "after prune + BN recal"),
            ("acc_retrained", "after retrain"),
        ):
            out[f"{searched} beats {', '.join(baselines)} {label}"] = all(
                rows[searched][stage] > rows[k][stage] for k in baselines
            )
        out[f"{searched} within 0.5 pt of dense after retrain"] = (
            rows[searched]["acc_retrained"] >= dense_acc - 0.5
        )
    if {"uniform_l2", "tp_uniform_l2", "tp_global_taylor"} <= rows.keys():
        out["uniform_l2 beats both Torch-Pruning variants after retrain"] = all(
            rows["uniform_l2"]["acc_retrained"] > rows[k]["acc_retrained"]
            for k in ("tp_uniform_l2", "tp_global_taylor")
        )
    ratios = [r["macs_ratio"] for r in rows.values()]
    out["MACs ratios within 2% of each other"] = max(ratios) <= 1.02 * min(ratios)
    return out


def markdown(results: dict) -> str:
    d, p = results["dense"], results["procedure"]
    intro = (
        "Written by `examples/fashion_mnist_search_vs_tp.py`. Accuracy: top-1 (%) on the 10k Fashion-MNIST test "
        "images. MACs: Conv + Linear multiply-accumulates per 1x28x28 sample (`lightning_prune.search.count_macs`, "
        "one counter for every variant)."
    )
    data = (
        f"- Search, gradient and BN-recalibration data: the first {p['search_batches']} batches of {p['batch_size']} "
        "images of the seeded training dataloader (the batches `ChannelPruneSearch` takes), cross-entropy loss."
    )
    training = (
        f"- Retraining: {p['retrain_epochs']} epoch(s) on {p['train_images']} training images, SGD (Nesterov, "
        f"momentum 0.9, weight decay 5e-4), lr {p['retrain_lr']} cosine, batch {p['batch_size']}, seed {p['seed']}; "
        "`ImageClassifier` + Lightning `Trainer`, the compact (BN-recalibrated) model in `.model`."
    )
    caps = (
        f"- Per-group cap: `max_prune_ratio: {p['max_prune_ratio']}` for our search, the same `max_pruning_ratio` "
        "for Torch-Pruning; Torch-Pruning ignores `fc`."
    )
    lines = [
        "# Channel-prune search vs. uniform ratios vs. Torch-Pruning (Fashion-MNIST, 2.0x fewer MACs)",
        "",
        intro,
        "",
        f"Command: `{results['command']}`  ",
        f"Runtime: {results['total_seconds'] / 60:.1f} min ({results['machine']})",
        "",
        f"Dense SmallResNet: {d['params']} params, {d['macs']} MACs, **{d['acc']:.2f}%**.",
        "",
        "| variant | MACs ratio | MACs | params | after prune | after BN recal | after retrain | retrain - dense |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        lines.append(
            f"| {name} | {r['macs_ratio']:.4f} | {r['macs']} | {r['params']} | {r['acc_pruned']:.2f} | "
            f"{r['acc_bn_recal']:.2f} | {r['acc_retrained']:.2f} | {r['acc_retrained'] - d['acc']:+.2f} |"
        )
    lines += ["", "Variants:", ""]
    lines += [
        f"- `{name}`: {LABELS[name]}; {json.dumps(r['settings'])}" for name, r in results["variants"].items()
    ]
    lines += [
        "",
        "Procedure (the same for every variant):",
        "",
        data,
        training,
        caps,
        "",
        "Channel widths (out_channels of every Conv2d):",
        "",
        "| layer | dense | " + " | ".join(results["variants"]) + " |",
        "|---|---:|" + "---:|" * len(results["variants"]),
    ]
    for layer, width in d["widths"].items():
        cells = " | ".join(str(r["widths"][layer]) for r in results["variants"].values())
        lines.append(f"| {layer} | {width} | {cells} |")
    lines += ["", "Targets (computed from the table):", ""]
    lines += [
        f"- {k}: {'yes' if v else 'NO' if v is not None else 'n/a'}" for k, v in results["checks"].items()
    ]
    matches = results.get("callback_plan_matches")
    lines += [
        "",
        f"Product path: the `ChannelPruneSearch` callback picks the same channels as the function: {matches}",
        "",
        "Timings (s): " + ", ".join(f"{k} {v}" for k, v in results["timings"].items()),
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    started = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(args.seed, verbose=False)
    torch.manual_seed(args.seed)
    # The train/val split (and subset) of the dense model's training run, seed 0; --seed sets the
    # shuffling order from here on (hence the search batches) and the retraining seed.
    data = FashionMNISTDataModule(
        data_dir=args.data_dir, batch_size=args.batch_size, train_subset=args.train_subset, seed=0
    )
    data.setup("fit")
    batches, search_data = search_batches(data, args.seed, args.search_batches)
    example = search_data[0][:1]

    dense = load_dense(args.dense, args.blocks_per_stage)
    dense_macs = count_macs(dense, example)
    dense_acc = test_accuracy(dense, data)
    print(f"dense: {dense_acc:.2f}% {dense_macs} MACs {count_parameters(dense)} params", flush=True)
    timings: dict[str, float] = {}
    results = {
        "dense": {
            "acc": dense_acc,
            "macs": dense_macs,
            "params": count_parameters(dense),
            "widths": channel_widths(dense),
            "state_dict": str(args.dense),
        },
        "variants": {},
    }
    callback_matches = None
    for name in args.variants:
        clock = time.perf_counter()
        if name == "searched":
            model, settings = ours_searched(
                dense, search_data, args, TaylorLossSensitivity(nn.CrossEntropyLoss()), name
            )
            plan = settings.pop("plan")
            callback_matches = callback_plan(dense, data, args) == plan
        elif name == "searched_amct_criterion":
            sensitivity = TaylorLossSensitivity(
                nn.CrossEntropyLoss(), criterion="abs", batch_statistics=False
            )
            model, settings = ours_searched(dense, search_data, args, sensitivity, name)
            settings.pop("plan")
        elif name == "uniform_l2":
            model, settings = ours_uniform(dense, example, dense_macs, args)
        elif name == "tp_uniform_l2":
            model, settings = tp_uniform(dense, example, dense_macs, args)
        else:
            model, settings = tp_taylor(dense, example, dense_macs, batches, args)
        timings[f"{name}_prune"] = round(time.perf_counter() - clock, 1)
        model.eval()
        macs = count_macs(model, example)
        row = {
            "macs": macs,
            "macs_ratio": dense_macs / macs,
            "params": count_parameters(model),
            "widths": channel_widths(model),
            "settings": settings,
        }
        row["acc_pruned"] = test_accuracy(model, data)
        recalibrate_batchnorm(model, batches)
        row["acc_bn_recal"] = test_accuracy(model, data)
        print(
            f"{name}: ratio {row['macs_ratio']:.4f}, pruned {row['acc_pruned']:.2f}%, "
            f"BN recal {row['acc_bn_recal']:.2f}%",
            flush=True,
        )
        model, seconds = retrain(model, data, args, name)
        timings[f"{name}_retrain"] = round(seconds, 1)
        row["acc_retrained"] = float("nan") if args.no_retrain else test_accuracy(model, data)
        assert count_macs(model, example) == macs
        print(f"{name}: retrained {row['acc_retrained']:.2f}% in {seconds:.0f}s", flush=True)
        results["variants"][name] = row

    results["callback_plan_matches"] = callback_matches
    results["checks"] = checks(results["variants"], dense_acc)
    results["procedure"] = {
        "compress_ratio": args.compress_ratio,
        "max_prune_ratio": args.max_prune_ratio,
        "search_batches": args.search_batches,
        "batch_size": args.batch_size,
        "retrain_epochs": args.retrain_epochs,
        "retrain_lr": args.retrain_lr,
        "train_images": len(data.train_dataset),
        "seed": args.seed,
    }
    results["timings"] = timings
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    results["command"] = "python " + " ".join(sys.argv)
    results["machine"] = (
        f"{platform.machine()} CPU, {torch.get_num_threads()} torch threads, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )
    results["versions"] = {
        "torch": torch.__version__,
        "torch_pruning": tp.__version__,
        "lightning": L.__version__,
        "lightning_prune": lightning_prune.__version__ if hasattr(lightning_prune, "__version__") else "dev",
    }
    args.results_json.parent.mkdir(parents=True, exist_ok=True)
    args.results_json.write_text(json.dumps(results, indent=2) + "\n")
    notes = ""  # a hand-written section after NOTES_MARKER in an existing report survives a re-run
    if args.results_md.exists() and NOTES_MARKER in (previous := args.results_md.read_text()):
        notes = "\n" + previous[previous.index(NOTES_MARKER) :]
    args.results_md.write_text(markdown(results) + notes)
    print(markdown(results))


if __name__ == "__main__":
    main()
