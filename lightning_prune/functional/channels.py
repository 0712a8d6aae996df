"""Channel selection math (pure tensor functions): BalancedL2Norm scores, kept counts, selection."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def balanced_l2_scores(weights: list[Tensor]) -> Tensor:
    """BalancedL2Norm channel scores of a group, combining every producer.

    Per producer: the L2 norm of each output channel's weights divided by the number of weights
    per channel, min-max normalised to ``[0, 1]`` (all zeros when every channel scores the same).
    A group with several producers (e.g. a residual stream) averages the normalised scores of
    all producers, rather than letting the first producer decide.

    Args:
        weights: One weight tensor per producer, output channels on dim 0, all with the same
            number of output channels.

    Returns:
        A float tensor of shape ``[channels]``; higher means more important.

    Raises:
        ValueError: If ``weights`` is empty or the producers disagree on the channel count.

    Example:
        >>> w = torch.tensor([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
        >>> balanced_l2_scores([w])
        tensor([1., 0., 0.])
        >>> balanced_l2_scores([w, w.flip(0)])
        tensor([0.5000, 0.0000, 0.5000])
    """
    if not weights:
        raise ValueError("balanced_l2_scores: expected at least one producer weight, got none.")
    channels = {w.shape[0] for w in weights}
    if len(channels) != 1:
        raise ValueError(
            f"balanced_l2_scores: producers disagree on output channels: {sorted(channels)}. "
            "HINT: pass the weights of one channel group only."
        )
    scores = []
    for w in weights:
        flat = w.detach().reshape(w.shape[0], -1).float()
        s = flat.norm(p=2, dim=1) / flat.shape[1]
        span = s.max() - s.min()
        scores.append((s - s.min()) / span if span > 0 else torch.zeros_like(s))
    return torch.stack(scores).mean(0)


def channels_to_keep(channels: int, prune_ratio: float, multiple: int = 1, group: int = 1) -> int:
    """Number of channels kept, by AMCT's rule with its quirks fixed.

    ``kept = C - round(C * ratio)``; then rounded up to a multiple of ``multiple`` (16 for
    ``ascend_optimized``); then rounded down to a multiple of ``group`` (so every grouped-conv
    slice keeps the same count). Never zero, never more than ``C``.

    Args:
        channels: Channels in the group, ``C``.
        prune_ratio: Fraction to remove, in ``[0, 1)``.
        multiple: Round the kept count up to a multiple of this (hardware alignment).
        group: Grouped-conv slices; the kept count is a multiple of it.

    Returns:
        The kept count, in ``[1, C]``: a multiple of ``group``, and of ``multiple`` unless that
        would need more than ``C`` channels.

    Raises:
        ValueError: On a ratio outside ``[0, 1)``, a non-positive multiple or group, or ``C``
            not divisible by ``group``.

    Example:
        >>> channels_to_keep(20, 0.25), channels_to_keep(20, 0.25, multiple=16)
        (15, 16)
        >>> channels_to_keep(12, 0.9), channels_to_keep(12, 0.5, group=4)
        (1, 4)
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(
            f"channels_to_keep: prune_ratio must be in [0, 1), got {prune_ratio}. "
            "HINT: 0.3 removes 30% of the channels."
        )
    if multiple < 1 or group < 1:
        raise ValueError(
            f"channels_to_keep: multiple and group must be >= 1, got multiple={multiple}, group={group}."
        )
    if channels % group:
        raise ValueError(
            f"channels_to_keep: {channels} channels are not divisible into {group} grouped-conv slices."
        )
    kept = channels - round(channels * prune_ratio)
    if multiple > 1:
        kept = max(multiple, math.ceil(kept / multiple) * multiple)
    if group > 1:
        step = math.lcm(multiple, group)
        if multiple > 1 and step <= channels:
            kept = math.ceil(kept / step) * step
        else:
            kept = max(group, kept // group * group)
    return max(1, min(kept, channels))


def select_pruned_channels(scores: Tensor, n_prune: int, group: int = 1) -> Tensor:
    """Indices of the ``n_prune`` lowest-scoring channels, an equal number in each group slice.

    Args:
        scores: ``[C]`` channel scores (higher = keep).
        n_prune: Channels to remove, a multiple of ``group`` and less than ``C``.
        group: Number of equal slices ``C/group`` wide; ``n_prune/group`` are removed from each.

    Returns:
        Sorted ``int64`` indices.

    Raises:
        ValueError: If the counts do not divide, or nothing would be left.

    Example:
        >>> select_pruned_channels(torch.tensor([0.9, 0.1, 0.5, 0.2]), 2)
        tensor([1, 3])
        >>> select_pruned_channels(torch.tensor([0.9, 0.1, 0.5, 0.2]), 2, group=2)
        tensor([1, 3])
        >>> select_pruned_channels(torch.tensor([0.1, 0.2, 0.5, 0.9]), 2, group=2)
        tensor([0, 2])
    """
    channels = scores.numel()
    if channels % group or n_prune % group:
        raise ValueError(
            f"select_pruned_channels: {channels} channels and n_prune={n_prune} must both be "
            f"divisible by group={group}."
        )
    if not 0 <= n_prune < channels:
        raise ValueError(
            f"select_pruned_channels: n_prune={n_prune} must be in [0, {channels}); at least one "
            "channel must be kept."
        )
    width, per = channels // group, n_prune // group
    picks = []
    for j in range(group):
        part = scores[j * width : (j + 1) * width].float()
        # stable: ties go to the lower index
        order = torch.sort(part, stable=True).indices[:per]
        picks.append(order + j * width)
    return torch.cat(picks).sort().values.long() if picks else torch.empty(0, dtype=torch.long)


__all__ = ["balanced_l2_scores", "channels_to_keep", "select_pruned_channels"]


def ramp_order(pruned: list[int], scores: Tensor, group: int = 1) -> list[int]:
    """The order in which a gradual (ramped) pruning masks a group's ``pruned`` channels.

    Least important first (lowest ``scores``; ties by index). For a grouped conv (``group``
    slices of ``channels / group``) the slices take turns, so every prefix whose length is a
    multiple of ``group`` masks the same number of channels in each slice.

    Args:
        pruned: The group's channels that the full plan prunes.
        scores: Importance of every channel of the group (higher = more important).
        group: Slices of the group (a grouped conv's ``groups``); 1 otherwise.

    Returns:
        ``pruned``, reordered.

    Example:
        >>> ramp_order([0, 2, 3], torch.tensor([0.5, 0.9, 0.1, 0.3]))
        [2, 3, 0]
        >>> ramp_order([0, 1, 4, 5], torch.tensor([0.2, 0.1, 0.9, 0.9, 0.3, 0.0, 0.9, 0.9]), group=2)
        [1, 5, 0, 4]
    """
    width = scores.numel() // group
    slices: list[list[int]] = [[] for _ in range(group)]
    for index in sorted(pruned, key=lambda i: (float(scores[i]), i)):
        slices[index // width].append(index)
    return [index for row in zip(*slices, strict=True) for index in row]


def ramp_count(total: int, fraction: float, group: int = 1) -> int:
    """How many of a group's ``total`` planned channels a ramp masks at ``fraction`` of the way.

    Rounded up to a multiple of ``group`` (every grouped-conv slice loses as many), at most ``total``.

    Example:
        >>> ramp_count(10, 1 / 3), ramp_count(10, 1.0), ramp_count(8, 0.3, group=4)
        (4, 10, 4)
    """
    fraction = min(max(fraction, 0.0), 1.0)
    count = math.ceil(round(total * fraction, 9) / group) * group
    return min(count, total)
