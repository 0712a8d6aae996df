"""Automatic channel-prune search: per-group channel counts that reach a MACs target.

:func:`auto_channel_prune_search` is AMCT's function of the same name: it scores every channel of
every coupled channel group (:class:`TaylorLossSensitivity`), measures the MACs of every layer on
real shapes (:func:`measure_macs`), and removes the channels with the least sensitivity per MAC
saved (:class:`GreedySearch`) until the target ratio is met. Both steps are pluggable through
:class:`SensitivityBase` and :class:`SearchChannelBase`.

>>> from lightning_prune.search import auto_channel_prune_search
"""

from lightning_prune.search.auto import SEARCH_ALGORITHMS, SENSITIVITIES, auto_channel_prune_search
from lightning_prune.search.greedy import GreedySearch, GreedyStep
from lightning_prune.search.macs import (
    LayerMacs,
    conv_macs,
    conv_transpose_macs,
    count_macs,
    linear_macs,
    macs_from_trace,
    measure_macs,
    plan_macs,
)
from lightning_prune.search.output import GroupSummary, SearchResult
from lightning_prune.search.problem import SearchChannelBase, SearchProblem, step_channels
from lightning_prune.search.sensitivity import SensitivityBase, TaylorLossSensitivity, split_batches

__all__ = [
    "SEARCH_ALGORITHMS",
    "SENSITIVITIES",
    "GreedySearch",
    "GreedyStep",
    "GroupSummary",
    "LayerMacs",
    "SearchChannelBase",
    "SearchProblem",
    "SearchResult",
    "SensitivityBase",
    "TaylorLossSensitivity",
    "auto_channel_prune_search",
    "conv_macs",
    "conv_transpose_macs",
    "count_macs",
    "linear_macs",
    "macs_from_trace",
    "measure_macs",
    "plan_macs",
    "split_batches",
    "step_channels",
]
