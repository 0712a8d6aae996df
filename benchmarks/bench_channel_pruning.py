"""Channel pruning, lightning_prune vs Torch-Pruning (TP), side by side on torchvision models (CPU).

Three measurements, each with both tools on the same model in the same process:

1. ``latency``: *latency speedup per MACs reduction* of compact models at 2x fewer MACs,
   ``(dense latency / pruned latency) / (dense MACs / pruned MACs)``. For each tool variant the
   uniform prune ratio is found by bisection on the MACs of the actually pruned model (one
   forward-hook MACs counter on Conv2d/Linear, :func:`count_macs`, for both tools): the smallest
   ratio reaching the target reduction. The compact models are then timed in
   ``torch.inference_mode()``, eval mode, default threads, in ABAB rounds (dense, variant, dense, ...; the order
   of the variants rotates every round); medians are reported.
2. ``train``: one SGD training step (forward + cross-entropy + backward + step) of the dense model,
   of our channel-MASKED model (``apply_channel_masks``), of our COMPACT model and of TP's compact
   model at the same ratio (same shapes, checked), interleaved rounds, medians.
3. ``create``: wall time of ``create_prune_retrain_model`` on a model against TP's
   ``DependencyGraph`` build + prune of the same model, interleaved; then a cProfile of ours.

Variants: ``ours-m1`` / ``ours-m8`` / ``ours-m16`` = BalancedL2Norm plan with kept channels rounded
up to a multiple of 1/8/16 (``channel_multiple``); ``tp``/``tp-r8``/``tp-r16`` = TP
``MagnitudePruner(MagnitudeImportance(p=2), global_pruning=False, round_to=None|8|16)``, final
classifier ignored (ours never prunes the model output's channels).

Usage::

    python benchmarks/bench_channel_pruning.py --out results/channel_pruning.json
    python benchmarks/bench_channel_pruning.py --quick          # smoke run (ResNet-18, few rounds)
    python benchmarks/bench_channel_pruning.py --sections create --create-model resnet50
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import functools
import io
import json
import math
import os
import platform
import pstats
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Shared-machine timing: with OpenMP's default (spinning) wait policy, a 2-thread torch process on an
# oversubscribed machine burns its time slices spinning at barriers and runs 5-20x slower, erratically.
# PASSIVE makes idle threads sleep; the thread count stays torch's default. Must be set before torch
# loads OpenMP; OMP_WAIT_POLICY=ACTIVE in the environment restores the library default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch
import torch.nn.functional as F
from torch import nn

from lightning_prune.coupling import analyze_coupling
from lightning_prune.functional.channels import balanced_l2_scores, channels_to_keep, select_pruned_channels
from lightning_prune.surgery import apply_channel_masks, balanced_l2_plan, prune_channels

try:
    import torch_pruning as tp
except ImportError:  # pragma: no cover - TP is a benchmark-only dependency
    tp = None

MODELS = ("resnet18", "resnet50", "mobilenet_v2")
SECTIONS = ("latency", "train", "create")


# --------------------------------------------------------------------------------------------- models
def build_model(name: str) -> nn.Module:
    """A torchvision model with random weights (``weights=None``), eval mode, fixed seed."""
    import torchvision

    torch.manual_seed(0)
    return getattr(torchvision.models, name)(weights=None).eval()


def final_classifier(model: nn.Module) -> nn.Module:
    """The last Linear layer (``fc`` / ``classifier[-1]``): TP must not prune its outputs."""
    return [m for m in model.modules() if isinstance(m, nn.Linear)][-1]


# ---------------------------------------------------------------------------------------------- MACs
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward of ``example`` (batch 1), counted on Conv2d and Linear.

    Conv2d: ``out.numel() * in_channels / groups * kh * kw``; Linear: ``out.numel() * in_features``.
    Biases, norms and activations are not counted (the same for every tool).
    """
    total = 0

    def conv_hook(m: nn.Conv2d, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    handles = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    try:
        with torch.inference_mode():
            model.eval()(example)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total // example.shape[0]


def param_shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(n, tuple(p.shape)) for n, p in model.named_parameters()]


