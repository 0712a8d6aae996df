"""Conversion between pruning plans and ``ChannelGroupRecord`` protobuf messages."""

from __future__ import annotations

from collections.abc import Iterable

from lightning_prune.coupling.groups import ChannelGroup, ChannelNode, CouplingAnalysis
from lightning_prune.coupling.plan import ChannelPlan, normalize_plan
from lightning_prune.errors import RecordError
from lightning_prune.proto import ChannelGroupRecord
from lightning_prune.proto import ChannelNode as ChannelNodeRecord
from lightning_prune.proto.prune_record_pb2 import INPUT, OUTPUT


def _fill(rec: ChannelNodeRecord, node: ChannelNode, idx: list[int]) -> None:
    rec.name, rec.type, rec.begin, rec.end = node.name, node.type, node.begin, node.end
    rec.axis = OUTPUT if node.axis == "out" else INPUT
    rec.prune_index.extend(node.absolute(idx))


def plan_to_records(analysis: CouplingAnalysis, plan: ChannelPlan) -> list[ChannelGroupRecord]:
    """One ``ChannelGroupRecord`` per group of ``plan`` that loses channels.

    Each record lists the producers and consumers with their slice (``begin``/``end``), axis and
    absolute ``prune_index``, plus ``channels``, ``group``, ``pruned_index`` (group
    coordinates) and ``prune_ratio``, so a fresh model can be rebuilt without recomputing scores.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Conv2d(8, 4, 3))
        >>> analysis = analyze_coupling(net, torch.randn(1, 3, 8, 8))
        >>> [rec] = plan_to_records(analysis, {0: [2, 6]})
        >>> [(n.name, list(n.prune_index)) for n in rec.consumer]
        [('1', [2, 6]), ('2', [2, 6])]
    """
    records = []
    for gid, idx in sorted(normalize_plan(analysis, plan).items()):
        g = analysis.group(gid)
        rec = ChannelGroupRecord(channels=g.channels, group=g.group, prune_ratio=len(idx) / g.channels)
        rec.pruned_index.extend(idx)
        for node in g.producers:
            _fill(rec.producer.add(), node, idx)
        for node in g.consumers:
            _fill(rec.consumer.add(), node, idx)
        records.append(rec)
    return records


def _sig(nodes: Iterable) -> list[tuple]:
    out = []
    for n in nodes:
        axis = n.axis if isinstance(n.axis, str) else ("out" if n.axis == OUTPUT else "in")
        out.append((n.name, n.type, axis, int(n.begin), int(n.end)))
    return out


def _match(g: ChannelGroup, rec: ChannelGroupRecord, i: int) -> None:
    who = f"record group #{i} (producers {', '.join(repr(p.name) for p in rec.producer)})"
    for kind, mine, theirs in (
        ("producers", _sig(g.producers), _sig(rec.producer)),
        ("consumers", _sig(g.consumers), _sig(rec.consumer)),
    ):
        if sorted(mine) != sorted(theirs):
            extra = sorted(set(theirs) - set(mine))
            missing = sorted(set(mine) - set(theirs))
            raise RecordError(
                f"{who}: {kind} differ from this model's channel group {g.id}: in the record only "
                f"{extra}, in the model only {missing}. HINT: the record was made for another model "
                "structure."
            )
    if rec.channels != g.channels or rec.group != g.group:
        raise RecordError(
            f"{who}: channels={rec.channels}, group={rec.group} in the record but channels="
            f"{g.channels}, group={g.group} in the model."
        )
    if not g.prunable:
        raise RecordError(f"{who}: this model's channel group {g.id} is not prunable: {g.reason}.")


def records_to_plan(
    analysis: CouplingAnalysis, records: Iterable[ChannelGroupRecord]
) -> dict[int, list[int]]:
    """Rebuild a plan from records, checking they describe the analysed model.

    Args:
        analysis: Coupling analysis of a fresh, unpruned model.
        records: ``ChannelGroupRecord`` messages from :func:`plan_to_records`.

    Returns:
        Group id → pruned indices, ready for :func:`~lightning_prune.surgery.prune_channels`.

    Raises:
        RecordError: (a ``ValueError``) naming the record group and layer, if a record matches
            no group, lists other producers or consumers, or its indices disagree.
    """
    by_producers = {tuple(sorted(_sig(g.producers))): g for g in analysis.groups}
    plan: dict[int, list[int]] = {}
    for i, rec in enumerate(records):
        key = tuple(sorted(_sig(rec.producer)))
        g = by_producers.get(key)
        if g is None:
            names = ", ".join(repr(p.name) for p in rec.producer)
            raise RecordError(
                f"record group #{i} (producers {names}) matches no channel group of this model. "
                "HINT: the record was made for another model, or the model's forward changed; "
                "compare CouplingAnalysis.report()."
            )
        _match(g, rec, i)
        if g.id in plan:
            raise RecordError(f"record group #{i}: channel group {g.id} appears twice in the record.")
        idx = list(rec.pruned_index)
        try:
            plan.update(normalize_plan(analysis, {g.id: idx}))
        except ValueError as err:
            raise RecordError(f"record group #{i}: {err}") from err
        expected = {(n.name, n.axis, n.begin): n.absolute(sorted(idx)) for n in g.nodes}
        for node in [*rec.producer, *rec.consumer]:
            want = expected[(node.name, "out" if node.axis == OUTPUT else "in", node.begin)]
            if sorted(node.prune_index) != want:
                raise RecordError(
                    f"record group #{i}: layer '{node.name}' has prune_index "
                    f"{list(node.prune_index)}, but pruned_index {sorted(idx)} gives {want}."
                )
    return plan


__all__ = ["plan_to_records", "records_to_plan"]
