r"""``lightning-prune``: the LightningCLI entry point of the recipes in ``recipes/``.

``fit``, ``validate``, ``test`` and ``predict`` are LightningCLI's own subcommands: the model and the
data module are chosen by ``class_path`` in the YAML, the pruning callbacks are listed under
``trainer.callbacks``. ``export`` writes the deployable artefacts of a checkpoint::

    lightning-prune fit --config recipes/sparse_2to4_fashion_mnist.yaml
    lightning-prune export --config recipes/sparse_2to4_fashion_mnist.yaml \
        --ckpt_path outputs/sparse_2to4_fashion_mnist/checkpoints/last.ckpt \
        --export_dir outputs/sparse_2to4_fashion_mnist/export

``python -m lightning_prune.cli ...`` works the same. :class:`LoadWeights` starts a run from trained
weights (``--ckpt_path`` of ``fit`` *resumes* a run instead: epochs, optimizer, callback state).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn
from torch.nn.utils import parametrize

from lightning_prune.callbacks.channel_prune_search import ChannelPruneSearch
from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.export import export_onnx, export_pruned_model

__all__ = ["LoadWeights", "export_checkpoint", "main"]

_CLI_KWARGS: dict[str, Any] = {
    "subclass_mode_model": True,
    "subclass_mode_data": True,
    "save_config_kwargs": {"overwrite": True},
}
_DESCRIPTION = (
    "Structured pruning with PyTorch Lightning. Subcommands: fit, validate, test, predict (LightningCLI), "
    "and export: `lightning-prune export --config RECIPE.yaml --ckpt_path CKPT --export_dir DIR` "
    "(see `lightning-prune export --help`)."
)
_EXPORT_DESCRIPTION = (
    "Export a checkpoint of a recipe into --export_dir: model_state_dict.pt (the plain pruned network), "
    "the pruning record and model.onnx. Pass the config (and overrides) the checkpoint was trained with."
)


def _submodule(pl_module: nn.Module, target: str, who: str) -> nn.Module:
    """``pl_module.<target>`` (``""``: ``pl_module`` itself), or an error naming ``who``'s argument."""
    if not target:
        return pl_module
    try:
        return pl_module.get_submodule(target)
    except AttributeError as error:
        children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
        raise ValueError(
            f"`{who}(target={target!r})`: {type(pl_module).__name__} has no submodule {target!r} (its "
            f"children: {children}). HINT: name the attribute that holds the network, or '' for the "
            "LightningModule itself."
        ) from error


class LoadWeights(Callback):
    """Load trained weights into a submodule at ``setup``: how a retrain starts from a user's model.

    ``fit --ckpt_path`` *resumes* a run (epoch counter, optimizer and callback state); this callback
    *starts* one from weights. Callbacks' ``setup`` hooks run in ``trainer.callbacks`` order, so list
    it **before** ``StructuredSparsityRetrain``: the masks are then computed from the loaded weights.

    The file may hold a plain ``state_dict`` (``torch.save(net.state_dict(), path)``) or a Lightning
    checkpoint; a DDP ``module.`` prefix, and the ``<target>.`` prefix of the keys of a Lightning
    checkpoint, are removed. The file is read once per callback (with ``weights_only=True``). A resumed
    run (``--ckpt_path``) reads it too, then the checkpoint's weights replace it.

    Args:
        path: the ``.pt`` / ``.ckpt`` file; a relative path is relative to the working directory.
        target: attribute path of the network inside the LightningModule (e.g. ``"model"``); ``""``
            means the LightningModule itself.
        strict: require the file's keys to match the network's exactly (``load_state_dict(strict=)``).

    Example (YAML, under ``trainer.callbacks``)::

        - class_path: lightning_prune.cli.LoadWeights
          init_args: {path: outputs/dense/small_resnet_dense.pt, target: model}
        - class_path: lightning_prune.callbacks.StructuredSparsityRetrain
          init_args: {config: recipes/configs/sparse_2to4.cfg, target: model}
    """

    def __init__(self, path: str, target: str = "model", strict: bool = True) -> None:
        if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
            raise TypeError(f"`LoadWeights(path={path!r})`: expected the path of a .pt or .ckpt file.")
        if not isinstance(target, str):
            raise TypeError(f"`LoadWeights(target={target!r})`: expected a str such as 'model' or ''.")
        if not isinstance(strict, bool):
            raise TypeError(f"`LoadWeights(strict={strict!r})`: expected True or False.")
        self.path = os.fspath(path)
        self.target = target
        self.strict = strict
        self._loaded = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._loaded:
            return
        network = _submodule(pl_module, self.target, "LoadWeights")
        if any(parametrize.is_parametrized(module) for module in network.modules()):
            raise ValueError(
                f"`LoadWeights(path={self.path!r})`: {self.target or 'the LightningModule'} is already "
                "pruned, so the weights would not fit it. HINT: list LoadWeights before the pruning "
                "callbacks in trainer.callbacks (setup hooks run in list order)."
            )
        state = _network_state(self._read(), self.target, set(network.state_dict()))
        try:
            result = network.load_state_dict(state, strict=self.strict)
        except RuntimeError as error:
            raise RuntimeError(
                f"`LoadWeights(path={self.path!r}, target={self.target!r})`: the weights do not fit "
                f"{type(network).__name__}: {error}\nHINT: point path at weights of this architecture, "
                "or set strict: false to load the matching part."
            ) from error
        self._loaded = True
        skipped = f" ({len(result.missing_keys)} missing, {len(result.unexpected_keys)} unexpected keys)"
        rank_zero_info(
            f"`LoadWeights`: loaded {len(state)} tensors from {self.path} into "
            f"{self.target or type(pl_module).__name__}{skipped if not self.strict else ''}"
        )

    def _read(self) -> Mapping[str, Any]:
        if not os.path.isfile(self.path):
            raise FileNotFoundError(
                f"`LoadWeights(path={self.path!r})`: no such file (working directory: {os.getcwd()}). "
                "HINT: train or copy the weights there first; recipe paths are relative to the repo root."
            )
        try:
            checkpoint = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"`LoadWeights(path={self.path!r})`: cannot read it with torch.load(weights_only=True) "
                f"({type(error).__name__}: {error}). HINT: save a state_dict, not a pickled module."
            ) from error
        if not isinstance(checkpoint, Mapping):
            raise TypeError(
                f"`LoadWeights(path={self.path!r})`: holds a {type(checkpoint).__name__}, not a state_dict. "
                "HINT: save it with torch.save(model.state_dict(), path)."
            )
        return checkpoint


