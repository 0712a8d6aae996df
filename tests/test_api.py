import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn

import lightning_prune as amct
from lightning_prune.errors import RecordError
from lightning_prune.functional.nm import nm_mask_is_valid
from lightning_prune.record import read_record
from lightning_prune.sparsity import nm_masks, nm_sparse_layers

CFG = """
prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 update_freq: 0 } } }
regular_prune_skip_layers: "8"  # the classifier
"""


def build_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Sequential(nn.Linear(16, 32), nn.ReLU()),
    ).append(nn.Linear(32, 5))


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "prune_config.cfg"
    path.write_text(CFG)
    return str(path)


def test_seed_call_example_works_as_written(tmp_path, cfg_file):
    # The seed's example, with only the import changed.
    model = build_model()
    state_dict_path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), state_dict_path)
    model.load_state_dict(torch.load(state_dict_path))
    input_shape = (2, 3, 8, 8)
    input_data = tuple([torch.randn(input_shape)])  # noqa: C409 - the seed example, verbatim
    record_file = os.path.join(tmp_path, "scale_offset_record.txt")
    prune_retrain_model = amct.create_prune_retrain_model(model, input_data, cfg_file, record_file)

    assert sorted(nm_sparse_layers(prune_retrain_model)) == ["0", "3", "7.0"]  # "8" is skipped
    assert not nm_sparse_layers(model), "the user's model must not be modified"
    record = read_record(record_file)
    assert [r.name for r in record.n_out_of_m] == ["0", "3", "7.0"]
    assert record.fingerprint.digest


def test_create_warns_and_skips_layers_too_narrow(tmp_path):
    cfg = tmp_path / "c.cfg"
    cfg.write_text("prune_config { n_out_of_m_pruner { l1_selective_prune { n_out_of_m_type: M4N2 } } }")
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 4))
    with pytest.warns(UserWarning, match=r"Layer '0' is left dense: its input-channel axis has 2 weights"):
        pruned = amct.create_prune_retrain_model(model, torch.randn(3, 2), str(cfg), str(tmp_path / "r.txt"))
    assert list(nm_sparse_layers(pruned)) == ["2"]


def _train(model, steps=5):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(steps):
        loss = model(torch.randn(4, 3, 8, 8)).logsumexp(1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("prefix", ["", "module."])
def test_restore_rebuilds_the_same_model(tmp_path, cfg_file, prefix):
    record_file = str(tmp_path / "record.txt")
    pruned = amct.create_prune_retrain_model(build_model(), (torch.randn(2, 3, 8, 8),), cfg_file, record_file)
    _train(pruned)
    state = {prefix + key: value for key, value in pruned.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")

    restored = amct.restore_prune_retrain_model(
        build_model(seed=7),
        (torch.randn(2, 3, 8, 8),),
        record_file,
        cfg_file,
        str(tmp_path / "ckpt.pth"),
        "state_dict",
    )
    assert nm_masks(restored).keys() == nm_masks(pruned).keys()
    for key, value in pruned.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value), key
    x = torch.randn(3, 3, 8, 8)
    torch.testing.assert_close(restored.eval()(x), pruned.eval()(x), rtol=0, atol=0)


def test_restore_refuses_a_record_of_another_model(tmp_path, cfg_file):
    record_file = str(tmp_path / "record.txt")
    pruned = amct.create_prune_retrain_model(build_model(), (torch.randn(2, 3, 8, 8),), cfg_file, record_file)
    torch.save(pruned.state_dict(), tmp_path / "w.pth")
    other = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(288, 5))
    with pytest.raises(RecordError, match=r"record\.txt"):
        amct.restore_prune_retrain_model(
            other, torch.randn(1, 3, 8, 8), record_file, cfg_file, str(tmp_path / "w.pth")
        )


def test_restore_names_a_missing_state_dict_key(tmp_path, cfg_file):
    record_file = str(tmp_path / "record.txt")
    pruned = amct.create_prune_retrain_model(build_model(), (torch.randn(2, 3, 8, 8),), cfg_file, record_file)
    torch.save({"model": pruned.state_dict()}, tmp_path / "w.pth")
    with pytest.raises(KeyError, match=r"has no entry 'state_dict' \(it has \['model'\]\)"):
        amct.restore_prune_retrain_model(
            build_model(),
            torch.randn(1, 3, 8, 8),
            record_file,
            cfg_file,
            str(tmp_path / "w.pth"),
            "state_dict",
        )


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda c, r: amct.create_prune_retrain_model("model", (torch.randn(1, 3, 8, 8),), c, r),
            TypeError,
            r"create_prune_retrain_model: argument model must be Module, got str",
        ),
        (
            lambda c, r: amct.create_prune_retrain_model(build_model(), 3, c, r),
            TypeError,
            r"argument input_data must be tuple or list, got int",
        ),
        (
            lambda c, r: amct.create_prune_retrain_model(build_model(), (torch.randn(1, 5, 8, 8),), c, r),
            RuntimeError,
            r"fails a train-mode forward with input_data",
        ),
        (
            lambda c, r: amct.create_prune_retrain_model(
                build_model(), (torch.randn(1, 3, 8, 8),), c + ".missing", r
            ),
            FileNotFoundError,
            r"missing",
        ),
    ],
)
def test_create_argument_errors(tmp_path, cfg_file, call, error, match):
    record_file = tmp_path / "record.txt"
    with pytest.raises(error, match=match):
        call(cfg_file, str(record_file))
    assert not record_file.exists(), "a failed call must not leave a record behind"