# ------------------------------------------------------------------------------------------- pruning
class Ours:
    """lightning_prune: analysis once, then BalancedL2Norm plan + physical surgery on a copy.

    ``round_down`` is an experiment, not a lightning_prune option: kept channels rounded DOWN to the
    multiple (as TP's ``round_to`` does) instead of up (AMCT's ``channels_to_keep``), with the same
    BalancedL2Norm selection; it isolates the effect of the rounding direction on latency per MAC.
    """

    def __init__(
        self, model: nn.Module, example: torch.Tensor, multiple: int, round_down: bool = False
    ) -> None:
        self.model, self.multiple, self.round_down = model, multiple, round_down
        self.analysis = analyze_coupling(model, example)

    def plan(self, ratio: float) -> dict:
        if not self.round_down:
            return balanced_l2_plan(self.model, self.analysis, ratio, self.multiple)
        plan = {}
        for g in self.analysis.prunable_groups:
            kept = channels_to_keep(g.channels, ratio, 1, g.group)
            if g.group == 1:
                kept = max(self.multiple, kept // self.multiple * self.multiple)
            else:  # grouped: keep the engine's rule
                kept = channels_to_keep(g.channels, ratio, self.multiple, g.group)
            n_prune = g.channels - min(kept, g.channels)
            if n_prune > 0:
                weights = [self.model.get_submodule(p.name).weight.detach() for p in g.producers]
                plan[g.id] = select_pruned_channels(balanced_l2_scores(weights), n_prune, g.group)
        return plan

    def compact(self, ratio: float) -> nn.Module:
        return prune_channels(copy.deepcopy(self.model), self.analysis, self.plan(ratio)).eval()

    def masked(self, ratio: float) -> nn.Module:
        return apply_channel_masks(copy.deepcopy(self.model), self.analysis, self.plan(ratio))


def tp_pruner(model: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None):
    return tp.pruner.MagnitudePruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=ratio,
        ignored_layers=[final_classifier(model)],
        round_to=round_to,
        global_pruning=False,
    )


def tp_compact(
    model: nn.Module, example: torch.Tensor, ratio: float, round_to: int | None = None
) -> nn.Module:
    m = copy.deepcopy(model)
    tp_pruner(m, example, ratio, round_to).step()
    return m.eval()


def bisect_ratio(
    make: Callable[[float], nn.Module], example: torch.Tensor, dense_macs: int, target: float, iters: int
) -> tuple[float, nn.Module, int]:
    """Smallest ratio in [0, 0.95] whose pruned model has >= ``target`` x fewer MACs (bisection)."""
    lo, hi = 0.0, 0.95
    best = None
    for _ in range(iters):
        mid = (lo + hi) / 2
        model = make(mid)
        macs = count_macs(model, example)
        if dense_macs / macs >= target:
            hi, best = mid, (mid, model, macs)
        else:
            lo = mid
    if best is None:
        model = make(hi)
        best = (hi, model, count_macs(model, example))
    return best


# -------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """ABAB samples (seconds per call), wall clock and process CPU time, and the paired ratios."""

    ref_wall: list[float] = field(default_factory=list)
    ref_cpu: list[float] = field(default_factory=list)
    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)
    paired_wall: dict[str, list[float]] = field(default_factory=dict)
    paired_cpu: dict[str, list[float]] = field(default_factory=dict)


def abab(
    reference: Callable[[], object],
    calls: dict[str, Callable[[], object]],
    rounds: int,
    iters: int,
    warmup: int,
) -> Timing:
    """ABAB timing: every round runs ``R v1 R v2 R ... vN R`` (the variant order rotates each round).

    Each sample is timed by the wall clock and by the process CPU time (which does not count the
    time spent waiting for a core on a shared machine). The *paired ratio* of a variant sample is
    ``t(variant) / mean(t(R) just before, t(R) just after)``: it cancels load drifts slower than
    one call.
    """
    names = list(calls)

    def timed(fn: Callable[[], object]) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            fn()
        return (time.perf_counter() - wall) / iters, (time.process_time() - cpu) / iters

    for _ in range(warmup):
        reference()
        for name in names:
            calls[name]()
    t = Timing(
        wall={n: [] for n in names},
        cpu={n: [] for n in names},
        paired_wall={n: [] for n in names},
        paired_cpu={n: [] for n in names},
    )
    for r in range(rounds):
        k = r % len(names)
        before = timed(reference)
        t.ref_wall.append(before[0])
        t.ref_cpu.append(before[1])
        for name in names[k:] + names[:k]:
            wall, cpu = timed(calls[name])
            after = timed(reference)
            t.ref_wall.append(after[0])
            t.ref_cpu.append(after[1])
            t.wall[name].append(wall)
            t.cpu[name].append(cpu)
            t.paired_wall[name].append(wall / ((before[0] + after[0]) / 2))
            t.paired_cpu[name].append(cpu / ((before[1] + after[1]) / 2))
            before = after
    return t


