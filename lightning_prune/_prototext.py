"""Protobuf text-format reading for the ``.cfg`` files, with errors that point at the line and the fix.

Shared by the retrain and search configs (:mod:`lightning_prune.config`): reading the file,
parsing it into a message, and turning protobuf's parse errors into a
:class:`~lightning_prune.errors.PruneConfigError` that shows the line, a caret under the column,
and a ``HINT:`` (valid field or enum names, did-you-mean suggestions, quoting rules).
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import descriptor_pool, text_format
from google.protobuf.message import Message

from lightning_prune.errors import PruneConfigError

# Quant message/enum types, mapped to the config field that holds them, to name it in errors.
_QUANT_TYPES = {
    "RetrainDataQuantConfig": "retrain_data_quant_config",
    "ActULQquantize": "retrain_data_quant_config",
    "ClipMaxMin": "retrain_data_quant_config",
    "RetrainWeightQuantConfig": "retrain_weight_quant_config",
    "ARQRetrain": "retrain_weight_quant_config",
    "WtsULQRetrain": "retrain_weight_quant_config",
    "DataType": "retrain_*_quant_config",
    "FakequantPrecisionMode": "fakequant_precision_mode",
}
_FILTER_EXAMPLE = "filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.3 } }"


# ---- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Where:
    """Position in a config for error messages: file, field path, and the layer it concerns."""

    source: str
    path: str = ""
    about: str = ""

    def child(self, field: str) -> _Where:
        return _Where(self.source, f"{self.path}.{field}" if self.path else field, self.about)

    def error(self, problem: str, hint: str) -> PruneConfigError:
        return PruneConfigError(f"{self.source}: `{self.path}`{self.about} {problem}. HINT: {hint}")


def _did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return f"did you mean {', '.join(f'`{c}`' for c in close)}? " if close else ""


def _decimal(value: float) -> float:
    # Proto floats are float32: 0.3 reads back as 0.30000001192...; report what the user wrote.
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _quant_error(source: str, field: str) -> PruneConfigError:
    return PruneConfigError(
        f"{source}: quantization is not supported by lightning_prune; remove `{field}` (it configures "
        "QAT). HINT: keep only the prune fields (prune_config, skip and override lists) to prune "
        "with lightning_prune; combined prune + QAT needs AMCT's create_compressed_retrain_model."
    )


# ---- text parsing -----------------------------------------------------------------------------


def _read_config_file(path: str | os.PathLike) -> str:
    file = Path(path)
    if not file.exists():
        raise FileNotFoundError(f"config file not found: '{file}' (absolute: {file.absolute()})")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise PruneConfigError(
            f"{file}: not a UTF-8 text file ({err}). HINT: a .cfg is protobuf "
            "text format, e.g. `prune_config { ... }`."
        ) from err


def _parse_text(text: str, message: Message, source: str) -> Message:
    if not text.strip():
        raise PruneConfigError(
            f"{source}: the config is empty. HINT: write at least `prune_config "
            f"{{ {_FILTER_EXAMPLE} }}` (retrain) or `compress_ratio: 1.3` (search)."
        )
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as err:
        raise _explain_parse_error(err, text, source) from err
    return message


def _explain_parse_error(err: text_format.ParseError, text: str, source: str) -> PruneConfigError:
    line, col = err.GetLine() or 0, err.GetColumn() or 0
    lines = text.splitlines()
    line_text = lines[line - 1] if 0 < line <= len(lines) else ""
    detail = re.sub(r"^\d+:\d+ : ", "", str(err))
    detail = detail.removeprefix(f"'{line_text}': ")  # protobuf repeats the line; we show it below
    quant_type = re.search(r'type "[\w.]*?\.?(\w+)"', detail)
    if quant_type and quant_type.group(1) in _QUANT_TYPES:
        return _quant_error(f"{source}:{line}:{col}", _QUANT_TYPES[quant_type.group(1)])
    excerpt = f"\n    {line_text}\n    {' ' * max(col - 1, 0)}^" if line_text else ""
    return PruneConfigError(
        f"{source}:{line}:{col}: cannot parse the config: {detail}{excerpt}\nHINT: {_parse_hint(detail)}"
    )


def _parse_hint(detail: str) -> str:
    unknown = re.search(r'Message type "([\w.]+)" has no field named "(\w+)"', detail)
    if unknown:
        names = _descriptor_names(unknown.group(1), lambda d: [f.name for f in d.fields])
        return f"{_did_you_mean(unknown.group(2), names)}valid fields here: {', '.join(names)}."
    bad_enum = re.search(r'Enum type "([\w.]+)" has no value named (\w+)', detail)
    if bad_enum:
        names = _descriptor_names(bad_enum.group(1), lambda d: [v.name for v in d.values], enum=True)
        return f"{_did_you_mean(bad_enum.group(2), names)}valid values: {', '.join(names)}."
    if "another member of oneof" in detail:
        return (
            "a prune_config holds either filter_pruner or n_out_of_m_pruner, not both; to mix them, "
            "give each layer its own prune_config in override_layer_configs."
        )
    if detail.startswith("Expected string"):
        return 'names are strings and need double quotes, e.g. `skip_layers: "layer1.0.conv1"`.'
    if "should not have multiple" in detail:
        return "a non-repeated field may appear only once per message; keep one of them."
    return (
        'protobuf text format is `field: value` for numbers and enums, `field: "text"` for '
        "strings, and `field { ... }` for messages; check the brackets and quotes around here."
    )


def _descriptor_names(full_name: str, names_of, enum: bool = False) -> list[str]:
    pool = descriptor_pool.Default()
    try:
        descriptor = pool.FindEnumTypeByName(full_name) if enum else pool.FindMessageTypeByName(full_name)
    except KeyError:
        return []
    return names_of(descriptor)
