"""Channel-selection math: BalancedL2Norm, kept counts, selection (incl. property tests)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prune.functional.channels import balanced_l2_scores, channels_to_keep, select_pruned_channels


def test_balanced_l2_divides_by_elements_and_normalises():
    w = torch.zeros(3, 2, 3, 3)
    w[0] += 1.0
    w[1] += 2.0
    scores = balanced_l2_scores([w])
    torch.testing.assert_close(scores, torch.tensor([0.5, 1.0, 0.0]))


def test_balanced_l2_uses_every_producer_not_only_the_first():
    a = torch.tensor([[1.0], [2.0], [3.0]])
    b = torch.tensor([[3.0], [2.0], [1.0]])
    torch.testing.assert_close(balanced_l2_scores([a, b]), torch.tensor([0.5, 0.5, 0.5]))
    assert not torch.equal(balanced_l2_scores([a, b]), balanced_l2_scores([a]))


def test_balanced_l2_constant_scores_are_zero_and_errors():
    assert torch.equal(balanced_l2_scores([torch.ones(4, 3)]), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one producer"):
        balanced_l2_scores([])
    with pytest.raises(ValueError, match=r"disagree on output channels: \[3, 4\]"):
        balanced_l2_scores([torch.ones(4, 3), torch.ones(3, 3)])


@pytest.mark.parametrize(
    ("channels", "ratio", "multiple", "group", "kept"),
    [
        (20, 0.25, 1, 1, 15),
        (20, 0.25, 16, 1, 16),
        (64, 0.5, 1, 1, 32),
        (10, 0.99, 1, 1, 1),
        (8, 0.5, 16, 1, 8),
        (12, 0.5, 1, 4, 4),
        (12, 0.9, 1, 4, 4),
        (32, 0.3, 8, 4, 24),
        (16, 0.0, 1, 1, 16),
    ],
)
def test_channels_to_keep_table(channels, ratio, multiple, group, kept):
    assert channels_to_keep(channels, ratio, multiple, group) == kept


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"prune_ratio": 1.0}, r"prune_ratio must be in \[0, 1\), got 1.0"),
        ({"prune_ratio": -0.1}, "prune_ratio must be in"),
        ({"prune_ratio": 0.5, "multiple": 0}, "must be >= 1"),
        ({"prune_ratio": 0.5, "group": 3}, "16 channels are not divisible into 3"),
    ],
)
def test_channels_to_keep_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        channels_to_keep(16, **kwargs)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 64), st.integers(1, 8), st.floats(0.0, 0.999), st.sampled_from([1, 2, 4, 8, 16]))
def test_channels_to_keep_properties(slices, width, ratio, multiple):
    for group in {1, slices}:
        channels = slices * width
        kept = channels_to_keep(channels, ratio, multiple, group)
        assert 1 <= kept <= channels
        assert kept % group == 0
        if multiple > 1 and (group == 1 or (multiple * group) <= channels):
            import math

            if math.lcm(multiple, group) <= channels:
                assert kept % multiple == 0 or kept == channels


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.integers(2, 8), st.data())
def test_select_pruned_channels_equal_per_slice(group, width, data):
    channels = group * width
    per = data.draw(st.integers(0, width - 1))
    scores = torch.tensor(data.draw(st.lists(st.floats(0, 1), min_size=channels, max_size=channels)))
    idx = select_pruned_channels(scores, per * group, group)
    assert idx.dtype == torch.long
    assert idx.tolist() == sorted(set(idx.tolist()))
    assert [int(((idx >= j * width) & (idx < (j + 1) * width)).sum()) for j in range(group)] == [per] * group
    if group == 1 and per:  # the lowest scores go
        kept = scores[[i for i in range(channels) if i not in set(idx.tolist())]]
        assert scores[idx].max() <= kept.min()


def test_select_pruned_channels_errors():
    with pytest.raises(ValueError, match="at least one channel must be kept"):
        select_pruned_channels(torch.rand(4), 4)
    with pytest.raises(ValueError, match="divisible by group=2"):
        select_pruned_channels(torch.rand(4), 1, group=2)
