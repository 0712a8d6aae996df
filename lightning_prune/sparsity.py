"""N:M (2:4) structured sparsity held in the model as a weight parametrization.

Each sparse layer's ``weight`` becomes ``original * mask`` through
:func:`torch.nn.utils.parametrize.register_parametrization`, so:

- the effective weight carries the exact zero pattern before and after every optimizer step
  (masked entries get exactly zero gradient);
- shapes never change, so checkpoints, ``fit(ckpt_path=...)`` and DDP keep working;
- the mask and its step counter are persistent buffers: a checkpoint of the model restores them.

State-dict keys of a sparse layer ``fc`` are ``fc.parametrizations.weight.original`` and
``fc.parametrizations.weight.0.mask`` / ``.0.steps``. :func:`fold_nm_sparsity` turns the layers back
into plain ones whose weights hold the zeros.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lightning_prune.config import layer_type_name
from lightning_prune.functional.nm import nm_mask
from lightning_prune.proto import NOutOfMRecord
from lightning_prune.record import pack_mask, unpack_mask

__all__ = [
    "NM_SPARSE_TYPES",
    "NOutOfMMask",
    "apply_nm_sparsity",
    "fold_nm_sparsity",
    "masks_from_records",
    "nm_masks",
    "nm_records",
    "nm_sparse_layers",
    "nm_weight_axis",
    "refresh_nm_masks",
    "zero_masked_weights",
]

NM_SPARSE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)


class NMPattern(Protocol):
    """What :func:`apply_nm_sparsity` needs of a layer's spec (``config.NOutOfMSpec`` fits)."""

    n: int
    m: int
    update_freq: int


def nm_weight_axis(layer: nn.Module) -> int:
    """The input-channel axis of a layer's weight: 0 for transposed convs (``[Cin, Cout/g, kh, kw]``), else 1."""
    return 0 if isinstance(layer, nn.modules.conv._ConvTransposeNd) else 1


class NOutOfMMask(nn.Module):
    """Parametrization ``weight -> weight * mask`` with an N:M mask that can be refreshed.

    Args:
        mask: boolean keep-mask shaped like the weight.
        n: weights kept per group.
        m: group length.
        axis: weight axis the groups run along.
        update_freq: 0 keeps the mask fixed; ``k > 0`` recomputes it from the current weights
            before every ``k``-th training-mode forward of the layer after the first ``k``
            (AMCT counts batches the same way).
    """

    def __init__(self, mask: Tensor, n: int, m: int, axis: int, update_freq: int = 0) -> None:
        super().__init__()
        self.n, self.m, self.axis, self.update_freq = n, m, axis, update_freq
        self.register_buffer("mask", mask.to(torch.bool))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def forward(self, weight: Tensor) -> Tensor:
        return weight * self.mask

    def recompute(self, weight: Tensor) -> None:
        """Set the mask from ``weight`` (the unmasked tensor)."""
        self.mask.copy_(nm_mask(weight, self.n, self.m, self.axis))

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}, axis={self.axis}, update_freq={self.update_freq}"


def _mask_of(layer: nn.Module) -> NOutOfMMask | None:
    if not parametrize.is_parametrized(layer, "weight"):
        return None
    return next((p for p in layer.parametrizations.weight if isinstance(p, NOutOfMMask)), None)


def _refresh_before_forward(layer: nn.Module, args: object) -> None:
    """Forward pre-hook: count training forwards and refresh the mask every ``update_freq`` of them."""
    if not (layer.training and torch.is_grad_enabled()):
        return
    mask = _mask_of(layer)
    if mask is None or mask.update_freq <= 0:
        return
    if mask.steps.item() > 0 and mask.steps.item() % mask.update_freq == 0:
        with torch.no_grad():
            mask.recompute(layer.parametrizations.weight.original)
    mask.steps += 1


