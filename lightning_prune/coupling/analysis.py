"""``analyze_coupling``: trace the eval- and train-mode forwards, find reused/shared layers, build the groups."""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import replace

import torch
from torch import nn

from lightning_prune.coupling.groups import ChannelGroup, ChannelNode, CouplingAnalysis
from lightning_prune.coupling.rules import Propagator, _Raw
from lightning_prune.coupling.tracer import LEAF_TYPES, Trace, repeat_batch, trace_model


def _excluded_layers(model: nn.Module, trace: Trace) -> dict[str, str]:
    """Layers with state that are called more than once, or that share a Parameter with another."""
    excluded: dict[str, str] = {}
    for name, count in trace.call_counts.items():
        module = model.get_submodule(name) if name else model
        has_state = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
        if count > 1 and has_state:
            excluded[name] = f"module called {count} times in one forward (reused)"
    owners: dict[int, list[str]] = {}
    outer = None  # the leaf being walked: its sub-layers (MultiheadAttention.out_proj) are part of it
    for name, module in model.named_modules():
        if outer is not None and name.startswith(outer + "."):
            continue
        if not isinstance(module, LEAF_TYPES):
            continue
        outer = name
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


def _merged(props: list[Propagator]) -> list[_Raw]:
    """The raw groups of several traces of one model, joined where they share a producer.

    Layer orders come from the first trace a layer appears in (layers seen only in a later trace
    sort after), so group ids follow the eval-mode forward.
    """
    if len(props) == 1:
        return list(props[0].raw.values())
    order: dict[str, int] = {}
    base = 0
    for prop in props:
        for node in prop.trace.nodes:
            if node.kind == "module":
                order.setdefault(node.target, base + node.index)
        base += len(prop.trace.nodes)
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    raws = [raw for prop in props for raw in prop.raw.values()]
    for raw in raws:
        names = [p.name for p in raw.producers]
        for name in names:
            parent.setdefault(name, name)
        for name in names[1:]:
            a, b = find(names[0]), find(name)
            if a != b:
                parent[b] = a
    merged: dict[str, _Raw] = {}
    for raw in raws:
        root = find(raw.producers[0].name)
        into = merged.get(root)
        if into is None:
            into = merged[root] = _Raw(raw.channels, raw.group)
        elif into.channels != raw.channels:
            into.reasons.append(
                "its producers are coupled differently in the eval-mode and train-mode forwards"
            )
        into.group = math.lcm(into.group, raw.group)
        for src, dst in ((raw.producers, into.producers), (raw.consumers, into.consumers)):
            for node in src:
                node = replace(node, order=order[node.name])
                if node not in dst:
                    dst.append(node)
        into.reasons += raw.reasons
    return list(merged.values())


def _block_overlaps(raws: list[_Raw]) -> None:
    """Block groups that would slice the same channels of one layer (the forwards disagree on them).

    Within one forward every layer axis is split between groups without overlap; two traces that
    route channels differently could claim one slice twice, which no plan can prune correctly.
    """
    spans: dict[tuple[str, str], list[tuple[int, int, int]]] = {}
    for i, raw in enumerate(raws):
        for node in [*raw.producers, *raw.consumers]:
            spans.setdefault((node.name, node.axis), []).append((node.begin, node.end, i))
    for (name, axis), items in spans.items():
        reach, owner = -1, -1  # the furthest end seen so far, and its group
        for begin, end, i in sorted(items):
            if begin < reach:
                for j in {owner, i}:
                    raws[j].reasons.append(
                        f"another channel group also claims {axis}-channels of '{name}' (the "
                        "eval-mode and train-mode forwards route them differently)"
                    )
            if end > reach:
                reach, owner = end, i


def _finalize(props: list[Propagator]) -> list[ChannelGroup]:
    groups = []
    raws = sorted(_merged(props), key=lambda r: min(p.order for p in r.producers))
    _block_overlaps(raws)
    for raw in raws:
        reasons = list(dict.fromkeys(raw.reasons))
        if raw.group > 1 and not reasons:
            if raw.channels % raw.group:
                reasons.append(
                    f"{raw.channels} channels cannot be split into {raw.group} equal grouped-conv slices"
                )
            elif raw.group >= raw.channels:
                reasons.append(f"grouped conv with groups={raw.group} leaves one channel per slice")
        key = lambda n: (n.order, n.axis != "in")
        producers: list[ChannelNode] = sorted(raw.producers, key=key)
        consumers: list[ChannelNode] = sorted(raw.consumers, key=key)
        groups.append(
            ChannelGroup(
                len(groups), raw.channels, producers, consumers, raw.group, not reasons, "; ".join(reasons)
            )
        )
    return groups


def analyze_coupling(
    model: nn.Module, example_inputs: tuple | torch.Tensor, train_mode: bool = True
) -> CouplingAnalysis:
    """Find the channel groups of ``model``: which output channels must be pruned together.

    The forward pass ``model(*example_inputs)`` is recorded in eval mode, and again in train mode
    (without gradients; the model, its BatchNorm statistics and the RNG are left unchanged), so
    models that ``torch.fx`` cannot trace work too, and layers that run only in training
    (auxiliary classifiers) shrink with the channels they read. Groups are joined across the two
    forwards. Reused layers and layers sharing weights are excluded with a warning. Every
    structure that is not understood, in either forward, marks the groups reaching it as not
    prunable, with the reason.

    Args:
        model: The model. Only Conv2d, ConvTranspose2d (groups=1) and Linear layers produce
            groups; BatchNorm, depthwise convs and the next layers' inputs shrink with them.
        example_inputs: A tensor or a tuple of positional inputs; random data of the right
            shape is enough.
        train_mode: Also record the train-mode forward (skipped silently if it fails even with
            the batch repeated). False analyses the eval-mode forward alone.

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
    traces = [trace]
    if train_mode:
        train_trace = _train_trace(model, example_inputs)
        if train_trace is not None:
            traces.append(train_trace)
    excluded: dict[str, str] = {}
    for t in traces:
        for name, reason in _excluded_layers(model, t).items():
            excluded.setdefault(name, reason)
    if excluded:
        listed = "; ".join(f"'{n}': {r}" for n, r in excluded.items())
        warnings.warn(
            f"analyze_coupling: excluded from channel pruning: {listed}. Channel groups touching these layers "
            "are not prunable. HINT: give each call its own module (no reuse, no tied weights) to prune them.",
            UserWarning,
            stacklevel=2,
        )
    props = [Propagator(t, excluded) for t in traces]
    for prop in props:
        prop.run()
    return CouplingAnalysis(_finalize(props), excluded, trace)


def _train_trace(model: nn.Module, example_inputs: tuple | torch.Tensor) -> Trace | None:
    """The train-mode trace (batch repeated if a batch of one fails), or None if the model cannot run it."""
    inputs = (example_inputs,) if isinstance(example_inputs, torch.Tensor) else tuple(example_inputs)
    for args in (inputs, repeat_batch(inputs)):
        # A batch of one fails wherever BatchNorm sees one value per channel: try the repeated batch.
        with contextlib.suppress(Exception):
            return None if args is None else trace_model(model, args, train=True)
    return None


__all__ = ["analyze_coupling"]
