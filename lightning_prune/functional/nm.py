"""N:M structured-sparsity masks: keep the ``n`` largest ``|w|`` in every ``m`` consecutive weights.

Pure tensor functions: no modules, no state, no I/O.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["nm_mask", "nm_mask_is_valid"]


def _check_pattern(n: int, m: int) -> None:
    if not (isinstance(n, int) and isinstance(m, int) and 0 < n < m):
        raise ValueError(
            f"N:M pattern n={n!r}, m={m!r} is invalid: need integers with 0 < n < m (e.g. n=2, m=4)."
        )


def nm_mask(weight: Tensor, n: int, m: int, axis: int) -> Tensor:
    """Boolean keep-mask with the ``n`` largest-magnitude weights of every ``m`` consecutive ones along ``axis``.

    Groups run along ``axis`` (the input-channel axis: 1 for ``Conv2d``/``Linear`` weights, 0 for
    ``ConvTranspose2d``) for every fixed index of the other axes. When the axis length is not a
    multiple of ``m`` the last group is partial: it is padded with slots that count as smaller than
    any real weight, so a partial group of ``r`` weights keeps ``min(r, n)`` of them.

    Args:
        weight: the weight tensor (any floating dtype, any number of dims).
        n: weights kept per group.
        m: group length.
        axis: the axis groups run along.

    Returns:
        A ``torch.bool`` tensor shaped like ``weight``; ``True`` marks a kept weight.

    Raises:
        ValueError: if the pattern is not ``0 < n < m`` or ``axis`` is out of range.

    Example:
        >>> w = torch.tensor([[0.1, -0.9, 0.3, 0.0, 5.0, 4.0, -6.0, 1.0]])
        >>> nm_mask(w, n=2, m=4, axis=1).int().tolist()
        [[0, 1, 1, 0, 1, 0, 1, 0]]
    """
    _check_pattern(n, m)
    if not -weight.dim() <= axis < weight.dim():
        raise ValueError(f"axis={axis} is out of range for a weight of shape {tuple(weight.shape)}.")
    magnitudes = weight.detach().abs().movedim(axis, -1)
    length = magnitudes.shape[-1]
    padded_length = -(-length // m) * m
    if padded_length != length:
        # -1 is below every |w|, so padding slots are the first to be dropped.
        magnitudes = torch.nn.functional.pad(magnitudes, (0, padded_length - length), value=-1.0)
    groups = magnitudes.reshape(*magnitudes.shape[:-1], padded_length // m, m)
    keep_index = groups.topk(n, dim=-1, sorted=False).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep_index, True)
    keep = keep.reshape(*magnitudes.shape[:-1], padded_length)[..., :length]
    return keep.movedim(-1, axis).contiguous()


def nm_mask_is_valid(mask: Tensor, n: int, m: int, axis: int) -> bool:
    """Whether every full group of ``m`` along ``axis`` keeps at most ``n`` weights (partial group: at most ``n`` too).

    Example:
        >>> nm_mask_is_valid(torch.tensor([[True, False, True, False]]), n=2, m=4, axis=1)
        True
    """
    _check_pattern(n, m)
    moved = mask.movedim(axis, -1).to(torch.int64)
    length = moved.shape[-1]
    padded_length = -(-length // m) * m
    moved = torch.nn.functional.pad(moved, (0, padded_length - length))
    kept_per_group = moved.reshape(*moved.shape[:-1], padded_length // m, m).sum(-1)
    return bool((kept_per_group <= n).all())