def med(xs: list[float]) -> float:
    return statistics.median(xs)


# ------------------------------------------------------------------------------------------- section 1
def latency_section(args: argparse.Namespace) -> list[dict]:
    return [row for model_name in args.models for row in latency_model(args, model_name)]


def forward_call(m: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def run() -> object:
        with torch.inference_mode():
            return m(x)

    return run


def latency_model(args: argparse.Namespace, model_name: str) -> list[dict]:
    dense = build_model(model_name)
    ex1 = torch.randn(1, 3, args.resolution, args.resolution)
    dense_macs = count_macs(dense, ex1)
    variants: dict[str, dict] = {}
    t0 = time.perf_counter()
    cached = args.ratio_cache.get(model_name, {})

    def find(key: str, make: Callable[[float], nn.Module]) -> tuple[float, nn.Module, int]:
        if key in cached:  # ratios are deterministic (seeded weights): reuse them, but measure the MACs again
            model = make(cached[key])
            return cached[key], model, count_macs(model, ex1)
        return bisect_ratio(make, ex1, dense_macs, args.target, args.bisect_iters)

    for spec in args.multiples:  # "16" = channel_multiple 16; "16down" = the rounding-down experiment
        mult, down = int(spec.removesuffix("down")), spec.endswith("down")
        key = f"ours-m{mult}" + ("-down" if down else "")
        ours = Ours(dense, ex1, mult, round_down=down)
        ratio, model, macs = find(key, ours.compact)
        with torch.inference_mode():  # correctness: compact == masked in eval mode
            err = (model(ex1) - ours.masked(ratio).eval()(ex1)).abs().max().item()
        variants[key] = {"ratio": ratio, "model": model, "macs": macs, "max_abs_err": err}
    if tp is not None:
        for rt in args.tp_round_to:
            key = "tp" if rt is None else f"tp-r{rt}"
            ratio, model, macs = find(key, functools.partial(tp_compact, dense, ex1, round_to=rt))
            variants[key] = {"ratio": ratio, "model": model, "macs": macs}
    print(
        f"[latency] {model_name}: ratios found in {time.perf_counter() - t0:.1f}s: "
        + ", ".join(f"{k}={v['ratio']:.4f} ({dense_macs / v['macs']:.3f}x)" for k, v in variants.items()),
        flush=True,
    )
    rows = []
    for batch in args.batches:
        x = torch.randn(batch, 3, args.resolution, args.resolution)
        dense_call = forward_call(dense, x)
        dense_call()
        start = time.perf_counter()
        dense_call()
        iters = max(args.iters, math.ceil(args.min_sample_s / (time.perf_counter() - start)))
        calls = {k: forward_call(v["model"], x) for k, v in variants.items()}
        t = abab(dense_call, calls, args.rounds, iters, args.warmup)
        dense_lat = med(t.ref_wall)
        for name, v in variants.items():
            lat = med(t.wall[name])
            red = dense_macs / v["macs"]
            rows.append(
                {
                    "model": model_name,
                    "batch": batch,
                    "variant": name,
                    "ratio": v["ratio"],
                    "dense_gmacs": dense_macs / 1e9,
                    "gmacs": v["macs"] / 1e9,
                    "macs_reduction": red,
                    "dense_ms": 1e3 * dense_lat,
                    "ms": 1e3 * lat,
                    "speedup": dense_lat / lat,
                    "speedup_per_macs": dense_lat / lat / red,
                    # ABAB: the variant against the dense runs just before and just after it
                    "paired_speedup_per_macs": 1 / med(t.paired_wall[name]) / red,
                    # the same from process CPU time (robust to waiting for a core; counts all threads)
                    "cpu_paired_speedup_per_macs": 1 / med(t.paired_cpu[name]) / red,
                    "dense_cpu_ms": 1e3 * med(t.ref_cpu),
                    "cpu_ms": 1e3 * med(t.cpu[name]),
                    "max_abs_err": v.get("max_abs_err"),
                    "rounds": args.rounds,
                    "iters": iters,
                }
            )
        print(format_latency([r for r in rows if r["batch"] == batch]), flush=True)
    return rows


def format_latency(rows: list[dict]) -> str:
    lines = [
        (
            "| model | batch | variant | ratio | GMACs (dense) | MACs red. | dense ms | pruned ms | speedup "
            "| speedup / MACs red. (medians) | **ABAB paired** | CPU ms dense / pruned | CPU-time ABAB paired |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['variant']} | {r['ratio']:.4f} | {r['gmacs']:.3f} "
            f"({r['dense_gmacs']:.3f}) | {r['macs_reduction']:.3f}x | {r['dense_ms']:.1f} | {r['ms']:.1f} "
            f"| {r['speedup']:.3f} | {r['speedup_per_macs']:.3f} | **{r['paired_speedup_per_macs']:.3f}** "
            f"| {r['dense_cpu_ms']:.1f} / {r['cpu_ms']:.1f} | {r['cpu_paired_speedup_per_macs']:.3f} |"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- section 2
def train_section(args: argparse.Namespace) -> list[dict]:
    return [train_one(args, multiple, ratio) for multiple, ratio in args.train_configs]


def train_one(args: argparse.Namespace, multiple: int, ratio: float | None) -> dict:
    name, batch, res = args.train_model, args.train_batch, args.train_resolution
    dense = build_model(name)
    ex1 = torch.randn(1, 3, res, res)
    ours = Ours(dense, ex1, multiple)
    if ratio is None:  # the ratio giving --target x fewer MACs for this variant of ours
        ratio, _, _ = bisect_ratio(ours.compact, ex1, count_macs(dense, ex1), args.target, args.bisect_iters)
    models = {
        "dense": copy.deepcopy(dense),
        "ours-masked": ours.masked(ratio),
        "ours-compact": ours.compact(ratio),
    }
    shapes_match = None
    if tp is not None:
        models["tp-compact"] = tp_compact(dense, ex1, ratio, multiple if multiple > 1 else None)
        ours_shapes, tp_shapes = param_shapes(models["ours-compact"]), param_shapes(models["tp-compact"])
        shapes_match = ours_shapes == tp_shapes
        if not shapes_match:
            diff = [(a, b) for a, b in zip(ours_shapes, tp_shapes, strict=False) if a != b]
            print(
                f"[train] WARNING: ours and TP compact shapes differ in {len(diff)} tensors, e.g. {diff[:3]}"
            )
    torch.manual_seed(1)
    x = torch.randn(batch, 3, res, res)
    y = torch.randint(0, 1000, (batch,))
    losses: dict[str, float] = {}

    def make_step(key: str, m: nn.Module) -> Callable[[], None]:
        m.train()
        opt = torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            opt.step()
            losses[key] = loss.item()

        return step

    dense_step = make_step("dense", models.pop("dense"))
    t = abab(dense_step, {k: make_step(k, m) for k, m in models.items()}, args.train_rounds, 1, args.warmup)
    samples = {"dense": t.ref_wall, **t.wall}
    cpu = {"dense": t.ref_cpu, **t.cpu}
    dense_ms = 1e3 * med(t.ref_wall)
    result = {
        "model": name,
        "batch": batch,
        "resolution": res,
        "ratio": ratio,
        "multiple": multiple,
        "rounds": args.train_rounds,
        "shapes_match_tp": shapes_match,
        "macs_reduction": count_macs(dense, ex1) / count_macs(models["ours-compact"], ex1),
        "final_loss": losses,
        "variants": {
            k: {
                "median_ms": 1e3 * med(s),
                "min_ms": 1e3 * min(s),
                "max_ms": 1e3 * max(s),
                "x_dense": 1e3 * med(s) / dense_ms,
                "x_dense_paired": med(t.paired_wall[k]) if k in t.paired_wall else 1.0,
                "cpu_median_ms": 1e3 * med(cpu[k]),
                "x_dense_cpu_paired": med(t.paired_cpu[k]) if k in t.paired_cpu else 1.0,
            }
            for k, s in samples.items()
        },
    }
    v = result["variants"]
    result["checks"] = {
        "ours-masked / dense (ABAB paired, wall)": v["ours-masked"]["x_dense_paired"],
        "ours-masked / dense (ABAB paired, CPU time)": v["ours-masked"]["x_dense_cpu_paired"],
    }
    if "tp-compact" in v:
        result["checks"].update(
            {
                "ours-compact / tp-compact (ABAB paired, wall)": v["ours-compact"]["x_dense_paired"]
                / v["tp-compact"]["x_dense_paired"],
                "ours-compact / tp-compact (ABAB paired, CPU time)": v["ours-compact"]["x_dense_cpu_paired"]
                / v["tp-compact"]["x_dense_cpu_paired"],
            }
        )
    print(format_train(result), flush=True)
    return result


def format_train(r: dict) -> str:
    lines = [
        (
            f"{r['model']} training step, batch {r['batch']} x 3 x {r['resolution']}^2, ratio {r['ratio']:.4f} "
            f"(multiple {r['multiple']}, {r['macs_reduction']:.3f}x fewer MACs), {r['rounds']} ABAB rounds; "
            f"ours/TP compact shapes identical: {r['shapes_match_tp']}"
        ),
        "",
        (
            "| variant | median ms | min ms | max ms | x dense (medians) | **x dense (ABAB paired)** "
            "| CPU median ms | x dense (CPU time, ABAB paired) |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in r["variants"].items():
        lines.append(
            f"| {k} | {v['median_ms']:.1f} | {v['min_ms']:.1f} | {v['max_ms']:.1f} | {v['x_dense']:.3f} "
            f"| **{v['x_dense_paired']:.3f}** | {v['cpu_median_ms']:.1f} | {v['x_dense_cpu_paired']:.3f} |"
        )
    lines.append("")
    lines += [f"- {k}: **{v:.3f}**" for k, v in r["checks"].items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- section 3
CFG = (
    "prune_config {{ filter_pruner {{ balanced_l2_norm_filter_prune {{ prune_ratio: {ratio} "
    "ascend_optimized: false channel_multiple: {multiple} }} }} }}\n"
)

PROFILED = [  # functions whose cumulative time is reported (file suffix, function name)
    ("api.py", "create_prune_retrain_model"),
    ("api.py", "_check_train_forward"),
    ("api.py", "_forward_matches"),
    ("config.py", "from_file"),
    ("config.py", "resolve"),
    ("record.py", "model_fingerprint"),
    ("pruning.py", "from_config"),
    ("analysis.py", "analyze_coupling"),
    ("tracer.py", "trace_model"),
    ("rules.py", "run"),
    ("pruning.py", "channel_plan_from_specs"),
    ("surgery.py", "drop_breaking_groups"),
    ("surgery.py", "prune_channels"),
    ("pruning.py", "apply"),
    ("pruning.py", "record"),
    ("record.py", "write_record"),
    ("copy.py", "deepcopy"),
]


def create_phases(
    model: nn.Module, x: torch.Tensor, cfg: Path, record: Path
) -> dict[str, tuple[float, float]]:
    """Wall and CPU seconds of each step of ``create_prune_retrain_model``, run step by step as api.py does.

    Mirrors the fast path of ``lightning_prune.api.create_prune_retrain_model`` (no profiler overhead).
    """
    from lightning_prune.api import _check_train_forward, _forward_matches
    from lightning_prune.config import RetrainConfig
    from lightning_prune.coupling import analyze_coupling as analyze
    from lightning_prune.pruning import channel_plan_from_specs
    from lightning_prune.record import model_fingerprint, write_record

    out: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def phase(name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        out[name] = (time.perf_counter() - wall, time.process_time() - cpu)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with phase("RetrainConfig.from_file"):
            config = RetrainConfig.from_file(str(cfg))
        with phase("copy.deepcopy(model)"):
            pruned = copy.deepcopy(model)
        with phase("pre-check: train-mode forward"):
            reference = _check_train_forward("create", pruned, (x,))
        with phase("config.resolve + model_fingerprint"):
            specs = config.resolve(pruned)
            model_fingerprint(pruned)
        with phase("analyze_coupling (eval + train traces)"):
            analysis = analyze(pruned, (x,))
        with phase("channel_plan_from_specs (BalancedL2 scores)"):
            plan = channel_plan_from_specs(pruned, analysis, specs)
        with phase("prune_channels"):
            prune_channels(pruned, analysis, plan)
        with phase("post-check: train-mode forward of the pruned model"):
            assert _forward_matches(pruned, (x,), reference)
        from lightning_prune.pruning import Pruning

        pruning = Pruning(fingerprint=model_fingerprint(model), analysis=analysis, channel_plan=plan)
        with phase("Pruning.record (protobuf message)"):
            rec = pruning.record(pruned)
        with phase("write_record (protobuf text format + atomic write)"):
            write_record(str(record), rec)
    return out


def create_section(args: argparse.Namespace) -> dict:
    from lightning_prune.api import create_prune_retrain_model

    name = args.create_model
    model = build_model(name)
    x = torch.randn(1, 3, args.resolution, args.resolution)
    tmp = Path(tempfile.mkdtemp(prefix="bench_cp_"))
    cfg = tmp / "prune.cfg"
    cfg.write_text(CFG.format(ratio=args.create_ratio, multiple=args.create_multiple))
    record = tmp / "record.txt"

    def ours() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return create_prune_retrain_model(model, (x,), str(cfg), str(record))

    def theirs() -> nn.Module:  # deep copy (ours does one too) + DependencyGraph build + prune
        m = copy.deepcopy(model)
        tp_pruner(m, x, args.create_ratio, args.create_multiple if args.create_multiple > 1 else None).step()
        return m

    def theirs_no_copy() -> nn.Module:
        m = spare.pop()
        tp_pruner(m, x, args.create_ratio, args.create_multiple if args.create_multiple > 1 else None).step()
        return m

    def ours_before() -> nn.Module:
        """create_prune_retrain_model before the fast path: pre-check, from_config with drop_breaking_groups
        (a deep copy + forward for its reference, a deep copy + prune + forward to test the plan), apply,
        post-check."""
        from lightning_prune.api import _check_train_forward
        from lightning_prune.config import RetrainConfig
        from lightning_prune.pruning import Pruning
        from lightning_prune.record import write_record

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = RetrainConfig.from_file(str(cfg))
            pruned = copy.deepcopy(model)
            _check_train_forward("create", pruned, (x,))
            pruning = Pruning.from_config(pruned, config, (x,))  # check_forward=True: drop_breaking_groups
            pruning.apply(pruned, channel_mode="compact")
            _check_train_forward("create", pruned, (x,))
            write_record(str(record), pruning.record(pruned))
            return pruned

    def forward_train() -> None:  # the unit of work: one train-mode forward of the dense model
        with torch.no_grad():
            fwd_model(x)

    fwd_model = copy.deepcopy(model).train()
    calls: dict[str, Callable[[], object]] = {"ours: create_prune_retrain_model": ours}
    if args.create_legacy:
        calls["ours, flow before the fast path (drop_breaking_groups: +2 forwards, +2 deep copies)"] = (
            ours_before
        )
    if tp is not None:
        spare = [copy.deepcopy(model) for _ in range(args.create_rounds + 2)]
        calls["tp: deepcopy + DependencyGraph + prune"] = theirs
        calls["tp: DependencyGraph + prune (no copy)"] = theirs_no_copy
    t = abab(forward_train, calls, args.create_rounds, 1, 1)
    runs = [create_phases(model, x, cfg, record) for _ in range(args.create_rounds)]
    phases = {k: (med([r[k][0] for r in runs]), med([r[k][1] for r in runs])) for k in runs[0]}
    pruned = ours()
    ours_macs_red = count_macs(model, x) / count_macs(pruned, x)
    tp_macs_red = count_macs(model, x) / count_macs(theirs(), x) if tp is not None else None
    # profile one call
    prof = cProfile.Profile()
    prof.enable()
    ours()
    prof.disable()
    stats = pstats.Stats(prof)
    cumulative = {}
    for (filename, _line, func), (_cc, _nc, _tt, ct, _callers) in stats.stats.items():
        for suffix, fname in PROFILED:
            if func == fname and filename.endswith(suffix):
                key = f"{suffix}:{fname}"
                cumulative[key] = max(cumulative.get(key, 0.0), ct)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(35)
    top_cum = buf.getvalue()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(20)
    top_tot = buf.getvalue()
    result = {
        "model": name,
        "resolution": args.resolution,
        "ratio": args.create_ratio,
        "multiple": args.create_multiple,
        "rounds": args.create_rounds,
        "ours_macs_reduction": ours_macs_red,
        "tp_macs_reduction": tp_macs_red,
        "dense_train_forward_s": {"median": med(t.ref_wall), "min": min(t.ref_wall)},
        "cpu_s": {
            "dense train-mode forward": {"median": med(t.ref_cpu), "min": min(t.ref_cpu)},
            **{k: {"median": med(v), "min": min(v)} for k, v in t.cpu.items()},
        },
        "wall_s": {k: {"median": med(s), "min": min(s), "max": max(s)} for k, s in t.wall.items()},
        # cost in dense train-mode forwards (ABAB: against the forwards just before and after each call)
        "forward_units": {k: med(v) for k, v in t.paired_wall.items()},
        "forward_units_cpu": {k: med(v) for k, v in t.paired_cpu.items()},
        "profile_cumulative_s": dict(sorted(cumulative.items(), key=lambda kv: -kv[1])),
        "profile_top_cumulative": top_cum,
        "profile_top_tottime": top_tot,
        "phases_s": {k: {"wall": w, "cpu": c} for k, (w, c) in phases.items()},
    }
    print(format_create(result), flush=True)
    if args.verbose_profile:
        print(top_cum)
        print(top_tot)
    return result


def format_create(r: dict) -> str:
    units = r["forward_units"]
    ours_key = next(iter(units))
    tp_key = next((k for k in units if k.startswith("tp: deepcopy")), None)
    lines = [
        (
            f"{r['model']} {r['resolution']}x{r['resolution']}, prune_ratio {r['ratio']} channel_multiple "
            f"{r['multiple']} (ours {r['ours_macs_reduction']:.3f}x fewer MACs, TP "
            f"{r['tp_macs_reduction'] or float('nan'):.3f}x), {r['rounds']} ABAB rounds against one dense "
            f"train-mode forward of batch 1 (median {r['dense_train_forward_s']['median']:.3f} s, "
            f"min {r['dense_train_forward_s']['min']:.3f} s)"
        ),
        "",
        (
            "| what | wall median s | wall min s | wall max s | CPU median s "
            "| **cost in dense forwards (ABAB paired)** | x TP | cost in dense forwards (CPU time) | x TP (CPU) |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cpu_units = r["forward_units_cpu"]
    dense_cpu = r["cpu_s"]["dense train-mode forward"]["median"]
    lines.append(
        f"| dense train-mode forward (unit) | {r['dense_train_forward_s']['median']:.3f} "
        f"| {r['dense_train_forward_s']['min']:.3f} | - | {dense_cpu:.3f} | 1.00 | - | 1.00 | - |"
    )
    for k, v in r["wall_s"].items():
        x_tp = f"{units[k] / units[tp_key]:.2f}" if tp_key else "-"
        x_tp_cpu = f"{cpu_units[k] / cpu_units[tp_key]:.2f}" if tp_key else "-"
        lines.append(
            f"| {k} | {v['median']:.3f} | {v['min']:.3f} | {v['max']:.3f} | {r['cpu_s'][k]['median']:.3f} "
            f"| **{units[k]:.2f}** | {x_tp} | {cpu_units[k]:.2f} | {x_tp_cpu} |"
        )
    lines += [
        "",
        f"ours / TP (forward units): {units[ours_key] / units[tp_key]:.2f}" if tp_key else "",
        "",
        "Steps of create_prune_retrain_model, timed one by one without a profiler (medians):",
        "",
        "| step | wall s | CPU s |",
        "|---|---|---|",
        *[f"| {k} | {v['wall']:.3f} | {v['cpu']:.3f} |" for k, v in r["phases_s"].items()],
        (
            f"| **sum** | **{sum(v['wall'] for v in r['phases_s'].values()):.3f}** "
            f"| **{sum(v['cpu'] for v in r['phases_s'].values()):.3f}** |"
        ),
        "",
        "cProfile of one create_prune_retrain_model call (cumulative s, profiler overhead included):",
        "",
        "| function | cumulative s |",
        "|---|---|",
    ]
    lines += [f"| {k} | {v:.3f} |" for k, v in r["profile_cumulative_s"].items()]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- main
def parse_round_to(text: str) -> list[int | None]:
    return [None if t in ("none", "None", "0", "1") else int(t) for t in text.split(",") if t]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS} (default: all)")
    p.add_argument("--models", default="resnet18,resnet50,mobilenet_v2", help="latency: torchvision models")
    p.add_argument("--batches", default="1,8", help="latency: batch sizes")
    p.add_argument("--resolution", type=int, default=224, help="input H=W for latency and create")
    p.add_argument("--target", type=float, default=2.0, help="target MACs reduction (dense/pruned)")
    p.add_argument(
        "--multiples",
        default="1,8,16",
        help="ours: channel_multiple variants; a 'down' suffix (16down) rounds kept channels down instead of up "
        "(an experiment run by the benchmark, not a lightning_prune option)",
    )
    p.add_argument("--tp-round-to", default="none,8,16", help="TP: round_to variants ('none' = unaligned)")
    p.add_argument("--bisect-iters", type=int, default=12, help="bisection steps on the ratio")
    p.add_argument("--rounds", type=int, default=15, help="latency: ABAB timing rounds")
    p.add_argument(
        "--iters", type=int, default=1, help="latency: at least this many forwards per timed sample"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first")
    p.add_argument(
        "--min-sample-s",
        type=float,
        default=0.25,
        help="latency: raise --iters so one timed sample of the dense model lasts at least this long",
    )
    p.add_argument(
        "--ratios-from",
        type=Path,
        default=None,
        help="latency: reuse the ratios found by bisection in this earlier --out JSON (MACs are measured again)",
    )
    p.add_argument("--train-model", default="resnet50")
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-resolution", type=int, default=224)
    p.add_argument(
        "--train-configs",
        default="1:0.296875,8:0.25",
        help="comma list of MULTIPLE:RATIO (ours channel_multiple = TP round_to, 1 = unaligned; RATIO "
        "'auto' = bisect to --target). The defaults make ours and TP prune to identical shapes on "
        "ResNets (every width is a multiple of 64, so C*(1-ratio) is exact and aligned).",
    )
    p.add_argument("--train-rounds", type=int, default=12)
    p.add_argument("--create-model", default="resnet50")
    p.add_argument("--create-ratio", type=float, default=0.3)
    p.add_argument("--create-multiple", type=int, default=8)
    p.add_argument("--create-rounds", type=int, default=5)
    p.add_argument(
        "--create-legacy",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the create flow as it was before the fast path (A/B in the same run)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads (default: torch's default, left alone)",
    )
    p.add_argument("--verbose-profile", action="store_true", help="print the full cProfile tables")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: resnet18 only, batch 1, 3 rounds, train resnet18 batch 2 at 112, create resnet18",
    )
    p.add_argument("--out", type=Path, default=None, help="write all results as JSON here")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.rounds, args.iters, args.warmup = "resnet18", "1", 3, 1, 1
        args.multiples, args.tp_round_to, args.bisect_iters = "1,8", "none,8", 8
        args.train_model, args.train_batch, args.train_resolution, args.train_rounds = "resnet18", 2, 112, 3
        args.train_configs = "1:0.296875"
        args.create_model, args.create_rounds = "resnet18", 2
    sections = [s for s in args.sections.split(",") if s]
    if unknown := set(sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    args.multiples = [m for m in args.multiples.split(",") if m]
    args.tp_round_to = parse_round_to(args.tp_round_to)
    args.ratio_cache = {}
    if args.ratios_from is not None:
        for row in json.loads(args.ratios_from.read_text()).get("latency", []):
            args.ratio_cache.setdefault(row["model"], {})[row["variant"]] = row["ratio"]
    args.train_configs = [
        (int(m), None if r == "auto" else float(r))
        for m, r in (c.split(":") for c in args.train_configs.split(",") if c)
    ]
    if tp is None:
        print("torch_pruning is not installed: TP variants are skipped", file=sys.stderr)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    report: dict = {
        "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
        "argv": sys.argv[1:] if argv is None else argv,
        "torch": torch.__version__,
        "torch_pruning": getattr(tp, "__version__", None),
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "processor": platform.processor(),
    }
    print(
        f"torch {report['torch']}, torch_pruning {report['torch_pruning']}, {report['threads']} threads, "
        f"{report['cpus']} CPUs, OMP_WAIT_POLICY={report['OMP_WAIT_POLICY']}",
        flush=True,
    )
    if "latency" in sections:
        report["latency"] = latency_section(args)
    if "train" in sections:
        report["train"] = train_section(args)
    if "create" in sections:
        report["create"] = create_section(args)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
