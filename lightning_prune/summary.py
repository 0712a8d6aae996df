"""The end-of-run summary of a pruning: sizes and compute before/after, metrics, and where files are."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

__all__ = ["PruningSummary", "count_parameters"]


def count_parameters(model: nn.Module) -> int:
    """Number of parameter elements (shared parameters counted once)."""
    return sum(p.numel() for p in model.parameters())


@dataclass
class PruningSummary:
    """Sizes, compute and metrics of a pruning run.

    Example:
        >>> s = PruningSummary(params_before=1000, params_after=400, macs_before=8e6, macs_after=4e6)
        >>> s.compress_ratio
        2.0
        >>> print(s.table())
                         before      after   ratio
        ------------ ---------- ----------  ------
        parameters        1,000        400   2.50x
        MACs/sample   8,000,000  4,000,000   2.00x
    """

    params_before: int
    params_after: int
    macs_before: float
    macs_after: float
    nonzero_params_after: int | None = None
    metrics_before: dict[str, float] = field(default_factory=dict)
    metrics_after: dict[str, float] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def compress_ratio(self) -> float:
        """Original MACs / pruned MACs."""
        return self.macs_before / self.macs_after if self.macs_after else float("inf")

    def metrics(self) -> dict[str, float]:
        """Flat logger metrics, ``prune/...``."""
        out = {
            "prune/params_before": float(self.params_before),
            "prune/params_after": float(self.params_after),
            "prune/macs_before": float(self.macs_before),
            "prune/macs_after": float(self.macs_after),
            "prune/compress_ratio": float(self.compress_ratio),
        }
        if self.nonzero_params_after is not None:
            out["prune/nonzero_params_after"] = float(self.nonzero_params_after)
        out.update({f"prune/{k}_before": v for k, v in self.metrics_before.items()})
        out.update({f"prune/{k}_after": v for k, v in self.metrics_after.items()})
        return out

    def table(self) -> str:
        """A console table."""
        rows = [("", "before", "after", "ratio"), ("-" * 12, "-" * 10, "-" * 10, "-" * 6)]
        rows.append(("parameters", f"{self.params_before:,}", f"{self.params_after:,}",
                     f"{self.params_before / max(self.params_after, 1):.2f}x"))  # fmt: skip
        if self.nonzero_params_after is not None:
            rows.append(("nonzero", f"{self.params_before:,}", f"{self.nonzero_params_after:,}",
                         f"{self.params_before / max(self.nonzero_params_after, 1):.2f}x"))  # fmt: skip
        rows.append(
            (
                "MACs/sample",
                f"{self.macs_before:,.0f}",
                f"{self.macs_after:,.0f}",
                f"{self.compress_ratio:.2f}x",
            )
        )
        for key in sorted(self.metrics_before.keys() | self.metrics_after.keys()):
            before, after = self.metrics_before.get(key), self.metrics_after.get(key)
            rows.append(
                (
                    key,
                    "-" if before is None else f"{before:.4f}",
                    "-" if after is None else f"{after:.4f}",
                    "",
                )
            )
        lines = [f"{a:<12} {b:>10} {c:>10} {d:>7}" for a, b, c, d in rows]
        lines += [f"{name}: {path}" for name, path in self.files.items()]
        return "\n".join(lines)
