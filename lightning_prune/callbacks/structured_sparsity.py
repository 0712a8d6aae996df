"""``StructuredSparsityRetrain``: retrain a model under the pruning of an AMCT-style ``.cfg``."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import nn

from lightning_prune.config import FilterPruneSpec, NOutOfMSpec, RetrainConfig
from lightning_prune.proto import PruneRecord
from lightning_prune.record import model_fingerprint, write_record
from lightning_prune.sparsity import (
    apply_nm_sparsity,
    nm_records,
    nm_sparse_layers,
    zero_masked_weights,
)

__all__ = ["StructuredSparsityRetrain"]

_STATE_VERSION = 1


class StructuredSparsityRetrain(Callback):
    """Prune the model as a retrain ``.cfg`` says, keep the pruning through ``fit``, and record it.

    On ``setup`` the layers the config selects for N:M sparsity (``n_out_of_m_pruner``) get their
    masks as weight parametrizations, so every optimizer step keeps the zero pattern and shapes stay
    fixed. The record file is written (atomically) at setup, at every checkpoint and at the end of fit.
    The masks travel in the model's own ``state_dict``; the callback's state carries the plan so that
    ``trainer.fit(ckpt_path=...)`` resumes with identical masks, and a checkpoint made under another
    config is refused. At the end of fit the stored weights carry the exact zero pattern too.

    Args:
        config: path to the retrain ``.cfg`` (protobuf text, AMCT's ``AMCTRetrainConfig`` fields).
        record_file: where to write the record; default ``<default_root_dir>/prune_record.txt``.
        target: attribute path of the network inside the LightningModule that the config's layer
            names refer to (e.g. ``"model"``); ``""`` means the LightningModule itself. With the bare
            network as target, the record also works with ``restore_prune_retrain_model``.

    Example (``cfg`` is the path of a 2:4 config)::

        trainer = Trainer(callbacks=[StructuredSparsityRetrain(config=cfg, target="model")])
        trainer.fit(module, datamodule=data)
    """

    def __init__(self, config: str, record_file: str | None = None, target: str = "") -> None:
        if not isinstance(config, (str, os.PathLike)):
            raise TypeError(
                f"StructuredSparsityRetrain(config={config!r}): expected the path of a .cfg file."
            )
        self.config_path = os.fspath(config)
        self.record_file = os.fspath(record_file) if record_file is not None else None
        self.target = target
        self.sparse_layers: list[str] = []
        self._plan: dict[str, list[int]] = {}
        self._fingerprint = None

    @property
    def state_key(self) -> str:
        # Not the config path: a resumed run may read the same .cfg from another place.
        return self._generate_state_key(target=self.target)

    # ---- hooks: orchestration only ----
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        network = self._network(pl_module)
        if self.record_file is None:
            self.record_file = os.path.join(trainer.default_root_dir, "prune_record.txt")
        if nm_sparse_layers(network):
            return  # already set up by an earlier fit with this callback
        self._fingerprint = model_fingerprint(network)
        specs = RetrainConfig.from_file(self.config_path).resolve(network)
        self._refuse_channel_specs(specs)
        nm_specs = {name: spec for name, spec in specs.items() if isinstance(spec, NOutOfMSpec)}
        self.sparse_layers = apply_nm_sparsity(network, nm_specs)
        self._share_rank_zero_masks(trainer, network)
        self._plan = {
            name: [mask.n, mask.m, mask.axis, mask.update_freq]
            for name, mask in nm_sparse_layers(network).items()
        }
        rank_zero_info(
            f"`StructuredSparsityRetrain`: N:M sparsity on {len(self.sparse_layers)} layers; "
            f"record: {self.record_file}"
        )
        self._write_record(trainer, network)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        self._write_record(trainer, self._network(pl_module))

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = self._network(pl_module)
        zero_masked_weights(network)
        self._write_record(trainer, network)

    # ---- state ----
    def state_dict(self) -> dict[str, Any]:
        return {"version": _STATE_VERSION, "target": self.target, "layers": self._plan}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = {name: list(pattern) for name, pattern in state_dict.get("layers", {}).items()}
        if not self._plan:  # not set up yet: adopt the saved plan, setup will compare against it
            self._plan = saved
            return
        if saved != self._plan:
            differing = sorted(
                name for name in saved.keys() | self._plan.keys() if saved.get(name) != self._plan.get(name)
            )
            raise ValueError(
                f"`StructuredSparsityRetrain`: the checkpoint was made with another pruning plan than "
                f"{self.config_path} gives (layer '{differing[0]}': checkpoint {saved.get(differing[0])}, "
                f"config {self._plan.get(differing[0])}; pattern = [n, m, axis, update_freq]). "
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

    def _share_rank_zero_masks(self, trainer: pl.Trainer, network: nn.Module) -> None:
        # Ranks may hold different initial weights; every rank must prune the same weights.
        masks = nm_sparse_layers(network)
        if trainer.world_size > 1:
            chosen = trainer.strategy.broadcast(
                {name: mask.mask.cpu() for name, mask in masks.items()}, src=0
            )
            for name, mask in masks.items():
                mask.mask.copy_(chosen[name])

    def _refuse_channel_specs(self, specs: dict) -> None:
        channel_layers = [name for name, spec in specs.items() if isinstance(spec, FilterPruneSpec)]
        if channel_layers:
            raise ValueError(
                f"`StructuredSparsityRetrain`: {self.config_path} asks for channel pruning (filter_pruner) of "
                f"{', '.join(channel_layers[:5])}; this build supports n_out_of_m_pruner only. "
                "HINT: use an n_out_of_m_pruner config."
            )

    def _write_record(self, trainer: pl.Trainer, network: nn.Module) -> None:
        if not trainer.is_global_zero or self._fingerprint is None:
            return
        record = PruneRecord(fingerprint=self._fingerprint, config_file=self.config_path)
        record.n_out_of_m.extend(nm_records(network))
        write_record(self.record_file, record)