def _network_state(checkpoint: Mapping[str, Any], target: str, expected: set[str]) -> dict[str, Any]:
    """The part of a plain state_dict or Lightning checkpoint that belongs to the target network."""
    state = checkpoint["state_dict"] if isinstance(checkpoint.get("state_dict"), Mapping) else checkpoint
    if state and all(key.startswith("module.") for key in state):  # saved from a DDP-wrapped model
        state = {key.removeprefix("module."): value for key, value in state.items()}
    prefix = f"{target}."
    if target and not set(state) & expected and any(key.startswith(prefix) for key in state):
        state = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    return dict(state)


def _example_inputs(pl_module: pl.LightningModule) -> tuple:
    example = pl_module.example_input_array
    if isinstance(example, torch.Tensor):
        return (example,)
    if isinstance(example, (tuple, list)) and example:
        return tuple(example)
    raise ValueError(
        f"export: {type(pl_module).__name__}.example_input_array is {example!r}; the ONNX export needs an "
        "example input. HINT: set `self.example_input_array = torch.zeros(1, C, H, W)` in its __init__."
    )


def _export_target(pruners: list[StructuredSparsityRetrain], target: str | None) -> str:
    if target is not None:
        return target
    targets = sorted({pruner.target for pruner in pruners})
    if len(targets) > 1:
        raise ValueError(
            f"export: the pruning callbacks prune different submodules {targets}. "
            "HINT: pass --target naming the one network to export."
        )
    return targets[0] if targets else ""