def _shared_parameter_names(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return names


def _skip_reason(name: str, layer: nn.Module, pattern: NMPattern, shared: dict[int, list[str]]) -> str:
    if not isinstance(layer, NM_SPARSE_TYPES):
        return f"its type {type(layer).__name__} is not one of Linear, Conv2d, ConvTranspose2d"
    if _mask_of(layer) is not None:
        return "it is already N:M-sparse"
    weight_names = shared.get(id(layer.weight), [])
    if len(weight_names) > 1:
        return f"its weight is shared by {', '.join(weight_names)}; masking one user would leave the others dense"
    length = layer.weight.shape[nm_weight_axis(layer)]
    if length <= pattern.n:
        return f"its input-channel axis has {length} weights, not more than n={pattern.n}, so nothing can be pruned"
    return ""


def apply_nm_sparsity(
    model: nn.Module,
    specs: Mapping[str, NMPattern],
    masks: Mapping[str, Tensor] | None = None,
) -> list[str]:
    """Make the named layers N:M-sparse in place.

    Layers that cannot be made sparse (unsupported type, a weight shared with another layer, an
    input axis no longer than ``n``) are left dense with a warning naming them; nothing is guessed.

    Args:
        model: the model; layer names are those of ``model.named_modules()``.
        specs: layer name -> pattern with ``n``, ``m`` and ``update_freq`` (e.g. ``NOutOfMSpec``).
        masks: optional layer name -> boolean mask to install instead of computing one (restore).

    Returns:
        The names of the layers made sparse, in ``specs`` order.

    Raises:
        KeyError: if a name is not a module of ``model``.
        ValueError: if a given mask does not match the layer's weight shape.

    Example:
        >>> from types import SimpleNamespace
        >>> net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> apply_nm_sparsity(net, {"0": SimpleNamespace(n=2, m=4, update_freq=0)})
        ['0']
        >>> int((net[0].weight == 0).sum())
        16
    """
    shared = _shared_parameter_names(model)
    sparse: list[str] = []
    for name, pattern in specs.items():
        layer = model.get_submodule(name)
        reason = _skip_reason(name, layer, pattern, shared)
        if reason:
            warnings.warn(f"Layer '{name}' is left dense: {reason}.", UserWarning, stacklevel=2)
            continue
        axis = nm_weight_axis(layer)
        with torch.no_grad():
            mask = nm_mask(layer.weight, pattern.n, pattern.m, axis)
        if masks is not None and name in masks:
            given = masks[name]
            if tuple(given.shape) != tuple(layer.weight.shape):
                raise ValueError(
                    f"Mask for layer '{name}' has shape {tuple(given.shape)} but its weight has "
                    f"{tuple(layer.weight.shape)}: the mask belongs to another model."
                )
            mask = given.to(device=layer.weight.device, dtype=torch.bool)
        parametrize.register_parametrization(
            layer, "weight", NOutOfMMask(mask, pattern.n, pattern.m, axis, pattern.update_freq)
        )
        if pattern.update_freq > 0:
            layer.register_forward_pre_hook(_refresh_before_forward)
        sparse.append(name)
    return sparse


def nm_sparse_layers(model: nn.Module) -> dict[str, NOutOfMMask]:
    """Layer name -> its :class:`NOutOfMMask`, for every N:M-sparse layer of ``model``."""
    found = {}
    for name, layer in model.named_modules():
        mask = _mask_of(layer)
        if mask is not None:
            found[name] = mask
    return found


def nm_masks(model: nn.Module) -> dict[str, Tensor]:
    """Layer name -> a copy of its current boolean mask."""
    return {name: mask.mask.detach().clone() for name, mask in nm_sparse_layers(model).items()}


def refresh_nm_masks(model: nn.Module) -> None:
    """Recompute every N:M mask from the layers' current (unmasked) weights."""
    with torch.no_grad():
        for name, mask in nm_sparse_layers(model).items():
            mask.recompute(model.get_submodule(name).parametrizations.weight.original)


def zero_masked_weights(model: nn.Module) -> None:
    """Write the zeros into the stored (unmasked) weights too, so both views of the weight agree."""
    with torch.no_grad():
        for name, mask in nm_sparse_layers(model).items():
            model.get_submodule(name).parametrizations.weight.original.mul_(mask.mask)


def _give_private_class(layer: nn.Module) -> None:
    """Give ``layer`` its own copy of its generated ``Parametrized*`` class.

    Deep copies of a parametrized module share that class, and removing a parametrization deletes
    the tensor's property from the class: without this, folding a copy would break the original.
    """
    shared = type(layer)
    layer.__class__ = type(shared.__name__, shared.__bases__, dict(shared.__dict__))


def fold_nm_sparsity(model: nn.Module) -> nn.Module:
    """Replace every N:M parametrization by a plain weight holding the zeros, in place; returns ``model``."""
    for name in nm_sparse_layers(model):
        layer = model.get_submodule(name)
        _give_private_class(layer)
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
        for key, hook in list(layer._forward_pre_hooks.items()):
            if hook is _refresh_before_forward:
                del layer._forward_pre_hooks[key]
    return model


def nm_records(model: nn.Module) -> list[NOutOfMRecord]:
    """One record per N:M-sparse layer: its pattern, weight shape and bit-packed mask."""
    records = []
    for name, mask in nm_sparse_layers(model).items():
        records.append(
            NOutOfMRecord(
                name=name,
                type=layer_type_name(model.get_submodule(name)),
                weight_shape=list(mask.mask.shape),
                n=mask.n,
                m=mask.m,
                axis=mask.axis,
                update_freq=mask.update_freq,
                mask_bits=pack_mask(mask.mask.cpu()),
            )
        )
    return records


def masks_from_records(records: list[NOutOfMRecord]) -> dict[str, Tensor]:
    """Layer name -> boolean mask, unpacked from records."""
    return {record.name: unpack_mask(record.mask_bits, list(record.weight_shape)) for record in records}
