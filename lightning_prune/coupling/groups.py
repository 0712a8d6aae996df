"""Channel groups: the output channels that must be pruned together, and what shrinks with them."""

from __future__ import annotations

from dataclasses import dataclass, field

from lightning_prune.coupling.tracer import Trace


@dataclass
class ChannelNode:
    """One layer's slice in a channel group.

    Attributes:
        name: Qualified module name.
        type: torch class name, e.g. ``"Conv2d"``.
        axis: ``"out"`` for a producer's output channels (and a depthwise conv's output
            channels), ``"in"`` for a consumer's input channels (a BatchNorm's features, a conv
            or linear's input channels, a depthwise conv's input channels and ``groups``).
        begin: First index of the slice of that layer's axis covered by the group.
        end: One past the last index; ``end - begin == channels * elements``.
        elements: Consecutive entries per group channel along that axis: 1, except for a
            linear fed by a flattened ``C x H x W`` map, where channel ``c`` is the columns
            ``begin + c*elements : begin + (c+1)*elements`` (``elements = H*W``).
    """

    name: str
    type: str
    axis: str
    begin: int
    end: int
    elements: int = 1
    order: int = field(default=0, compare=False, repr=False)

    def absolute(self, index: list[int]) -> list[int]:
        """Map channel indices in group coordinates to indices of this layer's axis."""
        k = self.elements
        return [self.begin + c * k + j for c in index for j in range(k)]

    @property
    def label(self) -> str:
        """Short text, e.g. ``conv2[in 0:64]`` or ``fc[in 0:512 x8]``."""
        rep = f" x{self.elements}" if self.elements > 1 else ""
        return f"{self.name}[{self.axis} {self.begin}:{self.end}{rep}]"


@dataclass
class ChannelGroup:
    """Output channels of one or more producers that are pruned as one selection.

    Attributes:
        id: Position in execution order of the first producer.
        channels: Channels in the group before pruning.
        producers: Layers whose output channels are chosen (several when their outputs are
            added together, e.g. every conv writing into one residual stream).
        consumers: Layers whose channels shrink with them (BatchNorm, next conv/linear inputs,
            depthwise convs in and out).
        group: Grouped-conv constraint: the same number of channels must be removed from each
            of ``group`` equal slices.
        prunable: Whether the group may be pruned.
        reason: Why not, when ``prunable`` is False.
    """

    id: int
    channels: int
    producers: list[ChannelNode]
    consumers: list[ChannelNode]
    group: int = 1
    prunable: bool = True
    reason: str = ""

    @property
    def nodes(self) -> list[ChannelNode]:
        """Producers then consumers."""
        return [*self.producers, *self.consumers]

    @property
    def layer_names(self) -> list[str]:
        """Names of every layer involved, without repeats."""
        return list(dict.fromkeys(n.name for n in self.nodes))


@dataclass
class CouplingAnalysis:
    """Result of :func:`~lightning_prune.coupling.analyze_coupling`.

    Attributes:
        groups: Every channel group, prunable or not, in execution order.
        excluded: Layers excluded from pruning (reused modules, shared weights), name → reason.
        trace: The recorded forward pass the groups were computed from.
    """

    groups: list[ChannelGroup]
    excluded: dict[str, str]
    trace: Trace | None = field(default=None, repr=False)

    @property
    def prunable_groups(self) -> list[ChannelGroup]:
        """The groups that may be pruned."""
        return [g for g in self.groups if g.prunable]

    def group(self, gid: int) -> ChannelGroup:
        """Return the group with id ``gid``.

        Raises:
            KeyError: If there is no such group.
        """
        for g in self.groups:
            if g.id == gid:
                return g
        raise KeyError(f"No channel group with id {gid}; the analysis has ids 0..{len(self.groups) - 1}.")

    def group_of(self, name: str) -> ChannelGroup:
        """Return the group whose producers include the layer ``name``.

        Raises:
            KeyError: If ``name`` produces no group (not a Conv2d/Linear, or never called).
        """
        for g in self.groups:
            if any(p.name == name for p in g.producers):
                return g
        raise KeyError(
            f"Layer '{name}' produces no channel group (only called Conv2d, ConvTranspose2d and "
            "Linear layers do); see CouplingAnalysis.report()."
        )

    def report(self) -> str:
        """A table of every group, for reading before training."""
        from lightning_prune.coupling.report import format_report

        return format_report(self)


__all__ = ["ChannelGroup", "ChannelNode", "CouplingAnalysis"]
