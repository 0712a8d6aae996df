"""CPU training-step time of ResNet-20: dense vs masked with torch.nn.utils.prune vs lightning_prune.

One training step = forward + cross-entropy + backward + SGD step on a fixed batch of
128 x 3 x 32 x 32 (random data: only time matters here). Variants:

* ``dense``: plain ResNet-20;
* ``torch_prune``: every Conv2d/Linear weight masked with ``prune.random_unstructured(amount=0.5)``
  (a forward pre-hook recomputes ``weight = weight_orig * weight_mask`` each step);
* ``lightning_prune``: every Conv2d/Linear masked 2:4 by ``lightning_prune.sparsity.apply_nm_sparsity``,
  skipped with a message if that module is not importable yet.

Methodology: each variant gets its own model (same initial weights) and optimizer; after warm-up
steps, the variants are timed in interleaved rounds (A B C A B C ...) so that drifts in machine
load hit all of them alike. We report the median step time, its ratio to the dense median of
the same run ("x dense"), and the median over rounds of (variant time / dense time in that round)
("paired x"), which also cancels load changes between rounds. ``torch.set_num_threads`` is left at
its default.

Usage::

    python benchmarks/bench_training_step.py --steps 30 [--warmup 5] [--out results/bench.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune

from lightning_prune.demos.models import resnet20

BATCH_SHAPE = (128, 3, 32, 32)
NUM_CLASSES = 10


def prunable_layer_names(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def make_dense(base: nn.Module) -> nn.Module:
    return copy.deepcopy(base)


def make_torch_pruned(base: nn.Module) -> nn.Module:
    model = copy.deepcopy(base)
    for name in prunable_layer_names(model):
        prune.random_unstructured(model.get_submodule(name), name="weight", amount=0.5)
    return model


def make_lightning_pruned(base: nn.Module) -> nn.Module | None:
    """Mask every Conv2d/Linear 2:4 with lightning_prune; ``None`` if the API is not available yet."""
    try:
        from lightning_prune.config import NOutOfMSpec
        from lightning_prune.sparsity import apply_nm_sparsity
    except ImportError as error:
        print(f"lightning_prune variant unavailable: {error}")
        return None
    model = copy.deepcopy(base)
    specs = {name: NOutOfMSpec(2, 4, 0) for name in prunable_layer_names(model)}
    result = apply_nm_sparsity(model, specs)
    # Accept both styles: in-place modification (returning the sparsified names), or a new model.
    if isinstance(result, nn.Module):
        return result
    if isinstance(result, list):
        print(f"lightning_prune: {len(result)}/{len(specs)} layers made 2:4 sparse")
    return model


VARIANT_BUILDERS: dict[str, Callable[[nn.Module], nn.Module | None]] = {
    "dense": make_dense,
    "torch_prune": make_torch_pruned,
    "lightning_prune": make_lightning_pruned,
}


def make_step(model: nn.Module, images: torch.Tensor, target: torch.Tensor) -> Callable[[], None]:
    """Return a closure doing one full SGD training step on ``model``."""
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(images), target).backward()
        optimizer.step()

    return step


def time_call(function: Callable[[], None]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def run_benchmark(steps: int, warmup: int, seed: int) -> dict:
    load_before = os.getloadavg()[0]
    torch.manual_seed(seed)
    base = resnet20(num_classes=NUM_CLASSES)
    images = torch.randn(*BATCH_SHAPE)
    target = torch.randint(0, NUM_CLASSES, (BATCH_SHAPE[0],))

    step_functions: dict[str, Callable[[], None]] = {}
    unavailable: list[str] = []
    for name, builder in VARIANT_BUILDERS.items():
        model = builder(base)
        if model is None:
            unavailable.append(name)
        else:
            step_functions[name] = make_step(model, images, target)

    for _ in range(warmup):
        for step in step_functions.values():
            step()
    timings: dict[str, list[float]] = {name: [] for name in step_functions}
    for _ in range(steps):  # interleaved rounds: A B C A B C ...
        for name, step in step_functions.items():
            timings[name].append(time_call(step))

    dense_median = statistics.median(timings["dense"])
    variants = {
        name: {
            "median_ms": 1000 * statistics.median(samples),
            "min_ms": 1000 * min(samples),
            "max_ms": 1000 * max(samples),
            "ratio_to_dense": statistics.median(samples) / dense_median,
            # Same-round pairing cancels load drifts slower than one round (robust on shared machines).
            "paired_ratio_to_dense": statistics.median(
                sample / dense for sample, dense in zip(samples, timings["dense"], strict=True)
            ),
            "steps": len(samples),
        }
        for name, samples in timings.items()
    }
    return {
        "model": "resnet20",
        "batch_shape": list(BATCH_SHAPE),
        "warmup_steps": warmup,
        "timed_steps": steps,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        # 1-minute load averages: step times are only comparable when these are below the core count.
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "variants": variants,
        "unavailable": unavailable,
    }


def format_table(report: dict) -> str:
    title = (
        f"resnet20 training step, batch {tuple(report['batch_shape'])}, {report['threads']} threads, "
        f"{report['timed_steps']} interleaved steps after {report['warmup_steps']} warm-up, "
        f"load average before/after {report['load_average_before_after']}"
    )
    lines = [
        title,
        f"{'variant':<16} {'median ms':>10} {'min ms':>9} {'max ms':>9} {'x dense':>8} {'paired x':>9}",
    ]
    for name, stats in report["variants"].items():
        lines.append(
            f"{name:<16} {stats['median_ms']:>10.1f} {stats['min_ms']:>9.1f} {stats['max_ms']:>9.1f} "
            f"{stats['ratio_to_dense']:>8.2f} {stats['paired_ratio_to_dense']:>9.2f}"
        )
    lines += [f"{name:<16} {'unavailable':>10}" for name in report["unavailable"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per variant (>= 30 recommended)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")

    report = run_benchmark(args.steps, args.warmup, args.seed)
    print(format_table(report))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
