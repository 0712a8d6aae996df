"""The search problem handed to a channel search, and the :class:`SearchChannelBase` extension point."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from torch import Tensor

from lightning_prune.coupling.groups import ChannelGroup, CouplingAnalysis
from lightning_prune.coupling.plan import ChannelPlan, normalize_plan
from lightning_prune.functional.channels import select_pruned_channels
from lightning_prune.search.macs import LayerMacs, Number, plan_macs

__all__ = ["SearchChannelBase", "SearchProblem", "step_channels"]


def step_channels(kept: int, multiple: int, group: int) -> int:
    """Channels one search step removes from a group that keeps ``kept``: back to the alignment grid.

    The grid is ``lcm(multiple, group)``: hardware alignment (16 for ``ascend_optimized``) and
    equal grouped-conv slices. A group off the grid first steps down onto it.

    Example:
        >>> step_channels(40, 16, 1), step_channels(32, 16, 1), step_channels(12, 1, 4)
        (8, 16, 4)
    """
    grid = math.lcm(multiple, group)
    return kept % grid or grid


@dataclass
class SearchProblem:
    """Everything a channel search needs: the groups, their scores, the cost model and the limits.

    Attributes:
        analysis: Coupling analysis of the (unpruned) model.
        groups: The groups the search may prune.
        sensitivity: Group id → ``[channels]`` scores (lower = removed first), for ``groups``.
        layers: The unpruned model's Conv/ConvTranspose/Linear costs (see
            :func:`~lightning_prune.search.measure_macs`).
        compress_ratio: Target ``original MACs / pruned MACs``, > 1.
        channel_multiple: Kept channel counts must be multiples of this (1: no alignment).
        max_prune_ratio: Largest fraction of any group's channels that may be removed.
        fixed_plan: Channels removed regardless of the search (the layers the user configured in
            ``override_prune_cfg``); counted in every cost, not part of the search's answer.
    """

    analysis: CouplingAnalysis
    groups: list[ChannelGroup]
    sensitivity: Mapping[int, Tensor]
    layers: Mapping[str, LayerMacs]
    compress_ratio: float
    channel_multiple: int = 1
    max_prune_ratio: float = 1.0
    fixed_plan: Mapping[int, Sequence[int]] = field(default_factory=dict)

    @cached_property
    def original_macs(self) -> Number:
        """MACs per sample of the unpruned model's Conv/ConvTranspose/Linear layers."""
        return plan_macs(self.layers, self.analysis, {})

    def macs(self, plan: ChannelPlan) -> Number:
        """MACs per sample after ``fixed_plan`` and ``plan``."""
        return plan_macs(self.layers, self.analysis, {**self.fixed_plan, **plan})

    def ratio(self, plan: ChannelPlan) -> float:
        """``original_macs / macs(plan)``."""
        return self.original_macs / self.macs(plan)

    def min_kept(self, group: ChannelGroup) -> int:
        """Fewest channels ``group`` may keep: ``max_prune_ratio`` honoured, never zero."""
        return max(1, math.ceil(group.channels * (1.0 - self.max_prune_ratio) - 1e-9))

    def next_step(self, group: ChannelGroup, kept: int) -> int:
        """Channels the next step removes from ``group`` (keeping ``kept``); 0 if no step is allowed."""
        step = step_channels(kept, self.channel_multiple, group.group)
        return step if kept - step >= self.min_kept(group) else 0

    def cheapest_channels(self, group: ChannelGroup, count: int) -> list[int]:
        """The ``count`` lowest-sensitivity channels of ``group``, equal numbers per grouped-conv slice."""
        return select_pruned_channels(self.sensitivity[group.id], count, group.group).tolist()

    def check_plan(self, plan: Mapping[int, Sequence[int]], who: str) -> dict[int, list[int]]:
        """Validate a search's answer against the problem; returns it normalised (sorted, no empties).

        Raises:
            ValueError: Naming ``who`` and the group, if the plan prunes a group outside
                ``groups``, has invalid indices, or breaks alignment or ``max_prune_ratio``.
        """
        if not isinstance(plan, Mapping):
            raise TypeError(
                f"{who}.channel_prune_search must return {{group id: pruned indices}}, got "
                f"{type(plan).__name__}."
            )
        allowed = {g.id: g for g in self.groups}
        for gid in plan:
            if gid not in allowed and len(plan[gid]):
                raise ValueError(
                    f"{who} prunes channel group {gid}, which is not searchable (not prunable, in "
                    "override_prune_cfg, or produced by a layer type filter_pruner cannot prune). "
                    f"HINT: prune only problem.groups (ids {sorted(allowed)})."
                )
        out = normalize_plan(self.analysis, plan)
        for gid, idx in out.items():
            g, kept = allowed[gid], allowed[gid].channels - len(idx)
            grid = math.lcm(self.channel_multiple, g.group)
            who_g = f"{who}: channel group {gid} (producers {', '.join(p.name for p in g.producers)})"
            if kept < self.min_kept(g):
                raise ValueError(
                    f"{who_g} keeps {kept} of {g.channels} channels; max_prune_ratio="
                    f"{self.max_prune_ratio} requires at least {self.min_kept(g)}."
                )
            if kept % grid:
                raise ValueError(
                    f"{who_g} keeps {kept} channels; kept counts must be multiples of {grid} "
                    f"(channel multiple {self.channel_multiple}, grouped-conv slices {g.group}). "
                    "HINT: use problem.next_step() to size the steps."
                )
        return out


class SearchChannelBase(abc.ABC):
    """Base class of channel searches; subclass it to plug your own into the search.

    Contract: :meth:`channel_prune_search` receives a :class:`SearchProblem` and returns a plan
    ``{group id: pruned channel indices}`` (group coordinates ``[0, channels)``) for groups of
    ``problem.groups`` only. It should reach ``problem.compress_ratio`` (``problem.ratio(plan)``
    measures it exactly); every group must keep a multiple of ``lcm(problem.channel_multiple,
    group.group)`` channels and at least ``problem.min_kept(group)``. The caller validates the
    plan (:meth:`SearchProblem.check_plan`), measures the ratio itself, and warns when the target
    is missed. The model is not part of the problem: a search decides from scores and costs.

    Example:
        >>> class Uniform(SearchChannelBase):
        ...     '''Remove the same share of every group, growing it until the target is met.'''
        ...
        ...     def channel_prune_search(self, problem):
        ...         plan = {}
        ...         for share in (0.1, 0.2, 0.3, 0.4, 0.5):
        ...             plan = {}
        ...             for g in problem.groups:
        ...                 kept, goal = g.channels, g.channels * (1 - share)
        ...                 while kept > goal and problem.next_step(g, kept):
        ...                     kept -= problem.next_step(g, kept)
        ...                 plan[g.id] = problem.cheapest_channels(g, g.channels - kept)
        ...             if problem.ratio(plan) >= problem.compress_ratio:
        ...                 break
        ...         return plan
    """

    @abc.abstractmethod
    def channel_prune_search(self, problem: SearchProblem) -> dict[int, list[int]]:
        """Return ``{group id: pruned indices}`` for groups of ``problem.groups``; see the class docstring."""
