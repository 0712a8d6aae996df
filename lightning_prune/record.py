"""Record files: what was pruned, so a fresh model can be rebuilt without recomputing any score.

A :class:`~lightning_prune.proto.PruneRecord` is written in protobuf text format (or binary when
the path ends in ``.pb``), atomically, and carries a fingerprint of the model it was made for so
that applying it to another model fails with a message that names the first differing layer.

Example:
    >>> from torch import nn
    >>> record = PruneRecord(fingerprint=model_fingerprint(nn.Sequential(nn.Linear(4, 2))))
    >>> list(record.fingerprint.layer[0].param_shape)
    ['bias:2', 'weight:2x4']
    >>> unpack_mask(pack_mask(torch.tensor([[True, False, True]])), (1, 3))
    tensor([[ True, False,  True]])
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.config import iter_layers, layer_type_name
from lightning_prune.errors import RecordError
from lightning_prune.proto import LayerSignature, ModelFingerprint, PruneRecord

__all__ = [
    "atomic_write",
    "RECORD_FORMAT_VERSION",
    "check_fingerprint",
    "model_fingerprint",
    "pack_mask",
    "read_record",
    "unpack_mask",
    "write_record",
]

RECORD_FORMAT_VERSION = 1
_REBUILD_HINT = (
    "HINT: this record was made for another model; rebuild the model that produced it, or re-run "
    "create_prune_retrain_model to make a new record."
)


# ---- fingerprint -----------------------------------------------------------------------------


def _param_shapes(module: nn.Module) -> list[str]:
    """``"name:AxB"`` for each direct parameter, parametrized ones under their plain name, sorted.

    Sorted by name because parametrizing moves a tensor out of ``module._parameters``, which
    would change the registration order and so the fingerprint.
    """
    shapes = {name: p.shape for name, p in module.named_parameters(recurse=False)}
    if parametrize.is_parametrized(module):
        for name, plist in module.parametrizations.items():
            if next(plist.parameters(recurse=False), None) is None:
                continue  # a parametrized buffer, not a parameter
            original = getattr(plist, "original", None)  # absent when right_inverse splits it
            shapes[name] = (original if original is not None else getattr(module, name)).shape
    return [f"{name}:{'x'.join(map(str, shape)) or 'scalar'}" for name, shape in sorted(shapes.items())]


def _digest(layers: Sequence[LayerSignature]) -> str:
    sha = hashlib.sha256()
    for layer in layers:
        sha.update(f"{layer.name}\t{layer.type}\t{','.join(layer.param_shape)}\n".encode())
    return sha.hexdigest()


def model_fingerprint(model: nn.Module) -> ModelFingerprint:
    """Structure of ``model``: name, type and parameter shapes of every layer with parameters.

    Mask-only parametrizations (N:M) leave the fingerprint unchanged.
    """
    fingerprint = ModelFingerprint()
    for name, module in iter_layers(model):
        shapes = _param_shapes(module)
        if shapes:
            fingerprint.layer.add(name=name, type=layer_type_name(module), param_shape=shapes)
    fingerprint.digest = _digest(fingerprint.layer)
    return fingerprint


def _check_version(version: int, source: str) -> None:
    if version > RECORD_FORMAT_VERSION:
        raise RecordError(
            f"{source}: record format_version {version} was made by a newer lightning_prune (this one reads "
            f"version {RECORD_FORMAT_VERSION}). HINT: upgrade lightning_prune to read it."
        )
    if version < 1:
        raise RecordError(f"{source}: invalid record format_version {version}. HINT: versions start at 1.")


def _describe(layer: LayerSignature) -> str:
    return f"{layer.type} [{', '.join(layer.param_shape)}]"


def _first_difference(recorded: Sequence[LayerSignature], current: Sequence[LayerSignature]) -> str:
    if not recorded:
        return "the record's fingerprint has only a digest, so the differing layer is unknown"
    current_names = {layer.name for layer in current}
    for i in range(max(len(recorded), len(current))):
        if i >= len(current) or (i < len(recorded) and recorded[i].name not in current_names):
            layer = recorded[i]
            return f"layer `{layer.name}` is missing from the model (record: {_describe(layer)})"
        if i >= len(recorded) or recorded[i].name != current[i].name:
            layer = current[i]
            return f"the model has an extra layer `{layer.name}` (model: {_describe(layer)})"
        old, new = recorded[i], current[i]
        if old.type != new.type or list(old.param_shape) != list(new.param_shape):
            return f"layer `{old.name}` differs: record {_describe(old)}, model {_describe(new)}"
    return "the layer lists match but the digest does not (was the record's fingerprint edited?)"


def check_fingerprint(record: PruneRecord, model: nn.Module, source: str = "<record>") -> None:
    """Refuse a record made by a newer lightning_prune or for a different model.

    Raises:
        RecordError: Names ``source`` and the first layer where the model and the record differ.
    """
    _check_version(record.format_version, source)
    if not record.HasField("fingerprint"):
        return
    recorded = record.fingerprint
    current = model_fingerprint(model)
    if (recorded.digest or _digest(recorded.layer)) != current.digest:
        difference = _first_difference(recorded.layer, current.layer)
        raise RecordError(f"{source}: the record does not match the model: {difference}. {_REBUILD_HINT}")


# ---- files -----------------------------------------------------------------------------------


def _is_binary(path: Path) -> bool:
    return path.suffix == ".pb"


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file in the same directory + ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # os.open with 0o666 lets the umask decide the mode, as for a plain open().
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable on POSIX; not possible (nor needed) everywhere.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_record(path: str | os.PathLike, record: PruneRecord) -> None:
    """Write ``record`` atomically: text format, or binary if ``path`` ends in ``.pb``.

    Parent directories are created. On any error the previous file is left untouched.
    """
    path = Path(path)
    data = record.SerializeToString() if _is_binary(path) else text_format.MessageToString(record).encode()
    atomic_write(path, data)


def read_record(path: str | os.PathLike) -> PruneRecord:
    """Read a record written by :func:`write_record`.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RecordError: The file cannot be parsed (with line:column), or is from a newer version.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"record file not found: '{path}' (absolute: {path.absolute()})")
    data = path.read_bytes()
    record = PruneRecord()
    if _is_binary(path):
        try:
            record.ParseFromString(data)
        except DecodeError as err:
            raise RecordError(
                f"{path}: not a binary PruneRecord ({err}). HINT: a .pb record is written by "
                "write_record(); text records need another suffix, e.g. .txt."
            ) from err
    else:
        _parse_text_record(data, record, path)
    _check_version(record.format_version, str(path))
    return record


