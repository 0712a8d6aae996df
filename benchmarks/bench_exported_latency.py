"""CPU latency, MACs and parameters of the main recipe's dense and exported pruned SmallResNet.

Reads the dense checkpoint of ``recipes/dense_fashion_mnist.yaml`` and the export of
``recipes/search_channel_prune_fashion_mnist.yaml`` (``model_state_dict.pt`` + ``prune_record.txt``,
rebuilt from a fresh SmallResNet with ``restore_prune_retrain_model``; ``model.onnx`` is checked
against it). Times torch eval (``inference_mode``, default threads) and onnxruntime (default
session) at each batch size, ABAB-interleaved: dense, pruned, dense, ..., dense; every sample is
>= ``--min-sample-s`` of back-to-back calls. Reports medians and the median of paired ratios
(pruned / mean of its two neighbouring dense samples). At batch 1 ORT runs the exported
``model.onnx`` against a dense ONNX made here the same way (``export_onnx``, fixed batch); at
other batch sizes both are re-exported here with that fixed batch.

Usage::

    python benchmarks/bench_exported_latency.py --out results/main_recipe.json \
        --extra dense_test_acc=0.9 --extra pruned_test_acc=0.9   # numbers merged into the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: shared-CPU timing

import onnxruntime as ort
import torch

from lightning_prune import export_onnx, restore_prune_retrain_model
from lightning_prune.demos import FashionMNISTDataModule, SmallResNet
from lightning_prune.search import count_macs

RECIPE_OUT = "outputs/search_channel_prune_fashion_mnist"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--dense-ckpt", default="outputs/dense_fashion_mnist/checkpoints/last.ckpt")
    add("--export-dir", default=f"{RECIPE_OUT}/export", help="dir written by lightning-prune export")
    add("--cfg", default=f"{RECIPE_OUT}/searched_prune.cfg", help="the searched retrain .cfg")
    add("--data-dir", default="/usr/share/datasets/fashion-mnist", help="'' skips the test accuracy")
    add("--batch-sizes", type=int, nargs="+", default=[1, 128])
    add("--pairs", type=int, default=15, help="pruned samples per backend and batch size")
    add("--min-sample-s", type=float, default=0.2, help="minimum duration of one sample")
    add("--extra", action="append", default=[], metavar="KEY=VALUE", help="merged into the JSON; repeatable")
    add("--out", default="results/main_recipe.json", help="JSON to update ('' to skip)")
    return parser.parse_args(argv)


def load_models(args: argparse.Namespace, example: torch.Tensor) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The dense network of the Lightning checkpoint and the exported compact one, both in eval mode."""
    dense = SmallResNet()
    state = torch.load(args.dense_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    dense.load_state_dict({k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")})
    export = Path(args.export_dir)
    pruned = restore_prune_retrain_model(
        SmallResNet(),
        (example,),
        str(export / "prune_record.txt"),
        args.cfg,
        str(export / "model_state_dict.pt"),
    )
    return dense.eval(), pruned.eval()


def sample(run, n: int) -> float:
    """Seconds per call of ``run``, averaged over ``n`` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(n):
        run()
    return (time.perf_counter() - start) / n


def calls_for(run, min_s: float) -> int:
    """Warm up ``run``, then the number of calls that lasts at least ``min_s``."""
    n = 1
    while (t := sample(run, n)) * n < min_s:
        n = max(n * 2, int(n * min_s / max(t * n, 1e-9) * 1.2))
    return n


def abab(dense_run, pruned_run, pairs: int, min_s: float) -> dict:
    """Interleave D P D P ... D samples; medians and the median of pruned / mean(neighbouring dense)."""
    n_dense, n_pruned = calls_for(dense_run, min_s), calls_for(pruned_run, min_s)
    dense_s, pruned_s = [sample(dense_run, n_dense)], []
    for _ in range(pairs):
        pruned_s.append(sample(pruned_run, n_pruned))
        dense_s.append(sample(dense_run, n_dense))
    ratios = [p / ((a + b) / 2) for p, a, b in zip(pruned_s, dense_s, dense_s[1:], strict=False)]
    return {
        "dense_ms": round(statistics.median(dense_s) * 1e3, 4),
        "pruned_ms": round(statistics.median(pruned_s) * 1e3, 4),
        "ratio_pruned_over_dense": round(statistics.median(ratios), 4),
        "speedup": round(1 / statistics.median(ratios), 3),
        "ratio_min_max": [round(min(ratios), 4), round(max(ratios), 4)],
        "calls_per_sample": {"dense": n_dense, "pruned": n_pruned},
        "samples": {"dense": len(dense_s), "pruned": len(pruned_s)},
    }


def ort_session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_accuracy(data_dir: str, models: dict, exported_onnx: Path) -> dict:
    """Top-1 accuracy on the 10k test images: the rebuilt torch models and the exported model.onnx."""
    data = FashionMNISTDataModule(data_dir)
    data.setup("test")
    images, labels = data.test_dataset.tensors
    with torch.inference_mode():
        preds = {k: torch.cat([m(x).argmax(1) for x in images.split(500)]) for k, m in models.items()}
    session = ort_session(exported_onnx)  # fixed batch 1, as exported
    preds["pruned_exported_onnx"] = torch.tensor(
        [session.run(None, {"x": x[None].numpy()})[0].argmax() for x in images]
    )
    return {k: round(float((p == labels).float().mean()), 4) for k, p in preds.items()}


def time_batch(dense, pruned, exported_onnx: Path, batch: int, scratch: str, args) -> tuple[dict, dict]:
    """ABAB timings of torch and of onnxruntime at one batch size."""
    x = torch.randn(batch, 1, 28, 28)
    with torch.inference_mode():
        torch_times = abab(partial(dense, x), partial(pruned, x), args.pairs, args.min_sample_s)
    dense_onnx = export_onnx(dense, Path(scratch) / f"dense_b{batch}.onnx", (x,))
    pruned_onnx = exported_onnx if batch == 1 else export_onnx(pruned, Path(scratch) / f"p{batch}.onnx", (x,))
    feed = {"x": x.numpy()}
    runs = [partial(ort_session(path).run, None, feed) for path in (dense_onnx, pruned_onnx)]
    ort_times = abab(*runs, args.pairs, args.min_sample_s)
    print(f"batch {batch}:\n  torch {torch_times}\n  onnxruntime {ort_times}", flush=True)
    return torch_times, ort_times


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.manual_seed(0)
    example = torch.randn(1, 1, 28, 28)
    dense, pruned = load_models(args, example)
    exported_onnx = Path(args.export_dir) / "model.onnx"
    with torch.inference_mode():  # the exported ONNX must compute what the rebuilt torch model does
        onnx_out = torch.from_numpy(ort_session(exported_onnx).run(None, {"x": example.numpy()})[0])
        onnx_diff = float((onnx_out - pruned(example)).abs().max())
    models = {"dense": dense, "pruned": pruned}
    result = {
        "command": " ".join(["python benchmarks/bench_exported_latency.py", *(argv or sys.argv[1:])]),
        "dense_ckpt": args.dense_ckpt,
        "export_dir": args.export_dir,
        "params": {k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        "macs_per_sample": {k: int(count_macs(m, example)) for k, m in models.items()},
        "exported_onnx_max_abs_diff_vs_torch": onnx_diff,
        "torch": {},
        "onnxruntime": {},
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": ort.__version__,
            "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        },
    }
    if args.data_dir:
        result["test_acc_of_benchmarked_models"] = test_accuracy(args.data_dir, models, exported_onnx)
    print({k: result.get(k) for k in ("params", "macs_per_sample", "test_acc_of_benchmarked_models")})
    with tempfile.TemporaryDirectory() as scratch:
        for batch in args.batch_sizes:
            timings = time_batch(dense, pruned, exported_onnx, batch, scratch, args)
            result["torch"][f"b{batch}"], result["onnxruntime"][f"b{batch}"] = timings
    result["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    for key, _, value in (item.partition("=") for item in args.extra):
        try:
            result[key] = json.loads(value)
        except json.JSONDecodeError:
            result[key] = value
    if args.out:
        out = Path(args.out)
        previous = json.loads(out.read_text()) if out.exists() else {}
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({**previous, **result}, indent=2) + "\n")
        print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
