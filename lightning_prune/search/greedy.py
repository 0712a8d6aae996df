"""``GreedySearch``: remove the cheapest channels per MAC saved until the compression target is met."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch

from lightning_prune.coupling.plan import layer_indices
from lightning_prune.search.macs import Number
from lightning_prune.search.problem import SearchChannelBase, SearchProblem, step_channels

__all__ = ["GreedySearch", "GreedyStep"]


@dataclass(frozen=True)
class GreedyStep:
    """One step of :class:`GreedySearch`: ``channels`` removed from group ``group_id``.

    Attributes:
        group_id: The group.
        channels: Channels removed by this step.
        sensitivity: Sum of their sensitivities.
        macs_saved: MACs per sample the step removed.
        macs_after: Model MACs per sample after the step.
    """

    group_id: int
    channels: int
    sensitivity: float
    macs_saved: Number
    macs_after: Number


class _Layer:
    """Mutable channel counts of one costed layer; ``macs = unit * cin * cout / groups``."""

    __slots__ = ("cin", "cout", "groups", "unit")

    def __init__(self, unit: Number, cin: int, cout: int, groups: int) -> None:
        self.unit, self.cin, self.cout, self.groups = unit, cin, cout, groups

    def macs(self, cin: int, cout: int) -> Number:
        total = self.unit * cin * cout
        return (
            total // self.groups
            if isinstance(total, int) and total % self.groups == 0
            else total / self.groups
        )


class _Group:
    """Search state of one group: its sorted cumulative sensitivities and the layers it shrinks."""

    __slots__ = ("cum", "gid", "grid", "kept", "links", "min_kept", "order", "slices")

    def __init__(self, gid: int, scores: torch.Tensor, slices: int, grid: int, min_kept: int) -> None:
        per_slice = scores.detach().double().reshape(slices, -1)
        sorted_scores, self.order = torch.sort(per_slice, dim=1, stable=True)
        # cum[k]: sensitivity of removing the k cheapest channels of every slice.
        self.cum = [0.0, *sorted_scores.sum(0).cumsum(0).tolist()]
        self.gid, self.slices, self.grid, self.min_kept = gid, slices, grid, min_kept
        self.kept = scores.numel()
        self.links: list[tuple[_Layer, int, int]] = []  # (layer, in-channels, out-channels) per group channel

    def step(self) -> int:
        size = step_channels(self.kept, self.grid, 1)
        return size if self.kept - size >= self.min_kept else 0

    def pruned_per_slice(self) -> int:
        return (len(self.cum) - 1) - self.kept // self.slices

    def sensitivity(self, size: int) -> float:
        start = self.pruned_per_slice()
        return self.cum[start + size // self.slices] - self.cum[start]

    def saving(self, size: int) -> Number:
        total: Number = 0
        for layer, d_in, d_out in self.links:
            total += layer.macs(layer.cin, layer.cout) - layer.macs(
                layer.cin - size * d_in, layer.cout - size * d_out
            )
        return total

    def pruned_indices(self) -> list[int]:
        k, width = self.pruned_per_slice(), self.order.shape[1]
        return sorted(int(i) + j * width for j in range(self.slices) for i in self.order[j, :k])


class GreedySearch(SearchChannelBase):
    """Greedy knapsack: repeatedly remove the group step with the lowest sensitivity per MAC saved.

    A step removes the cheapest channels of one group: one channel, or as many as bring the kept
    count back to a multiple of ``lcm(channel_multiple, group)`` (16 with ``ascend_optimized``;
    grouped convs lose the same number per slice). Its value is the sum of their sensitivities
    divided by the exact MACs it saves, computed from the current channel counts of every layer
    the group shrinks (producers' outputs, consumers' inputs, depthwise convs). After each step
    the cost of every group that shares a layer with it is recomputed, so interactions between
    groups are exact; a heap with lazy invalidation keeps each step ``O(neighbours x log n)``.
    The search stops at the first step that reaches the target, or when no group can lose more
    channels (``max_prune_ratio``, alignment, at least one channel kept).

    After a search, ``steps`` lists the :class:`GreedyStep` taken, in order.

    Example:
        >>> from torch import nn
        >>> from lightning_prune.coupling import analyze_coupling
        >>> from lightning_prune.search import SearchProblem, measure_macs
        >>> net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 2))
        >>> x = torch.randn(4, 8)
        >>> analysis = analyze_coupling(net, x)
        >>> groups = analysis.prunable_groups
        >>> scores = {g.id: torch.arange(g.channels, dtype=torch.float64) for g in groups}
        >>> problem = SearchProblem(analysis, groups, scores, measure_macs(net, x), compress_ratio=2.0)
        >>> search = GreedySearch()
        >>> plan = search.channel_prune_search(problem)
        >>> {gid: 32 - len(pruned) for gid, pruned in plan.items()}  # channels kept per group
        {0: 20, 1: 23}
        >>> problem.original_macs, problem.macs(plan)
        (1344, 666)
        >>> search.steps[0]  # channel 0 of group 0: no sensitivity, saves 8 + 32 MACs
        GreedyStep(group_id=0, channels=1, sensitivity=0.0, macs_saved=40, macs_after=1304)
    """

    def __init__(self) -> None:
        self.steps: list[GreedyStep] = []

    def channel_prune_search(self, problem: SearchProblem) -> dict[int, list[int]]:
        """Greedy plan for ``problem.groups``; see the class docstring."""
        groups, layers = self._build(problem)
        total = sum(layer.macs(layer.cin, layer.cout) for layer in layers.values())
        original, target = problem.original_macs, problem.compress_ratio
        neighbours = self._neighbours(groups)
        version = dict.fromkeys(range(len(groups)), 0)
        heap: list[tuple[float, int, int]] = []
        for i in range(len(groups)):
            self._push(heap, groups[i], i, 0)
        self.steps = []
        while original < target * total and heap:
            _, i, seen = heapq.heappop(heap)
            if seen != version[i]:
                continue
            group = groups[i]
            size = group.step()
            sensitivity, saved = group.sensitivity(size), group.saving(size)
            for layer, d_in, d_out in group.links:
                layer.cin -= size * d_in
                layer.cout -= size * d_out
            group.kept -= size
            total -= saved
            self.steps.append(GreedyStep(group.gid, size, sensitivity, saved, total))
            for j in neighbours[i]:
                version[j] += 1
                self._push(heap, groups[j], j, version[j])
        return {g.gid: g.pruned_indices() for g in groups if g.pruned_per_slice()}

    @staticmethod
    def _push(heap: list, group: _Group, index: int, version: int) -> None:
        size = group.step()
        saved = group.saving(size) if size else 0
        if saved > 0:  # a step that saves nothing never helps reach the target
            heapq.heappush(heap, (group.sensitivity(size) / saved, index, version))

    @staticmethod
    def _build(problem: SearchProblem) -> tuple[list[_Group], dict[str, _Layer]]:
        """Layer counts after ``problem.fixed_plan``, and one ``_Group`` per searchable group."""
        fixed = layer_indices(problem.analysis, problem.fixed_plan)
        layers: dict[str, _Layer] = {}
        for name, cost in problem.layers.items():
            axes = fixed.get(name, {})
            cin, cout = (
                cost.in_channels - len(axes.get("in", [])),
                cost.out_channels - len(axes.get("out", [])),
            )
            if cost.depthwise:  # groups shrink with the channels: cost is linear in cout
                layers[name] = _Layer(cost.positions * cost.kernel, 1, cout, 1)
            else:
                layers[name] = _Layer(cost.positions * cost.kernel, cin, cout, cost.groups)
        groups = []
        for g in problem.groups:
            grid = math.lcm(problem.channel_multiple, g.group)
            state = _Group(g.id, problem.sensitivity[g.id], g.group, grid, problem.min_kept(g))
            links: dict[str, list[int]] = {}
            for node in g.nodes:
                cost = problem.layers.get(node.name)
                if cost is None or (cost.depthwise and node.axis == "in"):
                    continue  # not costed (norms), or counted through the depthwise conv's output
                link = links.setdefault(node.name, [0, 0])
                link[0 if node.axis == "in" and not cost.depthwise else 1] += node.elements
            state.links = [(layers[name], d_in, d_out) for name, (d_in, d_out) in links.items()]
            groups.append(state)
        return groups, layers

    @staticmethod
    def _neighbours(groups: list[_Group]) -> list[list[int]]:
        """For each group: itself and every group that shrinks one of the same layers."""
        users: dict[int, set[int]] = {}
        for i, g in enumerate(groups):
            for layer, _, _ in g.links:
                users.setdefault(id(layer), set()).add(i)
        return [
            sorted({i}.union(*(users[id(layer)] for layer, _, _ in g.links))) for i, g in enumerate(groups)
        ]
