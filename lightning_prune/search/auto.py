"""``auto_channel_prune_search``: per-group channel counts that reach a MACs target, as a retrain ``.cfg``."""

from __future__ import annotations

import difflib
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format
from torch import Tensor, nn

from lightning_prune.config import (
    FILTER_PRUNE_TYPES,
    FilterPruneSpec,
    is_depthwise,
    iter_layers,
    layer_type_name,
    load_auto_channel_prune_config,
)
from lightning_prune.coupling import analyze_coupling
from lightning_prune.coupling.groups import ChannelGroup, CouplingAnalysis
from lightning_prune.errors import PruneConfigError
from lightning_prune.functional.channels import balanced_l2_scores, channels_to_keep, select_pruned_channels
from lightning_prune.proto import AMCTRetrainConfig
from lightning_prune.search.greedy import GreedySearch
from lightning_prune.search.macs import macs_from_trace, measure_macs
from lightning_prune.search.output import (
    SearchResult,
    build_output_config,
    group_summaries,
    record_path_for,
    write_search_outputs,
)
from lightning_prune.search.problem import SearchChannelBase, SearchProblem
from lightning_prune.search.sensitivity import SensitivityBase, TaylorLossSensitivity, split_batches

__all__ = ["SEARCH_ALGORITHMS", "SENSITIVITIES", "auto_channel_prune_search"]

SENSITIVITIES: dict[str, type[SensitivityBase]] = {"TaylorLossSensitivity": TaylorLossSensitivity}
SEARCH_ALGORITHMS: dict[str, type[SearchChannelBase]] = {"GreedySearch": GreedySearch}
_FUNCTION = "auto_channel_prune_search"


def _decimal(value: float) -> float:
    # Proto floats are float32: 1.3 reads back as 1.29999995...; use what the user wrote.
    return float(np.format_float_positional(np.float32(value), unique=True, trim="0"))


def _check_type(argument: str, value: object, expected: tuple[type, ...]) -> None:
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in expected)
        raise TypeError(f"{_FUNCTION}: argument {argument} must be {names}, got {type(value).__name__}.")


def _resolve(argument: str, value: object, registry: Mapping[str, type], base: type) -> object:
    """A registered name → a fresh instance; an instance of ``base`` → itself."""
    if isinstance(value, str):
        if value not in registry:
            raise ValueError(
                f"{_FUNCTION}: {argument}={value!r} is not supported; valid names: "
                f"{', '.join(map(repr, registry))}, or an instance of a {base.__name__} subclass."
            )
        return registry[value]()
    if isinstance(value, type) and issubclass(value, base):
        raise TypeError(
            f"{_FUNCTION}: {argument} is the class {value.__name__}; pass an instance, "
            f"{argument}={value.__name__}()."
        )
    _check_type(argument, value, (str, base))
    return value


# ---- override_prune_cfg: which groups the user decides --------------------------------------------


@dataclass
class _UserSettings:
    """The user's ``override_prune_cfg``: skipped names/types and per-layer BCP settings."""

    proto: AMCTRetrainConfig | None = None
    source: str = ""
    skip_names: set[str] = field(default_factory=set)
    skip_types: set[str] = field(default_factory=set)
    by_name: dict[str, FilterPruneSpec] = field(default_factory=dict)
    by_type: dict[str, FilterPruneSpec] = field(default_factory=dict)

    def lists(self, name: str, module: nn.Module) -> bool:
        """Whether the user's file mentions this layer (skip or override, by name or by type)."""
        kind = layer_type_name(module)
        return (
            name in self.skip_names or name in self.by_name or kind in self.skip_types or kind in self.by_type
        )

    def skips(self, name: str, module: nn.Module) -> bool:
        """Whether a skip list names this layer or its type: its output channels all stay."""
        return name in self.skip_names or layer_type_name(module) in self.skip_types

    def spec(self, name: str, module: nn.Module) -> FilterPruneSpec | None:
        """The user's setting for this layer's output channels (skip lists win)."""
        kind = layer_type_name(module)
        if self.skips(name, module):
            return None
        if name in self.by_name:
            return self.by_name[name]
        ok = kind in FILTER_PRUNE_TYPES and not is_depthwise(module)
        return self.by_type.get(kind) if ok else None


