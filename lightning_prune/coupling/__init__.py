"""Channel-coupling analysis: which output channels must be pruned together.

>>> from lightning_prune.coupling import analyze_coupling
"""

from lightning_prune.coupling.analysis import analyze_coupling
from lightning_prune.coupling.groups import ChannelGroup, ChannelNode, CouplingAnalysis
from lightning_prune.coupling.tracer import Trace, trace_model

__all__ = ["ChannelGroup", "ChannelNode", "CouplingAnalysis", "Trace", "analyze_coupling", "trace_model"]
