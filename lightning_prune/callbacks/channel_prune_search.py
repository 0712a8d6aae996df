"""``ChannelPruneSearch``: search per-group channel counts before training, then hand them to retraining."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.rank_zero import rank_zero_info
from torch import Tensor, nn

from lightning_prune.callbacks._module_calls import redirected_logging, samples_in
from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.config import load_auto_channel_prune_config
from lightning_prune.coupling import ChannelGroup
from lightning_prune.record import model_fingerprint
from lightning_prune.search import SearchResult, TaylorLossSensitivity, auto_channel_prune_search
from lightning_prune.search.sensitivity import loss_gradients

__all__ = ["ChannelPruneSearch", "TrainingStepSensitivity"]


class TrainingStepSensitivity(TaylorLossSensitivity):
    """Taylor sensitivity whose loss is the LightningModule's own ``training_step`` on real batches.

    Logging calls and metric updates inside ``training_step`` are neutralised while it runs; under
    DDP the scores are summed over ranks so that every rank chooses the same channels.
    """

    def __init__(self, pl_module: pl.LightningModule, batches: Sequence[Any], strategy: Any = None) -> None:
        super().__init__()
        self.pl_module, self.batches, self.strategy = pl_module, list(batches), strategy

    def batch_gradients(
        self, batches: Sequence, params: Sequence[nn.Parameter]
    ) -> Iterator[list[Tensor | None]]:
        def losses() -> Iterator[tuple[int, Callable[[], Tensor]]]:
            for index, batch in enumerate(self.batches):
                yield samples_in(batch), partial(self._training_loss, batch, index)

        started = time.perf_counter()
        with redirected_logging(self.pl_module):
            gradients = loss_gradients(self.pl_module, params, losses(), self.batch_statistics)
            for index, grads in enumerate(gradients, start=1):
                rank_zero_info(
                    f"`ChannelPruneSearch`: sensitivity batch {index}/{len(self.batches)} "
                    f"({time.perf_counter() - started:.1f} s)"
                )
                yield grads

    def _training_loss(self, batch: Any, index: int) -> Tensor:
        output = self.pl_module.training_step(batch, index)
        loss = output["loss"] if isinstance(output, dict) else output
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(
                "`ChannelPruneSearch`: training_step must return the loss (a scalar tensor, or a dict with "
                f"'loss') for the sensitivity; it returned {type(output).__name__}."
            )
        return loss

    def get_sensitivity(self, groups: Sequence[ChannelGroup]) -> dict[int, Tensor]:
        scores = super().get_sensitivity(groups)
        if self.strategy is not None and self.strategy.world_size > 1:
            scores = {gid: self.strategy.reduce(value, reduce_op="sum") for gid, value in scores.items()}
        return scores


class ChannelPruneSearch(Callback):
    """Search the channels to prune before training and hand them to ``StructuredSparsityRetrain``.

    On ``setup`` it takes ``test_iteration`` batches of the fit's own train dataloader, scores every
    channel of every coupled group by the first-order Taylor expansion of the LightningModule's own
    training loss, and greedily removes the channels with the least sensitivity per MAC saved until
    the MACs drop by ``compress_ratio`` (AMCT's ``AutoChannelPruneConfig``). It writes the retrain
    ``.cfg`` (and the record of the chosen channels beside it) and points the
    ``StructuredSparsityRetrain`` of the same Trainer at it, so paths are configured once. The
    per-group table goes to the console and the achieved ratio to the Trainer's loggers. A finished
    search is not run again: a resumed (or repeated) fit reuses the written ``.cfg`` when the model
    structure and search config are unchanged.

    Args:
        config: path of the search config (``compress_ratio``, ``ascend_optimized``,
            ``max_prune_ratio``, ``test_iteration``, ``override_prune_cfg``).
        output_cfg: where to write the retrain ``.cfg``; default ``<default_root_dir>/searched_prune.cfg``.
        target: attribute path of the network inside the LightningModule (e.g. ``"model"``).

    Example (``search_cfg`` is the path of a search config)::

        trainer = Trainer(callbacks=[ChannelPruneSearch(search_cfg, target="model"),
                                     StructuredSparsityRetrain(target="model", channel_mode="compact")])
        trainer.fit(module, datamodule=data)
    """

    def __init__(self, config: str, output_cfg: str | None = None, target: str = "") -> None:
        self.config_path = os.fspath(config)
        self.output_cfg = os.fspath(output_cfg) if output_cfg is not None else None
        self.target = target
        self.result: SearchResult | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(target=self.target)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        retrain = self._retrain_callback(trainer)
        if self.output_cfg is None:
            self.output_cfg = os.path.join(trainer.default_root_dir, "searched_prune.cfg")
        if retrain.pruning is None:
            retrain.config_path = self.output_cfg
        if stage != "fit" or self._reusable(pl_module):
            return
        self._search(trainer, pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"output_cfg": self.output_cfg, "summary": self._summary()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.output_cfg = self.output_cfg or state_dict.get("output_cfg")

    # ---- helpers ----
    def _search(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        network = pl_module.get_submodule(self.target) if self.target else pl_module
        test_iteration = load_auto_channel_prune_config(self.config_path).test_iteration
        batches = _first_batches(trainer, pl_module, test_iteration)
        rank_zero_info(f"`ChannelPruneSearch`: scoring channels on {len(batches)} training batches ...")
        inputs, labels = _stack_inputs_and_labels(batches)
        sensitivity = TrainingStepSensitivity(pl_module, batches, trainer.strategy)
        with tempfile.TemporaryDirectory() as scratch:
            # Every rank searches (the reduced scores make their choices identical); rank 0 writes the files.
            output_cfg = self.output_cfg if trainer.is_global_zero else os.path.join(scratch, "searched.cfg")
            self.result = auto_channel_prune_search(
                network, self.config_path, [inputs, labels], output_cfg, sensitivity=sensitivity
            )
        trainer.strategy.barrier()
        rank_zero_info(f"`ChannelPruneSearch`: wrote {self.output_cfg}\n{self.result.table()}")
        if trainer.is_global_zero:
            Path(self._stamp_path()).write_text(json.dumps(self._stamp(network)) + "\n")
        for logger in trainer.loggers:
            logger.log_metrics(self._summary())

    def _summary(self) -> dict[str, float]:
        return {} if self.result is None else self.result.metrics()

    def _stamp_path(self) -> str:
        return f"{self.output_cfg}.search.json"

    def _stamp(self, network: nn.Module) -> dict[str, str]:
        config_digest = hashlib.sha256(Path(self.config_path).read_bytes()).hexdigest()
        return {"model": model_fingerprint(network).digest, "search_config": config_digest}

    def _reusable(self, pl_module: pl.LightningModule) -> bool:
        network = pl_module.get_submodule(self.target) if self.target else pl_module
        stamp = Path(self._stamp_path())
        if not (stamp.exists() and Path(self.output_cfg).exists()):
            return False
        if json.loads(stamp.read_text()) != self._stamp(network):
            return False
        rank_zero_info(
            f"`ChannelPruneSearch`: reusing the search in {self.output_cfg} (same model and config)"
        )
        return True

    def _retrain_callback(self, trainer: pl.Trainer) -> StructuredSparsityRetrain:
        callbacks = list(trainer.callbacks)
        retrains = [
            c for c in callbacks if isinstance(c, StructuredSparsityRetrain) and c.target == self.target
        ]
        if len(retrains) != 1 or callbacks.index(retrains[0]) < callbacks.index(self):
            where = "before it" if retrains else "at all"
            raise ValueError(
                f"`ChannelPruneSearch(target={self.target!r})` needs exactly one StructuredSparsityRetrain with the "
                f"same target after it in the Trainer's callbacks; found {len(retrains)} ({where}). HINT: "
                "callbacks=[ChannelPruneSearch(...), StructuredSparsityRetrain(target=...)]."
            )
        return retrains[0]


def _first_batches(trainer: pl.Trainer, pl_module: pl.LightningModule, count: int) -> list[Any]:
    source = trainer.datamodule if trainer.datamodule is not None else pl_module
    iterator = iter(source.train_dataloader())
    batches = []
    for _ in range(count):
        try:
            batches.append(next(iterator))
        except StopIteration:
            break
    if len(batches) < count:
        raise ValueError(
            f"`ChannelPruneSearch`: test_iteration is {count} but the train dataloader has only {len(batches)} batches. "
            "HINT: lower test_iteration in the search config."
        )
    device = next(pl_module.parameters()).device
    return [pl_module.transfer_batch_to_device(batch, device, 0) for batch in batches]


def _stack_inputs_and_labels(batches: Sequence[Any]) -> tuple[Tensor, Tensor]:
    """``[inputs, labels]`` as ``auto_channel_prune_search`` takes them, from ``(inputs, labels, ...)`` batches."""
    if not all(isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], Tensor) for b in batches):
        raise TypeError(
            "`ChannelPruneSearch`: train batches must be (inputs, labels, ...) sequences with a tensor of inputs. "
            "HINT: for other batch structures call lightning_prune.auto_channel_prune_search yourself."
        )
    return torch.cat([b[0] for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches])