def _bcp_spec(prune_config) -> FilterPruneSpec:
    bcp = prune_config.filter_pruner.balanced_l2_norm_filter_prune
    multiple = bcp.channel_multiple or (16 if bcp.ascend_optimized else 1)
    return FilterPruneSpec(prune_ratio=_decimal(bcp.prune_ratio), channel_multiple=multiple)


def _read_user_settings(path: str, model: nn.Module) -> _UserSettings:
    """Parse ``override_prune_cfg`` (already validated by the config loader) and check its layer names."""
    if not path:
        return _UserSettings()
    proto = text_format.Parse(Path(path).read_text(encoding="utf-8"), AMCTRetrainConfig())
    user = _UserSettings(proto, path)
    user.skip_names = {*proto.skip_layers, *proto.regular_prune_skip_layers}
    user.skip_types = {*proto.skip_layer_types, *proto.regular_prune_skip_types}
    user.by_name = {e.layer_name: _bcp_spec(e.prune_config) for e in proto.override_layer_configs}
    user.by_type = {e.layer_type: _bcp_spec(e.prune_config) for e in proto.override_layer_types}
    layers = [name for name, _ in iter_layers(model)]
    known = set(layers)
    named = [
        *(("skip_layers", n) for n in proto.skip_layers),
        *(("regular_prune_skip_layers", n) for n in proto.regular_prune_skip_layers),
        *(("override_layer_configs.layer_name", n) for n in user.by_name),
    ]
    for where, name in named:
        if name not in known:
            close = difflib.get_close_matches(name, layers, n=3, cutoff=0.5)
            guess = f"did you mean {', '.join(map(repr, close))}? " if close else ""
            raise PruneConfigError(
                f'{path}: `{where}` names layer "{name}", which the model does not have. '
                f"HINT: {guess}use names from model.named_modules()."
            )
    return user


def _split_groups(
    model: nn.Module, analysis: CouplingAnalysis, user: _UserSettings
) -> tuple[list[ChannelGroup], list[ChannelGroup]]:
    """(searchable groups, groups whose producers the user configured)."""
    searchable, configured = [], []
    for g in analysis.prunable_groups:
        modules = {p.name: model.get_submodule(p.name) for p in g.producers}
        if any(user.lists(name, m) for name, m in modules.items()):
            configured.append(g)
        elif all(layer_type_name(m) in FILTER_PRUNE_TYPES for m in modules.values()):
            searchable.append(g)  # a ConvTranspose2d producer cannot be written as a filter_pruner override
    return searchable, configured


def _user_plan(model: nn.Module, groups: Sequence[ChannelGroup], user: _UserSettings) -> dict[int, list[int]]:
    """The channels BalancedL2Norm removes, at the user's ratios, from the groups the user configured."""
    plan = {}
    for g in groups:
        modules = {p.name: model.get_submodule(p.name) for p in g.producers}
        if any(user.skips(name, m) for name, m in modules.items()):
            continue  # a skipped producer keeps all its output channels, so the whole group stays
        specs = [s for s in (user.spec(name, m) for name, m in modules.items()) if s is not None]
        if not specs:
            continue
        ratio, multiple = min(s.prune_ratio for s in specs), max(s.channel_multiple for s in specs)
        n_prune = g.channels - channels_to_keep(g.channels, ratio, multiple, g.group)
        if n_prune > 0:
            weights = [model.get_submodule(p.name).weight for p in g.producers]
            plan[g.id] = select_pruned_channels(balanced_l2_scores(weights), n_prune, g.group).tolist()
    return plan


# ---- checks of user extension results -------------------------------------------------------------


def _checked_scores(scores: object, groups: Sequence[ChannelGroup], who: str) -> dict[int, Tensor]:
    if not isinstance(scores, Mapping):
        raise TypeError(
            f"{who}.get_sensitivity must return {{group id: tensor}}, got {type(scores).__name__}."
        )
    out = {}
    for g in groups:
        label = f"{who}.get_sensitivity: channel group {g.id} (producers {', '.join(p.name for p in g.producers)})"
        if g.id not in scores:
            raise ValueError(f"{label} has no scores. HINT: return one tensor per group passed in.")
        s = torch.as_tensor(scores[g.id]).detach().to("cpu", torch.float64)
        if tuple(s.shape) != (g.channels,):
            raise ValueError(
                f"{label}: expected shape [{g.channels}] (one score per channel), got {list(s.shape)}."
            )
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError(
                f"{label}: scores must be finite and >= 0, got min {float(s.min())}, max "
                f"{float(s.max())}. HINT: use magnitudes, e.g. .abs()."
            )
        out[g.id] = s
    return out