def test_create_does_not_touch_batchnorm_statistics(tmp_path, cfg_file):
    model = build_model()
    before = model[1].running_mean.clone()
    pruned = amct.create_prune_retrain_model(
        model, (torch.randn(4, 3, 8, 8) * 5,), cfg_file, str(tmp_path / "r.txt")
    )
    assert torch.equal(pruned[1].running_mean, before)
    assert pruned[1].num_batches_tracked.item() == 0


def test_save_writes_onnx_with_the_zero_pattern(tmp_path, cfg_file):
    pruned = amct.create_prune_retrain_model(
        build_model(), (torch.randn(2, 3, 8, 8),), cfg_file, str(tmp_path / "r.txt")
    )
    _train(pruned)
    amct.save_prune_retrain_model(
        pruned,
        str(tmp_path / "out" / "net"),
        (torch.randn(2, 3, 8, 8),),
        input_names=["images"],
        output_names=["logits"],
        dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
    )
    onnx_file = tmp_path / "out" / "net_deploy_model.onnx"
    assert onnx_file.exists()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["net_deploy_model.onnx"]
    assert nm_sparse_layers(pruned), "saving must not fold the masks of the model being trained"

    x = torch.randn(5, 3, 8, 8)  # another batch size than exported: the batch axis is dynamic
    session = ort.InferenceSession(str(onnx_file))
    (onnx_out,) = session.run(None, {"images": x.numpy()})
    np.testing.assert_allclose(onnx_out, pruned.eval()(x).detach().numpy(), rtol=1e-4, atol=1e-5)

    graph = onnx.load(str(onnx_file)).graph
    weights = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name, mask in nm_sparse_layers(pruned).items():
        candidates = [w for w in weights.values() if w.shape == tuple(mask.mask.shape)]
        assert candidates, f"no ONNX initializer has the shape of layer {name}"
        assert any(nm_mask_is_valid(torch.from_numpy(w != 0), 2, 4, 1) for w in candidates), name
        assert any(np.array_equal(w != 0, mask.mask.numpy()) for w in candidates), name


def test_save_with_trailing_slash_has_no_prefix(tmp_path, cfg_file):
    pruned = amct.create_prune_retrain_model(
        build_model(), torch.randn(1, 3, 8, 8), cfg_file, str(tmp_path / "r.txt")
    )
    amct.save_prune_retrain_model(pruned, str(tmp_path / "deploy") + "/", torch.randn(1, 3, 8, 8))
    assert (tmp_path / "deploy" / "deploy_model.onnx").exists()


@pytest.mark.parametrize(
    ("dynamic_axes", "match"),
    [
        ([0], r"dynamic_axes=\[0\] is a list"),
        ({0: {0: "b"}}, r"dynamic_axes key 0 is not a string"),
        ({"images": {-1: "b"}}, r"dynamic_axes\['images'\]=\{-1: 'b'\} has the wrong form"),
        ({"images": "batch"}, r"dynamic_axes\['images'\]='batch' has the wrong form"),
    ],
)
def test_save_validates_dynamic_axes_before_writing(tmp_path, cfg_file, dynamic_axes, match):
    model = build_model()
    with pytest.raises(TypeError, match=match):
        amct.save_prune_retrain_model(
            model, str(tmp_path / "x"), torch.randn(1, 3, 8, 8), dynamic_axes=dynamic_axes
        )
    assert not list(tmp_path.glob("x*"))


def test_export_pruned_model_is_plain(cfg_file, tmp_path):
    pruned = amct.create_prune_retrain_model(
        build_model(), torch.randn(1, 3, 8, 8), cfg_file, str(tmp_path / "r.txt")
    )
    plain = amct.export_pruned_model(pruned)
    assert set(plain.state_dict()) == set(build_model().state_dict())
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(plain.eval()(x), pruned.eval()(x))
