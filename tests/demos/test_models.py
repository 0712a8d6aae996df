from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn

from lightning_prune.demos.data import RandomImageDataModule
from lightning_prune.demos.models import (
    ARCHITECTURES,
    BasicBlock,
    ImageClassifier,
    SmallResNet,
    build_model,
    resnet20,
)


@pytest.mark.parametrize(
    ("in_channels", "stride", "out_channels", "has_projection"),
    [(8, 1, 8, False), (8, 2, 8, True), (8, 1, 16, True), (8, 2, 16, True)],
)
def test_basic_block_shapes_and_shortcut(in_channels: int, stride: int, out_channels: int,
                                         has_projection: bool) -> None:  # fmt: skip
    block = BasicBlock(in_channels, out_channels, stride)
    assert (block.downsample is not None) == has_projection
    out = block(torch.randn(2, in_channels, 10, 10))
    assert out.shape == (2, out_channels, 5 if stride == 2 else 10, 5 if stride == 2 else 10)
    assert out.min() >= 0  # ends with ReLU


def test_small_resnet_default_shapes_and_names() -> None:
    net = SmallResNet()
    assert net(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    names = {name for name, _ in net.named_modules()}
    assert {"stem.0", "layer1.0.conv1", "layer2.0.downsample.0", "layer3.0.bn2", "fc"} <= names
    assert "layer1.0.downsample.0" not in names  # 16 -> 16, stride 1: identity shortcut


def test_small_resnet_custom_widths() -> None:
    net = SmallResNet(in_channels=3, num_classes=7, widths=(4, 8, 12, 16), blocks_per_stage=2)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert net.fc.in_features == 16
    assert len(net.layer4) == 2


@pytest.mark.parametrize("kwargs", [{"widths": ()}, {"blocks_per_stage": 0}])
def test_small_resnet_rejects_empty_configs(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="at least one"):
        SmallResNet(**kwargs)


def test_resnet20_structure() -> None:
    net = resnet20(num_classes=100)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 100)
    convs = [module for module in net.modules() if isinstance(module, nn.Conv2d)]
    # 19 weighted 3x3 layers + the FC = the "20"; plus 2 projection shortcuts.
    assert sum(conv.kernel_size == (3, 3) for conv in convs) == 19
    assert sum(conv.kernel_size == (1, 1) for conv in convs) == 2
    assert [len(getattr(net, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    assert 0.26e6 < sum(p.numel() for p in net.parameters()) < 0.28e6


def test_build_model_registry() -> None:
    assert set(ARCHITECTURES) == {"small_resnet", "resnet20"}
    assert build_model("small_resnet", num_classes=3, in_channels=2)(torch.randn(1, 2, 28, 28)).shape == (
        1,
        3,
    )
    with pytest.raises(ValueError, match="unknown arch 'vgg'"):
        build_model("vgg")


def test_image_classifier_constructs_from_hparams() -> None:
    module = ImageClassifier(arch="resnet20", in_channels=3, input_size=[3, 32, 32], num_classes=4)
    assert module.example_input_array.shape == (1, 3, 32, 32)
    assert module(module.example_input_array).shape == (1, 4)
    assert module.hparams.arch == "resnet20"
    clone = ImageClassifier(**module.hparams)
    assert clone.hparams == module.hparams


@pytest.mark.parametrize(("kwargs", "match"), [({"optimizer": "lbfgs"}, "optimizer"),
                                               ({"max_epochs_for_schedule": 0}, "max_epochs_for_schedule")])  # fmt: skip
def test_image_classifier_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ImageClassifier(**kwargs)


def test_loss_fn_is_cross_entropy() -> None:
    module = ImageClassifier()
    logits, target = torch.randn(5, 10), torch.randint(0, 10, (5,))
    assert torch.allclose(module.loss_fn(logits, target), nn.functional.cross_entropy(logits, target))


def test_configure_optimizers_without_trainer_is_constant_lr() -> None:
    module = ImageClassifier(optimizer="adam", lr=1e-3)
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam)


def test_configure_optimizers_explicit_cosine_schedule() -> None:
    config = ImageClassifier(max_epochs_for_schedule=4).configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert isinstance(config["optimizer"], torch.optim.SGD)
    assert isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert scheduler.T_max == 4


def _trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    return L.Trainer(default_root_dir=tmp_path, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
                     **kwargs)  # fmt: skip


@pytest.mark.parametrize("arch", ["small_resnet", "resnet20"])
def test_image_classifier_fast_dev_run(tmp_path: Path, arch: str) -> None:
    in_channels = 1 if arch == "small_resnet" else 3
    shape = [in_channels, 28, 28] if arch == "small_resnet" else [in_channels, 16, 16]
    datamodule = RandomImageDataModule(num_samples=16, image_shape=shape, batch_size=8)
    module = ImageClassifier(arch=arch, in_channels=in_channels, input_size=shape)
    trainer = _trainer(tmp_path, fast_dev_run=2)
    trainer.fit(module, datamodule=datamodule)
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(trainer.callback_metrics)
    results = trainer.test(module, datamodule=datamodule, verbose=False)
    assert 0.0 <= results[0]["test_acc"] <= 1.0


def test_image_classifier_learns_and_follows_cosine_schedule(tmp_path: Path) -> None:
    L.seed_everything(0, verbose=False)
    datamodule = RandomImageDataModule(num_samples=256, image_shape=[1, 8, 8], num_classes=2, batch_size=64)
    module = ImageClassifier(lr=0.05, input_size=[1, 8, 8], num_classes=2)
    trainer = _trainer(tmp_path, max_epochs=4, num_sanity_val_steps=0)
    untrained = trainer.validate(module, datamodule=datamodule, verbose=False)[0]
    trainer.fit(module, datamodule=datamodule)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.T_max == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] < 0.05  # annealed
    # The synthetic labels are learnable: loss drops and accuracy leaves chance (0.5) behind.
    assert trainer.callback_metrics["val_loss"] < untrained["val_loss"] - 0.05
    assert trainer.callback_metrics["val_acc"] > 0.65
