"""Channel pruning of every torchvision classification model, checked end to end (no per-model code).

For each model of ``torchvision.models.list_models(module=torchvision.models)`` (``weights=None``,
every parameter and the BatchNorm statistics drawn from a seeded generator), at one uniform
prune ratio (BalancedL2, ``multiple=1``):

1. ``analyze_coupling`` (eval- and train-mode forwards) on a ``1x3xSxS`` input (``S`` = 224;
   only if the unpruned model cannot run its train-mode forward at 224, the next crop size of
   its torchvision weights metadata, e.g. 299 for inception_v3);
2. ``balanced_l2_plan`` then ``drop_breaking_groups`` (what ``Pruning.from_config`` does);
3. the masked model (``apply_channel_masks``) and the compact model (``prune_channels``) give the
   same eval-mode output (rtol 1e-3, atol 1e-4 x the output's max magnitude);
4. channels are really removed (fewer parameters);
5. record -> restore: ``plan_to_records`` -> a fresh model (another seed) -> ``analyze_coupling``
   -> ``records_to_plan`` -> ``prune_channels`` -> ``load_state_dict`` of the compact model's
   state dict through ``torch.save``/``torch.load(weights_only=True)`` -> identical outputs;
6. ``export_onnx`` of the compact model (dynamo exporter), run with onnxruntime and compared with
   the compact model (skipped with ``--no-onnx``). The ONNX check runs at a smaller input
   (``--onnx-size``, 64) when the compact model accepts it, else at the analysis size.

A model passes if every step succeeds. A model where nothing is pruned passes only if the engine
gave a reason for every group; it is listed separately as "nothing prunable".

Models are checked in worker processes (``--jobs``, default 2), each model with a time limit; a
worker that crashes or times out is replaced, so one failure does not stop the run (``--fresh``:
a new process for every model). Models above ``--heavy`` parameters (the 300M-650M ViTs and
RegNet) run first, one at a time, for memory. The table is printed and written to
``results/torchvision_zoo.md``.

Usage::

    python benchmarks/torchvision_zoo.py [--no-onnx] [--models resnet18,vgg11] [--jobs 2]
        [--ratio 0.3] [--timeout 1200] [--out results/torchvision_zoo.md] [--json-out rows.json]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import queue
import resource
import select
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ANALYSIS_SIZE = 224


# ----------------------------------------------------------------------------- one model
def input_sizes(name: str) -> list[int]:
    """Input sizes to try, in order: 224, then the crop sizes of the model's torchvision weights.

    A larger size is used only when the unpruned model cannot run its train-mode forward at 224
    (e.g. inception_v3's auxiliary head needs 299): derived from torchvision metadata, no
    per-model code.
    """
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        weights = []
    crops = sorted(
        {
            int(w.transforms.keywords["crop_size"])
            for w in weights
            if "crop_size" in getattr(w.transforms, "keywords", {})
        }
    )
    return [ANALYSIS_SIZE, *[c for c in crops if c > ANALYSIS_SIZE]]


@contextlib.contextmanager
def _skip_torch_init():
    """Make ``torch.nn.init.*_`` no-ops while a model is built (``build`` overwrites every parameter).

    torchvision's own initialisation (``trunc_normal_`` on every ViT/ConvNeXt/Swin weight) takes
    longer than the whole pruning check of a model on a slow CPU.
    """
    import torch

    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def n_params_meta(name: str) -> int:
    """Parameter count from the torchvision weights metadata (0 if unknown), to schedule the big models."""
    import torchvision

    try:
        weights = list(torchvision.models.get_model_weights(name))
    except (ValueError, KeyError):
        return 0
    return max((int(w.meta.get("num_params", 0)) for w in weights), default=0)


def build(name: str, seed: int):
    """The model with ``weights=None`` and seeded random parameters and BatchNorm statistics.

    Every parameter is drawn from one seeded generator: multi-dimensional ones (weights, position
    embeddings, layer scales, ...) ``N(0, 1/fan_in)``, 1-d ``weight`` (norm scales)
    ``U(0.5, 1.5)``, other 1-d parameters (biases) ``N(0, 0.1^2)``; BatchNorm running statistics
    are random too, so that masked == compact is not helped by identity normalisations.
    Buffers that torchvision computes (relative position indices, ...) are kept.
    """
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(seed)
    with warnings.catch_warnings(), _skip_torch_init():
        warnings.simplefilter("ignore")  # googlenet/inception: "init_weights default will change"
        model = torchvision.models.get_model(name, weights=None)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            for pname, p in m.named_parameters(recurse=False):
                if p.dim() > 1:
                    p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / p[0].numel()) ** 0.5)
                elif pname == "weight":
                    p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def close(got, want, rtol: float = 1e-3, atol_rel: float = 1e-4) -> tuple[bool, float]:
    """Whether ``got`` matches ``want`` (atol relative to ``want``'s scale), and the max abs difference."""
    import torch

    if got.shape != want.shape:
        return False, float("inf")
    scale = max(float(want.abs().max()), 1e-12)
    diff = float((got.double() - want.double()).abs().max())
    ok = bool(torch.allclose(got.double(), want.double(), rtol=rtol, atol=atol_rel * scale))
    return ok, diff / scale


def check_model(name: str, ratio: float, onnx: bool, onnx_size: int, workdir: Path) -> dict:
    """Run the whole check on one model; returns a row of the table (``error`` empty on pass)."""
    import torch

    from lightning_prune.coupling import analyze_coupling
    from lightning_prune.proto import PruneRecord
    from lightning_prune.surgery import (
        apply_channel_masks,
        balanced_l2_plan,
        drop_breaking_groups,
        plan_to_records,
        prune_channels,
        records_to_plan,
        remove_channel_masks,
    )

    row: dict = {"model": name, "steps": {}, "error": ""}
    t0 = time.perf_counter()
    step = "build"

    def mark(what: str) -> None:
        nonlocal step, t_step
        now = time.perf_counter()
        row["steps"][step] = round(now - t_step, 2)
        step, t_step = what, now

    t_step = t0
    try:
        model = build(name, seed=0)
        for size in input_sizes(name):
            row["input"] = size
            x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(123))
            mark("analyze")
            analysis = analyze_coupling(model, x)
            row["excluded"] = len(analysis.excluded)
            row["groups"] = len(analysis.groups)
            row["prunable"] = len(analysis.prunable_groups)
            unexplained = [g.id for g in analysis.groups if not g.prunable and not g.reason]
            if unexplained:
                raise AssertionError(f"groups {unexplained[:5]} are not prunable but have no reason")
            mark("plan")
            plan0 = balanced_l2_plan(model, analysis, ratio, multiple=1)
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    plan = drop_breaking_groups(model, analysis, plan0, x)
                break
            except RuntimeError as err:  # the unpruned model cannot run at this size: try the next one
                if "unpruned model fails" not in str(err) or size == input_sizes(name)[-1]:
                    raise
        dropped = sorted(set(plan0) - set(plan))
        row["dropped"] = len(dropped)
        row["dropped_why"] = [
            str(w.message)[:300] for w in caught if "drop_breaking_groups" in str(w.message)
        ][:3]
        row["pruned_groups"] = len(plan)
        if not plan:
            row["nothing_prunable"] = True
            reasons = {}
            for g in analysis.groups:
                reasons[g.reason.split(":")[0][:120]] = reasons.get(g.reason.split(":")[0][:120], 0) + 1
            row["reasons"] = sorted(reasons.items(), key=lambda kv: -kv[1])[:5]
        mark("masked")
        full_params = n_params(model)
        with torch.no_grad():  # masks keep every shape: y_masked has the unpruned model's output shape
            y_masked = apply_channel_masks(model, analysis, plan)(x)
        remove_channel_masks(model, leave_parametrized=False)  # the unmasked weights back
        mark("compact")
        # In place (peak memory of the 600M-parameter models): the unpruned model is not needed any more.
        compact = prune_channels(model, analysis, plan).eval()
        del model
        with torch.no_grad():
            y_compact = compact(x)
        if y_compact.shape != y_masked.shape:
            raise AssertionError(f"compact output shape {tuple(y_compact.shape)} != {tuple(y_masked.shape)}")
        row["params"] = full_params
        row["params_removed_pct"] = round(100.0 * (1 - n_params(compact) / full_params), 2)
        if plan and n_params(compact) >= full_params:
            raise AssertionError("the plan prunes channels but the compact model is not smaller")
        ok, rel = close(y_compact, y_masked)
        row["masked_rel_diff"] = rel
        row["masked_eq_compact"] = ok
        if not ok:
            raise AssertionError(f"masked != compact: max |diff| / max |y| = {rel:.3g}")
        mark("restore")
        blob = PruneRecord(channel_group=plan_to_records(analysis, plan)).SerializeToString()
        state_file = workdir / "compact.pt"
        torch.save(compact.state_dict(), state_file)
        fresh = build(name, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh_analysis = analyze_coupling(fresh, x)
        fresh_plan = records_to_plan(fresh_analysis, PruneRecord.FromString(blob).channel_group)
        if fresh_plan != {g: sorted(int(i) for i in idx) for g, idx in plan.items()}:
            raise AssertionError("records_to_plan on the fresh model gives another plan")
        prune_channels(fresh, fresh_analysis, fresh_plan)
        fresh.load_state_dict(torch.load(state_file, weights_only=True, mmap=True))
        with torch.no_grad():
            y_restored = fresh.eval()(x)
        if not torch.equal(y_restored, y_compact):
            _, rel = close(y_restored, y_compact)
            raise AssertionError(f"restored != compact: max |diff| / max |y| = {rel:.3g}")
        row["restore"] = True
        del fresh, fresh_analysis
        state_file.unlink()
        if onnx:
            mark("onnx")
            row["onnx"] = check_onnx(compact, x, onnx_size, workdir / f"{name}.onnx", row)
        mark("done")
    except Exception as err:  # noqa: BLE001 - the row reports any failure
        row["error"] = f"[{step}] {type(err).__name__}: {err}"[:600]
        row["traceback"] = traceback.format_exc()[-3000:]
        row["steps"][step] = round(time.perf_counter() - t_step, 2)
    row["time"] = round(time.perf_counter() - t0, 1)
    return row


def check_onnx(compact, x, onnx_size: int, path: Path, row: dict) -> bool:
    """Export ``compact`` with ``export_onnx`` and compare onnxruntime's output with the model's."""
    import onnxruntime as ort
    import torch

    from lightning_prune.export import export_onnx

    small = torch.randn(1, 3, onnx_size, onnx_size, generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():
            y_ref = compact(small)
        x_onnx = small
    except Exception:  # noqa: BLE001 - the model needs its analysis size (fixed-size ViTs, ...)
        x_onnx = x
        with torch.no_grad():
            y_ref = compact(x)
    row["onnx_input"] = x_onnx.shape[-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(compact, path, (x_onnx,), input_names=["x"])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    y_onnx = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x_onnx.numpy()})[0])
    for file in path.parent.iterdir():
        file.unlink()
    ok, rel = close(y_onnx, y_ref)
    row["onnx_rel_diff"] = rel
    if not ok:
        raise AssertionError(f"onnxruntime != compact: max |diff| / max |y| = {rel:.3g}")
    return True


def serve(args: argparse.Namespace) -> None:
    """Worker process: check the models named on stdin (``name<TAB>json path`` lines), one at a time."""
    import torch

    torch.set_num_threads(args.threads)
    for line in sys.stdin:
        name, out = line.rstrip("\n").split("\t")
        before = resource.getrusage(resource.RUSAGE_SELF)
        with tempfile.TemporaryDirectory(prefix=f"tvzoo-{name}-") as tmp:
            row = check_model(name, args.ratio, not args.no_onnx, args.onnx_size, Path(tmp))
        after = resource.getrusage(resource.RUSAGE_SELF)
        row["cpu"] = round(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime, 1)
        Path(out).write_text(json.dumps(row))
        gc.collect()
        print(f"@@done {name}", flush=True)


# ----------------------------------------------------------------------------- the driver
class Worker:
    """A ``--serve`` subprocess (imports paid once); killed and replaced on a timeout or crash."""

    def __init__(self, args: argparse.Namespace, threads: int) -> None:
        self.args, self.threads = args, threads
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="tvzoo-worker-", suffix=".log", delete=False)  # noqa: SIM115

    def start(self) -> subprocess.Popen:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--serve",
            "--ratio",
            str(self.args.ratio),
            "--threads",
            str(self.threads),
            "--onnx-size",
            str(self.args.onnx_size),
        ]
        if self.args.no_onnx:
            cmd.append("--no-onnx")
        self.log.seek(0)
        self.log.truncate()
        return subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            bufsize=1,
        )

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def run(self, name: str) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self.proc = self.start()
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = Path(f.name)
        t0 = time.perf_counter()
        deadline = t0 + self.args.timeout
        row = None
        try:
            self.proc.stdin.write(f"{name}\t{out}\n")
            self.proc.stdin.flush()
            while row is None:
                left = deadline - time.perf_counter()
                ready, _, _ = select.select([self.proc.stdout], [], [], max(left, 0))
                if not ready:
                    self.stop()
                    row = {"model": name, "error": f"timed out after {self.args.timeout} s"}
                    break
                line = self.proc.stdout.readline()
                if not line:  # the worker died (out of memory, segfault, ...)
                    code = self.proc.wait()
                    self.proc = None
                    tail = " | ".join(
                        Path(self.log.name).read_text(errors="replace").strip().splitlines()[-3:]
                    )
                    row = {"model": name, "error": f"worker died (exit code {code}): {tail}"[:600]}
                elif line.startswith(f"@@done {name}"):
                    row = json.loads(out.read_text())
        except (BrokenPipeError, OSError) as err:
            self.stop()
            row = {"model": name, "error": f"worker failed: {err}"}
        finally:
            out.unlink(missing_ok=True)
        if self.args.fresh:
            self.stop()
        row.setdefault("time", round(time.perf_counter() - t0, 1))
        return row


