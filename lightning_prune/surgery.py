"""Physical channel removal, the train-mode forward check, and BalancedL2Norm plans.

A *plan* maps channel-group ids of a :class:`~lightning_prune.coupling.CouplingAnalysis` to the
channels to remove, in group coordinates. :func:`prune_channels` slices every layer of those
groups in place (``index_select`` on weights, biases and BatchNorm statistics, and the module
attributes updated), so the result is a plain module of the same class with fewer channels.

Restoring a compact model from a record: fresh model → :func:`analyze_coupling` →
:func:`records_to_plan` → :func:`prune_channels` → ``load_state_dict``.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Mapping

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from lightning_prune.channel_masks import (
    apply_channel_masks,
    has_channel_masks,
    masked_channels,
    remove_channel_masks,
)
from lightning_prune.coupling.groups import CouplingAnalysis
from lightning_prune.coupling.plan import ChannelPlan, keep_index, layer_indices, normalize_plan
from lightning_prune.coupling.records import plan_to_records, records_to_plan
from lightning_prune.coupling.tracer import repeat_batch
from lightning_prune.functional.channels import balanced_l2_scores, channels_to_keep, select_pruned_channels


def _set(module: nn.Module, name: str, value: Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _take(module: nn.Module, name: str, dim: int, keep: Tensor) -> None:
    t = getattr(module, name, None)
    if t is not None:
        _set(module, name, t.detach().index_select(dim, keep.to(t.device)).clone())


def _per_slice(pruned: list[int], size: int, groups: int, what: str, name: str) -> list[list[int]]:
    width = size // groups
    parts = [[i - j * width for i in pruned if i // width == j] for j in range(groups)]
    if len({len(p) for p in parts}) != 1:
        raise ValueError(
            f"Layer '{name}' (groups={groups}): pruning {what} channels {pruned} removes a different "
            "number from each group; grouped convs need equal counts per slice."
        )
    return parts


def _prune_conv(m: nn.Conv2d | nn.ConvTranspose2d, name: str, axes: dict[str, list[int]]) -> None:
    out_idx, in_idx = axes.get("out", []), axes.get("in", [])
    if isinstance(m, nn.ConvTranspose2d):
        if m.groups != 1:
            raise ValueError(f"Layer '{name}': grouped ConvTranspose2d cannot be channel-pruned.")
        if out_idx:
            keep = keep_index(m.out_channels, out_idx)
            _take(m, "weight", 1, keep)
            _take(m, "bias", 0, keep)
            m.out_channels = len(keep)
        if in_idx:
            keep = keep_index(m.in_channels, in_idx)
            _take(m, "weight", 0, keep)
            m.in_channels = len(keep)
        return
    g = m.groups
    if 1 < g == m.in_channels == m.out_channels:  # depthwise: in, out and groups shrink together
        if sorted(out_idx) != sorted(in_idx):
            raise ValueError(f"Layer '{name}' is depthwise; its in- and out-channel prune sets must match.")
        keep = keep_index(m.out_channels, out_idx)
        _take(m, "weight", 0, keep)
        _take(m, "bias", 0, keep)
        m.in_channels = m.out_channels = m.groups = len(keep)
        return
    if out_idx:
        _per_slice(out_idx, m.out_channels, g, "output", name)
        keep = keep_index(m.out_channels, out_idx)
        _take(m, "weight", 0, keep)
        _take(m, "bias", 0, keep)
        m.out_channels = len(keep)
    if in_idx:
        if g == 1:
            _take(m, "weight", 1, keep_index(m.in_channels, in_idx))
        else:
            parts = _per_slice(in_idx, m.in_channels, g, "input", name)
            w, rows, w_in = m.weight.detach(), m.out_channels // g, m.in_channels // g
            blocks = [
                w[j * rows : (j + 1) * rows].index_select(1, keep_index(w_in, parts[j])) for j in range(g)
            ]
            _set(m, "weight", torch.cat(blocks, 0).clone())
        m.in_channels -= len(in_idx)


def _prune_layer(m: nn.Module, name: str, axes: dict[str, list[int]]) -> None:
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        _prune_conv(m, name, axes)
    elif isinstance(m, nn.Linear):
        if axes.get("out"):
            keep = keep_index(m.out_features, axes["out"])
            _take(m, "weight", 0, keep)
            _take(m, "bias", 0, keep)
            m.out_features = len(keep)
        if axes.get("in"):
            keep = keep_index(m.in_features, axes["in"])
            _take(m, "weight", 1, keep)
            m.in_features = len(keep)
    elif isinstance(m, nn.modules.batchnorm._NormBase):
        keep = keep_index(m.num_features, axes.get("in", []))
        for pname in ("weight", "bias", "running_mean", "running_var"):
            _take(m, pname, 0, keep)
        m.num_features = len(keep)
    else:
        raise TypeError(
            f"Layer '{name}' ({type(m).__name__}) cannot be channel-pruned; only Conv2d, "
            "ConvTranspose2d, Linear and BatchNorm/InstanceNorm layers can."
        )


def prune_channels(model: nn.Module, analysis: CouplingAnalysis, plan: ChannelPlan) -> nn.Module:
    """Physically remove the planned channels from ``model``, in place.

    Channel masks, if present, are baked in and removed first. Deep-copy the model before
    calling this if you need the original.

    Args:
        model: The model ``analysis`` was made from (same structure, unpruned).
        analysis: Its coupling analysis.
        plan: Group id → pruned channel indices in group coordinates.

    Returns:
        ``model``: same class, fewer channels, same eval outputs as the masked model.

    Raises:
        ValueError: If the plan does not fit the analysis (see :func:`normalize_plan`).

    Example:
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> analysis = analyze_coupling(net, torch.randn(1, 3, 8, 8))
        >>> net = prune_channels(net, analysis, {0: [0, 5]})
        >>> net[0].out_channels, net[1].num_features, net[3].weight.shape[1]
        (6, 6, 6)
    """
    per_layer = layer_indices(analysis, plan)
    if has_channel_masks(model):
        remove_channel_masks(model, leave_parametrized=True)
    for name, axes in per_layer.items():
        _prune_layer(model.get_submodule(name), name, axes)
    return model


def prune_masked_channels(model: nn.Module) -> nn.Module:
    """Physically remove the channels that channel masks zero, in place, and drop the masks.

    Needs no analysis: each mask remembers its layer's pruned indices. Deep-copy first to keep
    the masked model.

    Example:
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> _ = apply_channel_masks(net, analyze_coupling(net, torch.randn(1, 3, 8, 8)), {0: [1, 2]})
        >>> net = prune_masked_channels(net)
        >>> net[0].out_channels, net[1].num_features, net[3].in_channels
        (6, 6, 6)
    """
    per_layer = masked_channels(model)
    remove_channel_masks(model, leave_parametrized=True)
    for name, axes in per_layer.items():
        _prune_layer(model.get_submodule(name), name, axes)
    return model


def _out_weight(m: nn.Module) -> Tensor:
    w = m.weight.detach()
    return w.transpose(0, 1) if isinstance(m, nn.ConvTranspose2d) else w


def balanced_l2_plan(
    model: nn.Module, analysis: CouplingAnalysis, prune_ratio: float | Mapping[str, float], multiple: int = 1
) -> dict[int, Tensor]:
    """A plan choosing channels by BalancedL2Norm (AMCT's BCP), over all prunable groups.

    Args:
        model: The analysed model.
        analysis: Its coupling analysis.
        prune_ratio: One ratio for every group, or producer name → ratio; a group takes the
            minimum over its named producers and is skipped if none is named.
        multiple: Round kept channels up to a multiple of this (16 for Ascend alignment).

    Returns:
        Group id → sorted pruned indices, for groups that lose at least one channel.
    """
    plan = {}
    for g in analysis.prunable_groups:
        if isinstance(prune_ratio, Mapping):
            ratios = [prune_ratio[p.name] for p in g.producers if p.name in prune_ratio]
            if not ratios:
                continue
            ratio = min(ratios)
        else:
            ratio = prune_ratio
        n_prune = g.channels - channels_to_keep(g.channels, ratio, multiple, g.group)
        if n_prune > 0:
            scores = balanced_l2_scores([_out_weight(model.get_submodule(p.name)) for p in g.producers])
            plan[g.id] = select_pruned_channels(scores, n_prune, g.group)
    return plan


def _shapes(out: object) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, Tensor)]


def drop_breaking_groups(
    model: nn.Module, analysis: CouplingAnalysis, plan: ChannelPlan, example_inputs: tuple | Tensor
) -> dict[int, list[int]]:
    """Drop the groups whose pruning breaks a train-mode forward, found by bisection.

    The pruned copy must run ``model(*example_inputs)`` in train mode and give outputs of the
    same shapes as the unpruned model. ``model`` itself, and the global RNG, are left unchanged.
    If the unpruned model fails its train-mode forward on a batch of one (BatchNorm on a 1x1
    map), the check runs on the batch repeated twice.

    Returns:
        The plan without the breaking groups (a warning names each dropped group's layers).

    Raises:
        RuntimeError: If even the unpruned model fails its train-mode forward.
    """
    inputs = (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)
    plan = normalize_plan(analysis, plan)
    errors: dict[int, str] = {}

    def run(gids: list[int]) -> str:
        m = copy.deepcopy(model)
        try:
            prune_channels(m, analysis, {g: plan[g] for g in gids})
            with torch.random.fork_rng(devices=[]):
                got = _shapes(m.train()(*inputs))
        except Exception as err:  # noqa: BLE001 - any failure means this subset breaks the model
            return f"{type(err).__name__}: {err}"
        return "" if got == reference else f"output shapes {got} != {reference}"

    def reference_shapes(args: tuple) -> list[tuple[int, ...]]:
        with torch.random.fork_rng(devices=[]):
            return _shapes(copy.deepcopy(model).train()(*args))

    try:
        reference = reference_shapes(inputs)
    except Exception as err:
        # A batch of one fails in train mode wherever BatchNorm sees a single value per channel
        # (a 1x1 map, e.g. an auxiliary head): check with the batch repeated instead.
        doubled, reference = repeat_batch(inputs), None
        if doubled is not None:
            with contextlib.suppress(Exception):
                reference, inputs = reference_shapes(doubled), doubled
        if reference is None:
            raise RuntimeError(
                f"drop_breaking_groups: the unpruned model fails its train-mode forward: {err}. "
                "HINT: check example_inputs."
            ) from err

    def bisect(gids: list[int]) -> list[int]:
        why = run(gids)
        if not why:
            return []
        if len(gids) == 1:
            errors[gids[0]] = why
            return gids
        half = len(gids) // 2
        bad = bisect(gids[:half]) + bisect(gids[half:])
        rest = [g for g in gids if g not in bad]
        if rest and run(rest):  # breaks only in combination: add greedily
            kept: list[int] = []
            for g in rest:
                why = run([*kept, g])
                if why:
                    errors[g] = why
                    bad.append(g)
                else:
                    kept.append(g)
        return bad

    for gid in bisect(sorted(plan)):
        layers = ", ".join(f"'{n}'" for n in analysis.group(gid).layer_names)
        warnings.warn(
            f"drop_breaking_groups: channel group {gid} ({layers}) is not pruned: the pruned model "
            f"failed its train-mode forward ({errors[gid]}). HINT: look for hard-coded channel counts "
            "in forward() (view/reshape sizes).",
            UserWarning,
            stacklevel=2,
        )
        del plan[gid]
    return plan


__all__ = [
    "apply_channel_masks",
    "balanced_l2_plan",
    "drop_breaking_groups",
    "plan_to_records",
    "prune_channels",
    "prune_masked_channels",
    "records_to_plan",
    "remove_channel_masks",
]
