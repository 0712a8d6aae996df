"""Deployment artefacts: a plain pruned module, and its ONNX file."""

from __future__ import annotations

import copy
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from lightning_prune.sparsity import fold_nm_sparsity
from lightning_prune.surgery import prune_masked_channels

__all__ = ["export_onnx", "export_pruned_model", "validate_dynamic_axes"]


def export_pruned_model(model: nn.Module) -> nn.Module:
    """A plain, compact copy of ``model``: masked channels removed, N:M masks folded into the weights.

    Channel-masked layers really lose their pruned channels; N:M-sparse layers become ordinary
    layers whose weights hold the exact zero pattern. The returned module has no parametrizations
    or hooks of ours, and ``model`` is left untouched.

    Example:
        >>> from types import SimpleNamespace
        >>> from lightning_prune.sparsity import apply_nm_sparsity
        >>> net = nn.Sequential(nn.Linear(8, 4))
        >>> _ = apply_nm_sparsity(net, {"0": SimpleNamespace(n=2, m=4, update_freq=0)})
        >>> plain = export_pruned_model(net)
        >>> sorted(plain.state_dict())
        ['0.bias', '0.weight']
        >>> int((plain[0].weight == 0).sum())
        16
    """
    return fold_nm_sparsity(prune_masked_channels(copy.deepcopy(model)))


def validate_dynamic_axes(dynamic_axes: object) -> None:
    """Check ``dynamic_axes`` has ``torch.onnx.export``'s form: ``{name: {axis: label}}`` or ``{name: [axis, ...]}``.

    Raises:
        TypeError: naming the entry that has the wrong form, and the form expected.
    """
    if dynamic_axes is None:
        return
    hint = "expected {input_or_output_name: {axis_index: 'label'}} or {name: [axis_index, ...]}"
    if not isinstance(dynamic_axes, dict):
        raise TypeError(f"dynamic_axes={dynamic_axes!r} is a {type(dynamic_axes).__name__}; {hint}.")
    for name, axes in dynamic_axes.items():
        if not isinstance(name, str):
            raise TypeError(f"dynamic_axes key {name!r} is not a string; {hint}.")
        if isinstance(axes, dict):
            valid = all(isinstance(k, int) and k >= 0 and isinstance(v, str) for k, v in axes.items())
        elif isinstance(axes, (list, tuple)):
            valid = all(isinstance(k, int) and k >= 0 for k in axes)
        else:
            valid = False
        if not valid:
            raise TypeError(f"dynamic_axes[{name!r}]={axes!r} has the wrong form; {hint}.")


def _needs_external_data(model: nn.Module) -> bool:
    # A single ONNX protobuf cannot exceed 2 GB; below that one self-contained file is friendlier.
    size = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    return size > 1_800_000_000


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    example_inputs: tuple,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: dict | None = None,
) -> Path:
    """Write ``model`` (eval mode, masks folded) to ``path`` as ONNX; the file appears whole or not at all.

    Args:
        model: the model to export; it is copied, not modified.
        path: the ``.onnx`` file to write; parent directories are created.
        example_inputs: a tuple of example input tensors.
        input_names: optional ONNX input names.
        output_names: optional ONNX output names.
        dynamic_axes: optional ``torch.onnx.export``-style dynamic axes.

    Returns:
        The path written.
    """
    validate_dynamic_axes(dynamic_axes)
    plain = export_pruned_model(model).eval()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".onnx-export-") as scratch:
        scratch_file = Path(scratch) / target.name
        with warnings.catch_warnings():
            # AMCT users pass dynamic_axes; the exporter converts them itself and only says it prefers
            # dynamic_shapes. torch also warns about its own internals (LeafSpec) on some versions.
            warnings.filterwarnings("ignore", message=".*dynamic_axes.*")
            warnings.filterwarnings("ignore", message=".*from_dynamic_axes_to_dynamic_shapes.*")
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            torch.onnx.export(
                plain,
                tuple(example_inputs),
                str(scratch_file),
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                dynamic_axes=dynamic_axes,
                dynamo=True,
                verbose=False,
                external_data=_needs_external_data(plain),
            )
        produced = sorted(Path(scratch).iterdir())
        for file in produced:  # the .onnx file, plus external data for models >= 2 GB
            os.replace(file, target.parent / file.name)
    return target
