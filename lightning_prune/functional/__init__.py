"""Pure tensor functions: masks, scores and counts. No modules, no Trainer, no I/O."""

from lightning_prune.functional.nm import nm_mask, nm_mask_is_valid

__all__ = ["nm_mask", "nm_mask_is_valid"]