def run_all(names: list[str], args: argparse.Namespace, threads: int, report) -> dict[str, dict]:
    """Check ``names``; ``report(row, done)`` is called as each finishes.

    Models above ``--heavy`` parameters run first, one at a time with every thread (two of them
    side by side could exhaust the memory); then the rest on ``--jobs`` workers.
    """
    heavy = [n for n in names if n_params_meta(n) > args.heavy]
    light = [n for n in names if n not in heavy]
    rows: dict[str, dict] = {}
    lock = threading.Lock()

    def loop(todo: queue.Queue, n_threads: int) -> None:
        worker = Worker(args, n_threads)
        try:
            while True:
                try:
                    name = todo.get_nowait()
                except queue.Empty:
                    return
                row = worker.run(name)
                with lock:
                    rows[name] = row
                    report(row, len(rows))
        finally:
            worker.stop()
            Path(worker.log.name).unlink(missing_ok=True)

    for batch, jobs in ((heavy, 1), (light, args.jobs)):
        todo: queue.Queue[str] = queue.Queue()
        for n in batch:
            todo.put(n)
        n_threads = threads * args.jobs // jobs
        pool = [threading.Thread(target=loop, args=(todo, n_threads)) for _ in range(min(jobs, len(batch)))]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return rows


def status(row: dict) -> str:
    if row.get("error"):
        return "FAIL"
    return "nothing prunable" if row.get("nothing_prunable") else "pass"


