"""Which width allocation retrains best? Search-objective ablation on Fashion-MNIST at 2.0x fewer MACs.

``examples/fashion_mnist_search_vs_tp.py`` compares the default search with uniform ratios and
Torch-Pruning. This script asks the follow-up question that comparison raised (the search wins
right after pruning but not after retraining): does another objective, or another way of picking
channels inside the widths, give a model that retrains better? Each variant is built only from the
public extension points, a :class:`~lightning_prune.search.SearchChannelBase` and a
:class:`~lightning_prune.search.SensitivityBase` subclass, and is put through the example's
procedure: BatchNorm recalibration on the search batches, test accuracy, and (with
``--retrain-lr``) retraining for ``--retrain-epochs`` with the example's optimizer and schedule.

Variants (``--variants``):

* ``default``: :class:`~lightning_prune.search.GreedySearch` on the default Taylor sensitivity.
* ``greedy``: this file's re-implementation of the greedy on the public ``SearchProblem`` API; it
  must pick the same widths as ``default`` (a check on the re-implementation, reported).
* ``beta<B>``: greedy on ``sensitivity / MACs_saved ** B`` (B < 1 drifts toward a global ranking).
* ``gamma<G>``: greedy on ``sensitivity / MACs_saved / kept_fraction ** G`` (G > 0 drifts toward
  uniform ratios: a group already pruned hard costs more).
* ``normsum``: Taylor scores divided by their group's sum (each group's importance sums to 1).
* ``mpr<R>``: the default search with ``max_prune_ratio: R``.
* ``uniform_taylor``, ``uniform_l2``: the uniform widths of ``uniform_l2`` in the example (the
  largest MACs-matched ratio), channels picked by Taylor sensitivity or by the producers' summed
  squared weights.
* ``searched_l2``: the default search's widths, channels picked by the producers' squared weights.

Usage (from the repository root)::

    python benchmarks/search_ablation.py --seeds 0 1 2                        # recalibrated accuracy only
    python benchmarks/search_ablation.py --seeds 0 1 2 --retrain-lr 0.001 --variants default gamma2 uniform_l2

Appends one JSON line per (variant, seed) to ``--results`` (default ``results/search_ablation.jsonl``);
``--summary`` prints that file as markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import fashion_mnist_search_vs_tp as example

from lightning_prune import create_prune_retrain_model
from lightning_prune.batchnorm import recalibrate_batchnorm
from lightning_prune.demos import FashionMNISTDataModule
from lightning_prune.search import (
    GreedySearch,
    SearchChannelBase,
    SearchProblem,
    SensitivityBase,
    TaylorLossSensitivity,
    auto_channel_prune_search,
    count_macs,
)
from lightning_prune.summary import count_parameters

UNIFORM_WIDTHS = {  # the example's uniform_l2 widths at 2.0x (ratio bisected there)
    "stem.0": 11, "layer1.0.conv1": 11, "layer2.0.conv2": 23,
    "layer2.0.conv1": 23, "layer3.0.conv2": 46, "layer3.0.conv1": 46,
}  # fmt: skip
FIXED = ("uniform_taylor", "uniform_l2")


class WeightedGreedy(SearchChannelBase):
    """Greedy on ``sensitivity / saved ** beta / kept_fraction ** gamma``, public API only.

    ``beta=1, gamma=0`` is :class:`GreedySearch`'s objective; every candidate step is costed with
    ``problem.macs`` on the whole plan, so this is slower but needs no private state.
    """

    def __init__(self, beta: float = 1.0, gamma: float = 0.0) -> None:
        self.beta, self.gamma = beta, gamma

    def channel_prune_search(self, problem: SearchProblem) -> dict[int, list[int]]:
        groups = {g.id: g for g in problem.groups}
        pruned = dict.fromkeys(groups, 0)

        def plan(counts: dict[int, int]) -> dict[int, list[int]]:
            return {i: problem.cheapest_channels(groups[i], n) for i, n in counts.items() if n}

        macs = problem.macs(plan(pruned))
        while problem.original_macs < problem.compress_ratio * macs:
            best = None
            for i, g in groups.items():
                step = problem.next_step(g, g.channels - pruned[i])
                if not step:
                    continue
                trial = {**pruned, i: pruned[i] + step}
                saved = macs - problem.macs(plan(trial))
                if saved <= 0:
                    continue
                scores = problem.sensitivity[i].double()
                removed = problem.cheapest_channels(g, trial[i])
                before = problem.cheapest_channels(g, pruned[i])
                cost = float(scores[removed].sum() - scores[before].sum())
                kept_fraction = (g.channels - trial[i]) / g.channels
                value = cost / saved**self.beta / kept_fraction**self.gamma
                if best is None or value < best[0]:
                    best = (value, trial, saved)
            if best is None:
                break
            pruned, macs = best[1], macs - best[2]
        return plan(pruned)


class FixedWidths(SearchChannelBase):
    """Keep ``widths[producer]`` channels in the group of that producer; the sensitivity picks which."""

    def __init__(self, widths: dict[str, int]) -> None:
        self.widths = widths

    def channel_prune_search(self, problem: SearchProblem) -> dict[int, list[int]]:
        out = {}
        for g in problem.groups:
            kept = next(self.widths[p.name] for p in g.producers if p.name in self.widths)
            out[g.id] = problem.cheapest_channels(g, g.channels - kept)
        return out


class ProducerL2(SensitivityBase):
    """Score of a channel: the summed squared weights of its producers' output filters."""

    def get_sensitivity(self, groups):
        scores = {}
        for g in groups:
            total = torch.zeros(g.channels, dtype=torch.float64)
            for node in g.producers:
                weight = self.model.get_submodule(node.name).weight.detach().double()
                total += weight.pow(2).flatten(1).sum(1)
            scores[g.id] = total
        return scores


