"""Plain-text table of a :class:`~lightning_prune.coupling.CouplingAnalysis`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lightning_prune.coupling.groups import CouplingAnalysis


def format_report(analysis: CouplingAnalysis) -> str:
    """Render every group: id, channels, slices, status, producers, consumers, and the reason."""
    lines = [f"{'id':>3}  {'channels':>8}  {'group':>5}  {'status':<10}  producers -> consumers"]
    for g in analysis.groups:
        status = "prunable" if g.prunable else "blocked"
        producers = ", ".join(p.name for p in g.producers)
        consumers = ", ".join(c.label for c in g.consumers) or "(none)"
        lines.append(f"{g.id:>3}  {g.channels:>8}  {g.group:>5}  {status:<10}  {producers} -> {consumers}")
        if not g.prunable:
            lines.append(f"{'':>34}reason: {g.reason}")
    n = len(analysis.prunable_groups)
    lines.append(f"{n} of {len(analysis.groups)} channel groups prunable.")
    for name, why in analysis.excluded.items():
        lines.append(f"excluded: '{name}': {why}")
    return "\n".join(lines)


__all__ = ["format_report"]
