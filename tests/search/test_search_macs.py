"""MACs cost model: hand computations, and predicted MACs == MACs of the physically pruned model."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from search_models import MODELS, make
from torch import nn

from lightning_prune.coupling import analyze_coupling
from lightning_prune.search import (
    LayerMacs,
    conv_macs,
    conv_transpose_macs,
    count_macs,
    linear_macs,
    macs_from_trace,
    measure_macs,
    plan_macs,
)
from lightning_prune.surgery import prune_channels


class AllLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)  # 9x9 -> 5x5
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.grouped = nn.Conv2d(8, 16, 1, groups=4)
        self.up = nn.ConvTranspose2d(16, 4, 2, stride=2)  # 5x5 -> 10x10
        self.tokens = nn.Linear(10, 6)  # on [B, 4*10, 10]: 40 rows per sample
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        x = self.up(self.grouped(self.dw(self.conv(x))))
        x = self.tokens(x.flatten(1, 2))
        return self.head(x.mean(1))


def test_macs_of_each_layer_kind_equal_hand_computations() -> None:
    layers = measure_macs(AllLayers(), torch.randn(3, 3, 9, 9))
    hand = {
        "conv": 8 * 5 * 5 * 3 * 3 * 3,  # output elements x Cin x kh x kw
        "dw": 8 * 5 * 5 * 1 * 3 * 3,  # Cin/groups = 1
        "grouped": 16 * 5 * 5 * (8 // 4) * 1,
        "up": 16 * 5 * 5 * 4 * 2 * 2,  # input elements x Cout x kh x kw (no zero-inserted positions)
        "tokens": 40 * 10 * 6,
        "head": 6 * 3,
    }
    assert {name: layer.macs for name, layer in layers.items()} == hand
    assert layers["conv"].macs == conv_macs(3, 8, (3, 3), (5, 5))
    assert layers["dw"].macs == conv_macs(8, 8, (3, 3), (5, 5), groups=8)
    assert layers["grouped"].macs == conv_macs(8, 16, (1, 1), (5, 5), groups=4)
    assert layers["up"].macs == conv_transpose_macs(16, 4, (2, 2), (5, 5))
    assert layers["tokens"].macs == linear_macs(10, 6, rows=40)
    assert layers["dw"].depthwise
    assert not layers["grouped"].depthwise
    assert count_macs(AllLayers(), torch.randn(1, 3, 9, 9)) == sum(hand.values())


def test_macs_with_after_pruning() -> None:
    conv = LayerMacs("c", "Conv2d", 8, 16, 4, 9, 25)
    assert conv.macs_with(4, 8) == 25 * 9 * 4 * 8 // 4
    dw = LayerMacs("d", "Conv2d", 8, 8, 8, 9, 25)
    assert dw.macs_with(5, 5) == 25 * 9 * 5  # groups shrink with the channels


def test_reused_layer_is_charged_per_call_and_state_is_kept() -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            return self.fc(self.drop(self.fc(x)))

    net = Twice().train()
    assert measure_macs(net, torch.randn(2, 4))["fc"].macs == 2 * 16
    assert net.training
    assert net.drop.training


def test_measure_macs_needs_a_batch_size() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        measure_macs(nn.Linear(2, 2), (), batch_size=None)


def _random_plan(analysis, rng: random.Random) -> dict[int, list[int]]:
    plan = {}
    for g in analysis.prunable_groups:
        width = g.channels // g.group
        per_slice = rng.randrange(0, width)  # keep at least one per slice
        picks = []
        for j in range(g.group):
            picks += [j * width + i for i in rng.sample(range(width), per_slice)]
        plan[g.id] = picks
    return plan


@pytest.mark.parametrize("name", sorted(MODELS))
def test_predicted_macs_equal_the_pruned_models_macs(name: str) -> None:
    model, x = make(name)
    analysis = analyze_coupling(model, x)
    layers = measure_macs(model, x)
    rng = random.Random(0)
    for _ in range(3):
        plan = _random_plan(analysis, rng)
        compact = prune_channels(copy.deepcopy(model), analysis, plan)
        assert plan_macs(layers, analysis, plan) == count_macs(compact, x)
    assert plan_macs(layers, analysis, {}) == count_macs(model, x)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_macs_from_the_coupling_trace_equal_hook_measurements(name: str) -> None:
    model, x = make(name)
    assert macs_from_trace(analyze_coupling(model, x).trace, x.shape[0]) == measure_macs(model, x)


def test_macs_from_trace_of_every_layer_kind() -> None:
    net, x = AllLayers(), torch.randn(2, 3, 9, 9)
    assert macs_from_trace(analyze_coupling(net, x).trace, 2) == measure_macs(net, x)