def export_checkpoint(
    trainer: pl.Trainer,
    pl_module: pl.LightningModule,
    ckpt_path: str,
    export_dir: str,
    target: str | None = None,
) -> dict[str, Path]:
    """Write the deployable network of a checkpoint made with ``trainer``'s pruning callbacks.

    The callbacks first re-create the pruning structure (masks) on the fresh ``pl_module`` as they
    do for ``validate``, so that the checkpoint's weights, masks and callback state load
    strictly; then the record is rewritten from the loaded masks, which makes it the record of
    this very checkpoint.

    Args:
        trainer: a Trainer holding the run's callbacks (it is not run).
        pl_module: a freshly built LightningModule of the run.
        ckpt_path: the Lightning checkpoint to export.
        export_dir: the output directory; created if needed.
        target: the submodule to export; ``None`` takes the pruning callbacks' ``target``.

    Returns:
        ``{"state_dict": ..., "onnx": ..., "record": ...}``: the paths written (``"record"`` only
        with a pruning callback). ``model_state_dict.pt`` is the plain network's ``state_dict``
        (masks folded into the weights; loads with ``weights_only=True``), ``model.onnx`` its ONNX
        export for ``pl_module.example_input_array``.

    Raises:
        FileNotFoundError: ``ckpt_path`` does not exist.
        RuntimeError: the checkpoint does not fit the model and callbacks of the recipe.
        ValueError: an unknown ``target``, or no ``example_input_array``.
    """
    pruners = [cb for cb in trainer.callbacks if isinstance(cb, StructuredSparsityRetrain)]
    target = _export_target(pruners, target)
    _submodule(pl_module, target, "export")  # fail before the slow steps
    example = _example_inputs(pl_module)
    if not os.path.isfile(ckpt_path):
        raise FileNotFoundError(f"export: --ckpt_path {ckpt_path!r} does not exist.")
    # A non-fit stage, as for `validate`: the search hands over its .cfg without searching, the
    # pruners prune without writing a record or validating the unpruned model.
    for callback in (
        cb for cb in trainer.callbacks if isinstance(cb, (ChannelPruneSearch, StructuredSparsityRetrain))
    ):
        callback.setup(trainer, pl_module, "validate")
    _load_checkpoint(pl_module, pruners, ckpt_path)

    out = Path(export_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for index, pruner in enumerate(pruners):
        key = "record" if index == 0 else f"record_{index}"
        written[key] = out / ("prune_record.txt" if index == 0 else f"prune_record_{index}.txt")
        pruner.record_file = os.fspath(written[key])
        pruner.on_save_checkpoint(trainer, pl_module, {})  # writes the record of the loaded masks
        pruner.teardown(trainer, pl_module, "fit")
    network = _submodule(pl_module, target, "export")
    written["state_dict"] = out / "model_state_dict.pt"
    torch.save(export_pruned_model(network).state_dict(), written["state_dict"])
    # A dynamic batch axis, traced at batch 2: the exporter specializes dimensions of size 1.
    names = [f"input{i}" if len(example) > 1 else "input" for i in range(len(example))]
    traced = tuple(torch.cat([t, t]) if t.dim() > 0 else t for t in example)
    written["onnx"] = export_onnx(
        network, out / "model.onnx", traced, input_names=names, dynamic_axes={n: {0: "batch"} for n in names}
    )
    return written


def _load_checkpoint(
    pl_module: pl.LightningModule, pruners: list[StructuredSparsityRetrain], path: str
) -> None:
    """Restore module then callback state, as ``Trainer.fit(ckpt_path=...)`` does."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    try:
        pl_module.on_load_checkpoint(checkpoint)
        pl_module.load_state_dict(checkpoint["state_dict"])
        for pruner in pruners:
            pruner.load_state_dict(checkpoint.get("callbacks", {}).get(pruner.state_key, {}))
    except (KeyError, RuntimeError) as error:
        raise RuntimeError(
            f"export: {path} does not fit the model and pruning callbacks of this config: {error}\n"
            "HINT: export with the config (recipe and overrides) the checkpoint was trained with."
        ) from error


class _ExportCLI(LightningCLI):
    """The recipe's parser (``--config``, ``--model``, ``--trainer`` ...) plus the export arguments."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str, required=True, help="Lightning checkpoint to export.")
        parser.add_argument("--export_dir", type=str, required=True, help="Directory to write into.")
        parser.add_argument(
            "--target",
            type=str | None,
            default=None,
            help="Submodule of the LightningModule to export; default: the pruning callbacks' target.",
        )

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str]) -> None:
        # `main` always passes the arguments after "export"; LightningCLI would warn that they differ.
        self.config = parser.parse_args(args)

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        # The trainer only carries the callbacks: export runs in this one process, on the CPU.
        single = {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "strategy": "auto", "logger": False}
        return super().instantiate_trainer(**{**single, **kwargs})


def main(args: list[str] | None = None) -> int:
    """The ``lightning-prune`` console script: run it, exit status 0 (errors raise).

    Returns 0 rather than the CLI object: a console script's return value is its exit status, and
    an object there would print itself and exit with status 1.
    """
    run_cli(args)
    return 0


def run_cli(args: list[str] | None = None) -> LightningCLI:
    """Run ``lightning-prune`` with ``args`` (default: the command line) and return the CLI object.

    Args:
        args: the arguments after the program name, e.g. ``["fit", "--config", "recipe.yaml"]``.

    Returns:
        The CLI object (its ``trainer`` holds the run's metrics).
    """
    argv = sys.argv[1:] if args is None else list(args)
    if argv[:1] != ["export"]:
        return LightningCLI(
            args=args, parser_kwargs={"prog": "lightning-prune", "description": _DESCRIPTION}, **_CLI_KWARGS
        )
    cli = _ExportCLI(
        args=argv[1:],
        run=False,
        save_config_callback=None,
        parser_kwargs={"prog": "lightning-prune export", "description": _EXPORT_DESCRIPTION},
        **_CLI_KWARGS,
    )
    written = export_checkpoint(
        cli.trainer, cli.model, cli.config.ckpt_path, cli.config.export_dir, cli.config.target
    )
    rank_zero_info("export: wrote " + ", ".join(str(path) for path in written.values()))
    return cli


if __name__ == "__main__":
    main()