def _parse_text_record(data: bytes, record: PruneRecord, path: Path) -> None:
    try:
        text_format.Parse(data.decode("utf-8"), record)
    except UnicodeDecodeError as err:
        raise RecordError(
            f"{path}: not a text record ({err}). HINT: binary records need the .pb suffix."
        ) from err
    except text_format.ParseError as err:
        # A newer writer may add fields this version does not know: say so rather than "bad syntax".
        version = re.search(rb"^format_version:\s*(\d+)", data, re.MULTILINE)
        if version:
            _check_version(int(version.group(1)), str(path))
        where = f"{path}:{err.GetLine() or 0}:{err.GetColumn() or 0}"
        detail = re.sub(r"^\d+:\d+ : ", "", str(err))
        raise RecordError(
            f"{where}: cannot parse the record: {detail}. HINT: records are written by write_record(); "
            "re-create it rather than editing it by hand."
        ) from err


# ---- masks -----------------------------------------------------------------------------------


def pack_mask(mask: torch.Tensor) -> bytes:
    """Bit-pack a 0/1 (or bool) mask in row-major order, big bit order (``numpy.packbits``).

    Raises:
        ValueError: The mask holds values other than 0 and 1.
    """
    mask = mask.detach().cpu()
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(
                f"pack_mask: expected a bool or 0/1 mask, got other values (dtype {mask.dtype})."
            )
        mask = mask.to(torch.bool)
    return np.packbits(mask.reshape(-1).numpy(), bitorder="big").tobytes()


def unpack_mask(bits: bytes, shape: Sequence[int]) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: a bool tensor of ``shape``.

    Raises:
        RecordError: ``bits`` has the wrong length for ``shape``.
    """
    shape = tuple(int(dim) for dim in shape)
    if any(dim < 0 for dim in shape):
        raise RecordError(f"unpack_mask: invalid mask shape {list(shape)}. HINT: the record is corrupt.")
    numel = math.prod(shape)
    if len(bits) != (numel + 7) // 8:
        raise RecordError(
            f"unpack_mask: a mask of shape {list(shape)} ({numel} bits) needs {(numel + 7) // 8} bytes, got "
            f"{len(bits)}. HINT: the record's weight_shape and mask_bits disagree; re-create the record."
        )
    flat = np.unpackbits(np.frombuffer(bits, dtype=np.uint8), count=numel, bitorder="big")
    return torch.from_numpy(flat.astype(bool)).reshape(shape)