class GroupNormalised(TaylorLossSensitivity):
    """Taylor scores divided by their group's total."""

    def get_sensitivity(self, groups):
        return {i: s / s.sum().clamp_min(1e-30) for i, s in super().get_sensitivity(groups).items()}


def variant(name: str, default_widths: dict[str, int]) -> tuple[SensitivityBase, SearchChannelBase, float]:
    """(sensitivity, search, max_prune_ratio) of one variant name; see the module docstring."""
    taylor = TaylorLossSensitivity(nn.CrossEntropyLoss())
    if name == "default":
        return taylor, GreedySearch(), 0.8
    if name == "greedy":
        return taylor, WeightedGreedy(), 0.8
    if name.startswith("beta"):
        return taylor, WeightedGreedy(beta=float(name[4:])), 0.8
    if name.startswith("gamma"):
        return taylor, WeightedGreedy(gamma=float(name[5:])), 0.8
    if name == "normsum":
        return GroupNormalised(nn.CrossEntropyLoss()), GreedySearch(), 0.8
    if name.startswith("mpr"):
        return taylor, GreedySearch(), float(name[3:])
    if name in FIXED:
        return (taylor if name == "uniform_taylor" else ProducerL2()), FixedWidths(UNIFORM_WIDTHS), 0.9
    if name == "searched_l2":
        return ProducerL2(), FixedWidths(default_widths), 0.9
    raise ValueError(f"--variants: unknown variant {name!r}; see the module docstring for the names.")


def group_widths(model: nn.Module) -> dict[str, int]:
    """Kept channels keyed by one producer of every group of the SmallResNet."""
    return {name: model.get_submodule(name).out_channels for name in UNIFORM_WIDTHS}


