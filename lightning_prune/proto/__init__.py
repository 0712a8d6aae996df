"""Protobuf schemas: the retrain config, the auto-search config and the record file.

The ``*_pb2.py`` modules are generated from the ``.proto`` files beside them by protoc 29
(``nox -s proto``); that gencode runs on protobuf runtimes 5.29 through 7.x, so no protoc is
needed at install time.
"""

from lightning_prune.proto.auto_channel_prune_config_pb2 import AutoChannelPruneConfig
from lightning_prune.proto.prune_record_pb2 import (
    ChannelGroupRecord,
    ChannelNode,
    LayerSignature,
    ModelFingerprint,
    NOutOfMRecord,
    PruneRecord,
)
from lightning_prune.proto.retrain_config_pb2 import AMCTRetrainConfig

__all__ = [
    "AMCTRetrainConfig",
    "AutoChannelPruneConfig",
    "ChannelGroupRecord",
    "ChannelNode",
    "LayerSignature",
    "ModelFingerprint",
    "NOutOfMRecord",
    "PruneRecord",
]