def yes(flag: object) -> str:
    return "yes" if flag is True else ("—" if flag is None else "no")


def table(rows: list[dict], args: argparse.Namespace, total_s: float, cpu_s: float) -> str:
    import torch
    import torchvision

    n_pass = sum(status(r) != "FAIL" for r in rows)
    nothing = [r["model"] for r in rows if status(r) == "nothing prunable"]
    failed = [r["model"] for r in rows if status(r) == "FAIL"]
    command = "python benchmarks/torchvision_zoo.py" + (" --no-onnx" if args.no_onnx else "")
    onnx = (
        "ONNX export (`lightning_prune.export.export_onnx`, dynamo exporter) of the compact model, run with "
        f"onnxruntime (at {args.onnx_size}x{args.onnx_size} where the compact model accepts that size, else at "
        "the analysis size; the export cost does not depend on the size)."
        if not args.no_onnx
        else "ONNX skipped (`--no-onnx`)."
    )
    lines = [
        "# Channel pruning of the torchvision classification zoo",
        "",
        f"**{n_pass} of {len(rows)} pass**"
        + (f" ({len(nothing)} of them with nothing prunable: {', '.join(nothing)})" if nothing else "")
        + (f"; failing: {', '.join(failed)}" if failed else "")
        + ".",
        "",
        (
            f"Every model of `torchvision.models.list_models(module=torchvision.models)` (torchvision "
            f"{torchvision.__version__}: {len(rows)} models), `weights=None`, parameters and BatchNorm statistics "
            f"drawn from a seeded generator; uniform prune ratio {args.ratio} (BalancedL2, multiple=1). No per-model "
            "code: the input is 1x3x224x224, or the next crop size of the model's torchvision weights metadata when "
            "the unpruned model cannot run its train-mode forward at 224 (inception_v3: 299). Per model:"
        ),
        "",
        "1. `analyze_coupling` (eval- and train-mode forwards);",
        "2. `balanced_l2_plan` -> `drop_breaking_groups` (as `Pruning.from_config`);",
        (
            "3. masked model (`apply_channel_masks`) == compact model (`prune_channels`) in eval mode "
            "(rtol 1e-3, atol 1e-4 x max|y|);"
        ),
        "4. fewer parameters;",
        (
            "5. `plan_to_records` -> fresh model (other seed) -> `analyze_coupling` -> `records_to_plan` -> "
            "`prune_channels` -> `load_state_dict(torch.load(..., weights_only=True))` of the compact model's "
            "state dict -> bit-identical output;"
        ),
        f"6. {onnx}",
        "",
        (
            "A model passes when every step succeeds; one where nothing is pruned passes only if the engine gives a "
            "reason for every group (listed separately)."
        ),
        "",
        (
            f"Run: `{command}` (or `nox -s torchvision_zoo`), torch {torch.__version__}, Python "
            f"{platform.python_version()}, {os.cpu_count()} CPUs shared with other jobs, {args.jobs} worker(s); "
            f"**total {total_s / 60:.1f} min wall, {cpu_s / 60:.1f} min CPU** in the workers."
        ),
        "",
        (
            "Columns: *groups* = prunable / total channel groups of the analysis; *pruned* = groups pruned after "
            "`drop_breaking_groups` (in brackets: groups it dropped because the pruned model failed its train-mode "
            "forward); *params -%* = parameters removed; *in* = input size of the analysis / of the ONNX check; "
            "*time* = wall seconds, *cpu* = CPU seconds of the model's check."
        ),
        "",
        (
            "| model | status | groups prunable/total | pruned (dropped) | params -% | masked==compact | restore | onnx "
            "| in | time s | cpu s | error |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        groups = f"{r['prunable']}/{r['groups']}" if "groups" in r else "—"
        pruned = f"{r['pruned_groups']} ({r['dropped']})" if "pruned_groups" in r else "—"
        pct = f"{r['params_removed_pct']:.1f}" if "params_removed_pct" in r else "—"
        onnx_ok = "skipped" if args.no_onnx and not r.get("error") else yes(r.get("onnx"))
        size = f"{r.get('input', '—')}" + (f" / {r['onnx_input']}" if "onnx_input" in r else "")
        err = (r.get("error") or "").replace("|", "\\|").replace("\n", " ")[:200]
        lines.append(
            f"| {r['model']} | {status(r)} | {groups} | {pruned} | {pct} | {yes(r.get('masked_eq_compact'))} "
            f"| {yes(r.get('restore'))} | {onnx_ok} | {size} | {r.get('time', '—')} | {r.get('cpu', '—')} | {err} |"
        )
    n_groups = sum(r.get("groups", 0) for r in rows)
    n_prunable = sum(r.get("prunable", 0) for r in rows)
    lines += ["", f"Over all models: {n_prunable} of {n_groups} channel groups prunable."]
    dropped = [r for r in rows if r.get("dropped")]
    if dropped:
        lines += ["", "## Groups dropped by the train-mode forward check", ""]
        for r in dropped:
            why = r["dropped_why"][0] if r.get("dropped_why") else ""
            lines.append(f"* {r['model']}: {r['dropped']} group(s); e.g. {why}")
    if nothing:
        lines += ["", "## Nothing prunable", ""]
        for r in rows:
            if status(r) == "nothing prunable":
                lines.append(f"* {r['model']}: {r.get('reasons')}")
    if failed:
        lines += ["", "## Failures", ""]
        for r in rows:
            if status(r) == "FAIL":
                lines.append(f"* {r['model']}: {r['error']}")
    lines += ["", f"**{n_pass} of {len(rows)} pass**", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--models", default="", help="comma-separated subset (default: every classification model)"
    )
    parser.add_argument("--ratio", type=float, default=0.3)
    parser.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    parser.add_argument(
        "--onnx-size", type=int, default=64, help="ONNX check input size where the model accepts it"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="models checked in parallel, one worker process each (default: 2)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per job (default: CPUs / jobs)")
    parser.add_argument("--timeout", type=int, default=1200, help="seconds per model")
    parser.add_argument(
        "--heavy",
        type=float,
        default=250e6,
        help="models with more parameters run alone, before the others (memory)",
    )
    parser.add_argument("--out", default=str(ROOT / "results" / "torchvision_zoo.md"))
    parser.add_argument("--json-out", default="", help="also write the raw rows as JSON")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="a new worker process for every model (slower: imports are paid per model)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return

    import torchvision

    names = sorted(torchvision.models.list_models(module=torchvision.models))
    if args.models:
        wanted = args.models.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown models: {unknown}")
        names = [n for n in names if n in wanted]
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    print(
        f"{len(names)} torchvision classification models, {args.jobs} job(s) x {threads} thread(s)",
        flush=True,
    )
    t0 = time.perf_counter()

    def report(r: dict, done: int) -> None:
        extra = (
            f" groups {r.get('prunable')}/{r.get('groups')} pruned {r.get('pruned_groups')} "
            f"(dropped {r.get('dropped')}) params -{r.get('params_removed_pct')}%"
        )
        print(
            f"[{done:3d}/{len(names)}] {r['model']:<24} {status(r):<16} {r.get('time')}s{extra} "
            f"{r.get('steps', '')} {r.get('error', '')}",
            flush=True,
        )

    rows = run_all(names, args, threads, report)
    total = time.perf_counter() - t0
    ordered = [rows[n] for n in names]
    text = table(ordered, args, total, sum(r.get("cpu", 0) for r in ordered))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(ordered, indent=1))
    print(text)
    n_pass = sum(status(r) != "FAIL" for r in ordered)
    print(f"{n_pass} of {len(ordered)} pass in {total / 60:.1f} min")
    sys.exit(0 if n_pass == len(ordered) else 1)


if __name__ == "__main__":
    main()