def summary(results: Path) -> str:
    """Markdown tables (one row per variant, one column per seed) of the results file."""
    recal: dict[str, dict[int, float]] = defaultdict(dict)
    retrained: dict[tuple[float, str], dict[int, float]] = defaultdict(dict)
    for line in results.read_text().splitlines():
        row = json.loads(line)
        if "acc_retrained" in row:
            retrained[(row["retrain_lr"], row["variant"])][row["seed"]] = row["acc_retrained"]
        else:
            recal[row["variant"]][row["seed"]] = row["acc_bn_recal"]

    def table(title: str, rows: dict) -> list[str]:
        seeds = sorted({s for by_seed in rows.values() for s in by_seed})
        lines = [f"| {title} | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |"]
        lines.append("|---|" + "---:|" * (len(seeds) + 1))
        for name, by_seed in rows.items():
            cells = " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "-" for s in seeds)
            lines.append(f"| {name} | {cells} | {statistics.mean(by_seed.values()):.2f} |")
        return [*lines, ""]

    out = table("after prune + BN recal", recal)
    for lr in sorted({lr for lr, _ in retrained}):
        rows = {name: by_seed for (r, name), by_seed in retrained.items() if r == lr}
        out += table(f"retrained, lr {lr}", rows)
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["default", "greedy", "beta0.5", "gamma1", "gamma2",
                        "gamma4", "normsum", "mpr0.4", "uniform_taylor", "uniform_l2", "searched_l2"])  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--retrain-lr", type=float, default=0.0, help="0: recalibrated accuracy only")
    parser.add_argument("--retrain-epochs", type=int, default=3)
    parser.add_argument("--dense", type=Path, default=Path("outputs/dense/small_resnet_dense.pt"))
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--out", type=Path, default=Path("outputs/search_ablation"))
    parser.add_argument("--results", type=Path, default=Path("results/search_ablation.jsonl"))
    parser.add_argument(
        "--summary", action="store_true", help="print the results file as tables, run nothing"
    )
    args = parser.parse_args()
    if args.summary:
        print(summary(args.results))
        return

    data = FashionMNISTDataModule(data_dir=args.data_dir, batch_size=128, seed=0)
    data.setup("fit")
    dense = example.load_dense(args.dense)
    for seed in args.seeds:
        L.seed_everything(seed, verbose=False)
        batches, search_data = example.search_batches(data, seed, 8)
        example_input = search_data[0][:1]
        dense_macs = count_macs(dense, example_input)
        default_widths: dict[str, int] = {}
        for name in args.variants:
            if name == "searched_l2" and not default_widths:
                raise ValueError("--variants: list 'default' before 'searched_l2' (it reuses its widths).")
            out = args.out / f"{name}_seed{seed}"
            out.mkdir(parents=True, exist_ok=True)
            sensitivity, search, max_prune_ratio = variant(name, default_widths)
            (out / "search.cfg").write_text(
                f"compress_ratio: 2.0 ascend_optimized: false max_prune_ratio: {max_prune_ratio} test_iteration: 8\n"
            )
            started = time.perf_counter()
            auto_channel_prune_search(
                dense, str(out / "search.cfg"), search_data, str(out / "searched.cfg"),
                sensitivity=sensitivity, search_alg=search,
            )  # fmt: skip
            model = create_prune_retrain_model(
                dense, (example_input,), str(out / "searched.cfg"), str(out / "record.txt")
            )
            search_seconds = time.perf_counter() - started
            recalibrate_batchnorm(model, batches)
            widths = group_widths(model)
            if name == "default":
                default_widths = widths
            row = {
                "variant": name,
                "seed": seed,
                "macs_ratio": round(dense_macs / count_macs(model, example_input), 4),
                "params": count_parameters(model),
                "widths": widths,
                "acc_bn_recal": example.test_accuracy(model, data),
                "search_seconds": round(search_seconds, 2),
            }
            if name == "greedy" and default_widths:  # checked only when 'default' ran first
                row["same_widths_as_default"] = widths == default_widths
            if args.retrain_lr:
                retrain_args = argparse.Namespace(
                    no_retrain=False, seed=seed, retrain_lr=args.retrain_lr,
                    retrain_epochs=args.retrain_epochs, out=out,
                )  # fmt: skip
                model, seconds = example.retrain(model, data, retrain_args, "retrain")
                row.update(
                    retrain_lr=args.retrain_lr,
                    retrain_epochs=args.retrain_epochs,
                    acc_retrained=example.test_accuracy(model, data),
                    retrain_seconds=round(seconds),
                )
            print(json.dumps(row), flush=True)
            args.results.parent.mkdir(parents=True, exist_ok=True)
            with args.results.open("a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
