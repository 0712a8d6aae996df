import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from coupling.zoo import HardCodedView, init_random, make

import lightning_prune as amct
from lightning_prune.coupling import analyze_coupling
from lightning_prune.proto import PruneRecord
from lightning_prune.record import model_fingerprint, read_record, write_record
from lightning_prune.sparsity import nm_sparse_layers
from lightning_prune.surgery import plan_to_records

CHANNEL_CFG = "prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.5 ascend_optimized: false } } }\n"


def _cfg(tmp_path, text=CHANNEL_CFG, name="prune.cfg"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _parameters(module):
    return sum(p.numel() for p in module.parameters())


def _train(model, x, steps=3):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = model(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("name", ["resnet_bottleneck", "mobilenet_v2", "resnext", "senet"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_create_is_compact_and_restore_rebuilds_it_exactly(tmp_path, name, prefix):
    model, x = make(name)
    record_file = str(tmp_path / "record.txt")
    pruned = amct.create_prune_retrain_model(model, (x,), _cfg(tmp_path), record_file)
    assert _parameters(pruned) < 0.8 * _parameters(model)
    assert type(pruned) is type(model)
    _train(pruned, x)
    torch.save({"state_dict": {prefix + k: v for k, v in pruned.state_dict().items()}}, tmp_path / "ckpt.pth")

    fresh, _ = make(name, seed=11)
    restored = amct.restore_prune_retrain_model(
        fresh, (x,), record_file, _cfg(tmp_path), str(tmp_path / "ckpt.pth"), "state_dict"
    )
    for key, value in pruned.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    torch.testing.assert_close(restored.eval()(x), pruned.eval()(x), rtol=0, atol=0)
    assert len(read_record(record_file).channel_group) > 0


def test_groups_that_break_the_model_are_dropped_with_a_warning(tmp_path):
    model, x = init_random(HardCodedView()), torch.randn(2, 3, 16, 16)
    with pytest.warns(UserWarning, match=r"channel group \d+ \('conv2'.*'fc'.*is not pruned"):
        pruned = amct.create_prune_retrain_model(model, (x,), _cfg(tmp_path), str(tmp_path / "r.txt"))
    pruned.train()(x)  # still runs
    assert _parameters(pruned) < _parameters(model)


def test_save_writes_a_compact_onnx_model(tmp_path):
    model, x = make("resnet_basic")
    pruned = amct.create_prune_retrain_model(model, (x,), _cfg(tmp_path), str(tmp_path / "r.txt"))
    amct.save_prune_retrain_model(pruned, str(tmp_path / "resnet"), (x,), input_names=["x"])
    onnx_file = tmp_path / "resnet_deploy_model.onnx"
    (got,) = ort.InferenceSession(str(onnx_file)).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, pruned.eval()(x).detach().numpy(), rtol=1e-4, atol=1e-5)
    weights = sum(np.prod(i.dims) for i in onnx.load(str(onnx_file)).graph.initializer)
    assert weights < 0.8 * _parameters(model)


def test_mixed_config_channel_prunes_some_layers_and_2to4_the_others(tmp_path):
    # AMCT's own test: global 2:4 plus a layer override to filter-prune.
    cfg = _cfg(
        tmp_path,
        """
        prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 } } }
        override_layer_configs {
          layer_name: "layer1.0.conv1"
          prune_config { filter_pruner { balanced_l2_norm_filter_prune { prune_ratio: 0.5 ascend_optimized: false } } }
        }
    """,
    )
    model, x = make("resnet_basic")
    pruned = amct.create_prune_retrain_model(model, (x,), cfg, str(tmp_path / "r.txt"))
    conv1 = pruned.get_submodule("layer1.0.conv1")
    assert conv1.out_channels == model.get_submodule("layer1.0.conv1").out_channels // 2
    assert "layer1.0.conv1" not in nm_sparse_layers(pruned)
    assert "layer1.0.conv2" in nm_sparse_layers(pruned)
    record = read_record(tmp_path / "r.txt")
    assert len(record.channel_group) == 1
    assert len(record.n_out_of_m) > 0


def test_channel_selection_record_is_used_verbatim(tmp_path):
    model, x = make("resnet_basic")
    analysis = analyze_coupling(model, (x,))
    group = analysis.prunable_groups[0]
    chosen = {group.id: list(range(group.channels // 2))}  # not what BalancedL2Norm would pick
    record = PruneRecord(fingerprint=model_fingerprint(model))
    record.channel_group.extend(plan_to_records(analysis, chosen))
    write_record(tmp_path / "chosen.txt", record)
    cfg = _cfg(tmp_path, CHANNEL_CFG + 'channel_selection_record: "chosen.txt"\n')
    amct.create_prune_retrain_model(model, (x,), cfg, str(tmp_path / "r.txt"))
    written = read_record(tmp_path / "r.txt")
    assert [list(g.pruned_index) for g in written.channel_group] == [chosen[group.id]]


def test_export_of_a_compact_model_is_a_plain_copy(tmp_path):
    model, x = make("densenet")
    pruned = amct.create_prune_retrain_model(model, (x,), _cfg(tmp_path), str(tmp_path / "r.txt"))
    plain = amct.export_pruned_model(pruned)
    assert plain is not pruned
    torch.testing.assert_close(plain.eval()(x), pruned.eval()(x), rtol=0, atol=0)
