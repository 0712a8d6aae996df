"""Regressions found by the torchvision zoo check (benchmarks/torchvision_zoo.py), on tiny models.

Each test reproduces one torchvision structure the engine got wrong, without torchvision.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from zoo import init_random

from lightning_prune.coupling import analyze_coupling
from lightning_prune.surgery import (
    apply_channel_masks,
    balanced_l2_plan,
    drop_breaking_groups,
    prune_channels,
)


def masked_and_compact(model, x, plan):
    analysis = analyze_coupling(model, x)
    masked = apply_channel_masks(copy.deepcopy(model), analysis, plan).eval()
    compact = prune_channels(copy.deepcopy(model), analysis, plan).eval()
    with torch.no_grad():
        return masked(x), compact(x)


# --------------------------------------------------------------------------- LayerNorm2d (convnext)
class LayerNorm2d(nn.LayerNorm):
    """torchvision.models.convnext.LayerNorm2d: a LayerNorm subclass normalising NCHW channels."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtStem(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.norm = nn.Conv2d(3, 8, 2, 2), LayerNorm2d(8)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(self.norm(self.conv(x))).mean((2, 3))


def test_layer_norm_subclass_with_own_forward_blocks_its_channels():
    model = init_random(ConvNeXtStem())
    x = torch.randn(2, 3, 8, 8)
    analysis = analyze_coupling(model, x)
    group = analysis.group_of("conv")
    assert not group.prunable
    assert "overrides forward() of torch.nn.LayerNorm" in group.reason
    # Before the fix the group passed through the norm as if it were elementwise: the compact model
    # then ran a LayerNorm with 8 weights on fewer channels.


def test_plain_layer_norm_over_last_axis_still_passes_nchw_channels():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.LayerNorm(4), nn.Conv2d(8, 2, 1))
    assert analyze_coupling(model, torch.randn(1, 3, 4, 4)).group_of("0").prunable


# ------------------------------------------------------------- auxiliary heads (googlenet, inception)
class AuxNet(nn.Module):
    """An auxiliary classifier that runs only in training, as in GoogLeNet / Inception v3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.aux = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.aux_fc = nn.Linear(6, 5)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.conv1(x)
        aux = self.aux_fc(self.aux(x).flatten(1)) if self.training else None
        y = self.fc(self.conv2(x).mean((2, 3)))
        return (y, aux) if self.training else y


def test_train_only_branch_consumers_join_the_group():
    model, x = init_random(AuxNet()), torch.randn(1, 3, 8, 8)
    analysis = analyze_coupling(model, x)
    group = analysis.group_of("conv1.0")
    assert [(c.name, c.axis) for c in group.consumers] == [
        ("conv1.1", "in"),
        ("conv2.0", "in"),
        ("aux.1", "in"),
    ]
    assert analysis.group_of("aux.1").prunable  # aux conv -> BN -> aux_fc, seen only in training
    assert not analysis.group_of("aux_fc").prunable  # a train-mode model output
    plan = balanced_l2_plan(model, analysis, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no group is dropped: the aux consumers shrink too
        kept = drop_breaking_groups(model, analysis, plan, x)
    assert kept.keys() == plan.keys()
    compact = prune_channels(copy.deepcopy(model), analysis, kept)
    assert compact.aux[1].in_channels == 4
    y, aux = compact.train()(torch.randn(2, 3, 8, 8))
    assert y.shape == aux.shape == (2, 5)
    y_masked, y_compact = masked_and_compact(model, x, kept)
    torch.testing.assert_close(y_compact, y_masked)


def test_eval_only_analysis_misses_train_only_consumers():
    model, x = init_random(AuxNet()), torch.randn(1, 3, 8, 8)
    group = analyze_coupling(model, x, train_mode=False).group_of("conv1.0")
    assert "aux.1" not in [c.name for c in group.consumers]


def test_train_mode_trace_leaves_model_stats_flags_and_rng_unchanged():
    model = init_random(AuxNet())
    model.train()
    model.conv2.eval()
    state = copy.deepcopy(model.state_dict())
    x = torch.randn(1, 3, 8, 8)
    rng = torch.random.get_rng_state()
    analyze_coupling(model, x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert torch.equal(rng, torch.random.get_rng_state())
    assert [m.training for m in (model, model.conv1, model.conv2)] == [True, True, False]


class CountingNet(nn.Module):
    """Training replaces a buffer by a new tensor (not in place)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)
        self.register_buffer("steps", torch.zeros(()))

    def forward(self, x):
        if self.training:
            self.steps = self.steps + 1
        return self.conv2(self.conv1(x)).mean((2, 3))


def test_train_mode_trace_restores_reassigned_buffers():
    model = CountingNet()
    steps = model.steps
    analyze_coupling(model, torch.randn(1, 3, 4, 4))
    assert model.steps is steps
    assert model.steps.item() == 0


class TrainOnlyChannelMix(nn.Module):
    """Training adds a loss term that mixes channels (a reshape the engine cannot follow)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 4, 1)

    def forward(self, x):
        h = self.conv1(x)
        y = self.conv2(h).mean((2, 3))
        if self.training:
            return y, h.reshape(h.shape[0], 2, -1).mean(-1)  # shape survives pruning, meaning does not
        return y


def test_train_only_use_that_mixes_channels_blocks_the_group():
    model = init_random(TrainOnlyChannelMix())
    group = analyze_coupling(model, torch.randn(1, 3, 4, 4)).group_of("conv1")
    assert not group.prunable
    assert "reshape" in group.reason


class ModeDependentConcat(nn.Module):
    """The two forwards concatenate the same producers in a different order."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1), nn.Conv2d(3, 4, 1)
        self.head = nn.Conv2d(8, 2, 1)
        self.tail = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        a, b = self.a(x), self.b(x)
        h = torch.cat([a, b], 1) if self.training else torch.cat([b, a], 1)
        return (self.head(h) + self.tail(self.c(x))).mean((2, 3))


def test_groups_routed_differently_in_train_and_eval_are_blocked():
    analysis = analyze_coupling(init_random(ModeDependentConcat()), torch.randn(1, 3, 4, 4))
    for name in ("a", "b"):
        group = analysis.group_of(name)
        assert not group.prunable
        assert "also claims in-channels of 'head'" in group.reason
    assert analysis.group_of("c").prunable


# ------------------------------------------------------------ BatchNorm on a 1x1 map with a batch of one
class PooledBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 6, 1), nn.BatchNorm2d(6), nn.ReLU())
        self.fc = nn.Linear(6, 2)

    def forward(self, x):
        return self.fc(self.head(self.conv1(x)).flatten(1))


def test_train_mode_check_repeats_a_batch_of_one():
    model, x = init_random(PooledBN()), torch.randn(1, 3, 8, 8)  # what example_input_array usually is
    analysis = analyze_coupling(model, x)
    plan = balanced_l2_plan(model, analysis, 0.5)
    kept = drop_breaking_groups(model, analysis, plan, x)  # raised "the unpruned model fails" before
    assert kept.keys() == plan.keys()


# ------------------------------------------------------ MultiheadAttention's out_proj is not a shared weight
class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))

    def forward(self, x):
        h = self.embed(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.mlp(h)


def test_multihead_attention_is_not_reported_as_sharing_weights():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        analysis = analyze_coupling(Attention(), torch.randn(1, 5, 4))
    assert analysis.excluded == {}
    assert analysis.group_of("mlp.0").prunable
    assert "attention" in analysis.group_of("embed").reason
