from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ChannelAxis(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT: _ClassVar[ChannelAxis]
    INPUT: _ClassVar[ChannelAxis]
OUTPUT: ChannelAxis
INPUT: ChannelAxis

class PruneRecord(_message.Message):
    __slots__ = ("format_version", "fingerprint", "channel_group", "n_out_of_m", "producer_version", "config_file")
    FORMAT_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_GROUP_FIELD_NUMBER: _ClassVar[int]
    N_OUT_OF_M_FIELD_NUMBER: _ClassVar[int]
    PRODUCER_VERSION_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    format_version: int
    fingerprint: ModelFingerprint
    channel_group: _containers.RepeatedCompositeFieldContainer[ChannelGroupRecord]
    n_out_of_m: _containers.RepeatedCompositeFieldContainer[NOutOfMRecord]
    producer_version: str
    config_file: str
    def __init__(self, format_version: _Optional[int] = ..., fingerprint: _Optional[_Union[ModelFingerprint, _Mapping]] = ..., channel_group: _Optional[_Iterable[_Union[ChannelGroupRecord, _Mapping]]] = ..., n_out_of_m: _Optional[_Iterable[_Union[NOutOfMRecord, _Mapping]]] = ..., producer_version: _Optional[str] = ..., config_file: _Optional[str] = ...) -> None: ...

class ModelFingerprint(_message.Message):
    __slots__ = ("digest", "layer")
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    LAYER_FIELD_NUMBER: _ClassVar[int]
    digest: str
    layer: _containers.RepeatedCompositeFieldContainer[LayerSignature]
    def __init__(self, digest: _Optional[str] = ..., layer: _Optional[_Iterable[_Union[LayerSignature, _Mapping]]] = ...) -> None: ...

class LayerSignature(_message.Message):
    __slots__ = ("name", "type", "param_shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    PARAM_SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    param_shape: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., param_shape: _Optional[_Iterable[str]] = ...) -> None: ...

class ChannelGroupRecord(_message.Message):
    __slots__ = ("producer", "consumer", "channels", "group", "pruned_index", "prune_ratio")
    PRODUCER_FIELD_NUMBER: _ClassVar[int]
    CONSUMER_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    PRUNED_INDEX_FIELD_NUMBER: _ClassVar[int]
    PRUNE_RATIO_FIELD_NUMBER: _ClassVar[int]
    producer: _containers.RepeatedCompositeFieldContainer[ChannelNode]
    consumer: _containers.RepeatedCompositeFieldContainer[ChannelNode]
    channels: int
    group: int
    pruned_index: _containers.RepeatedScalarFieldContainer[int]
    prune_ratio: float
    def __init__(self, producer: _Optional[_Iterable[_Union[ChannelNode, _Mapping]]] = ..., consumer: _Optional[_Iterable[_Union[ChannelNode, _Mapping]]] = ..., channels: _Optional[int] = ..., group: _Optional[int] = ..., pruned_index: _Optional[_Iterable[int]] = ..., prune_ratio: _Optional[float] = ...) -> None: ...

class ChannelNode(_message.Message):
    __slots__ = ("name", "type", "begin", "end", "prune_index", "axis")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PRUNE_INDEX_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    begin: int
    end: int
    prune_index: _containers.RepeatedScalarFieldContainer[int]
    axis: ChannelAxis
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., begin: _Optional[int] = ..., end: _Optional[int] = ..., prune_index: _Optional[_Iterable[int]] = ..., axis: _Optional[_Union[ChannelAxis, str]] = ...) -> None: ...

class NOutOfMRecord(_message.Message):
    __slots__ = ("name", "type", "weight_shape", "n", "m", "axis", "update_freq", "mask_bits")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    N_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    AXIS_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FREQ_FIELD_NUMBER: _ClassVar[int]
    MASK_BITS_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: str
    weight_shape: _containers.RepeatedScalarFieldContainer[int]
    n: int
    m: int
    axis: int
    update_freq: int
    mask_bits: bytes
    def __init__(self, name: _Optional[str] = ..., type: _Optional[str] = ..., weight_shape: _Optional[_Iterable[int]] = ..., n: _Optional[int] = ..., m: _Optional[int] = ..., axis: _Optional[int] = ..., update_freq: _Optional[int] = ..., mask_bits: _Optional[bytes] = ...) -> None: ...
