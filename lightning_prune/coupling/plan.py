"""Pruning plans: for each channel group, the channels to remove (group coordinates)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_prune.coupling.groups import CouplingAnalysis

ChannelPlan = Mapping[int, "Tensor | Sequence[int]"]
"""Group id → pruned channel indices in ``[0, group.channels)``."""


def normalize_plan(analysis: CouplingAnalysis, plan: ChannelPlan) -> dict[int, list[int]]:
    """Check a plan against the analysis and return it as sorted lists, dropping empty entries.

    Raises:
        ValueError: Naming the group and its producers, if a group id is unknown, the group is
            not prunable, an index is out of range or repeated, every channel would go, or the
            grouped-conv slices would lose different counts.

    Example:
        >>> from torch import nn
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> analysis = analyze_coupling(net, torch.randn(1, 3, 8, 8))
        >>> normalize_plan(analysis, {0: torch.tensor([5, 1])})
        {0: [1, 5]}
    """
    out: dict[int, list[int]] = {}
    for gid, raw in plan.items():
        try:
            g = analysis.group(int(gid))
        except KeyError as err:
            raise ValueError(
                f"Pruning plan names channel group {gid}, which the analysis does not have "
                f"(ids 0..{len(analysis.groups) - 1}). HINT: build the plan from this model's "
                "analysis."
            ) from err
        idx = raw.tolist() if isinstance(raw, Tensor) else [int(i) for i in raw]
        if not idx:
            continue
        who = f"channel group {g.id} (producers {', '.join(repr(p.name) for p in g.producers)})"
        if not g.prunable:
            raise ValueError(f"Pruning plan prunes {who}, which is not prunable: {g.reason}.")
        if len(set(idx)) != len(idx):
            raise ValueError(f"Pruning plan for {who} repeats channel indices: {sorted(idx)}.")
        if min(idx) < 0 or max(idx) >= g.channels:
            raise ValueError(f"Pruning plan for {who} has indices outside [0, {g.channels}): {sorted(idx)}.")
        if len(idx) >= g.channels:
            raise ValueError(f"Pruning plan for {who} removes all {g.channels} channels; keep at least one.")
        if g.group > 1:
            width = g.channels // g.group
            counts = [sum(1 for i in idx if i // width == j) for j in range(g.group)]
            if len(set(counts)) != 1:
                raise ValueError(
                    f"Pruning plan for {who} removes {counts} channels from its {g.group} grouped-conv "
                    "slices; each slice must lose the same number. HINT: use "
                    "select_pruned_channels(scores, n, group=...)."
                )
        out[g.id] = sorted(idx)
    return out


def layer_indices(analysis: CouplingAnalysis, plan: ChannelPlan) -> dict[str, dict[str, list[int]]]:
    """Absolute indices to remove per layer and axis (``"out"``/``"in"``), from all groups.

    Raises:
        ValueError: If two groups would remove the same index of one layer (a broken analysis).
    """
    per: dict[str, dict[str, list[int]]] = {}
    for gid, idx in normalize_plan(analysis, plan).items():
        for node in analysis.group(gid).nodes:
            per.setdefault(node.name, {}).setdefault(node.axis, []).extend(node.absolute(idx))
    for name, axes in per.items():
        for axis, idx in axes.items():
            if len(set(idx)) != len(idx):
                raise ValueError(
                    f"Layer '{name}': two channel groups remove the same {axis}-channel; the "
                    "analysis does not belong to this plan."
                )
            axes[axis] = sorted(idx)
    return per


def keep_index(size: int, pruned: Sequence[int]) -> Tensor:
    """The complement of ``pruned`` in ``range(size)`` as an int64 tensor."""
    drop = set(pruned)
    return torch.tensor([i for i in range(size) if i not in drop], dtype=torch.long)


__all__ = ["ChannelPlan", "keep_index", "layer_indices", "normalize_plan"]
