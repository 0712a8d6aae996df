"""AMCT-compatible functions: same names and argument order as ``amct_pytorch``.

An AMCT script switches by changing its import::

    import lightning_prune as amct
    model = amct.create_prune_retrain_model(model, input_data, "prune.cfg", "record.txt")
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.utils._pytree import tree_flatten

from lightning_prune.config import RetrainConfig
from lightning_prune.export import export_onnx
from lightning_prune.pruning import Pruning
from lightning_prune.record import read_record, write_record

__all__ = [
    "create_prune_retrain_model",
    "restore_prune_retrain_model",
    "save_prune_retrain_model",
]


def _check_type(function: str, argument: str, value: object, expected: type | tuple[type, ...]) -> None:
    if not isinstance(value, expected):
        names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple) else (expected,)))
        raise TypeError(f"{function}: argument {argument} must be {names}, got {type(value).__name__}.")


def _as_input_tuple(function: str, input_data: object) -> tuple:
    if isinstance(input_data, torch.Tensor):
        return (input_data,)
    _check_type(function, "input_data", input_data, (tuple, list))
    return tuple(input_data)


def _train_forward_shapes(model: nn.Module, inputs: tuple) -> list[tuple[int, ...]]:
    """Shapes of the tensors a train-mode forward returns; BN statistics and other buffers are left unchanged."""
    buffers = {name: buffer.detach().clone() for name, buffer in model.named_buffers()}
    was_training = model.training
    try:
        with torch.no_grad():
            out = model.train()(*inputs)
        return [tuple(t.shape) for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    finally:
        model.train(was_training)
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])


def _check_train_forward(function: str, model: nn.Module, inputs: tuple) -> list[tuple[int, ...]]:
    """Run one train-mode forward (buffers left unchanged); return its output shapes, or raise a RuntimeError."""
    try:
        return _train_forward_shapes(model, inputs)
    except Exception as error:
        raise RuntimeError(
            f"{function}: the model fails a train-mode forward with input_data "
            f"({type(error).__name__}: {error}). HINT: pass input_data of the shape the model expects."
        ) from error


def _forward_matches(model: nn.Module, inputs: tuple, reference: list[tuple[int, ...]]) -> bool:
    """Whether a train-mode forward runs and returns tensors of the ``reference`` shapes."""
    try:
        return _train_forward_shapes(model, inputs) == reference
    except Exception:  # noqa: BLE001 - any failure means the pruning breaks the model
        return False


def create_prune_retrain_model(
    model: nn.Module, input_data: tuple, config_defination: str, record_file: str
) -> nn.Module:
    """Return a copy of ``model`` pruned as ``config_defination`` says, ready for retraining; write the record.

    Channel pruning (``filter_pruner``) is applied physically, as AMCT does: the returned model
    really has fewer channels, so a plain training loop trains the small, fast model directly
    (the Lightning callback also offers masks). Groups whose removal breaks a train-mode forward
    on ``input_data`` are left unpruned with a warning naming them. N:M layers keep their shapes
    and get their masks as weight parametrizations: masked weights stay exactly zero through any
    optimizer step. With ``update_freq: k`` the masks are recomputed every ``k`` training forwards.

    Args:
        model: the model with its weights loaded; it is not modified.
        input_data: example inputs (a tuple; a bare tensor is wrapped), used only for checks.
        config_defination: path of the retrain ``.cfg`` (AMCT's spelling of the argument name).
        record_file: where to write the record; it is replaced atomically.

    Returns:
        The model to retrain.

    Raises:
        TypeError: an argument of the wrong type.
        PruneConfigError: an invalid config (the message names the file, field or layer).
        RuntimeError: the model does not run a train-mode forward on ``input_data``.
    """
    function = "create_prune_retrain_model"
    _check_type(function, "model", model, nn.Module)
    _check_type(function, "config_defination", config_defination, (str, os.PathLike))
    _check_type(function, "record_file", record_file, (str, os.PathLike))
    inputs = _as_input_tuple(function, input_data)
    config = RetrainConfig.from_file(config_defination)
    pruned = copy.deepcopy(model)
    reference = _check_train_forward(function, pruned, inputs)
    # Fast path: prune the copy and check it with one forward. Only if that fails, start again from
    # ``model`` and let drop_breaking_groups find the groups to leave unpruned (it warns about each).
    pruning = Pruning.from_config(pruned, config, inputs, check_forward=False)
    pruning.apply(pruned, channel_mode="compact")
    if not (pruning.channel_plan and _forward_matches(pruned, inputs, reference)):
        if pruning.channel_plan:
            pruned = copy.deepcopy(model)
            pruning.drop_breaking_groups(pruned, inputs)
            pruning.apply(pruned, channel_mode="compact")
        _check_train_forward(function, pruned, inputs)
    write_record(record_file, pruning.record(pruned))
    return pruned


def _load_checkpoint_state(pth_file: str, state_dict_name: str | None) -> dict[str, torch.Tensor]:
    checkpoint = torch.load(pth_file, map_location="cpu", weights_only=True)
    if state_dict_name is not None:
        if not isinstance(checkpoint, Mapping) or state_dict_name not in checkpoint:
            keys = list(checkpoint)[:8] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
            raise KeyError(
                f"restore_prune_retrain_model: {pth_file} has no entry {state_dict_name!r} (it has {keys}). "
                "HINT: pass the key under which the state_dict was saved, or state_dict_name=None."
            )
        checkpoint = checkpoint[state_dict_name]
    if not isinstance(checkpoint, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in checkpoint.values()
    ):
        hint = (
            " (it looks like a Lightning checkpoint: pass state_dict_name='state_dict')"
            if (isinstance(checkpoint, Mapping) and "state_dict" in checkpoint)
            else ""
        )
        raise ValueError(f"restore_prune_retrain_model: {pth_file} does not hold a state_dict{hint}.")
    return dict(checkpoint)


def _strip_prefix(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Drop a wrapper prefix (DDP's ``module.``, a LightningModule attribute such as ``model.``) if that fits."""
    if set(state) == expected:
        return state
    first = next(iter(state), "")
    while "." in first:
        prefix = first.split(".", 1)[0] + "."
        if not all(key.startswith(prefix) for key in state):
            break
        state = {key[len(prefix) :]: value for key, value in state.items()}
        if set(state) == expected:
            return state
        first = next(iter(state), "")
    return state


def restore_prune_retrain_model(
    model: nn.Module,
    input_data: tuple,
    record_file: str,
    config_defination: str,
    pth_file: str,
    state_dict_name: str | None = None,
) -> nn.Module:
    """Rebuild the pruned model of ``record_file`` from a fresh ``model``, then load ``pth_file``.

    Nothing is recomputed from weights: masks come from the record, so the result is exactly the
    model that was saved. Checkpoint keys prefixed by DDP's ``module.`` (or by a LightningModule
    attribute, e.g. ``model.``) are matched automatically.

    Args:
        model: a freshly built, unpruned model of the same architecture; it is not modified.
        input_data: example inputs (tuple or tensor) for the forward check.
        record_file: the record written by ``create_prune_retrain_model`` or the callback.
        config_defination: the retrain ``.cfg`` used to create the record (validated against the model).
        pth_file: a ``torch.save``-d state_dict, or a dict holding one under ``state_dict_name``.
        state_dict_name: key of the state_dict inside ``pth_file``.

    Returns:
        The pruned model with the checkpoint's weights.

    Raises:
        RecordError: the record is unreadable or belongs to another model.
        RuntimeError: the checkpoint's keys or shapes do not fit the pruned model.
    """
    function = "restore_prune_retrain_model"
    _check_type(function, "model", model, nn.Module)
    for argument, value in (
        ("record_file", record_file),
        ("config_defination", config_defination),
        ("pth_file", pth_file),
    ):
        _check_type(function, argument, value, (str, os.PathLike))
    inputs = _as_input_tuple(function, input_data)
    RetrainConfig.from_file(config_defination)  # validates the file the user names
    restored = copy.deepcopy(model)
    pruning = Pruning.from_record(restored, read_record(record_file), inputs, source=os.fspath(record_file))
    pruning.apply(restored, channel_mode="compact")
    state = _strip_prefix(
        _load_checkpoint_state(os.fspath(pth_file), state_dict_name), set(restored.state_dict())
    )
    try:
        restored.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(
            f"{function}: {pth_file} does not fit the model rebuilt from {record_file}: {error}. HINT: pass "
            "the checkpoint saved from the model that record_file was written for, and a freshly built model "
            "of the same class"
        ) from error
    _check_train_forward(function, restored, inputs)
    return restored


def save_prune_retrain_model(
    model: nn.Module,
    save_path: str,
    input_data: tuple,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_axes: dict | None = None,
) -> None:
    """Write the deployable ONNX model ``<save_path>_deploy_model.onnx`` with the pruning baked in.

    ``save_path`` is a directory plus a file-name prefix, as in AMCT: ``out/resnet`` writes
    ``out/resnet_deploy_model.onnx``; a trailing ``/`` (``out/``) writes ``out/deploy_model.onnx``.
    N:M layers are exported as dense weights holding the exact zero pattern. AMCT also writes a
    ``_fake_quant_model.onnx``, identical for prune-only models; quantization is not part of
    lightning_prune, so only the deploy model is written.

    Args:
        model: the retrained model (it is copied, not modified).
        save_path: directory and prefix of the output file.
        input_data: example inputs (tuple or tensor).
        input_names: optional ONNX input names.
        output_names: optional ONNX output names.
        dynamic_axes: optional dynamic axes, ``{name: {axis: label}}`` or ``{name: [axis, ...]}``.
    """
    function = "save_prune_retrain_model"
    _check_type(function, "model", model, nn.Module)
    _check_type(function, "save_path", save_path, (str, os.PathLike))
    inputs = _as_input_tuple(function, input_data)
    save_path = os.fspath(save_path)
    directory, prefix = os.path.split(save_path)
    file_name = f"{prefix}_deploy_model.onnx" if prefix else "deploy_model.onnx"
    export_onnx(model, Path(directory or ".") / file_name, inputs, input_names, output_names, dynamic_axes)
