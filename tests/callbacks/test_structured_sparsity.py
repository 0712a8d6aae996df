import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.functional.nm import nm_mask_is_valid
from lightning_prune.record import read_record
from lightning_prune.sparsity import masks_from_records, nm_masks, nm_sparse_layers

CFG_24 = (
    "prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 update_freq: %d } } }\n"
)


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.deconv = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = torch.relu(self.deconv(x))
        return self.head(x.mean((2, 3)))


class TinyModule(pl.LightningModule):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = TinyNet()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(123)
        x = torch.randn(64, 4, 6, 6, generator=generator)
        y = torch.randint(0, 3, (64,), generator=generator)
        return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)


def _write_cfg(tmp_path, update_freq=0, name="prune.cfg"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(CFG_24 % update_freq)
    return str(path)


def _trainer(tmp_path, callbacks, max_epochs, **kwargs):
    return pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )


def test_fit_keeps_2_4_zeros_and_writes_the_record(tmp_path):
    module = TinyModule()
    callback = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="model")
    _trainer(tmp_path, [callback], max_epochs=2, enable_checkpointing=False).fit(module)

    assert callback.sparse_layers == ["conv", "deconv", "head"]
    for name, mask in nm_sparse_layers(module.model).items():
        layer = module.model.get_submodule(name)
        assert nm_mask_is_valid(layer.weight != 0, 2, 4, mask.axis)
        assert bool((layer.weight[~mask.mask] == 0).all())
        # At the end of fit the stored weights carry the zeros too.
        assert bool((layer.parametrizations.weight.original[~mask.mask] == 0).all())
    record = read_record(tmp_path / "prune_record.txt")
    assert [r.name for r in record.n_out_of_m] == ["conv", "deconv", "head"]
    recorded = masks_from_records(list(record.n_out_of_m))
    assert all(torch.equal(recorded[name], mask) for name, mask in nm_masks(module.model).items())


def _run(tmp_path, max_epochs, update_freq, ckpt_path=None, checkpoint_dir=None):
    module = TinyModule(seed=0)
    callbacks = [StructuredSparsityRetrain(config=_write_cfg(tmp_path, update_freq), target="model")]
    if checkpoint_dir is not None:
        callbacks.append(ModelCheckpoint(dirpath=checkpoint_dir, save_top_k=-1, every_n_epochs=1))
    _trainer(tmp_path, callbacks, max_epochs=max_epochs).fit(module, ckpt_path=ckpt_path)
    return module


@pytest.mark.filterwarnings("ignore:Checkpoint directory .* exists and is not empty")
@pytest.mark.parametrize("update_freq", [0, 3])
def test_resume_mid_fit_gives_the_same_masks_and_weights(tmp_path, update_freq):
    uninterrupted = _run(tmp_path / "a", max_epochs=4, update_freq=update_freq)
    _run(tmp_path / "b", max_epochs=2, update_freq=update_freq, checkpoint_dir=tmp_path / "ckpt")
    checkpoint = tmp_path / "ckpt" / "epoch=1-step=8.ckpt"
    assert checkpoint.exists()
    resumed = _run(
        tmp_path / "c",
        max_epochs=4,
        update_freq=update_freq,
        ckpt_path=str(checkpoint),
        checkpoint_dir=tmp_path / "ckpt",
    )

    masks_a, masks_c = nm_masks(uninterrupted.model), nm_masks(resumed.model)
    assert masks_a.keys() == masks_c.keys() == {"conv", "deconv", "head"}
    assert all(torch.equal(masks_a[name], masks_c[name]) for name in masks_a)
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_update_freq_changes_masks_during_fit(tmp_path):
    module = TinyModule()
    callback = StructuredSparsityRetrain(config=_write_cfg(tmp_path, update_freq=1), target="model")
    module_masks_at_start = {}

    class Spy(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            module_masks_at_start.update(nm_masks(pl_module.model))

    _trainer(tmp_path, [callback, Spy()], max_epochs=3, enable_checkpointing=False).fit(module)
    changed = [
        n for n, mask in nm_masks(module.model).items() if not torch.equal(mask, module_masks_at_start[n])
    ]
    assert changed, "with update_freq=1 and lr=0.1 some mask must move during 12 steps"


def test_resume_with_another_config_is_refused(tmp_path):
    _run(tmp_path / "b", max_epochs=1, update_freq=0, checkpoint_dir=tmp_path / "ckpt")
    other = tmp_path / "other.cfg"
    other.write_text("prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N1 } } }\n")
    module = TinyModule()
    callback = StructuredSparsityRetrain(config=str(other), target="model")
    with pytest.raises(
        ValueError,
        match=r"checkpoint was made with another pruning plan .*\(layer 'conv': checkpoint \[2, 4, 1, 0\], config \[1, 4, 1, 0\]",
    ):
        _trainer(tmp_path, [callback], max_epochs=2).fit(
            module, ckpt_path=str(tmp_path / "ckpt" / "epoch=0-step=4.ckpt")
        )


def test_state_round_trip(tmp_path):
    module = TinyModule()
    callback = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="model")
    _trainer(tmp_path, [callback], max_epochs=1, enable_checkpointing=False).fit(module)
    state = callback.state_dict()
    fresh = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="model")
    assert fresh.state_dict() != state
    fresh.load_state_dict(state)
    assert fresh.state_dict()["layers"] == state["layers"]
    assert state["layers"]["deconv"] == [2, 4, 0, 0]


def test_unknown_target_names_the_children(tmp_path):
    callback = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="net")
    with pytest.raises(ValueError, match=r"TinyModule has no submodule 'net' \(its children: model\)"):
        _trainer(tmp_path, [callback], max_epochs=1).fit(TinyModule())


def test_state_key_follows_the_target_not_the_config_location(tmp_path):
    first = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="model")
    moved = StructuredSparsityRetrain(config=_write_cfg(tmp_path / "moved"), target="model")
    other_target = StructuredSparsityRetrain(config=_write_cfg(tmp_path), target="model.head")
    assert first.state_key == moved.state_key
    assert first.state_key != other_target.state_key
