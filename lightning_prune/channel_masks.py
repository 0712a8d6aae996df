"""Channel masks: a pruning plan applied as zero masks, shapes unchanged.

A masked model in eval mode computes what the physically pruned model computes: every consumer
input column of a pruned channel is zeroed, so whatever flows through a pruned channel (even
``sigmoid(0) = 0.5``) never reaches the next layer. Producer rows, biases and BatchNorm
affine parameters are zeroed too, so pruned channels carry zeros and get no gradient.

Masks are ``torch.nn.utils.parametrize`` parametrizations; the mask is a persistent buffer,
so a checkpoint of a masked model (``<layer>.parametrizations.weight.original`` and
``<layer>.parametrizations.weight.0.mask``) restores it exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_prune.coupling.groups import CouplingAnalysis
from lightning_prune.coupling.plan import ChannelPlan, layer_indices


class ChannelMask(nn.Module):
    """Parametrization ``w -> w * mask`` with a persistent ``mask`` buffer (broadcast to ``w``).

    ``pruned`` keeps the layer's pruned channel indices per axis (``{"out": [...], "in": [...]}``),
    so a masked model can be made compact without tracing it again.
    """

    def __init__(self, mask: Tensor, pruned: dict[str, list[int]] | None = None) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        self.pruned = {axis: list(index) for axis, index in (pruned or {}).items()}

    def forward(self, x: Tensor) -> Tensor:
        """Apply the mask."""
        return x * self.mask


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels


def layer_masks(module: nn.Module, name: str, axes: dict[str, list[int]]) -> dict[str, Tensor]:
    """Masks (1 keep, 0 prune) for ``module``'s parameters, broadcastable to them.

    Raises:
        TypeError: If ``module`` is not a layer type the coupling analysis produces.
    """
    out_idx, in_idx = axes.get("out", []), axes.get("in", [])
    masks: dict[str, Tensor] = {}
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        w = module.weight
        mask = torch.ones(w.shape[:2] + (1,) * (w.dim() - 2), dtype=w.dtype, device=w.device)
        out_dim = 1 if isinstance(module, nn.ConvTranspose2d) else 0
        mask.index_fill_(out_dim, torch.tensor(out_idx, dtype=torch.long, device=w.device), 0)
        groups = getattr(module, "groups", 1)
        if in_idx and not _is_depthwise(module):
            if groups == 1:
                mask.index_fill_(1 - out_dim, torch.tensor(in_idx, dtype=torch.long, device=w.device), 0)
            else:  # grouped: row o sees input channels of its slice j at positions 0..w_in-1
                w_in, rows = w.shape[1], w.shape[0] // groups
                for c in in_idx:
                    j, p = divmod(c, w_in)
                    mask[j * rows : (j + 1) * rows, p] = 0
        masks["weight"] = mask
        if module.bias is not None and out_idx:
            bias = torch.ones_like(module.bias)
            bias[out_idx] = 0
            masks["bias"] = bias
    elif isinstance(module, nn.modules.batchnorm._NormBase):
        if module.affine:
            keep = torch.ones_like(module.weight)
            keep[in_idx] = 0
            masks["weight"] = keep
            masks["bias"] = keep.clone()
    else:
        raise TypeError(
            f"Layer '{name}' ({type(module).__name__}) cannot be channel-masked; only Conv2d, "
            "ConvTranspose2d, Linear and BatchNorm/InstanceNorm layers can."
        )
    return masks


def apply_channel_masks(model: nn.Module, analysis: CouplingAnalysis, plan: ChannelPlan) -> nn.Module:
    """Mask the channels of ``plan`` in place; shapes stay unchanged.

    Masks already present are replaced (the weights under them are kept), so the plan can be
    updated during training.

    Args:
        model: The model the analysis was made from.
        analysis: Its :class:`~lightning_prune.coupling.CouplingAnalysis`.
        plan: Group id → pruned channel indices (group coordinates).

    Returns:
        ``model``, masked.

    Example:
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3))
        >>> analysis = analyze_coupling(net, torch.randn(1, 3, 8, 8))
        >>> _ = apply_channel_masks(net, analysis, {0: [1, 2]})
        >>> net[0].weight[1:3].abs().sum().item(), net[3].weight[:, 1:3].abs().sum().item()
        (0.0, 0.0)
        >>> _ = remove_channel_masks(net)
    """
    remove_channel_masks(model, leave_parametrized=False)
    for name, axes in layer_indices(analysis, plan).items():
        module = model.get_submodule(name)
        for pname, mask in layer_masks(module, name, axes).items():
            parametrize.register_parametrization(module, pname, ChannelMask(mask, axes))
    return model


def masked_channels(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """Layer name -> its pruned channel indices per axis, read from the layer's channel masks."""
    found: dict[str, dict[str, list[int]]] = {}
    for name, m in model.named_modules():
        if parametrize.is_parametrized(m):
            for plist in m.parametrizations.values():
                for p in plist:
                    if isinstance(p, ChannelMask):
                        found[name] = p.pruned
    return found


def has_channel_masks(model: nn.Module) -> bool:
    """Whether any layer of ``model`` carries a :class:`ChannelMask`."""
    return any(
        isinstance(p, ChannelMask)
        for m in model.modules()
        if parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
    )


def remove_channel_masks(model: nn.Module, leave_parametrized: bool = True) -> nn.Module:
    """Remove every :class:`ChannelMask` in place.

    Args:
        model: A masked model.
        leave_parametrized: True bakes the masks in (pruned entries become zeros); False
            restores the unmasked weights.

    Returns:
        ``model``.

    Raises:
        ValueError: If a tensor carries a channel mask together with another parametrization.
    """
    for name, m in model.named_modules():
        if not parametrize.is_parametrized(m):
            continue
        for pname in list(m.parametrizations.keys()):
            plist = list(m.parametrizations[pname])
            if not any(isinstance(p, ChannelMask) for p in plist):
                continue
            if not all(isinstance(p, ChannelMask) for p in plist):
                raise ValueError(
                    f"Layer '{name}'.{pname} has a channel mask and other parametrizations "
                    f"({[type(p).__name__ for p in plist]}); remove the others first."
                )
            _own_class(m)
            parametrize.remove_parametrizations(m, pname, leave_parametrized=leave_parametrized)
    return model


def _own_class(module: nn.Module) -> None:
    """Give a parametrized module a private class before removing a parametrization.

    ``copy.deepcopy`` of a parametrized module shares its generated ``Parametrized<Layer>``
    class, and ``remove_parametrizations`` deletes the property from that class, which would
    break every copy. A private class keeps the copies independent.
    """
    cls = type(module)
    body = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
    module.__class__ = type(cls.__name__, cls.__bases__, body)


__all__ = [
    "ChannelMask",
    "apply_channel_masks",
    "has_channel_masks",
    "layer_masks",
    "masked_channels",
    "remove_channel_masks",
]
