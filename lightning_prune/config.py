"""Retrain and auto-search configs: AMCT ``.cfg`` files, parsed, validated and resolved per layer.

An AMCT prune config (protobuf text format, ``AMCTRetrainConfig``) parses unchanged. Checks that
need no model run at parse time; checks against the model (layer names, layer types) run in
:meth:`RetrainConfig.resolve`. Every error is a :class:`~lightning_prune.errors.PruneConfigError`
that names the file, the field path or layer, the bad value, and ends with ``HINT:`` and the fix.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune._prototext import (
    _FILTER_EXAMPLE,
    _decimal,
    _did_you_mean,
    _parse_text,
    _quant_error,
    _read_config_file,
    _Where,
)
from lightning_prune.errors import PruneConfigError
from lightning_prune.proto import AMCTRetrainConfig, AutoChannelPruneConfig
from lightning_prune.proto.retrain_config_pb2 import NOutOfMType

__all__ = [
    "FILTER_PRUNE_TYPES",
    "N_OUT_OF_M_TYPES",
    "FilterPruneSpec",
    "LayerSpec",
    "NOutOfMSpec",
    "RetrainConfig",
    "is_depthwise",
    "iter_layers",
    "layer_type_name",
    "load_auto_channel_prune_config",
    "load_retrain_config",
    "parse_auto_channel_prune_config",
]

FILTER_PRUNE_TYPES = ("Conv2d", "Linear")
N_OUT_OF_M_TYPES = ("Conv2d", "Linear", "ConvTranspose2d")
_PRUNABLE_TYPES = tuple(dict.fromkeys(FILTER_PRUNE_TYPES + N_OUT_OF_M_TYPES))
_MAX_M = 64
_QUANT_FIELDS = (
    "batch_num",
    "retrain_data_quant_config",
    "retrain_weight_quant_config",
    "quant_skip_layers",
    "quant_skip_types",
    "fakequant_precision_mode",
)
_OVERRIDE_QUANT_FIELDS = ("retrain_data_quant_config", "retrain_weight_quant_config")
_SKIP_NAME_FIELDS = ("skip_layers", "regular_prune_skip_layers")
_SKIP_TYPE_FIELDS = ("skip_layer_types", "regular_prune_skip_types")
_NM_EXAMPLE = "n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 } }"


@dataclass(frozen=True)
class FilterPruneSpec:
    """Channel (filter) pruning of one layer with BalancedL2Norm (BCP).

    Attributes:
        prune_ratio: Fraction of output channels to remove, in (0, 1).
        channel_multiple: Keep a multiple of this many channels (16 for ``ascend_optimized``).
    """

    prune_ratio: float
    channel_multiple: int


@dataclass(frozen=True)
class NOutOfMSpec:
    """N:M sparsity of one layer: keep the ``n`` largest |w| of every ``m`` along the input axis.

    Attributes:
        n: Weights kept per group.
        m: Group size.
        update_freq: 0 = mask fixed at creation; k = recomputed every k training steps.
    """

    n: int
    m: int
    update_freq: int


LayerSpec = FilterPruneSpec | NOutOfMSpec
_KIND_FIELD = {FilterPruneSpec: "filter_pruner", NOutOfMSpec: "n_out_of_m_pruner"}
_KIND_TYPES = {FilterPruneSpec: FILTER_PRUNE_TYPES, NOutOfMSpec: N_OUT_OF_M_TYPES}


# ---- model helpers (shared with record.py) --------------------------------------------------


def layer_type_name(module: nn.Module) -> str:
    """Torch class name of ``module``, seen through ``torch.nn.utils.parametrize``'s subclass."""
    cls = type(module)
    # parametrize swaps the class for a generated subclass named "Parametrized<Original>".
    return cls.__bases__[0].__name__ if parametrize.is_parametrized(module) else cls.__name__


def iter_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """``model.named_modules()`` without parametrization internals (``*.parametrizations*``)."""
    for name, module in model.named_modules():
        internal = "parametrizations" in name.split(".")
        if not internal and not isinstance(module, parametrize.ParametrizationList):
            yield name, module


