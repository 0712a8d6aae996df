"""Coupling rules on small hand-made structures, plan validation and record errors."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from zoo import init_random, make

from lightning_prune.coupling import analyze_coupling
from lightning_prune.errors import RecordError
from lightning_prune.surgery import apply_channel_masks, plan_to_records, prune_channels, records_to_plan


class Wrap(nn.Module):
    """conv1 -> f(x) -> conv2 -> head, with f given per test."""

    def __init__(self, f, cin2: int = 8) -> None:
        super().__init__()
        self.f = f
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, 1, 1), nn.Conv2d(cin2, 4, 1)
        self.gamma = nn.Parameter(torch.ones(8, 1, 1))

    def forward(self, x):
        return self.conv2(self.f(self, self.conv1(x))).mean((2, 3))


def conv1_group(f, cin2=8):
    model = init_random(Wrap(f, cin2))
    x = torch.randn(2, 3, 6, 6)
    analysis = analyze_coupling(model, x)
    return model, x, analysis, analysis.group_of("conv1")


@pytest.mark.parametrize(
    ("f", "reason"),
    [
        (lambda m, x: x * m.gamma, r"per-channel tensor \(param:gamma\) that cannot be sliced"),
        (lambda m, x: x / (x.abs() + 1), "divides by pruned channels"),
        (lambda m, x: x - x.mean(1, keepdim=True), "reduces over channels"),
        (lambda m, x: torch.cat(x.chunk(2, 1)[::-1], 1), "splits the channel axis"),
        (lambda m, x: x[:, [1, 0, 2, 3, 4, 5, 6, 7]], "indexes the channel axis"),
        (lambda m, x: x[:, :4].repeat(1, 2, 1, 1), "indexes the channel axis"),
        (lambda m, x: F.group_norm(x, 2), "op 'group_norm'"),
        (
            lambda m, x: x.view(x.shape[0], 2, 4, *x.shape[2:]).sum(1).repeat(1, 2, 1, 1),
            "reshapes the channel axis",
        ),
        (lambda m, x: x.permute(0, 2, 3, 1).softmax(-1).permute(0, 3, 1, 2), "normalises across channels"),
        (lambda m, x: x + torch.randn_like(x), "per-channel tensor"),
    ],
)
def test_not_understood_structures_block_with_reason(f, reason):
    _, _, _, group = conv1_group(f)
    assert not group.prunable
    assert re.search(reason, group.reason), group.reason


@pytest.mark.parametrize(
    "f",
    [
        lambda m, x: F.relu(x) * torch.sigmoid(x),
        lambda m, x: x.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2),
        lambda m, x: (x.flatten(2).transpose(1, 2) * 2).transpose(1, 2).reshape(x.shape),
        lambda m, x: F.pad(F.max_pool2d(x, 2), (1, 1, 1, 1)) + 1.0,
        lambda m, x: x[:, :, 1:, ...] * x.mean((2, 3), keepdim=True).sigmoid(),
        lambda m, x: torch.stack([x, x], 0).sum(0),
    ],
)
def test_channel_wise_structures_stay_prunable_and_exact(f):
    model, x, analysis, group = conv1_group(f)
    assert group.prunable, group.reason
    plan = {group.id: [1, 4, 6]}
    masked = apply_channel_masks(copy.deepcopy(model), analysis, plan)
    compact = prune_channels(copy.deepcopy(model), analysis, plan)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-5, atol=1e-5)


def test_concat_with_unprunable_input_and_grouped_conv_after_concat():
    _, _, analysis, group = conv1_group(
        lambda m, x: torch.cat([x, torch.ones(x.shape[0], 2, *x.shape[2:])], 1), cin2=10
    )
    assert group.prunable
    assert [(c.name, c.begin, c.end) for c in group.consumers] == [("conv2", 0, 8)]

    class CatGrouped(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 8, 1), nn.Conv2d(3, 8, 1)
            self.g = nn.Conv2d(16, 8, 3, groups=4)

        def forward(self, x):
            return self.g(torch.cat([self.a(x), self.b(x)], 1))

    analysis = analyze_coupling(CatGrouped(), torch.randn(1, 3, 5, 5))
    assert "grouped conv 'g' (groups=4) through a concat" in analysis.group_of("a").reason


def test_conv_permute_linear_patch_embedding_is_exact():
    class PatchMLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch, self.fc1, self.fc2 = nn.Conv2d(3, 16, 4, 4), nn.Linear(16, 32), nn.Linear(32, 16)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            t = self.patch(x).flatten(2).transpose(1, 2)  # [B, HW, C]
            t = t + self.fc2(F.gelu(self.fc1(t)))
            return self.head(t.mean(1))

    model, x = init_random(PatchMLP()), torch.randn(2, 3, 16, 16)
    analysis = analyze_coupling(model, x)
    stream = analysis.group_of("patch")
    assert [p.name for p in stream.producers] == ["patch", "fc2"]
    assert stream.prunable
    plan = {stream.id: [0, 3, 5], analysis.group_of("fc1").id: list(range(0, 32, 3))}
    masked = apply_channel_masks(copy.deepcopy(model), analysis, plan)
    compact = prune_channels(copy.deepcopy(model), analysis, plan)
    with torch.no_grad():
        torch.testing.assert_close(compact(x), masked(x), rtol=1e-5, atol=1e-5)
    assert compact.fc1.in_features == 13
    assert compact.patch.out_channels == 13


def test_plan_errors_name_the_group():
    model, x = make("resnet_basic")
    analysis = analyze_coupling(model, x)
    with pytest.raises(ValueError, match=r"channel group 5 \(producers 'fc'\), which is not prunable: feeds"):
        prune_channels(copy.deepcopy(model), analysis, {5: [0]})
    with pytest.raises(ValueError, match="removes all 16 channels"):
        prune_channels(copy.deepcopy(model), analysis, {1: list(range(16))})
    with pytest.raises(ValueError, match=r"indices outside \[0, 16\)"):
        prune_channels(copy.deepcopy(model), analysis, {1: [16]})
    with pytest.raises(ValueError, match="does not have"):
        prune_channels(copy.deepcopy(model), analysis, {42: [0]})


def test_records_from_another_model_are_refused():
    model, x = make("resnet_basic")
    analysis = analyze_coupling(model, x)
    records = plan_to_records(analysis, {1: [0, 2], 0: [3]})
    assert [list(n.prune_index) for n in records[0].producer] == [[3]] * 3
    assert records[1].producer[0].axis == 0
    assert records[1].consumer[0].axis == 1
    other, y = make("resnet_bottleneck")
    with pytest.raises(
        RecordError, match=r"record group #0 \(producers 'stem.0', 'layer1.0.conv2'.*matches no"
    ):
        records_to_plan(analyze_coupling(other, y), records)
    records[1].consumer[1].prune_index[0] = 1
    with pytest.raises(
        RecordError, match=r"record group #1: layer 'layer1.0.conv2' has prune_index \[1, 2\]"
    ):
        records_to_plan(analysis, records)
    records[1].consumer[1].name = "layer1.0.convX"
    with pytest.raises(RecordError, match=r"consumers differ.*layer1.0.convX"):
        records_to_plan(analysis, records)


def test_data_alias_is_followed_and_numpy_round_trip_blocks():
    _, _, _, group = conv1_group(lambda m, x: x.data * 2)
    assert group.prunable
    _, _, _, group = conv1_group(lambda m, x: torch.as_tensor(x.numpy()))
    assert not group.prunable
    assert "op 'numpy'" in group.reason
