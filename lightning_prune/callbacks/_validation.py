"""Validation metrics of the model as it is now, outside Lightning's loops (used before pruning).

Lightning cannot run a validation loop from inside ``fit``'s setup, where the pruning callbacks
change the model; so :func:`validation_metrics` calls the LightningModule's own
``validation_step`` over the validation dataloader and collects what it logs: values logged with
``self.log``/``self.log_dict`` are averaged over batches (weighted by batch size), and logged
``torchmetrics`` objects are computed once at the end. The module's training flags and its
metrics' states are restored afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
import torchmetrics
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from torch.utils._pytree import tree_flatten

__all__ = ["validation_metrics"]


def _batch_size(batch: Any) -> int:
    tensors = [t for t in tree_flatten(batch)[0] if isinstance(t, Tensor) and t.dim() > 0]
    return tensors[0].shape[0] if tensors else 1


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

    def log_dict(values: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        for name, value in values.items():
            log(name, value, *args, **kwargs)

    flags = [(m, m.training) for m in pl_module.modules()]
    pl_module.eval()
    pl_module.log, pl_module.log_dict = log, log_dict  # instance attributes shadow the methods
    try:
        with torch.no_grad():
            for index, batch in enumerate(loader):
                if index >= limit:
                    break
                current["size"] = _batch_size(batch)
                pl_module.validation_step(
                    pl_module.transfer_batch_to_device(batch, pl_module.device, 0), index
                )
        results = {name: total / weight for name, (total, weight) in sums.items() if weight}
        for name, metric in metrics.items():
            value = metric.compute()
            if isinstance(value, Tensor) and value.numel() == 1:
                results[name] = float(value)
    finally:
        for name in ("log", "log_dict"):
            vars(pl_module).pop(name, None)
        for module in pl_module.modules():
            if isinstance(module, torchmetrics.Metric):
                module.reset()
        for module, flag in flags:
            module.training = flag
    return results
