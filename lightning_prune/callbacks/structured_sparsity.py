"""``StructuredSparsityRetrain``: retrain a model under the pruning of an AMCT-style ``.cfg``."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
from google.protobuf import text_format
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import nn

from lightning_prune.callbacks._module_calls import validation_metrics
from lightning_prune.config import RetrainConfig
from lightning_prune.coupling.plan import layer_indices
from lightning_prune.export import export_pruned_model
from lightning_prune.functional.channels import ramp_count
from lightning_prune.proto import PruneRecord
from lightning_prune.pruning import CHANNEL_MODES, Pruning, as_input_tuple, example_inputs_from_shape
from lightning_prune.record import write_record
from lightning_prune.search.macs import count_macs
from lightning_prune.sparsity import nm_sparse_layers, zero_masked_weights
from lightning_prune.summary import PruningSummary, count_parameters
from lightning_prune.surgery import apply_channel_masks, records_to_plan

__all__ = ["StructuredSparsityRetrain"]

_STATE_VERSION = 1


class StructuredSparsityRetrain(Callback):
    """Prune the model as a retrain ``.cfg`` says, keep the pruning through ``fit``, and record it.

    On ``setup`` the config decides the pruning: channel groups (``filter_pruner``, channels
    chosen by BalancedL2Norm over all coupled producers, or taken from the config's
    ``channel_selection_record``) and N:M layers (``n_out_of_m_pruner``, masks as weight
    parametrizations). The record file is written atomically at setup, at every checkpoint and at
    the end of fit; ``fit(ckpt_path=...)`` resumes with identical masks and channels, and a
    checkpoint made under another N:M plan is refused. After fit, :attr:`compact_model` holds the
    deployable network: channels physically removed, N:M zeros folded in.

    Which ``channel_mode``:

    - ``"mask"`` keeps every shape during fit (channels zeroed by masks). Each step costs as much
      as a dense one, but the pruned channels can be inspected, and any optimizer/strategy works.
    - ``"compact"`` removes the channels in ``setup``, before the optimizer is built: a smaller,
      faster network trains (about half the step time at half the channels). Checkpoints hold the
      compact weights and resume exactly; the record says how to rebuild the structure.

    Args:
        config: path to the retrain ``.cfg`` (protobuf text, AMCT's ``AMCTRetrainConfig`` fields); leave
            it out when a ``ChannelPruneSearch`` earlier in the callbacks writes one.
        record_file: where to write the record; default ``<default_root_dir>/prune_record.txt``.
        target: attribute path of the network inside the LightningModule that the config's layer
            names refer to (e.g. ``"model"``); ``""`` means the LightningModule itself. With the bare
            network as target, the record also works with ``restore_prune_retrain_model``.
        channel_mode: ``"mask"`` or ``"compact"``, see above.
        input_shape: shape of one example input (e.g. ``[3, 32, 32]``) used to trace the network for
            channel pruning; default: the LightningModule's ``example_input_array``.
        ramp_epochs: mask mode only: prune gradually. During epoch ``e`` of the fit the masks cover
            ``(e + 1) / ramp_epochs`` of every group's planned channels (least important first, by
            BalancedL2Norm of the weights at setup), all of them from epoch ``ramp_epochs - 1`` on.
            0 (default) masks them all from the start. The record and the compact model always
            hold the full plan.
        validate_before_pruning: at the start of ``fit`` (not on resume), run the module's
            ``validation_step`` over the validation data (``limit_val_batches`` applies) before
            pruning, so the end-of-fit summary compares the metrics before pruning with the last
            validation. Costs one validation pass.

    Example (``cfg`` is the path of a retrain config)::

        trainer = Trainer(callbacks=[StructuredSparsityRetrain(config=cfg, target="model")])
        trainer.fit(module, datamodule=data)
        small = trainer.callbacks[0].compact_model
    """

    def __init__(
        self,
        config: str | None = None,
        record_file: str | None = None,
        target: str = "",
        channel_mode: str = "mask",
        input_shape: list[int] | None = None,
        ramp_epochs: int = 0,
        validate_before_pruning: bool = True,
    ) -> None:
        if config is not None and not isinstance(config, (str, os.PathLike)):
            raise TypeError(
                f"StructuredSparsityRetrain(config={config!r}): expected the path of a .cfg file."
            )
        if channel_mode not in CHANNEL_MODES:
            raise ValueError(
                f"StructuredSparsityRetrain(channel_mode={channel_mode!r}): expected one of {CHANNEL_MODES}."
            )
        if not isinstance(ramp_epochs, int) or ramp_epochs < 0:
            raise ValueError(
                f"StructuredSparsityRetrain(ramp_epochs={ramp_epochs!r}): expected an integer >= 0."
            )
        if ramp_epochs and channel_mode != "mask":
            raise ValueError(
                f"StructuredSparsityRetrain(ramp_epochs={ramp_epochs}, channel_mode={channel_mode!r}): a gradual "
                "pruning changes the pruned channels during fit, which needs fixed shapes. HINT: use "
                "channel_mode='mask' with ramp_epochs, or ramp_epochs=0."
            )
        self.config_path = os.fspath(config) if config is not None else None
        self.record_file = os.fspath(record_file) if record_file is not None else None
        self.target = target
        self.channel_mode = channel_mode
        self.input_shape = list(input_shape) if input_shape is not None else None
        self.ramp_epochs = ramp_epochs
        self.validate_before_pruning = bool(validate_before_pruning)
        self._ramp_order: dict[int, list[int]] = {}
        self._ramp_masked: dict[int, list[int]] | None = None
        self._metrics_before: dict[str, float] = {}
        self.pruning: Pruning | None = None
        self.sparse_layers: list[str] = []
        self.compact_model: nn.Module | None = None
        self.summary: PruningSummary | None = None
        self._dense_size: tuple[int, float] | None = None
        self._last_validation: dict[str, float] = {}
        self._nm_plan: dict[str, list[int]] = {}
        self._restore_hook_owner: pl.LightningModule | None = None

    @property
    def state_key(self) -> str:
        # Not the config path: a resumed run may read the same .cfg from another place.
        return self._generate_state_key(target=self.target)

    # ---- hooks: orchestration only ----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Every stage prunes, so validate/test/predict can load a pruned checkpoint; only fit records.
        if self.pruning is not None:
            return
        network = self._network(pl_module)
        if self.config_path is None:
            raise ValueError(
                "`StructuredSparsityRetrain` has no config. HINT: pass config='<retrain .cfg>', or put a "
                "ChannelPruneSearch with the same target before it in the Trainer's callbacks."
            )
        if self.record_file is None:
            self.record_file = os.path.join(trainer.default_root_dir, "prune_record.txt")
        inputs = self._inputs(pl_module)
        if inputs is not None:
            self._dense_size = (count_parameters(network), count_macs(network, inputs))
        if stage == "fit" and self.validate_before_pruning and trainer.ckpt_path is None:
            self._metrics_before = validation_metrics(trainer, pl_module)
        self.pruning = Pruning.from_config(network, RetrainConfig.from_file(self.config_path), inputs)
        if trainer.world_size > 1:  # ranks may start from different weights: all follow rank 0
            self.pruning.channel_plan = trainer.strategy.broadcast(self.pruning.channel_plan, src=0)
        if self.channel_mode == "mask" and self.pruning.channel_plan and _converts_batchnorm(trainer):
            raise ValueError(
                "`StructuredSparsityRetrain(channel_mode='mask')` cannot run with Trainer(sync_batchnorm=True): "
                "the strategy replaces every BatchNorm after this setup, and a masked BatchNorm weight cannot be "
                "moved to the replacement. HINT: use channel_mode='compact' (channels removed before the strategy "
                "wraps the model), or sync_batchnorm=False."
            )
        if self.ramp_epochs and self.pruning.channel_plan:  # before the masks zero the weights it reads
            self._ramp_order = self.pruning.ramp_order(network)
            if trainer.world_size > 1:
                self._ramp_order = trainer.strategy.broadcast(self._ramp_order, src=0)
        self.sparse_layers = self.pruning.apply(network, self.channel_mode)
        self._share_rank_zero_masks(trainer, network)
        self._nm_plan = {
            name: [m.n, m.m, m.axis, m.update_freq] for name, m in nm_sparse_layers(network).items()
        }
        self._restore_before_weights_load(pl_module)
        rank_zero_info(
            f"`StructuredSparsityRetrain`: {self.pruning.pruned_channels} channels in "
            f"{len(self.pruning.channel_plan)} groups ({self.channel_mode}), N:M on {len(self.sparse_layers)} "
            f"layers; record: {self.record_file}"
        )
        if stage == "fit":
            self._write_record(trainer, network)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self._write_record(trainer, self._network(pl_module))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            metrics = trainer.callback_metrics
            self._last_validation = {
                k: float(v) for k, v in metrics.items() if k.startswith("val") and v.numel() == 1
            }

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ramp_order:
            self._mask_ramp_share(pl_module, min(1.0, (trainer.current_epoch + 1) / self.ramp_epochs))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = self._network(pl_module)
        if self._ramp_order and self._ramp_masked != self.pruning.channel_plan:
            rank_zero_warn(
                f"`StructuredSparsityRetrain`: the fit ended before the ramp did (ramp_epochs={self.ramp_epochs}, "
                f"{trainer.current_epoch} epoch(s) run); the compact model prunes the full plan anyway. HINT: train "
                "at least ramp_epochs epochs, plus some to recover."
            )
            self._mask_ramp_share(pl_module, 1.0)
        zero_masked_weights(network)
        self._write_record(trainer, network)
        self.compact_model = export_pruned_model(network)
        self._summarize(trainer, pl_module)

    def _summarize(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Console table and logger metrics: sizes and MACs before/after, metrics before pruning and at the end."""
        inputs = self._inputs(pl_module)
        if self._dense_size is None or inputs is None:
            return
        compact = self.compact_model
        self.summary = PruningSummary(
            params_before=self._dense_size[0],
            params_after=count_parameters(compact),
            macs_before=self._dense_size[1],
            macs_after=count_macs(compact, inputs),
            nonzero_params_after=sum(int((p != 0).sum()) for p in compact.parameters())
            if self.sparse_layers
            else None,
            metrics_before=dict(self._metrics_before),
            metrics_after=dict(self._last_validation),
            files={"record": os.fspath(self.record_file)},
        )
        rank_zero_info("`StructuredSparsityRetrain` summary (metrics: before pruning, and at the last validation)\n"
                       + self.summary.table())  # fmt: skip
        for logger in trainer.loggers:
            logger.log_metrics(self.summary.metrics(), step=trainer.global_step)
            logger.save()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._restore_hook_owner is not None:
            vars(self._restore_hook_owner).pop("on_load_checkpoint", None)
            self._restore_hook_owner = None

    def _mask_ramp_share(self, pl_module: pl.LightningModule, fraction: float) -> None:
        """Mask ``fraction`` of every group's planned channels (the least important first)."""
        analysis = self.pruning.analysis
        masked = {}
        for gid, order in self._ramp_order.items():
            count = ramp_count(len(order), fraction, analysis.group(gid).group)
            if count:
                masked[gid] = sorted(order[:count])
        if masked != self._ramp_masked:  # weights under the masks are kept; the optimizer's too
            apply_channel_masks(self._network(pl_module), analysis, masked)
            self._ramp_masked = masked

    # ---- state ----
    def state_dict(self) -> dict[str, Any]:
        channel_record = self.pruning.channel_record() if self.pruning is not None else PruneRecord()
        return {
            "version": _STATE_VERSION,
            "target": self.target,
            "channel_mode": self.channel_mode,
            "layers": self._nm_plan,
            "channel_record": text_format.MessageToString(channel_record),
            "metrics_before": dict(self._metrics_before),
            "ramp_order": {str(gid): list(order) for gid, order in self._ramp_order.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._metrics_before = dict(state_dict.get("metrics_before", self._metrics_before))
        saved = {name: list(pattern) for name, pattern in state_dict.get("layers", {}).items()}
        if not self._nm_plan:  # not set up yet: adopt the saved plan, setup will compare against it
            self._nm_plan = saved
            return
        if saved != self._nm_plan:
            differing = sorted(
                n for n in saved.keys() | self._nm_plan.keys() if saved.get(n) != self._nm_plan.get(n)
            )
            raise ValueError(
                f"`StructuredSparsityRetrain`: the checkpoint was made with another pruning plan than "
                f"{self.config_path} gives (layer '{differing[0]}': checkpoint {saved.get(differing[0])}, "
                f"config {self._nm_plan.get(differing[0])}; pattern = [n, m, axis, update_freq]). "
                "HINT: resume with the .cfg the checkpoint was trained with."
            )

    # ---- helpers ----
    def _network(self, pl_module: pl.LightningModule) -> nn.Module:
        if not self.target:
            return pl_module
        try:
            return pl_module.get_submodule(self.target)
        except AttributeError as error:
            children = ", ".join(name for name, _ in pl_module.named_children()) or "none"
            raise ValueError(
                f"`StructuredSparsityRetrain(target={self.target!r})`: {type(pl_module).__name__} has no "
                f"submodule {self.target!r} (its children: {children}). HINT: pass the attribute that holds "
                "the network, or target='' for the LightningModule itself."
            ) from error

    def _inputs(self, pl_module: pl.LightningModule) -> tuple | None:
        if self.input_shape is not None:
            return example_inputs_from_shape(self.input_shape)
        example = getattr(pl_module, "example_input_array", None)
        return None if example is None else as_input_tuple(example)

    def _share_rank_zero_masks(self, trainer: pl.Trainer, network: nn.Module) -> None:
        # Ranks may hold different initial weights; every rank must prune the same weights.
        masks = nm_sparse_layers(network)
        if trainer.world_size > 1:
            chosen = trainer.strategy.broadcast(
                {name: mask.mask.cpu() for name, mask in masks.items()}, src=0
            )
            for name, mask in masks.items():
                mask.mask.copy_(chosen[name])

    def _restore_before_weights_load(self, pl_module: pl.LightningModule) -> None:
        """Chain onto the module's ``on_load_checkpoint``, the one hook Lightning calls before weights load.

        A resumed fit must prune the channels the checkpoint's run pruned, not the ones this run's
        fresh weights would suggest; callback hooks run only after the weights are loaded.
        """
        original: Callable[[dict], None] = pl_module.on_load_checkpoint

        def on_load_checkpoint(checkpoint: dict) -> None:
            self._adopt_checkpoint_channels(pl_module, checkpoint)
            original(checkpoint)

        pl_module.on_load_checkpoint = on_load_checkpoint
        self._restore_hook_owner = pl_module

    def _adopt_checkpoint_channels(self, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("callbacks", {}).get(self.state_key)
        if not state or not self.pruning or not self.pruning.analysis:
            return
        if state.get("ramp_order"):  # the checkpointed run's order, not this run's fresh weights'
            self._ramp_order = {int(gid): list(order) for gid, order in state["ramp_order"].items()}
            self._ramp_masked = None
        saved = text_format.Parse(state["channel_record"], PruneRecord())
        plan = records_to_plan(self.pruning.analysis, saved.channel_group)
        if plan == self.pruning.channel_plan:
            return
        if self.channel_mode == "mask":
            apply_channel_masks(self._network(pl_module), self.pruning.analysis, plan)
        else:
            self._check_same_compact_shapes(plan)
        self.pruning.channel_plan = plan

    def _check_same_compact_shapes(self, plan: dict) -> None:
        # The compact network was built from this run's plan; the checkpoint's weights fit it only
        # when every layer lost as many channels (always so for the same config).
        mine = {
            name: {ax: len(i) for ax, i in axes.items()}
            for name, axes in layer_indices(self.pruning.analysis, self.pruning.channel_plan).items()
        }
        theirs = {
            name: {ax: len(i) for ax, i in axes.items()}
            for name, axes in layer_indices(self.pruning.analysis, plan).items()
        }
        if mine != theirs:
            layer = min(n for n in mine.keys() | theirs.keys() if mine.get(n) != theirs.get(n))
            raise ValueError(
                f"`StructuredSparsityRetrain`: the checkpoint's channel pruning has other channel counts than "
                f"{self.config_path} gives (layer '{layer}' loses {theirs.get(layer, {})} channels in the "
                f"checkpoint, {mine.get(layer, {})} with this config). HINT: resume with the .cfg the checkpoint "
                "was trained with."
            )

    def _write_record(self, trainer: pl.Trainer, network: nn.Module) -> None:
        if trainer.is_global_zero and self.pruning is not None:
            write_record(self.record_file, self.pruning.record(network))


def _converts_batchnorm(trainer: pl.Trainer) -> bool:
    """Whether the strategy will swap BatchNorm layers (``sync_batchnorm=True``) after the callbacks' setup."""
    return getattr(trainer.strategy, "_layer_sync", None) is not None