def _no_search_space(
    analysis: CouplingAnalysis, configured: Sequence[ChannelGroup], user: _UserSettings
) -> str:
    blocked = len(analysis.groups) - len(analysis.prunable_groups)
    return (
        f"{_FUNCTION}: no channel group is left to search: the model has {len(analysis.groups)} channel groups, "
        f"{blocked} not prunable, {len(configured)} set by override_prune_cfg {user.source or '(none)'}, the rest "
        "produced by layers filter_pruner cannot prune. HINT: see analyze_coupling(model, inputs).report(), and "
        "leave at least one Conv2d/Linear producer out of override_prune_cfg."
    )


# ---- the API -----------------------------------------------------------------------------------------


def auto_channel_prune_search(
    model: nn.Module,
    config: str | os.PathLike,
    input_data: Sequence,
    output_cfg: str | os.PathLike,
    sensitivity: str | SensitivityBase = "TaylorLossSensitivity",
    search_alg: str | SearchChannelBase = "GreedySearch",
) -> SearchResult:
    r"""Search how many channels each coupled group keeps so that the model's MACs drop by ``compress_ratio``.

    AMCT's function of the same name and arguments. Steps: trace the channel groups
    (:func:`~lightning_prune.coupling.analyze_coupling`), measure every Conv/Linear layer's MACs
    on real shapes, score each channel (``sensitivity``), then let ``search_alg`` remove the
    channels with the least sensitivity per MAC saved until
    ``original MACs / pruned MACs >= compress_ratio``. Writes ``output_cfg``, a retrain ``.cfg``
    that ``create_prune_retrain_model`` and ``StructuredSparsityRetrain`` accept: one
    BalancedL2Norm override per producer layer of each pruned group (``prune_ratio =
    pruned/channels``), the ``override_prune_cfg`` entries, and ``channel_selection_record``
    naming ``<output_cfg stem>.record.txt``, the record of the exact channels chosen.

    The model is not changed (weights, buffers, training flags and ``.grad`` are as before).

    Args:
        model: The trained model.
        config: Path of an ``AutoChannelPruneConfig`` ``.cfg``: ``compress_ratio`` (> 1),
            ``ascend_optimized`` (keep multiples of 16 channels; ``channel_multiple`` overrides
            16), ``max_prune_ratio``, ``test_iteration``, ``override_prune_cfg`` (layers the user
            configures: kept out of the search, their setting copied into ``output_cfg``).
        input_data: ``[inputs, labels]``, samples on dim 0; split into ``test_iteration``
            batches for the sensitivity. ``inputs`` may be a tuple of tensors.
        output_cfg: Where to write the retrain ``.cfg``; the record goes next to it.
        sensitivity: ``"TaylorLossSensitivity"`` or a :class:`SensitivityBase` instance.
        search_alg: ``"GreedySearch"`` or a :class:`SearchChannelBase` instance.

    Returns:
        A :class:`SearchResult` (ratios, per-group table, plan, paths, timings). If the target
        cannot be reached, a ``UserWarning`` says so and ``reached`` is False; the files hold the
        best ratio found.

    Raises:
        TypeError: An argument of the wrong type.
        ValueError: An unknown ``sensitivity``/``search_alg`` name, fewer samples than
            ``test_iteration``, or a custom sensitivity/search returning invalid results.
        PruneConfigError: An invalid config, no searchable group, or nothing could be pruned.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(3, 32, 3), nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 8, 3))
        >>> x = torch.randn(4, 3, 8, 8)
        >>> labels = torch.randn(net(x).shape)
        >>> tmp = Path(tempfile.mkdtemp())
        >>> _ = (tmp / "search.cfg").write_text("compress_ratio: 1.5 ascend_optimized: false")
        >>> result = auto_channel_prune_search(net, str(tmp / "search.cfg"), [x, labels], str(tmp / "out.cfg"))
        >>> result.reached, result.groups[0].channels_after
        (True, 21)
        >>> lines = (tmp / "out.cfg").read_text().splitlines()
        >>> print("\n".join(line for line in lines if not line.startswith("#")))  # doctest: +NORMALIZE_WHITESPACE
        override_layer_configs {
          layer_name: "0"
          prune_config { filter_pruner { balanced_l2_norm_filter_prune {
                prune_ratio: 0.34375 ascend_optimized: false } } }
        }
        channel_selection_record: "out.record.txt"
    """
    _check_type("model", model, (nn.Module,))
    _check_type("config", config, (str, os.PathLike))
    _check_type("output_cfg", output_cfg, (str, os.PathLike))
    sens: SensitivityBase = _resolve("sensitivity", sensitivity, SENSITIVITIES, SensitivityBase)
    search: SearchChannelBase = _resolve("search_alg", search_alg, SEARCH_ALGORITHMS, SearchChannelBase)
    cfg = load_auto_channel_prune_config(config)
    batches = split_batches(input_data, cfg.test_iteration)  # checks input_data before any model run
    user = _read_user_settings(cfg.override_prune_cfg, model)
    param = next(model.parameters(), None)
    # One sample is enough to trace the channel groups and measure MACs per sample.
    example = tuple(t[:1].to(param.device) if param is not None else t[:1] for t in batches[0][0])
    timings, clock = {}, time.perf_counter()
    analysis = analyze_coupling(model, example)
    timings["analysis"], clock = time.perf_counter() - clock, time.perf_counter()
    layers = (
        macs_from_trace(analysis.trace, 1) if analysis.trace is not None else measure_macs(model, example)
    )
    timings["macs"], clock = time.perf_counter() - clock, time.perf_counter()

    searchable, configured = _split_groups(model, analysis, user)
    if not searchable:
        raise PruneConfigError(_no_search_space(analysis, configured, user))
    fixed_plan = _user_plan(model, configured, user)
    sens.setup_initialization(model, input_data, cfg.test_iteration)
    scores = _checked_scores(sens.get_sensitivity(searchable), searchable, type(sens).__name__)
    timings["sensitivity"], clock = time.perf_counter() - clock, time.perf_counter()

    multiple = cfg.channel_multiple or (16 if cfg.ascend_optimized else 1)
    target = _decimal(cfg.compress_ratio)
    problem = SearchProblem(
        analysis, searchable, scores, layers, target, multiple, _decimal(cfg.max_prune_ratio), fixed_plan
    )
    searched = problem.check_plan(search.channel_prune_search(problem), type(search).__name__)
    timings["search"], clock = time.perf_counter() - clock, time.perf_counter()

    plan = {**fixed_plan, **searched}
    final = problem.macs(searched)
    achieved = problem.original_macs / final
    if not plan:
        raise PruneConfigError(
            f"{_FUNCTION}: compress_ratio {target} is not reachable: no channel can be removed, "
            f"every searchable group is at its limit (channel multiple {multiple}, max_prune_ratio "
            f"{problem.max_prune_ratio}, at least one channel kept). HINT: set ascend_optimized: "
            "false or a smaller channel_multiple, or raise max_prune_ratio."
        )
    if achieved < target:
        warnings.warn(
            f"{_FUNCTION}: compress_ratio {target} is not reachable under the config's limits; the best "
            f"ratio reached is {achieved:.4f} ({problem.original_macs} -> {final} MACs). HINT: raise "
            "max_prune_ratio, lower the channel multiple (ascend_optimized: false or channel_multiple), "
            "or shrink override_prune_cfg; the written cfg holds the best plan found.",
            UserWarning,
            stacklevel=2,
        )
    out_cfg = build_output_config(
        analysis,
        searched,
        user.proto,
        cfg.ascend_optimized,
        cfg.channel_multiple,
        record_path_for(output_cfg).name,
    )
    header = (
        f"Written by lightning_prune auto_channel_prune_search from {os.fspath(config)}.\n"
        f"compress_ratio target {target}, achieved {achieved:.4f} "
        f"({problem.original_macs} -> {final} MACs per sample)."
    )
    record = write_search_outputs(model, analysis, plan, out_cfg, output_cfg, os.fspath(config), header)
    timings["write"] = time.perf_counter() - clock
    rows = group_summaries(
        analysis, layers, plan, [g.id for g in searchable], scores, [g.id for g in configured]
    )
    return SearchResult(
        target,
        achieved,
        achieved >= target,
        problem.original_macs,
        final,
        rows,
        plan,
        os.fspath(output_cfg),
        os.fspath(record),
        timings,
    )
