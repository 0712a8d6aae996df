"""Compute cost of convolution and linear layers in multiply-accumulates (MACs), from real shapes.

Every Conv/ConvTranspose/Linear layer costs ``positions x kernel x in x out / groups`` MACs per
sample, where ``positions`` is measured with forward hooks on one real forward pass:

* convolution: output positions (``H_out x W_out``), so ``MACs = output elements x (Cin/groups)
  x kh x kw``;
* transposed convolution: *input* positions (``H_in x W_in``): each input element is multiplied
  with a ``(Cout/groups) x kh x kw`` slice, so a stride-``s`` layer is not charged for the ``s^2``
  zeros that an output-based count would include;
* linear: rows per sample (1 for ``[B, C]``, ``T`` for ``[B, T, C]``).

This bilinear form makes the cost after pruning exact: a pruned model's MACs follow from the
layers' new channel counts alone (:func:`plan_macs`), which is what the greedy search updates
after every step.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 4 * 4, 10))
    >>> layers = measure_macs(net, torch.randn(2, 3, 4, 4))
    >>> layers["0"].macs, layers["2"].macs
    (3456, 1280)
    >>> count_macs(net, torch.randn(1, 3, 4, 4))
    4736
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

from lightning_prune.coupling.groups import CouplingAnalysis
from lightning_prune.coupling.plan import ChannelPlan, layer_indices
from lightning_prune.coupling.tracer import Trace

__all__ = [
    "LayerMacs",
    "conv_macs",
    "conv_transpose_macs",
    "count_macs",
    "linear_macs",
    "macs_from_trace",
    "measure_macs",
    "plan_macs",
]

Number = int | float


def _exact(value: Number) -> Number:
    """An integral float as int, so MAC counts stay exact integers where they are."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def conv_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    output_size: Sequence[int],
    groups: int = 1,
) -> int:
    """MACs of one convolution for one sample: output elements x ``Cin/groups`` x kernel elements.

    Example:
        >>> conv_macs(16, 32, (3, 3), (8, 8))  # 32*8*8 outputs, each 16*3*3 MACs
        294912
        >>> conv_macs(16, 16, (3, 3), (8, 8), groups=16)  # depthwise
        9216
    """
    return out_channels * math.prod(output_size) * (in_channels // groups) * math.prod(kernel_size)


def conv_transpose_macs(
    in_channels: int,
    out_channels: int,
    kernel_size: Sequence[int],
    input_size: Sequence[int],
    groups: int = 1,
) -> int:
    """MACs of one transposed convolution for one sample: input elements x ``Cout/groups`` x kernel.

    Example:
        >>> conv_transpose_macs(8, 4, (2, 2), (5, 5))  # 8*5*5 inputs, each scattered to 4*2*2
        3200
    """
    return in_channels * math.prod(input_size) * (out_channels // groups) * math.prod(kernel_size)


def linear_macs(in_features: int, out_features: int, rows: int = 1) -> int:
    """MACs of one linear layer for one sample with ``rows`` rows (tokens).

    Example:
        >>> linear_macs(64, 10), linear_macs(64, 10, rows=7)
        (640, 4480)
    """
    return rows * in_features * out_features


@dataclass(frozen=True)
class LayerMacs:
    """Measured cost of one Conv/ConvTranspose/Linear layer.

    Attributes:
        name: Qualified module name.
        type: torch class name.
        in_channels: Input channels (features).
        out_channels: Output channels (features).
        groups: Convolution groups (1 for Linear).
        kernel: Kernel elements, ``kh x kw`` (1 for Linear).
        positions: Per sample: output positions (conv), input positions (transposed conv) or
            rows (linear), summed over all calls of the layer in one forward.
    """

    name: str
    type: str
    in_channels: int
    out_channels: int
    groups: int
    kernel: int
    positions: Number

    @property
    def depthwise(self) -> bool:
        """Whether in-channels, out-channels and groups are equal (> 1): they shrink together."""
        return self.type != "Linear" and 1 < self.groups == self.in_channels == self.out_channels

    @property
    def macs(self) -> Number:
        """MACs per sample with the layer's channel counts."""
        return self.macs_with(self.in_channels, self.out_channels)

    def macs_with(self, in_channels: int, out_channels: int) -> Number:
        """MACs per sample after pruning to ``in_channels`` / ``out_channels``.

        A depthwise layer's groups shrink with its channels, so its cost is linear in them;
        any other layer keeps its groups and its cost is bilinear.

        Example:
            >>> layer = LayerMacs("c", "Conv2d", 16, 32, 1, 9, 64)
            >>> layer.macs, layer.macs_with(8, 32), layer.macs_with(8, 16)
            (294912, 147456, 73728)
        """
        if self.depthwise:
            return _exact(self.positions * self.kernel * out_channels)
        total = self.positions * self.kernel * in_channels * out_channels
        if isinstance(total, int) and total % self.groups == 0:
            return total // self.groups
        return _exact(total / self.groups)


_COST_TYPES = (nn.modules.conv._ConvNd, nn.Linear)


def _layer_entry(name: str, module: nn.Module, positions: Number) -> LayerMacs:
    if isinstance(module, nn.Linear):
        return LayerMacs(
            name, type(module).__name__, module.in_features, module.out_features, 1, 1, positions
        )
    return LayerMacs(
        name,
        type(module).__name__,
        module.in_channels,
        module.out_channels,
        module.groups,
        math.prod(module.kernel_size),
        positions,
    )


def _call_positions(module: nn.Module, input_numel: int, output_numel: int) -> int:
    """Positions computed by one call: output (conv), input (transposed conv) or rows (linear)."""
    if isinstance(module, nn.Linear):
        return output_numel // module.out_features
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        return input_numel // module.in_channels
    return output_numel // module.out_channels


def _as_tuple(example_inputs: tuple | Tensor) -> tuple:
    return (example_inputs,) if isinstance(example_inputs, Tensor) else tuple(example_inputs)


def measure_macs(
    model: nn.Module, example_inputs: tuple | Tensor, batch_size: int | None = None
) -> dict[str, LayerMacs]:
    """Run ``model(*example_inputs)`` once and measure every Conv/ConvTranspose/Linear layer's cost.

    The forward runs in eval mode without gradients; training flags and buffers are restored,
    so the model is left as it was. A layer called several times is charged for every call.
    Layers never called are absent.

    Args:
        model: The model.
        example_inputs: A tensor or a tuple of positional inputs.
        batch_size: Samples in ``example_inputs``; default: dim 0 of its first tensor. Counts
            are per sample.

    Returns:
        Layer name → :class:`LayerMacs`, in call order.

    Raises:
        ValueError: If ``batch_size`` cannot be inferred or is not positive.

    Example:
        >>> from torch import nn
        >>> layers = measure_macs(nn.Sequential(nn.Conv2d(3, 4, 3, stride=2)), torch.randn(5, 3, 9, 9))
        >>> layers["0"].positions, layers["0"].macs  # 4x4 outputs, 4 channels x 3x3x3 each
        (16, 1728)
    """
    inputs = _as_tuple(example_inputs)
    if batch_size is None:
        tensors = [t for t in tree_flatten(inputs)[0] if isinstance(t, Tensor)]
        if not tensors or tensors[0].dim() == 0:
            raise ValueError(
                "measure_macs: cannot infer the batch size from example_inputs (no tensor with a "
                "batch dimension). HINT: pass batch_size=... explicitly."
            )
        batch_size = tensors[0].shape[0]
    if batch_size < 1:
        raise ValueError(f"measure_macs: batch_size must be >= 1, got {batch_size}.")
    names = {id(m): n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    modules: dict[str, nn.Module] = {}

    def hook(module: nn.Module, args: tuple, output: object) -> None:
        name = names[id(module)]
        modules[name] = module
        out = tree_flatten(output)[0][0]
        calls[name] = calls.get(name, 0) + _call_positions(module, args[0].numel(), out.numel())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, _COST_TYPES)]
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    try:
        with torch.no_grad():
            model.eval()(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, flag in flags:
            m.training = flag
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return {
        name: _layer_entry(name, modules[name], _exact(total / batch_size)) for name, total in calls.items()
    }


def macs_from_trace(trace: Trace, batch_size: int) -> dict[str, LayerMacs]:
    """:func:`measure_macs` from a recorded forward pass instead of a new one.

    Args:
        trace: The trace of :func:`~lightning_prune.coupling.trace_model` (also kept as
            ``CouplingAnalysis.trace``).
        batch_size: Samples in the traced inputs.

    Returns:
        Layer name → :class:`LayerMacs`, in call order; equal to :func:`measure_macs` on the
        same inputs.

    Example:
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net, x = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3)), torch.randn(2, 3, 9, 9)
        >>> macs_from_trace(analyze_coupling(net, x).trace, batch_size=2) == measure_macs(net, x)
        True
    """
    calls: dict[str, int] = {}
    modules: dict[str, nn.Module] = {}
    for node in trace.nodes:
        if node.kind != "module" or not isinstance(node.module, _COST_TYPES) or not node.inputs:
            continue
        input_numel = math.prod(trace.values[node.inputs[0]].shape)
        output_numel = math.prod(trace.values[node.outputs[0]].shape)
        modules[node.target] = node.module
        calls[node.target] = calls.get(node.target, 0) + _call_positions(
            node.module, input_numel, output_numel
        )
    return {
        name: _layer_entry(name, modules[name], _exact(total / batch_size)) for name, total in calls.items()
    }


def count_macs(model: nn.Module, example_inputs: tuple | Tensor, batch_size: int | None = None) -> Number:
    """Total MACs per sample of the model's Conv/ConvTranspose/Linear layers; see :func:`measure_macs`.

    Example:
        >>> from torch import nn
        >>> count_macs(nn.Sequential(nn.Linear(8, 4), nn.Linear(4, 2)), torch.randn(3, 8))
        40
    """
    return _exact(sum(layer.macs for layer in measure_macs(model, example_inputs, batch_size).values()))


def plan_macs(layers: Mapping[str, LayerMacs], analysis: CouplingAnalysis, plan: ChannelPlan) -> Number:
    """Total MACs per sample after removing the channels of ``plan``, without touching any model.

    Equal to :func:`count_macs` of the model pruned by
    :func:`~lightning_prune.surgery.prune_channels` with the same plan.

    Args:
        layers: The unpruned model's costs, from :func:`measure_macs`.
        analysis: Its coupling analysis.
        plan: Group id → pruned channel indices (group coordinates).

    Raises:
        ValueError: If the plan does not fit the analysis (see
            :func:`~lightning_prune.coupling.plan.normalize_plan`).

    Example:
        >>> from torch import nn
        >>> from lightning_prune.coupling import analyze_coupling
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 4, 1))
        >>> x = torch.randn(1, 3, 2, 2)
        >>> layers, analysis = measure_macs(net, x), analyze_coupling(net, x)
        >>> plan_macs(layers, analysis, {}), plan_macs(layers, analysis, {0: [0, 1, 2, 3]})
        (224, 112)
    """
    removed = layer_indices(analysis, plan)
    total: Number = 0
    for name, layer in layers.items():
        axes = removed.get(name, {})
        total += layer.macs_with(
            layer.in_channels - len(axes.get("in", [])), layer.out_channels - len(axes.get("out", []))
        )
    return _exact(total)
