"""auto_channel_prune_search end to end: the seed example, written files, overrides, extension points, errors."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from google.protobuf import text_format
from search_models import DecoderNet, init_random, make, resnet_like
from torch import nn

from lightning_prune.config import RetrainConfig
from lightning_prune.coupling import analyze_coupling
from lightning_prune.coupling.records import records_to_plan
from lightning_prune.errors import PruneConfigError
from lightning_prune.functional.channels import channels_to_keep
from lightning_prune.proto import AMCTRetrainConfig
from lightning_prune.record import check_fingerprint, read_record
from lightning_prune.search import (
    SearchChannelBase,
    SensitivityBase,
    TaylorLossSensitivity,
    auto_channel_prune_search,
    count_macs,
)
from lightning_prune.surgery import balanced_l2_plan, prune_channels


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def _check_outputs(model: nn.Module, x: torch.Tensor, result, output_cfg: str) -> None:
    """The cfg resolves, its ratios give back the searched counts, and the record rebuilds the measured ratio."""
    analysis = analyze_coupling(model, x)
    cfg = RetrainConfig.from_file(output_cfg)
    assert cfg.proto.channel_selection_record == Path(output_cfg).stem + ".record.txt"
    specs = cfg.resolve(model)
    for gid, pruned in result.plan.items():
        g = analysis.group(gid)
        named = [p for p in g.producers if p.name in specs]  # a user override may name one producer only
        assert named
        for producer in named:
            spec = specs[producer.name]
            assert channels_to_keep(g.channels, spec.prune_ratio, spec.channel_multiple, g.group) == (
                g.channels - len(pruned)
            )
    record_path = Path(output_cfg).parent / cfg.proto.channel_selection_record
    assert str(record_path) == result.record_file
    record = read_record(record_path)
    check_fingerprint(record, model)
    assert records_to_plan(analysis, record.channel_group) == result.plan
    compact = prune_channels(copy.deepcopy(model), analysis, result.plan)
    assert count_macs(compact, x[:1]) == result.final_macs
    assert count_macs(model, x[:1]) / count_macs(compact, x[:1]) == result.achieved_ratio


def test_seed_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    _write(
        tmp_path / "tmp" / "sample.cfg",
        "compress_ratio: 1.5\nascend_optimized: true\nmax_prune_ratio: 0.7\ntest_iteration: 2\n",
    )
    model = init_random(resnet_like())
    input_shape = (4, 3, 16, 16)
    # --- the seed's call example, verbatim but for the import ---
    input_data = torch.randn(input_shape)
    model.eval()
    output = model.forward(input_data)
    labels = torch.randn(output.size())
    data = [input_data, labels]

    result = auto_channel_prune_search(
        model=model,
        config="./tmp/sample.cfg",
        input_data=data,
        output_cfg="./tmp/output.cfg",
        sensitivity="TaylorLossSensitivity",
        search_alg="GreedySearch",
    )
    # ---
    assert result.reached
    assert result.achieved_ratio >= 1.5
    assert all(row.channels_after % 16 == 0 for row in result.groups)
    assert all(row.channels_after >= 0.3 * row.channels_before for row in result.groups)
    assert "reached" in result.table()
    assert set(result.timings) == {"analysis", "macs", "sensitivity", "search", "write"}
    _check_outputs(model, input_data, result, "./tmp/output.cfg")
    text = (tmp_path / "tmp" / "output.cfg").read_text()
    assert text.startswith("# Written by lightning_prune auto_channel_prune_search")
    assert "ascend_optimized: true" in text
    assert "channel_multiple" not in text


def test_override_prune_cfg_layers_keep_the_users_setting(tmp_path: Path) -> None:
    model, x = make("resnet")
    _write(
        tmp_path / "keep.cfg",
        'regular_prune_skip_layers: "layer1.0.conv1"\n'
        'skip_layers: "layer2.0.conv2"\n'  # one producer of the layer2 residual stream
        'override_layer_configs { layer_name: "layer2.0.conv1" prune_config { filter_pruner {\n'
        "  balanced_l2_norm_filter_prune { prune_ratio: 0.5 ascend_optimized: false } } } }\n"
        'override_layer_configs { layer_name: "layer1.0.conv2" prune_config { filter_pruner {\n'
        "  balanced_l2_norm_filter_prune { prune_ratio: 0.25 ascend_optimized: false } } } }\n",
    )
    config = _write(
        tmp_path / "search.cfg", 'compress_ratio: 1.3 ascend_optimized: false override_prune_cfg: "keep.cfg"'
    )
    result = auto_channel_prune_search(model, config, [x, torch.randn(4, 10)], str(tmp_path / "out.cfg"))
    analysis = analyze_coupling(model, x)
    skipped, overridden = analysis.group_of("layer1.0.conv1").id, analysis.group_of("layer2.0.conv1").id
    stream1, stream2 = analysis.group_of("layer1.0.conv2").id, analysis.group_of("layer2.0.conv2").id
    assert skipped not in result.plan
    assert stream2 not in result.plan  # a skipped producer keeps its whole group
    bcp = balanced_l2_plan(model, analysis, {"layer2.0.conv1": 0.5, "layer1.0.conv2": 0.25})
    assert result.plan[overridden] == bcp[overridden].tolist()
    assert result.plan[stream1] == bcp[stream1].tolist()  # BCP over all three producers of the stream
    assert len(result.plan[stream1]) == 8
    sources = {row.group_id: row.source for row in result.groups}
    assert {sources[g] for g in (skipped, overridden, stream1, stream2)} == {"override_prune_cfg"}
    assert {g for g, src in sources.items() if src == "search"} == {
        analysis.group_of("layer1.1.conv1").id,
        analysis.group_of("layer2.1.conv1").id,
    }
    proto = text_format.Parse((tmp_path / "out.cfg").read_text(), AMCTRetrainConfig())
    assert list(proto.regular_prune_skip_layers) == ["layer1.0.conv1"]
    assert list(proto.skip_layers) == ["layer2.0.conv2"]
    names = [e.layer_name for e in proto.override_layer_configs]
    assert names.count("layer2.0.conv1") == 1
    assert names.count("layer1.0.conv2") == 1
    assert "layer1.0.conv1" not in names
    assert result.reached
    _check_outputs(model, x, result, str(tmp_path / "out.cfg"))


def test_unreachable_target_warns_and_flags(tmp_path: Path) -> None:
    model, x = make("mlp")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 50 max_prune_ratio: 0.3 ascend_optimized: false")
    with pytest.warns(
        UserWarning, match=r"compress_ratio 50.0 is not reachable.*best ratio reached is 1\.\d+"
    ):
        result = auto_channel_prune_search(model, config, [x, torch.randn(8, 10)], str(tmp_path / "o.cfg"))
    assert not result.reached
    assert 1 < result.achieved_ratio < 50
    assert "NOT reached" in result.table()
    _check_outputs(model, x, result, str(tmp_path / "o.cfg"))


def test_channel_multiple_extension(tmp_path: Path) -> None:
    model, x = make("mobilenet_v2")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.5 channel_multiple: 8 test_iteration: 2")
    result = auto_channel_prune_search(model, config, [x, torch.randn(4, 10)], str(tmp_path / "o.cfg"))
    assert all(row.channels_after % 8 == 0 for row in result.groups)
    assert any(row.channels_after % 16 for row in result.groups)
    specs = RetrainConfig.from_file(tmp_path / "o.cfg").resolve(model)
    assert {s.channel_multiple for s in specs.values()} == {8}
    _check_outputs(model, x, result, str(tmp_path / "o.cfg"))


def test_transposed_conv_groups_are_left_out(tmp_path: Path) -> None:
    model, x = init_random(DecoderNet()), torch.randn(2, 3, 8, 8)
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.2 ascend_optimized: false")
    result = auto_channel_prune_search(model, config, [x, torch.randn(2, 2, 8, 8)], str(tmp_path / "o.cfg"))
    assert [row.producers for row in result.groups] == [("enc",)]
    _check_outputs(model, x, result, str(tmp_path / "o.cfg"))


class L1Norm(SensitivityBase):
    def get_sensitivity(self, groups):
        self.seen = [g.id for g in groups]
        return {
            g.id: sum(
                self.model.get_submodule(p.name).weight.detach().abs().flatten(1).sum(1) for p in g.producers
            )
            for g in groups
        }


class Uniform(SearchChannelBase):
    def channel_prune_search(self, problem):
        for share in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6):
            plan = {}
            for g in problem.groups:
                kept = g.channels
                while kept > g.channels * (1 - share) and problem.next_step(g, kept):
                    kept -= problem.next_step(g, kept)
                plan[g.id] = problem.cheapest_channels(g, g.channels - kept)
            if problem.ratio(plan) >= problem.compress_ratio:
                break
        return plan


def test_custom_sensitivity_and_search(tmp_path: Path) -> None:
    model, x = make("resnet")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.5 ascend_optimized: false")
    sens = L1Norm()
    result = auto_channel_prune_search(
        model,
        config,
        [x, torch.randn(4, 10)],
        str(tmp_path / "o.cfg"),
        sensitivity=sens,
        search_alg=Uniform(),
    )
    assert sens.seen == [0, 1, 2, 3, 4, 5]
    assert sens.test_iteration == 1
    assert result.reached
    kept = {row.group_id: row.channels_after / row.channels_before for row in result.groups}
    assert max(kept.values()) - min(kept.values()) < 0.05  # uniform
    _check_outputs(model, x, result, str(tmp_path / "o.cfg"))


class BadShape(SensitivityBase):
    def get_sensitivity(self, groups):
        return {g.id: torch.ones(g.channels + 1) for g in groups}


class Negative(SensitivityBase):
    def get_sensitivity(self, groups):
        return {g.id: -torch.ones(g.channels) for g in groups}


class Misaligned(SearchChannelBase):
    def channel_prune_search(self, problem):
        return {problem.groups[0].id: [0]}


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"sensitivity": "Taylor"},
            ValueError,
            (
                r"sensitivity='Taylor' is not supported; valid names: "
                "'TaylorLossSensitivity'"
            ),
        ),
        (
            {"search_alg": "Bogus"},
            ValueError,
            "valid names: 'GreedySearch', or an instance of a SearchChannelBase",
        ),
        (
            {"sensitivity": TaylorLossSensitivity},
            TypeError,
            r"pass an instance, sensitivity=TaylorLossSensitivity\(\)",
        ),
        ({"search_alg": 3}, TypeError, "argument search_alg must be str or SearchChannelBase, got int"),
        (
            {"sensitivity": BadShape()},
            ValueError,
            r"BadShape.get_sensitivity: channel group 0 .* expected shape \[32\]",
        ),
        ({"sensitivity": Negative()}, ValueError, "Negative.get_sensitivity: .* finite and >= 0"),
        ({"search_alg": Misaligned()}, ValueError, "Misaligned: channel group 0 .* multiples of 16"),
    ],
)
def test_argument_errors(tmp_path: Path, kwargs: dict, error: type, match: str) -> None:
    model, x = make("resnet")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.5")
    with pytest.raises(error, match=match):
        auto_channel_prune_search(model, config, [x, torch.randn(4, 10)], str(tmp_path / "o.cfg"), **kwargs)
    assert not (tmp_path / "o.cfg").exists()


def test_type_errors(tmp_path: Path) -> None:
    model, x = make("mlp")
    with pytest.raises(TypeError, match="argument model must be Module, got str"):
        auto_channel_prune_search("model", "c.cfg", [x, x], "o.cfg")
    with pytest.raises(TypeError, match="argument config must be str or PathLike, got int"):
        auto_channel_prune_search(model, 1, [x, x], "o.cfg")


def test_too_few_samples(tmp_path: Path) -> None:
    model, x = make("mlp")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.5 test_iteration: 9")
    with pytest.raises(ValueError, match=r"holds 8 sample.*test_iteration is 9"):
        auto_channel_prune_search(model, config, [x, torch.randn(8, 10)], str(tmp_path / "o.cfg"))


def test_no_searchable_group(tmp_path: Path) -> None:
    model, x = make("mlp")
    _write(tmp_path / "skip.cfg", 'regular_prune_skip_layers: "0" skip_layers: "2"')
    config = _write(tmp_path / "s.cfg", 'compress_ratio: 1.5 override_prune_cfg: "skip.cfg"')
    with pytest.raises(
        PruneConfigError, match=r"no channel group is left to search.*2 set by override_prune_cfg"
    ):
        auto_channel_prune_search(model, config, [x, torch.randn(8, 10)], str(tmp_path / "o.cfg"))


def test_unknown_layer_in_override_prune_cfg(tmp_path: Path) -> None:
    model, x = make("resnet")
    _write(tmp_path / "skip.cfg", 'regular_prune_skip_layers: "layer1.0.con1"')
    config = _write(tmp_path / "s.cfg", 'compress_ratio: 1.5 override_prune_cfg: "skip.cfg"')
    with pytest.raises(
        PruneConfigError,
        match=r"skip.cfg: `regular_prune_skip_layers` names layer \"layer1.0.con1\", "
        "which the model does not have. HINT: did you mean 'layer1.0.conv1'",
    ):
        auto_channel_prune_search(model, config, [x, torch.randn(4, 10)], str(tmp_path / "o.cfg"))


def test_nothing_prunable_under_alignment(tmp_path: Path) -> None:
    model, x = make("tiny")  # at most 10 channels per group: nothing fits a multiple of 16
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.2")
    with pytest.raises(
        PruneConfigError, match=r"not reachable: no channel can be removed.*ascend_optimized: false"
    ):
        auto_channel_prune_search(model, config, [x, torch.randn(4, 3)], str(tmp_path / "o.cfg"))


def test_model_is_untouched(tmp_path: Path) -> None:
    model, x = make("tiny")
    model.train()
    model.fc1.eval()
    model.merge.weight.grad = torch.ones_like(model.merge.weight)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: m.training for n, m in model.named_modules()}
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.3 ascend_optimized: false test_iteration: 2")
    result = auto_channel_prune_search(model, config, [x, torch.randn(4, 3)], str(tmp_path / "o.cfg"))
    assert result.reached
    assert {n: m.training for n, m in model.named_modules()} == flags
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert torch.equal(model.merge.weight.grad, torch.ones_like(model.merge.weight))
    assert all(p.grad is None for n, p in model.named_parameters() if n != "merge.weight")
    _check_outputs(model, x, result, str(tmp_path / "o.cfg"))


def test_output_cfg_drives_create_prune_retrain_model(tmp_path: Path) -> None:
    from lightning_prune.api import create_prune_retrain_model

    model, x = make("mobilenet_v2")
    config = _write(tmp_path / "s.cfg", "compress_ratio: 1.5 channel_multiple: 8")
    result = auto_channel_prune_search(model, config, [x, torch.randn(4, 10)], str(tmp_path / "o.cfg"))
    pruned = create_prune_retrain_model(
        model, (x,), str(tmp_path / "o.cfg"), str(tmp_path / "retrain_record.txt")
    )
    assert count_macs(model, x[:1]) / count_macs(pruned, x[:1]) == result.achieved_ratio
