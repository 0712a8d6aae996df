"""lightning_prune: structured pruning for PyTorch Lightning."""

from lightning_prune.errors import PruneConfigError, RecordError

__version__ = "0.1.0"

__all__ = ["PruneConfigError", "RecordError", "__version__"]
