"""lightning_prune: structured pruning for PyTorch Lightning.

Channel pruning and N:M (2:4) sparsity retraining driven by AMCT-compatible protobuf-text
configs, with record files that make every pruning reproducible and restorable.
"""

from lightning_prune.api import (
    create_prune_retrain_model,
    restore_prune_retrain_model,
    save_prune_retrain_model,
)
from lightning_prune.callbacks.channel_prune_search import ChannelPruneSearch
from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.config import FilterPruneSpec, NOutOfMSpec, RetrainConfig, load_retrain_config
from lightning_prune.errors import PruneConfigError, RecordError
from lightning_prune.export import export_onnx, export_pruned_model
from lightning_prune.search import (
    GreedySearch,
    SearchChannelBase,
    SearchResult,
    SensitivityBase,
    TaylorLossSensitivity,
    auto_channel_prune_search,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelPruneSearch",
    "FilterPruneSpec",
    "GreedySearch",
    "NOutOfMSpec",
    "PruneConfigError",
    "RecordError",
    "RetrainConfig",
    "SearchChannelBase",
    "SearchResult",
    "SensitivityBase",
    "StructuredSparsityRetrain",
    "TaylorLossSensitivity",
    "__version__",
    "auto_channel_prune_search",
    "create_prune_retrain_model",
    "export_onnx",
    "export_pruned_model",
    "load_retrain_config",
    "restore_prune_retrain_model",
    "save_prune_retrain_model",
]
