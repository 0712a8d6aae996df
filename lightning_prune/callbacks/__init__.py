"""Lightning callbacks: one public callback per module."""

from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain

__all__ = ["StructuredSparsityRetrain"]
