import copy

import lightning.pytorch as pl
import pytest
import torch
from coupling.zoo import make
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.channel_masks import has_channel_masks
from lightning_prune.proto import PruneRecord
from lightning_prune.pruning import Pruning
from lightning_prune.record import read_record

CHANNEL_CFG = "prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.5 ascend_optimized: false } } }\n"


class ZooModule(pl.LightningModule):
    def __init__(self, name="resnet_basic", seed=0):
        super().__init__()
        self.model, example = make(name, seed)
        self.model.train()
        self.example_input_array = example
        self.sample_shape = example.shape[1:]

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.mse_loss(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(5)
        x = torch.randn(32, *self.sample_shape, generator=generator)
        with torch.no_grad():
            y = torch.randn(self.model.eval()(x[:1]).shape[1:], generator=generator).expand(32, -1).clone()
        self.model.train()
        return DataLoader(TensorDataset(x, y), batch_size=8)


def _cfg(tmp_path):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "channels.cfg"
    path.write_text(CHANNEL_CFG)
    return str(path)


def _trainer(root, callbacks, max_epochs, **kwargs):
    return pl.Trainer(
        default_root_dir=root, max_epochs=max_epochs, callbacks=callbacks, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip


def _parameters(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["resnet_basic", "mobilenet_v2", "densenet"])
def test_mask_mode_trains_masked_and_hands_over_an_equivalent_compact_model(tmp_path, name):
    module = ZooModule(name)
    dense_parameters = _parameters(module.model)
    callback = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model", channel_mode="mask")
    _trainer(tmp_path, [callback], max_epochs=2, enable_checkpointing=False).fit(module)

    assert has_channel_masks(module.model)
    assert _parameters(module.model) == dense_parameters, "mask mode keeps every shape during fit"
    compact = callback.compact_model
    assert not has_channel_masks(compact)
    assert _parameters(compact) < 0.8 * dense_parameters
    x = module.example_input_array
    torch.testing.assert_close(compact.eval()(x), module.model.eval()(x), rtol=1e-4, atol=1e-5)

    record = read_record(tmp_path / "prune_record.txt")
    assert len(record.channel_group) == len(callback.pruning.channel_plan) > 0
    fresh, _ = make(name, seed=3)
    Pruning.from_record(fresh, record, (x,), source="record").apply(fresh, "compact")
    fresh.load_state_dict(torch.load(_saved(tmp_path, compact), weights_only=True))
    torch.testing.assert_close(fresh.eval()(x), compact(x), rtol=0, atol=0)


def _saved(tmp_path, module):
    path = tmp_path / "compact.pt"
    torch.save(module.state_dict(), path)
    return path


def test_compact_mode_trains_the_small_network(tmp_path):
    module = ZooModule("resnet_bottleneck")
    dense_parameters = _parameters(module.model)
    callback = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model", channel_mode="compact")
    seen = {}

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            optimizer_params = sum(p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"])
            seen.update(network=_parameters(pl_module.model), optimizer=optimizer_params)

    _trainer(tmp_path, [callback, Spy()], max_epochs=1, enable_checkpointing=False).fit(module)
    assert seen["network"] == seen["optimizer"] < 0.8 * dense_parameters
    assert not has_channel_masks(module.model)
    x = module.example_input_array
    torch.testing.assert_close(callback.compact_model.eval()(x), module.model.eval()(x), rtol=0, atol=0)


def _run(root, mode, max_epochs, seed, ckpt_path=None):
    module = ZooModule("resnet_basic", seed=seed)
    callback = StructuredSparsityRetrain(config=_cfg(root), target="model", channel_mode=mode)
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(root, [callback, checkpoint], max_epochs=max_epochs).fit(module, ckpt_path=ckpt_path)
    return module, callback


@pytest.mark.filterwarnings("ignore:The dirpath has changed from")
@pytest.mark.parametrize("mode", ["mask", "compact"])
def test_resume_restores_the_checkpoints_channels_even_from_other_initial_weights(tmp_path, mode):
    uninterrupted, first = _run(tmp_path / "a", mode, max_epochs=3, seed=0)
    _run(tmp_path / "b", mode, max_epochs=1, seed=0)
    # A fresh model with other weights would pick other channels; the checkpoint's must win.
    resumed, second = _run(
        tmp_path / "c",
        mode,
        max_epochs=3,
        seed=1,
        ckpt_path=str(tmp_path / "b" / "ckpt" / "epoch=0-step=4.ckpt"),
    )
    assert second.pruning.channel_plan == first.pruning.channel_plan
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    record_a = read_record(tmp_path / "a" / "prune_record.txt")
    record_c = read_record(tmp_path / "c" / "prune_record.txt")
    assert list(record_a.channel_group) == list(record_c.channel_group)


def test_channel_pruning_needs_example_inputs(tmp_path):
    module = ZooModule()
    module.example_input_array = None
    callback = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model")
    with pytest.raises(
        ValueError, match=r"needs example inputs to trace the model\. HINT: set `example_input_array`"
    ):
        _trainer(tmp_path, [callback], max_epochs=1).fit(module)


def test_input_shape_argument_replaces_example_input_array(tmp_path):
    module = ZooModule()
    module.example_input_array = None
    callback = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model", input_shape=[3, 16, 16])
    _trainer(tmp_path, [callback], max_epochs=1, enable_checkpointing=False).fit(module)
    assert callback.pruning.channel_plan


def test_mask_mode_refuses_sync_batchnorm(tmp_path):
    """sync_batchnorm swaps every BatchNorm after setup (compact mode under it needs GPUs: CPU SyncBN fails)."""
    strategy = pl.strategies.DDPStrategy(process_group_backend="gloo")
    masked = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model", channel_mode="mask")
    trainer = _trainer(tmp_path, [masked], max_epochs=1, strategy=strategy, devices=1, sync_batchnorm=True)
    try:
        with pytest.raises(
            ValueError, match=r"channel_mode='mask'.*sync_batchnorm=True.*HINT: use channel_mode='compact'"
        ):
            trainer.fit(ZooModule())
    finally:  # later tests must not run inside this test's process group
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_unknown_channel_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"channel_mode='fast'\): expected one of \('mask', 'compact'\)"):
        StructuredSparsityRetrain(config=_cfg(tmp_path), channel_mode="fast")


def test_state_carries_the_channel_record(tmp_path):
    module = ZooModule()
    callback = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model")
    _trainer(tmp_path, [callback], max_epochs=1, enable_checkpointing=False).fit(module)
    state = copy.deepcopy(callback.state_dict())
    from google.protobuf import text_format

    saved = text_format.Parse(state["channel_record"], PruneRecord())
    assert len(saved.channel_group) == len(callback.pruning.channel_plan)
    assert saved.fingerprint.digest == callback.pruning.fingerprint.digest


def _dense_validation(module, data, tmp_path):
    """Lightning's own validation of the unpruned module (one batch), for comparison."""
    trainer = pl.Trainer(default_root_dir=tmp_path / "dense", accelerator="cpu", logger=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1)  # fmt: skip
    (metrics,) = trainer.validate(module, datamodule=data, verbose=False)
    return metrics


def test_end_of_fit_summary_reports_sizes_macs_and_validation(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    from lightning_prune.demos import ImageClassifier, RandomImageDataModule
    from lightning_prune.search import count_macs

    cfg = tmp_path / "c.cfg"
    cfg.write_text(CHANNEL_CFG)
    module = ImageClassifier(arch="small_resnet", lr=0.01)
    callback = StructuredSparsityRetrain(config=str(cfg), target="model", channel_mode="compact")
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, callbacks=[callback], accelerator="cpu", logger=CSVLogger(tmp_path),
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_val_batches=1,
    )  # fmt: skip
    dense_macs = count_macs(module.model, module.example_input_array)
    data = RandomImageDataModule(num_samples=64, batch_size=16)
    dense_metrics = _dense_validation(module, data, tmp_path)
    trainer.fit(module, datamodule=data)
    summary = callback.summary
    assert summary.params_before == _parameters(ImageClassifier().model)
    assert summary.params_after == _parameters(module.model) < summary.params_before
    assert summary.macs_before == dense_macs
    assert summary.compress_ratio == pytest.approx(
        dense_macs / count_macs(module.model, module.example_input_array)
    )
    assert set(summary.metrics_before) >= {"val_acc", "val_loss"}
    assert set(summary.metrics_after) >= {"val_acc", "val_loss"}
    # "before" is the dense model (validated in setup, before pruning), "after" the last validation.
    assert summary.metrics_before == pytest.approx(dense_metrics, rel=1e-5)
    assert summary.metrics_after["val_loss"] == pytest.approx(float(trainer.callback_metrics["val_loss"]))
    assert "parameters" in summary.table()
    assert "prune_record.txt" in summary.table()
    logged = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "prune/compress_ratio" in logged


def test_metrics_before_pruning_survive_a_resume_and_can_be_switched_off(tmp_path):
    saved = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model")
    saved._metrics_before = {"val_acc": 0.91}
    resumed = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model")
    resumed.load_state_dict(saved.state_dict())
    assert resumed._metrics_before == {"val_acc": 0.91}
    # Without validation data, or switched off, nothing is measured before pruning.
    off = StructuredSparsityRetrain(config=_cfg(tmp_path), target="model", validate_before_pruning=False)
    _trainer(tmp_path, [off], max_epochs=1, enable_checkpointing=False).fit(ZooModule())
    assert off._metrics_before == {}
    assert off.summary is not None
    assert off.summary.metrics_before == {}


def test_compact_resume_under_another_config_names_the_layer(tmp_path):
    _run(tmp_path / "a", "compact", max_epochs=1, seed=0)
    other = tmp_path / "other.cfg"
    other.write_text(CHANNEL_CFG.replace("prune_ratio: 0.5", "prune_ratio: 0.25"))
    module = ZooModule("resnet_basic", seed=0)
    callback = StructuredSparsityRetrain(config=str(other), target="model", channel_mode="compact")
    with pytest.raises(
        ValueError, match=r"other channel counts than .*other\.cfg gives \(layer '.+' loses .*HINT"
    ):
        _trainer(tmp_path / "b", [callback], max_epochs=2).fit(
            module, ckpt_path=str(tmp_path / "a" / "ckpt" / "epoch=0-step=4.ckpt")
        )
