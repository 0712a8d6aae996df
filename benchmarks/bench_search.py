"""Cost of ``auto_channel_prune_search`` on a ResNet-50 at 224x224 (CPU), against the passes it must run.

Measured, each in its own subprocess so that peak-memory numbers do not mix:

* ``train_step``: one training step on the whole batch (forward, cross-entropy, backward, SGD
  step with momentum) -- the yardstick;
* ``fwd_bwd``: the ``test_iteration`` forward/backward passes alone (the batch split into
  ``test_iteration`` chunks, gradients by ``torch.autograd.grad``) -- the unavoidable part of a
  Taylor sensitivity;
* ``search``: the whole ``auto_channel_prune_search`` call (coupling trace, MACs measurement,
  sensitivity, greedy search, writing the cfg and record), with its per-phase timings;
* ``greedy``: ``GreedySearch`` alone on the ResNet-50 problem for several targets, with and
  without 16-channel alignment (best of 3 runs each).

Peak memory: one subprocess per measurement (``train_step``, ``fwd_bwd``, ``search``), each
reporting the growth of ``ru_maxrss`` (the process's peak resident set) over its first call;
model, data and imports are loaded before. Times: one more subprocess runs the three after a
warm-up of each, interleaved (A B C A B C ...) for ``--repeats`` rounds, so that load from
other processes on the machine hits all three alike; medians are reported.

Usage::

    python benchmarks/bench_search.py [--batch 8] [--test-iteration 2] [--ratio 2.0] [--repeats 5]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

NUM_CLASSES = 1000


# ---- a compact torchvision-style ResNet-50 (torchvision is not a dependency) --------------------------


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class ResNet50(nn.Module):
    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        cin, stages = 64, []
        for width, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            layers = [Bottleneck(cin, width, stride)]
            cin = width * Bottleneck.expansion
            layers += [Bottleneck(cin, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ---- measurements (run in a child process) --------------------------------------------------------------


def _setup(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = ResNet50().eval()
    x = torch.randn(args.batch, 3, 224, 224)
    y = torch.randint(0, NUM_CLASSES, (args.batch,))
    return model, x, y


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace):
    model = copy.deepcopy(model).train()  # its own copy: the step changes the weights
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def run() -> None:
        optimizer.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    return run


def _fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace):
    # The passes TaylorLossSensitivity runs by default: eval mode, BatchNorm on batch statistics.
    model = copy.deepcopy(model).eval()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.train()
    params = list(model.parameters())

    def run() -> None:
        for xs, ys in zip(
            torch.tensor_split(x, args.test_iteration),
            torch.tensor_split(y, args.test_iteration),
            strict=True,
        ):
            torch.autograd.grad(nn.functional.cross_entropy(model(xs), ys), params)

    return run


def _search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace):
    from lightning_prune.search import TaylorLossSensitivity, auto_channel_prune_search

    folder = Path(tempfile.mkdtemp())
    config = folder / "search.cfg"
    config.write_text(
        f"compress_ratio: {args.ratio}\nascend_optimized: true\ntest_iteration: {args.test_iteration}\n"
    )
    phases: list[dict] = []

    def run() -> None:
        sensitivity = TaylorLossSensitivity()
        sensitivity.set_loss_func(nn.CrossEntropyLoss())
        result = auto_channel_prune_search(model, str(config), [x, y], str(folder / "out.cfg"), sensitivity)
        phases.append(
            {
                **result.timings,
                "achieved_ratio": result.achieved_ratio,
                "reached": result.reached,
                "original_macs": result.original_macs,
                "final_macs": result.final_macs,
            }
        )

    run.phases = phases  # type: ignore[attr-defined]
    return run


def _greedy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace) -> dict:
    from lightning_prune.coupling import analyze_coupling
    from lightning_prune.search import GreedySearch, SearchProblem, measure_macs

    analysis = analyze_coupling(model, x[:1])
    layers = measure_macs(model, x[:1])
    groups = analysis.prunable_groups
    gen = torch.Generator().manual_seed(0)
    scores = {g.id: torch.rand(g.channels, generator=gen, dtype=torch.float64) for g in groups}
    rows = []
    for multiple in (1, 16):
        for ratio in (1.5, 2.0, 3.0):
            problem = SearchProblem(analysis, groups, scores, layers, ratio, multiple, 0.9)
            times = []
            for _ in range(3):
                search = GreedySearch()
                start = time.perf_counter()
                plan = search.channel_prune_search(problem)
                times.append(time.perf_counter() - start)
            rows.append(
                {
                    "channel_multiple": multiple,
                    "target": ratio,
                    "steps": len(search.steps),
                    "achieved": round(problem.ratio(plan), 4),
                    "seconds": min(times),
                }
            )
    return {"groups": len(groups), "rows": rows}


_PHASES = ("analysis", "macs", "sensitivity", "search", "write")
_BUILDERS = {"train_step": _train_step, "fwd_bwd": _fwd_bwd, "search": _search}


def _timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def child(args: argparse.Namespace) -> None:
    model, x, y = _setup(args)
    if args.measure == "greedy":
        print(json.dumps(_greedy(model, x, y, args)))
        return
    if args.measure == "timing":  # interleaved rounds after one warm-up each
        runs = {name: build(model, x, y, args) for name, build in _BUILDERS.items()}
        first = {name: _timed(run) for name, run in runs.items()}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(_timed(run))
        phases = runs["search"].phases  # type: ignore[attr-defined]
        median_phases = {k: statistics.median(p[k] for p in phases[1:]) for k in _PHASES}
        print(
            json.dumps(
                {
                    "first_s": first,
                    "median_s": {k: statistics.median(v) for k, v in times.items()},
                    "phases": {**phases[-1], **median_phases},
                }
            )
        )
        return
    run = _BUILDERS[args.measure](model, x, y, args)
    before = _maxrss_mb()
    run()
    print(json.dumps({"peak_mb": _maxrss_mb() - before}))


def _spawn(name: str, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--measure",
        name,
        "--batch",
        str(args.batch),
        "--test-iteration",
        str(args.test_iteration),
        "--ratio",
        str(args.ratio),
        "--repeats",
        str(args.repeats),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--test-iteration", type=int, default=2)
    parser.add_argument("--ratio", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--measure", choices=["train_step", "fwd_bwd", "search", "timing", "greedy"])
    args = parser.parse_args()
    if args.measure:
        child(args)
        return
    print(
        f"ResNet-50, 224x224, batch {args.batch}, test_iteration {args.test_iteration}, compress_ratio "
        f"{args.ratio}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    memory = {name: _spawn(name, args)["peak_mb"] for name in _BUILDERS}
    timing = _spawn("timing", args)
    median = timing["median_s"]
    print(f"{'measurement':<14}{'median s':>10}{'first s':>10}{'peak MB':>10}")
    for name in _BUILDERS:
        print(f"{name:<14}{median[name]:>10.3f}{timing['first_s'][name]:>10.3f}{memory[name]:>10.0f}")
    phases = timing["phases"]
    print("search phases (median, s): " + ", ".join(f"{k} {phases[k]:.3f}" for k in _PHASES))
    print(
        f"search result: MACs {phases['original_macs']} -> {phases['final_macs']}, ratio "
        f"{phases['achieved_ratio']:.4f} (reached: {phases['reached']})"
    )
    print(
        f"ratios: search / fwd_bwd time {median['search'] / median['fwd_bwd']:.2f}x, "
        f"search / train_step time {median['search'] / median['train_step']:.2f}x, "
        f"search / train_step peak memory {memory['search'] / memory['train_step']:.2f}x, "
        f"fwd_bwd / train_step peak memory {memory['fwd_bwd'] / memory['train_step']:.2f}x"
    )
    results = {"greedy": _spawn("greedy", args)}
    greedy = results["greedy"]
    print(f"GreedySearch alone ({greedy['groups']} prunable groups, max_prune_ratio 0.9, best of 3):")
    for row in greedy["rows"]:
        print(
            f"  multiple {row['channel_multiple']:>2}  target {row['target']:<4} -> {row['achieved']:<7} "
            f"{row['steps']:>6} steps  {1000 * row['seconds']:8.1f} ms"
        )


if __name__ == "__main__":
    main()
