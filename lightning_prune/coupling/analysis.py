"""``analyze_coupling``: trace once, find reused/shared layers, build the channel groups."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lightning_prune.coupling.groups import ChannelGroup, ChannelNode, CouplingAnalysis
from lightning_prune.coupling.rules import Propagator
from lightning_prune.coupling.tracer import LEAF_TYPES, Trace, trace_model


def _excluded_layers(model: nn.Module, trace: Trace) -> dict[str, str]:
    """Layers with state that are called more than once, or that share a Parameter with another."""
    excluded: dict[str, str] = {}
    for name, count in trace.call_counts.items():
        module = model.get_submodule(name) if name else model
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if count > 1 and has_state:
            excluded[name] = f"module called {count} times in one forward (reused)"
    owners: dict[int, list[str]] = {}
    for name, module in model.named_modules():
        if not isinstance(module, LEAF_TYPES):
            continue
        for p in module.parameters():
            owners.setdefault(id(p), [])
            if name not in owners[id(p)]:
                owners[id(p)].append(name)
    for names in owners.values():
        if len(names) > 1:
            for name in names:
                others = ", ".join(f"'{n}'" for n in names if n != name)
                excluded.setdefault(name, f"shares a parameter with {others}")
    return excluded


def _finalize(prop: Propagator) -> list[ChannelGroup]:
    groups = []
    for raw in sorted(prop.raw.values(), key=lambda r: r.producers[0].order):
        reasons = list(dict.fromkeys(raw.reasons))
        if raw.group > 1 and not reasons:
            if raw.channels % raw.group:
                reasons.append(f"{raw.channels} channels cannot be split into {raw.group} equal grouped-conv slices")
            elif raw.group >= raw.channels:
                reasons.append(f"grouped conv with groups={raw.group} leaves one channel per slice")
        key = lambda n: (n.order, n.axis != "in")
        producers: list[ChannelNode] = sorted(raw.producers, key=key)
        consumers: list[ChannelNode] = sorted(raw.consumers, key=key)
        groups.append(ChannelGroup(len(groups), raw.channels, producers, consumers, raw.group, not reasons,
                                   "; ".join(reasons)))
    return groups


def analyze_coupling(model: nn.Module, example_inputs: tuple | torch.Tensor) -> CouplingAnalysis:
    """Find the channel groups of ``model``: which output channels must be pruned together.

    One forward pass of ``model(*example_inputs)`` is recorded (in eval mode, without gradients;
    the model is left unchanged), so models that ``torch.fx`` cannot trace work too. Reused
    layers and layers sharing weights are excluded with a warning. Every structure that is not
    understood marks the groups reaching it as not prunable, with the reason.

    Args:
        model: The model. Only Conv2d, ConvTranspose2d (groups=1) and Linear layers produce
            groups; BatchNorm, depthwise convs and the next layers' inputs shrink with them.
        example_inputs: A tensor or a tuple of positional inputs; random data of the right
            shape is enough.

    Returns:
        The :class:`CouplingAnalysis`; call ``.report()`` for a readable table.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> analysis = analyze_coupling(net, torch.randn(1, 3, 8, 8))
        >>> g = analysis.groups[0]
        >>> [p.name for p in g.producers], [c.name for c in g.consumers], g.prunable
        (['0'], ['1', '3'], True)
        >>> analysis.groups[1].reason
        'feeds the model output (output #0), which must keep its shape'
    """
    trace = trace_model(model, example_inputs)
    excluded = _excluded_layers(model, trace)
    if excluded:
        listed = "; ".join(f"'{n}': {r}" for n, r in excluded.items())
        warnings.warn(
            f"analyze_coupling: excluded from channel pruning: {listed}. Channel groups touching these layers "
            "are not prunable. HINT: give each call its own module (no reuse, no tied weights) to prune them.",
            UserWarning,
            stacklevel=2,
        )
    prop = Propagator(trace, excluded)
    prop.run()
    return CouplingAnalysis(_finalize(prop), excluded, trace)


__all__ = ["analyze_coupling"]
