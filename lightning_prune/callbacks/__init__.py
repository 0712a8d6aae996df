"""Lightning callbacks: one public callback per module."""

from lightning_prune.callbacks.channel_prune_search import ChannelPruneSearch
from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain

__all__ = ["ChannelPruneSearch", "StructuredSparsityRetrain"]
