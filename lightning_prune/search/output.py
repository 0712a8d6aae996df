"""What the search writes and returns: the retrain ``.cfg``, the channel-selection record, ``SearchResult``."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from google.protobuf import text_format
from torch import Tensor, nn

from lightning_prune.config import RetrainConfig
from lightning_prune.coupling.groups import CouplingAnalysis
from lightning_prune.coupling.records import plan_to_records
from lightning_prune.proto import AMCTRetrainConfig, PruneRecord
from lightning_prune.record import atomic_write, model_fingerprint, write_record
from lightning_prune.search.macs import LayerMacs, Number

__all__ = ["GroupSummary", "SearchResult", "record_path_for", "write_search_outputs"]


@dataclass(frozen=True)
class GroupSummary:
    """One row of the search's per-group table.

    Attributes:
        group_id: Channel-group id in the coupling analysis.
        producers: Layers whose output channels the group holds.
        channels_before: Channels before pruning.
        channels_after: Channels kept.
        macs_share: Share of the model's original MACs spent in the layers the group shrinks.
        mean_sensitivity: Mean sensitivity of the group's channels (NaN for ``override_prune_cfg``
            groups, which are not scored).
        source: ``"search"``, or ``"override_prune_cfg"`` for groups the user configured.
    """

    group_id: int
    producers: tuple[str, ...]
    channels_before: int
    channels_after: int
    macs_share: float
    mean_sensitivity: float
    source: str = "search"


@dataclass
class SearchResult:
    """Outcome of :func:`~lightning_prune.search.auto_channel_prune_search`.

    Attributes:
        target_ratio: The ``compress_ratio`` asked for.
        achieved_ratio: ``original_macs / final_macs``; equal to the ratio measured on the model
            pruned by the written record.
        reached: Whether ``achieved_ratio >= target_ratio``.
        original_macs: MACs per sample of the unpruned model's Conv/ConvTranspose/Linear layers.
        final_macs: The same after pruning.
        groups: One :class:`GroupSummary` per searched or user-configured group.
        plan: Group id → pruned channel indices (group coordinates), as written to the record.
        output_cfg: Path of the written retrain ``.cfg``.
        record_file: Path of the written channel-selection record.
        timings: Seconds spent per phase (analysis, macs, sensitivity, search, write).
    """

    target_ratio: float
    achieved_ratio: float
    reached: bool
    original_macs: Number
    final_macs: Number
    groups: list[GroupSummary]
    plan: dict[int, list[int]]
    output_cfg: str = ""
    record_file: str = ""
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self, prefix: str = "search") -> dict[str, float]:
        """The totals and the per-group table as flat logger metrics.

        Per group, keyed by its first producer: ``<prefix>/<layer>/channels_before``,
        ``channels_after``, ``macs_share`` and ``sensitivity`` (mean over the group's channels;
        left out for user-configured groups, which are not scored).

        Example:
            >>> row = GroupSummary(0, ("conv1",), 16, 8, 0.25, 0.5)
            >>> result = SearchResult(2.0, 2.1, True, 100, 47.6, [row], {0: list(range(8))})
            >>> sorted(result.metrics())[:3]
            ['search/achieved_ratio', 'search/conv1/channels_after', 'search/conv1/channels_before']
        """
        out = {
            f"{prefix}/target_ratio": float(self.target_ratio),
            f"{prefix}/achieved_ratio": float(self.achieved_ratio),
            f"{prefix}/original_macs": float(self.original_macs),
            f"{prefix}/final_macs": float(self.final_macs),
        }
        for row in self.groups:
            key = f"{prefix}/{row.producers[0] if row.producers else row.group_id}"
            out[f"{key}/channels_before"] = float(row.channels_before)
            out[f"{key}/channels_after"] = float(row.channels_after)
            out[f"{key}/macs_share"] = float(row.macs_share)
            if row.mean_sensitivity == row.mean_sensitivity:  # not NaN
                out[f"{key}/sensitivity"] = float(row.mean_sensitivity)
        return out

    def table(self) -> str:
        """The per-group table as text, followed by the totals."""
        lines = [f"{'group':>5}  {'channels':>11}  {'MACs%':>6}  {'sensitivity':>11}  producers"]
        for row in self.groups:
            tag = "" if row.source == "search" else f"  ({row.source})"
            channels = f"{row.channels_before}->{row.channels_after}"
            lines.append(
                f"{row.group_id:>5}  {channels:>11}  {100 * row.macs_share:6.2f}  "
                f"{row.mean_sensitivity:11.4g}  {', '.join(row.producers)}{tag}"
            )
        verdict = "reached" if self.reached else "NOT reached"
        lines.append(
            f"MACs {self.original_macs} -> {self.final_macs}: ratio {self.achieved_ratio:.4f} "
            f"(target {self.target_ratio}, {verdict})"
        )
        return "\n".join(lines)


def record_path_for(output_cfg: str | os.PathLike) -> Path:
    """The record written next to ``output_cfg``: ``<dir>/<stem>.record.txt``.

    Example:
        >>> record_path_for("out/search.cfg").as_posix()
        'out/search.record.txt'
    """
    path = Path(output_cfg)
    return path.with_name(f"{path.stem}.record.txt")


def group_summaries(
    analysis: CouplingAnalysis,
    layers: Mapping[str, LayerMacs],
    plan: Mapping[int, Sequence[int]],
    group_ids: Sequence[int],
    sensitivity: Mapping[int, Tensor],
    fixed: Sequence[int],
) -> list[GroupSummary]:
    """Table rows for ``group_ids`` (searched) and ``fixed`` (user-configured), in group order."""
    total = sum(layer.macs for layer in layers.values()) or 1
    rows = []
    for gid in sorted({*group_ids, *fixed}):
        g = analysis.group(gid)
        share = sum(layers[n].macs for n in g.layer_names if n in layers) / total
        scores = sensitivity.get(gid)
        mean = float(scores.double().mean()) if scores is not None else float("nan")
        rows.append(
            GroupSummary(
                gid,
                tuple(p.name for p in g.producers),
                g.channels,
                g.channels - len(plan.get(gid, ())),
                share,
                mean,
                "override_prune_cfg" if gid in fixed else "search",
            )
        )
    return rows


def _version() -> str:
    try:
        return metadata.version("lightning-prune")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "unknown"


def build_output_config(
    analysis: CouplingAnalysis,
    searched: Mapping[int, Sequence[int]],
    user: AMCTRetrainConfig | None,
    ascend_optimized: bool,
    channel_multiple: int,
    record_name: str,
) -> AMCTRetrainConfig:
    """The retrain config: the user's overrides, one BCP override per producer of a searched group.

    ``prune_ratio`` is ``pruned / channels`` of the group, so AMCT's BalancedL2Norm rounding
    (``ascend_optimized``) gives back the searched count; ``channel_selection_record`` names the
    record holding the exact channels.
    """
    cfg = AMCTRetrainConfig()
    if user is not None:
        cfg.CopyFrom(user)
    for gid in sorted(searched):
        g = analysis.group(gid)
        for producer in g.producers:
            entry = cfg.override_layer_configs.add(layer_name=producer.name)
            bcp = entry.prune_config.filter_pruner.balanced_l2_norm_filter_prune
            bcp.prune_ratio = len(searched[gid]) / g.channels
            bcp.ascend_optimized = ascend_optimized
            if channel_multiple:
                bcp.channel_multiple = channel_multiple
    cfg.channel_selection_record = record_name
    return cfg


def write_search_outputs(
    model: nn.Module,
    analysis: CouplingAnalysis,
    plan: Mapping[int, Sequence[int]],
    cfg: AMCTRetrainConfig,
    output_cfg: str | os.PathLike,
    config_file: str,
    header: str,
) -> Path:
    """Validate ``cfg`` against the model, then write the record and the ``.cfg``; returns the record path.

    Raises:
        PruneConfigError: If the config would not be accepted by the retrain step (for example a
            user override naming a layer the model does not have).
    """
    RetrainConfig(cfg, source=os.fspath(output_cfg)).resolve(model)
    record_path = record_path_for(output_cfg)
    record = PruneRecord(
        fingerprint=model_fingerprint(model), producer_version=_version(), config_file=config_file
    )
    record.channel_group.extend(plan_to_records(analysis, plan))
    write_record(record_path, record)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + text_format.MessageToString(cfg)
    Path(output_cfg).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(Path(output_cfg), text.encode("utf-8"))
    return record_path