def is_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is a depthwise Conv2d (``groups == in_channels > 1``)."""
    in_channels = getattr(module, "in_channels", 0)
    return layer_type_name(module) == "Conv2d" and in_channels > 1 and module.groups == in_channels


def _candidate_kinds(module: nn.Module) -> set[type]:
    type_name, kinds = layer_type_name(module), set()
    if type_name in FILTER_PRUNE_TYPES and not is_depthwise(module):
        kinds.add(FilterPruneSpec)
    if type_name in N_OUT_OF_M_TYPES:
        kinds.add(NOutOfMSpec)
    return kinds


# ---- validation of prune settings (model independent) -----------------------------------------


def _reject_quantization(cfg: AMCTRetrainConfig, source: str) -> None:
    for field in _QUANT_FIELDS:
        is_list = field.startswith("quant_skip")
        if len(getattr(cfg, field)) if is_list else cfg.HasField(field):
            raise _quant_error(source, field)
    for list_name in ("override_layer_configs", "override_layer_types"):
        for i, entry in enumerate(getattr(cfg, list_name)):
            for field in _OVERRIDE_QUANT_FIELDS:
                if entry.HasField(field):
                    raise _quant_error(source, f"{list_name}[{i}].{field}")


def _dedupe_skip_lists(cfg: AMCTRetrainConfig, source: str) -> None:
    for field in _SKIP_NAME_FIELDS + _SKIP_TYPE_FIELDS:
        entries = getattr(cfg, field)
        repeated = [name for name, count in Counter(entries).items() if count > 1]
        if repeated:
            warnings.warn(
                f"{source}: `{field}` lists {', '.join(map(repr, repeated))} more than once; "
                "using each once. HINT: delete the repeated entries.",
                UserWarning,
                stacklevel=4,
            )
            unique = list(dict.fromkeys(entries))
            del entries[:]
            entries.extend(unique)


def _layer_spec(prune, where: _Where) -> LayerSpec:
    strategy = prune.WhichOneof("regular_prune_strategy")
    if strategy is None:
        raise where.error(
            "sets no pruning strategy",
            f"write `{_FILTER_EXAMPLE}` for channel pruning or `{_NM_EXAMPLE}` for N:M sparsity.",
        )
    where = where.child(strategy)
    if strategy == "filter_pruner":
        return _filter_spec(prune.filter_pruner, where)
    return _n_out_of_m_spec(prune.n_out_of_m_pruner, where)


def _filter_spec(pruner, where: _Where) -> FilterPruneSpec:
    if pruner.WhichOneof("algo") is None:
        raise where.error("sets no algorithm", f"write `{_FILTER_EXAMPLE}`.")
    bcp = pruner.balanced_l2_norm_filter_prune
    where = where.child("balanced_l2_norm_filter_prune.prune_ratio")
    if not bcp.HasField("prune_ratio"):
        raise where.error("is missing", "add `prune_ratio: 0.3` (the fraction of output channels to remove).")
    ratio = _decimal(bcp.prune_ratio)
    if not 0 < ratio < 1:
        raise where.error(
            f"must be in the open interval (0, 1), got {ratio}",
            "use the fraction of output channels to remove, e.g. 0.3; to keep a layer "
            "whole, list it in regular_prune_skip_layers instead.",
        )
    multiple = bcp.channel_multiple or (16 if bcp.ascend_optimized else 1)
    return FilterPruneSpec(prune_ratio=ratio, channel_multiple=multiple)


def _n_out_of_m_spec(pruner, where: _Where) -> NOutOfMSpec:
    if pruner.WhichOneof("algo") is None:
        raise where.error("sets no algorithm", f"write `{_NM_EXAMPLE}`.")
    l1 = pruner.l1_selective_prune
    where = where.child("l1_selective_prune")
    if l1.HasField("n") != l1.HasField("m"):
        raise where.error(
            f"sets only {'n' if l1.HasField('n') else 'm'}",
            "set both n and m (e.g. `n: 2 m: 4`), or neither and use n_out_of_m_type.",
        )
    if l1.HasField("n"):
        n, m = l1.n, l1.m
        if not 0 < n < m <= _MAX_M:
            raise where.error(
                f"has n={n}, m={m}; need 0 < n < m <= {_MAX_M}",
                "keep n of every m weights, e.g. `n: 2 m: 4`.",
            )
    else:
        pattern = NOutOfMType.Name(l1.n_out_of_m_type)  # "M4N2": groups of 4, keep 2
        m, n = map(int, re.fullmatch(r"M(\d+)N(\d+)", pattern).groups())
    if l1.update_freq < 0:
        raise where.child("update_freq").error(
            f"must be >= 0, got {l1.update_freq}",
            "use 0 to fix the mask at creation, or k > 0 to recompute it every k training steps.",
        )
    return NOutOfMSpec(n=n, m=m, update_freq=l1.update_freq)


@dataclass(frozen=True)
class _Override:
    spec: LayerSpec
    where: _Where


def _collect_overrides(cfg: AMCTRetrainConfig, source: str, list_name: str, key: str) -> dict[str, _Override]:
    found: dict[str, _Override] = {}
    for i, entry in enumerate(getattr(cfg, list_name)):
        where = _Where(source, f"{list_name}[{i}]")
        value = getattr(entry, key)
        if not value:
            raise where.error(
                f"has no {key}",
                f'add `{key}: "..."` naming the {"module" if key == "layer_name" else "torch class"}.',
            )
        where = _Where(source, where.path, f' ({key} "{value}")')
        if value in found:
            raise where.error(
                f'repeats {key} "{value}" of `{found[value].where.path}`', "merge the two entries into one."
            )
        if not entry.HasField("prune_config"):
            raise where.error(
                "has no prune_config", f"add `prune_config {{ {_FILTER_EXAMPLE} }}` or delete the entry."
            )
        found[value] = _Override(_layer_spec(entry.prune_config, where.child("prune_config")), where)
    return found


def _check_type_name(type_name: str, where: _Where, supported: tuple[str, ...], what: str) -> None:
    if type_name in supported:
        return
    hint = f"{_did_you_mean(type_name, supported)}supported torch class names: {', '.join(supported)}."
    if type_name in N_OUT_OF_M_TYPES:  # a prunable type, but not by this kind of pruner
        hint = f"{type_name} supports only n_out_of_m_pruner; use that, or remove the entry."
    raise where.error(f'names type "{type_name}", which {what} cannot prune', hint)


def _validate_prune_fields(cfg: AMCTRetrainConfig, source: str) -> tuple[dict[str, _Override], ...]:
    """Model-independent checks of everything but the global prune_config; returns the overrides."""
    _reject_quantization(cfg, source)
    _dedupe_skip_lists(cfg, source)
    by_name = _collect_overrides(cfg, source, "override_layer_configs", "layer_name")
    by_type = _collect_overrides(cfg, source, "override_layer_types", "layer_type")
    for type_name, override in by_type.items():
        kind = type(override.spec)
        where = _Where(source, override.where.path).child("layer_type")
        _check_type_name(type_name, where, _KIND_TYPES[kind], _KIND_FIELD[kind])
    for field in _SKIP_TYPE_FIELDS:
        for i, type_name in enumerate(getattr(cfg, field)):
            _check_type_name(type_name, _Where(source, f"{field}[{i}]"), _PRUNABLE_TYPES, "lightning_prune")
    return by_name, by_type


class RetrainConfig:
    """A parsed, validated ``AMCTRetrainConfig`` (the prune part of an AMCT retrain ``.cfg``).

    Args:
        proto: The parsed message; it is copied, and repeated skip entries are removed.
        source: Where it came from (a file path), used in every error message.

    Raises:
        PruneConfigError: The config sets quantization, no pruning, or an invalid prune field.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Conv2d(3, 32, 3), nn.ReLU(), nn.Conv2d(32, 64, 3),
        ...                       nn.Flatten(), nn.Linear(64, 10))
        >>> cfg = RetrainConfig.from_string('''
        ...     prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.25 } } }
        ...     regular_prune_skip_layers: "4"
        ...     override_layer_configs { layer_name: "2" prune_config {
        ...         n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 } } } }
        ... ''')
        >>> for name, spec in cfg.resolve(model).items():
        ...     print(name, spec)
        0 FilterPruneSpec(prune_ratio=0.25, channel_multiple=16)
        2 NOutOfMSpec(n=2, m=4, update_freq=0)
    """

    def __init__(self, proto: AMCTRetrainConfig, source: str = "<message>") -> None:
        self._source = source
        self._proto = AMCTRetrainConfig()
        self._proto.CopyFrom(proto)
        self._by_name, self._by_type = _validate_prune_fields(self._proto, source)
        has_global = self._proto.HasField("prune_config")
        if not (has_global or self._by_name or self._by_type):
            raise PruneConfigError(
                f"{source}: no prune_config: neither a global `prune_config` nor any "
                f"override sets one. HINT: add `prune_config {{ {_FILTER_EXAMPLE} }}`."
            )
        self._global = (
            _layer_spec(self._proto.prune_config, _Where(source, "prune_config")) if has_global else None
        )

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> RetrainConfig:
        """Read and validate a retrain ``.cfg`` file (protobuf text format)."""
        return cls.from_string(_read_config_file(path), source=str(path))

    @classmethod
    def from_string(cls, text: str, source: str = "<string>") -> RetrainConfig:
        """Parse and validate a retrain config given as protobuf text."""
        return cls(_parse_text(text, AMCTRetrainConfig(), source), source)

    @property
    def proto(self) -> AMCTRetrainConfig:
        """The parsed message (treat as read-only; skip lists are already de-duplicated)."""
        return self._proto

    @property
    def source(self) -> str:
        """The file path the config came from, or ``"<string>"``."""
        return self._source

    def to_text(self) -> str:
        """The config in protobuf text format."""
        return text_format.MessageToString(self._proto)

    def __repr__(self) -> str:
        return f"RetrainConfig(source={self._source!r})"

    def resolve(self, model: nn.Module) -> dict[str, LayerSpec]:
        """Map each pruned layer of ``model`` to its setting, in ``model.named_modules()`` order.

        Priority: layer-name override > layer-type override > global ``prune_config``; the global
        setting and type overrides apply only to layers their kind can prune. Skip lists win over
        everything. Skipped and unconfigured layers are absent.

        Raises:
            PruneConfigError: A listed layer is absent or of an unsupported type, or nothing is pruned.
        """
        layers = dict(iter_layers(model))
        self._check_layer_names(layers)
        skip_names = {n for f in _SKIP_NAME_FIELDS for n in getattr(self._proto, f)}
        skip_types = {t for f in _SKIP_TYPE_FIELDS for t in getattr(self._proto, f)}
        resolved = {}
        for name, module in layers.items():
            if name in skip_names or layer_type_name(module) in skip_types:
                continue
            spec = self._spec_for(name, module)
            if spec is not None:
                resolved[name] = spec
        if not resolved:
            raise PruneConfigError(
                f"no layer of the model is pruned by {self._source}: the model has "
                f"{_count_candidates(layers)}, and the skip lists and settings leave none. HINT: check "
                "regular_prune_skip_types / skip_layer_types and that the global prune_config's kind "
                f"(filter_pruner: {', '.join(FILTER_PRUNE_TYPES)} except depthwise; n_out_of_m_pruner: "
                f"{', '.join(N_OUT_OF_M_TYPES)}) matches layers of the model."
            )
        return resolved

    def _spec_for(self, name: str, module: nn.Module) -> LayerSpec | None:
        if name in self._by_name:
            return self._by_name[name].spec
        kinds = _candidate_kinds(module)
        by_type = self._by_type.get(layer_type_name(module))
        if by_type is not None and type(by_type.spec) in kinds:
            return by_type.spec
        return self._global if type(self._global) in kinds else None

    def _check_layer_names(self, layers: dict[str, nn.Module]) -> None:
        for field in _SKIP_NAME_FIELDS:
            for i, name in enumerate(getattr(self._proto, field)):
                where = _Where(self._source, f"{field}[{i}]")
                module = _find_layer(name, layers, where)
                if layer_type_name(module) not in _PRUNABLE_TYPES:
                    hint = _prefix_hint(name, layers) or (
                        f"remove it; skip lists take {', '.join(_PRUNABLE_TYPES)} layers (a BatchNorm "
                        "follows its producer conv, so skip that conv instead)."
                    )
                    raise where.error(
                        f'names layer "{name}", a {_describe(module)}, which is never pruned', hint
                    )
        for name, override in self._by_name.items():
            module = _find_layer(name, layers, _Where(self._source, override.where.path).child("layer_name"))
            kind = type(override.spec)
            if kind not in _candidate_kinds(module):
                raise override.where.error(
                    f'asks {_KIND_FIELD[kind]} for layer "{name}", a {_describe(module)}, which it '
                    f"cannot prune",
                    _unsupported_hint(module, kind),
                )


def _find_layer(name: str, layers: dict[str, nn.Module], where: _Where) -> nn.Module:
    if name in layers:
        return layers[name]
    hint = (
        _prefix_hint(name, layers)
        or f"{_did_you_mean(name, list(layers))}use names from model.named_modules()."
    )
    raise where.error(f'names layer "{name}", which the model does not have', hint)


def _prefix_hint(name: str, layers: dict[str, nn.Module]) -> str:
    inside = [n for n, m in layers.items() if n.startswith(f"{name}.") and _candidate_kinds(m)]
    more = " ..." if len(inside) > 8 else ""
    return (
        f"layer names are exact, not prefixes; list the layers inside: {', '.join(inside[:8])}{more}."
        if inside
        else ""
    )


def _describe(module: nn.Module) -> str:
    return f"depthwise {layer_type_name(module)}" if is_depthwise(module) else layer_type_name(module)


def _unsupported_hint(module: nn.Module, kind: type) -> str:
    if kind is FilterPruneSpec and is_depthwise(module):
        return (
            "a depthwise conv is pruned passively along with its producer; remove this override, "
            "or use n_out_of_m_pruner for it."
        )
    return f"{_KIND_FIELD[kind]} supports {', '.join(_KIND_TYPES[kind])}; remove this override."


def _count_candidates(layers: dict[str, nn.Module]) -> str:
    kinds = Counter(k for m in layers.values() for k in _candidate_kinds(m))
    return f"{kinds[FilterPruneSpec]} filter-prunable and {kinds[NOutOfMSpec]} N:M-prunable layer(s)"


def load_retrain_config(path: str | os.PathLike) -> RetrainConfig:
    """Read and validate a retrain ``.cfg`` file; same as :meth:`RetrainConfig.from_file`."""
    return RetrainConfig.from_file(path)


# ---- auto channel-prune search config ---------------------------------------------------------


def load_auto_channel_prune_config(path: str | os.PathLike) -> AutoChannelPruneConfig:
    """Read and validate an auto channel-prune search ``.cfg``; see :func:`parse_auto_channel_prune_config`."""
    return parse_auto_channel_prune_config(_read_config_file(path), source=str(path))


def parse_auto_channel_prune_config(text: str, source: str = "<string>") -> AutoChannelPruneConfig:
    """Parse and validate an ``AutoChannelPruneConfig`` given as protobuf text.

    A relative ``override_prune_cfg`` is resolved against the directory of ``source`` (the
    current directory for ``"<string>"``); the returned message holds the resolved path.

    Raises:
        PruneConfigError: A value is out of range, or ``override_prune_cfg`` is missing or invalid.

    Example:
        >>> cfg = parse_auto_channel_prune_config("compress_ratio: 1.3 max_prune_ratio: 0.7")
        >>> round(cfg.compress_ratio, 3), cfg.test_iteration, cfg.ascend_optimized
        (1.3, 1, True)
    """
    cfg = _parse_text(text, AutoChannelPruneConfig(), source)
    top = _Where(source)
    if not cfg.HasField("compress_ratio"):
        raise top.child("compress_ratio").error(
            "is missing", "add e.g. `compress_ratio: 1.3` (the original / pruned compute ratio, > 1)."
        )
    ratio = _decimal(cfg.compress_ratio)
    if not (math.isfinite(ratio) and ratio > 1):
        raise top.child("compress_ratio").error(
            f"must be a finite number > 1, got {ratio}", "1.3 keeps 1/1.3 = 77% of the compute."
        )
    max_ratio = _decimal(cfg.max_prune_ratio)
    if not 0 < max_ratio <= 1:
        raise top.child("max_prune_ratio").error(
            f"must be in (0, 1], got {max_ratio}", "e.g. 0.7 removes at most 70% of any layer's channels."
        )
    if cfg.test_iteration < 1:
        raise top.child("test_iteration").error(
            f"must be >= 1, got {cfg.test_iteration}",
            "it is the number of batches whose gradients the sensitivity accumulates.",
        )
    if cfg.override_prune_cfg:
        cfg.override_prune_cfg = str(_check_override_prune_cfg(cfg.override_prune_cfg, top))
    else:
        cfg.ClearField("override_prune_cfg")
    return cfg


def _check_override_prune_cfg(value: str, top: _Where) -> Path:
    where = top.child("override_prune_cfg")
    base = Path.cwd() if top.source.startswith("<") else Path(top.source).parent
    path = (base / value).resolve()
    if not path.is_file():
        raise where.error(
            f'names "{value}", which is not a file (looked for {path})',
            "relative paths are taken from the directory of the search config; fix the "
            "path or remove the field.",
        )
    cfg = _parse_text(_read_config_file(path), AMCTRetrainConfig(), str(path))
    by_name, by_type = _validate_prune_fields(cfg, str(path))
    if cfg.HasField("prune_config"):
        raise _Where(str(path), "prune_config").error(
            "is not allowed in an override_prune_cfg: the search chooses the ratios",
            "keep only skip lists and override_layer_configs / override_layer_types there.",
        )
    for override in [*by_name.values(), *by_type.values()]:
        if not isinstance(override.spec, FilterPruneSpec):
            raise override.where.error(
                "sets n_out_of_m_pruner; the search only does channel pruning",
                f"use `{_FILTER_EXAMPLE}` or drop the entry.",
            )
    return path
