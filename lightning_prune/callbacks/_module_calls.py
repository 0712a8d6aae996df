"""Calling a LightningModule's own steps outside Lightning's loops, from the callbacks' ``setup``.

The search scores channels with ``training_step`` and the retrain callback validates the model
before pruning with ``validation_step``; Lightning cannot run its loops from inside ``fit``'s
setup. :func:`redirected_logging` keeps such calls from logging into the run (and resets the
module's metrics afterwards); :func:`validation_metrics` collects what ``validation_step`` logs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["redirected_logging", "samples_in", "validation_metrics"]


def samples_in(batch: Any) -> int:
    """Samples in a batch: dim 0 of its first tensor (1 if it holds no tensor)."""
    tensors = [t for t in tree_flatten(batch)[0] if isinstance(t, Tensor) and t.dim() > 0]
    return tensors[0].shape[0] if tensors else 1


@contextlib.contextmanager
def redirected_logging(
    pl_module: pl.LightningModule, log: Callable[..., None] | None = None
) -> Iterator[None]:
    """Inside: ``self.log``/``self.log_dict`` call ``log(name, value, **kwargs)`` (default: do nothing).

    Afterwards the module's own methods are back and every ``torchmetrics.Metric`` it holds is
    reset, so steps run inside leave no trace in the run's logs or metric states.
    """
    record = log or (lambda *args, **kwargs: None)

    def log_dict(values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in values.items():
            record(name, value, *args, **kwargs)

    pl_module.log, pl_module.log_dict = record, log_dict  # instance attributes shadow the methods
    try:
        yield
    finally:
        for name in ("log", "log_dict"):
            vars(pl_module).pop(name, None)
        for module in pl_module.modules():
            if isinstance(module, torchmetrics.Metric):
                module.reset()


def _batch_limit(limit: float, loader: Any) -> float:
    """Batches to run under ``Trainer(limit_val_batches=limit)``."""
    if isinstance(limit, int):
        return limit
    try:
        total = len(loader)
    except TypeError:  # an iterable dataset: no length, the fraction cannot apply
        return 0 if limit == 0 else math.inf
    return max(1, int(total * limit)) if limit > 0 else 0


def validation_metrics(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
    """What ``validation_step`` logs over the validation data, for the model as it is now.

    Returns an empty dict when there is nothing to validate (no ``validation_step``, no single
    validation dataloader, or ``limit_val_batches=0``).
    """
    source = trainer.datamodule if trainer.datamodule is not None else pl_module
    if not (is_overridden("validation_step", pl_module) and is_overridden("val_dataloader", source)):
        return {}
    loader = source.val_dataloader()
    limit = _batch_limit(trainer.limit_val_batches, loader)
    if not isinstance(loader, torch.utils.data.DataLoader) or limit == 0:
        return {}
    sums: dict[str, list[float]] = {}  # name -> [weighted sum, weight]
    metrics: dict[str, torchmetrics.Metric] = {}
    current = {"size": 1}

    def log(name: str, value: Any, *args: Any, batch_size: int | None = None, **kwargs: Any) -> None:
        if isinstance(value, torchmetrics.Metric):
            metrics[name] = value
            return
        weight = batch_size or current["size"]
        entry = sums.setdefault(name, [0.0, 0.0])
        entry[0] += float(value) * weight
        entry[1] += weight

    flags = [(m, m.training) for m in pl_module.modules()]
    pl_module.eval()
    try:
        with redirected_logging(pl_module, log), torch.no_grad():
            for index, batch in enumerate(loader):
                if index >= limit:
                    break
                current["size"] = samples_in(batch)
                pl_module.validation_step(
                    pl_module.transfer_batch_to_device(batch, pl_module.device, 0), index
                )
            results = {name: total / weight for name, (total, weight) in sums.items() if weight}
            for name, metric in metrics.items():  # computed before redirected_logging resets them
                value = metric.compute()
                if isinstance(value, Tensor) and value.numel() == 1:
                    results[name] = float(value)
    finally:
        for module, flag in flags:
            module.training = flag
    return results
