"""End-to-end checks on the model zoo: groups, masked == compact, records, restore, ONNX."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from zoo import ZOO, HardCodedView, SharedWeights, init_random, make

from lightning_prune.coupling import analyze_coupling
from lightning_prune.proto import PruneRecord
from lightning_prune.surgery import (
    apply_channel_masks,
    balanced_l2_plan,
    drop_breaking_groups,
    plan_to_records,
    prune_channels,
    records_to_plan,
    remove_channel_masks,
)


def groups_by_producers(analysis):
    return {tuple(p.name for p in g.producers): g for g in analysis.groups}


def consumer_names(group):
    return [(c.name, c.axis, c.begin, c.end, c.elements) for c in group.consumers]


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module", params=list(ZOO))
def pruned(request):
    """Analysis, a 50 % BalancedL2 plan, and the masked and compact models of one zoo model."""
    model, x = make(request.param)
    analysis = analyze_coupling(model, x)
    plan = balanced_l2_plan(model, analysis, 0.5)
    masked = apply_channel_masks(copy.deepcopy(model), analysis, plan).eval()
    compact = prune_channels(copy.deepcopy(model), analysis, plan).eval()
    return request.param, model, x, analysis, plan, masked, compact


def test_masked_equals_compact(pruned):
    name, model, x, _analysis, plan, masked, compact = pruned
    assert plan, f"{name}: nothing was pruned"
    with torch.no_grad():
        y_masked, y_compact, y_full = masked(x), compact(x), model(x)
    assert y_compact.shape == y_full.shape
    torch.testing.assert_close(y_compact, y_masked, rtol=1e-5, atol=1e-5)
    assert n_params(compact) < n_params(model)
    assert type(compact) is type(model)


def test_model_unchanged_by_analysis(pruned):
    name, model, _x, *_ = pruned
    fresh, _ = make(name)
    for (k, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert not model.training


def test_record_restore_round_trip(pruned, tmp_path):
    name, _model, x, analysis, plan, _masked, compact = pruned
    record = PruneRecord(channel_group=plan_to_records(analysis, plan))
    blob = record.SerializeToString()
    torch.save(compact.state_dict(), tmp_path / "compact.pt")

    fresh, _ = make(name, seed=7)
    restored_record = PruneRecord.FromString(blob)
    fresh_analysis = analyze_coupling(fresh, x)
    fresh_plan = records_to_plan(fresh_analysis, restored_record.channel_group)
    assert fresh_plan == {g: sorted(i.tolist()) for g, i in plan.items()}
    prune_channels(fresh, fresh_analysis, fresh_plan)
    fresh.load_state_dict(torch.load(tmp_path / "compact.pt", weights_only=True))
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x), compact(x))


def test_masks_round_trip_and_remove(pruned):
    _name, model, x, analysis, plan, masked, _compact = pruned
    state = masked.state_dict()
    assert any(k.endswith("parametrizations.weight.0.mask") for k in state)
    again = apply_channel_masks(copy.deepcopy(model), analysis, plan)
    again.load_state_dict(state)
    baked = remove_channel_masks(copy.deepcopy(masked))
    with torch.no_grad():
        torch.testing.assert_close(baked.eval()(x), masked(x))
    assert not any("parametrizations" in k for k in baked.state_dict())


def test_train_mode_forward_check_keeps_plan(pruned):
    _name, model, x, analysis, plan, *_ = pruned
    before = torch.random.get_rng_state()
    kept = drop_breaking_groups(model, analysis, plan, x)
    assert kept.keys() == plan.keys()
    assert torch.equal(before, torch.random.get_rng_state())


# The legacy exporter is only used for control_flow (torch.export rejects data-dependent
# branches); it warns that it is legacy and that it bakes in the branch taken.
@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.filterwarnings("ignore:The feature will be removed. Please remove usage of this function")
@pytest.mark.filterwarnings(
    "ignore:Converting a tensor to a Python (boolean|integer) might cause the trace to be incorrect"
)
def test_onnx_export_of_compact_model(pruned, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    name, model, x, _analysis, _plan, _masked, compact = pruned
    path = tmp_path / f"{name}.onnx"
    if name == "control_flow":
        torch.onnx.export(compact, (x,), str(path), dynamo=False, input_names=["x"])
    else:
        torch.onnx.export(compact, (x,), dynamo=True).save(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (y_onnx,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(y_onnx), compact(x), rtol=1e-4, atol=1e-4)
    assert n_params(compact) < n_params(model)


# ------------------------------------------------------------------ expected structures
def test_resnet_basic_groups():
    model, x = make("resnet_basic")
    g = groups_by_producers(analyze_coupling(model, x))
    stream = g[("stem.0", "layer1.0.conv2", "layer1.1.conv2")]
    assert stream.prunable
    assert stream.channels == 16
    assert {c.name for c in stream.consumers} >= {
        "stem.1",
        "layer1.0.bn2",
        "layer1.1.bn2",
        "layer2.conv1",
        "layer2.down.0",
    }
    assert g[("layer2.conv2", "layer2.down.0")].consumers[-1].name == "fc"
    assert consumer_names(g[("layer1.0.conv1",)]) == [
        ("layer1.0.bn1", "in", 0, 16, 1),
        ("layer1.0.conv2", "in", 0, 16, 1),
    ]
    head = g[("fc",)]
    assert not head.prunable
    assert "model output" in head.reason


def test_mobilenet_depthwise_is_passive_and_transparent():
    model, x = make("mobilenet_v2")
    analysis = analyze_coupling(model, x)
    g = groups_by_producers(analysis)
    assert all(
        p.name not in {"blocks.0.dw.0", "blocks.1.dw.0"} for grp in analysis.groups for p in grp.producers
    )
    expand = g[("blocks.1.expand.0",)]
    assert consumer_names(expand) == [
        ("blocks.1.expand.1", "in", 0, 64, 1),
        ("blocks.1.dw.0", "in", 0, 64, 1),
        ("blocks.1.dw.0", "out", 0, 64, 1),
        ("blocks.1.dw.1", "in", 0, 64, 1),
        ("blocks.1.project.0", "in", 0, 64, 1),
    ]
    assert g[("blocks.1.project.0", "blocks.2.project.0")].prunable  # residual stream
    compact = prune_channels(copy.deepcopy(model), analysis, {expand.id: list(range(0, 64, 2))})
    dw = compact.blocks[1].dw[0]
    assert dw.in_channels == dw.out_channels == dw.groups == 32


def test_densenet_concat_offsets_and_flatten():
    model, x = make("densenet")
    g = groups_by_producers(analyze_coupling(model, x))
    assert [(c.name, c.begin, c.end) for c in g[("dense.1.conv",)].consumers] == [
        ("dense.2.bn", 24, 32),
        ("dense.2.conv", 24, 32),
        ("trans.0", 24, 32),
        ("trans.2", 24, 32),
    ]
    assert consumer_names(g[("trans.2",)]) == [("fc", "in", 0, 384, 16)]


def test_resnext_grouped_conv_slices():
    model, x = make("resnext")
    analysis = analyze_coupling(model, x)
    g = groups_by_producers(analysis)
    assert g[("block.a.0",)].group == 4
    assert g[("block.b.0",)].group == 4
    with pytest.raises(ValueError, match=r"channel group 1 .*'block.a.0'.* each slice must lose the same"):
        prune_channels(copy.deepcopy(model), analysis, {1: [0, 1, 2, 3]})


def test_se_multiply_couples_expanding_layer():
    model, x = make("senet")
    g = groups_by_producers(analyze_coupling(model, x))
    assert g[("conv1", "se1.fc2")].prunable
    assert [c.name for c in g[("conv2", "se2.fc2")].consumers] == ["bn2", "se2.fc1", "fc"]


def test_transformer_ffn_prunable_attention_blocked():
    model, x = make("transformer")
    g = groups_by_producers(analyze_coupling(model, x))
    assert g[("ffn.0",)].prunable
    assert consumer_names(g[("ffn.0",)]) == [("ffn.2", "in", 0, 64, 1)]
    assert not g[("attn.qkv",)].prunable
    assert "reshape" in g[("attn.qkv",)].reason
    assert not g[("embed", "attn.proj", "ffn.2")].prunable
    assert "LayerNorm" in g[("embed", "attn.proj", "ffn.2")].reason


def test_control_flow_model_is_not_fx_traceable_but_analysed():
    model, x = make("control_flow")
    with pytest.raises(
        Exception, match=r"symbolically traced variables cannot be used as inputs to control flow"
    ):
        torch.fx.symbolic_trace(model)
    taken = groups_by_producers(analyze_coupling(model, -x.abs()))  # mean < 0: the 'neg' branch
    assert ("neg.0",) in taken
    assert ("pos.0",) not in taken
    other = groups_by_producers(analyze_coupling(model, x.abs()))  # mean > 0: the 'pos' branch
    assert ("pos.0",) in other
    assert consumer_names(other[("conv1",)]) == [
        ("bn1", "in", 0, 16, 1),
        ("pos.0", "in", 0, 16, 1),
    ]


def test_shared_and_reused_layers_are_excluded_with_warning():
    model = init_random(SharedWeights())
    with pytest.warns(
        UserWarning, match=r"'shared': module called 2 times.*'fc1': shares a parameter with 'fc2'"
    ):
        analysis = analyze_coupling(model, torch.randn(2, 3, 8, 8))
    assert set(analysis.excluded) == {"shared", "fc1", "fc2"}
    assert not analysis.prunable_groups
    assert "excluded" in analysis.group_of("conv1").reason


def test_hard_coded_view_dropped_by_train_forward_check():
    model, x = init_random(HardCodedView()), torch.randn(2, 3, 8, 8)
    analysis = analyze_coupling(model, x)
    plan = {analysis.group_of("conv1").id: [0, 1], analysis.group_of("conv2").id: [0, 1]}
    with pytest.warns(UserWarning, match=r"channel group 1 \('conv2', 'fc'\) is not pruned"):
        kept = drop_breaking_groups(model, analysis, plan, x)
    assert kept == {0: [0, 1]}


def test_report_lists_every_group():
    model, x = make("transformer")
    text = analyze_coupling(model, x).report()
    assert "ffn.0 -> ffn.2[in 0:64]" in text
    assert "reason: reaches op 'reshape' in 'attn'" in text
    assert "1 of 4 channel groups prunable." in text


def test_tracer_restores_training_flags_and_bn_stats():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(), nn.Conv2d(4, 2, 1)).train()
    model[2].eval()
    stats = model[1].running_mean.clone()
    analyze_coupling(model, torch.randn(2, 3, 6, 6) + 5)
    assert [m.training for m in model] == [True, True, False, True]
    assert torch.equal(model[1].running_mean, stats)
    assert model[1].num_batches_tracked == 0
