"""BatchNorm recalibration: fresh running statistics for a pruned model, before any retraining.

Removing channels changes what every BatchNorm sees; its running mean and variance still
describe the dense model. Re-estimating them on a few batches (no gradient step) turns a
pruned model that sits near chance into a usable one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["recalibrate_batchnorm"]


def _inputs_of(batch: Any) -> tuple:
    if isinstance(batch, torch.Tensor):
        return (batch,)
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        return (batch[0],)
    raise TypeError(
        f"recalibrate_batchnorm: a batch must be a tensor or an (inputs, labels, ...) sequence, got "
        f"{type(batch).__name__}. HINT: pass batches of inputs, e.g. [x for x, _ in loader]."
    )


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> int:
    """Re-estimate every BatchNorm's running statistics of ``model`` on ``batches``, in place.

    Statistics are reset and then accumulated as an exact average over the batches (momentum
    ``None``); weights do not change and the model's training flags are restored.

    Args:
        model: the (pruned) model.
        batches: tensors of inputs, or ``(inputs, labels, ...)`` sequences (a DataLoader works).
        max_batches: use at most this many batches.

    Returns:
        The number of batches used (0 when the model has no BatchNorm).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        >>> recalibrate_batchnorm(net, [torch.randn(8, 1, 6, 6) * 3 + 2 for _ in range(4)])
        4
        >>> bool(net[1].running_mean.abs().sum() > 0)
        True
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    flags = [(m, m.training) for m in model.modules()]
    momenta = [(m, m.momentum) for m in norms]
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    used = 0
    try:
        model.eval()
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None  # cumulative average over the batches
            norm.train()
        for batch in batches:
            if max_batches is not None and used >= max_batches:
                break
            model(*(t.to(device) for t in _inputs_of(batch)))
            used += 1
    finally:
        for module, flag in flags:
            module.training = flag
        for norm, momentum in momenta:
            norm.momentum = momentum
    return used
