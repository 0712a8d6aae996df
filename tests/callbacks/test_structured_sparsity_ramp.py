"""Gradual channel pruning (``ramp_epochs``): a growing share of the plan is masked, epoch by epoch."""

import pytest
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import ModelCheckpoint
from test_structured_sparsity_channels import ZooModule, _cfg, _trainer

from lightning_prune.callbacks.structured_sparsity import StructuredSparsityRetrain
from lightning_prune.channel_masks import masked_channels
from lightning_prune.coupling.plan import layer_indices
from lightning_prune.functional.channels import ramp_count


class MaskedAtEpochStart(Callback):
    """Per epoch: layer name -> its masked output channels, as the training epoch starts."""

    def __init__(self) -> None:
        self.seen: list[dict[str, list[int]]] = []

    def on_train_epoch_start(self, trainer, pl_module):
        masks = masked_channels(pl_module.model)
        # New masks must not detach the weights from the optimizer: it still steps the model's own parameters.
        optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
        assert optimized == {id(p) for p in pl_module.parameters()}
        self.seen.append(
            {name: sorted(axes.get("out", [])) for name, axes in masks.items() if axes.get("out")}
        )


def _run(root, max_epochs, seed=0, ckpt_path=None, ramp_epochs=3):
    module = ZooModule("resnet_basic", seed=seed)
    callback = StructuredSparsityRetrain(
        config=_cfg(root), target="model", channel_mode="mask", ramp_epochs=ramp_epochs
    )
    spy = MaskedAtEpochStart()
    checkpoint = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
    _trainer(root, [callback, spy, checkpoint], max_epochs=max_epochs).fit(module, ckpt_path=ckpt_path)
    return module, callback, spy


def test_the_masked_share_grows_with_the_epochs_then_holds_the_full_plan(tmp_path):
    module, callback, spy = _run(tmp_path, max_epochs=4)
    plan = callback.pruning.channel_plan
    full = {
        name: sorted(axes["out"])
        for name, axes in layer_indices(callback.pruning.analysis, plan).items()
        if axes.get("out")
    }
    assert len(spy.seen) == 4
    for epoch, seen in enumerate(spy.seen):
        fraction = min(1.0, (epoch + 1) / 3)
        for gid, pruned in plan.items():
            group = callback.pruning.analysis.group(gid)
            expected = ramp_count(len(pruned), fraction, group.group)
            producer = group.producers[0].name
            assert len(seen.get(producer, [])) == expected, (epoch, producer)
            assert set(seen.get(producer, [])) <= set(full[producer])
        if epoch:  # what was masked stays masked
            for name, channels in spy.seen[epoch - 1].items():
                assert set(channels) <= set(seen[name])
    assert spy.seen[0] != spy.seen[1] != spy.seen[2] == spy.seen[3] == full
    # The first channels masked are the least important ones by BalancedL2Norm at setup.
    order = callback._ramp_order
    assert all(sorted(order[gid]) == plan[gid] for gid in plan)
    # The end of fit is the plain full-plan result: weights under the masks are exactly zero.
    x = module.example_input_array
    torch.testing.assert_close(callback.compact_model.eval()(x), module.model.eval()(x), rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:The dirpath has changed from")
def test_resume_mid_ramp_is_exact_even_from_other_initial_weights(tmp_path):
    uninterrupted, first, _ = _run(tmp_path / "a", max_epochs=4)
    with pytest.warns(UserWarning, match="fit ended before the ramp did"):  # only its checkpoint is used
        _run(tmp_path / "b", max_epochs=1)
    resumed, second, spy = _run(
        tmp_path / "c", max_epochs=4, seed=1, ckpt_path=str(tmp_path / "b" / "ckpt" / "epoch=0-step=4.ckpt")
    )
    assert second._ramp_order == first._ramp_order
    assert len(spy.seen) == 3  # epochs 1, 2, 3
    for key, value in uninterrupted.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_fit_shorter_than_the_ramp_warns_and_exports_the_full_plan(tmp_path):
    with pytest.warns(UserWarning, match=r"fit ended before the ramp did \(ramp_epochs=5, 2 epoch"):
        module, callback, _ = _run(tmp_path, max_epochs=2, ramp_epochs=5)
    full = layer_indices(callback.pruning.analysis, callback.pruning.channel_plan)
    assert {
        name: axes.get("out") for name, axes in masked_channels(module.model).items() if axes.get("out")
    } == {name: sorted(axes["out"]) for name, axes in full.items() if axes.get("out")}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"ramp_epochs": 2, "channel_mode": "compact"},
            r"ramp_epochs=2, channel_mode='compact'.*HINT: use channel_mode='mask'",
        ),
        ({"ramp_epochs": -1}, r"ramp_epochs=-1\): expected an integer >= 0"),
        ({"ramp_epochs": 1.5}, r"ramp_epochs=1.5\): expected an integer >= 0"),
    ],
)
def test_ramp_argument_errors(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        StructuredSparsityRetrain(config=_cfg(tmp_path), **kwargs)
