import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_prune.functional.nm import nm_mask, nm_mask_is_valid

PATTERNS = [(2, 4), (1, 4), (2, 8), (4, 8), (8, 16), (1, 2), (3, 5)]


@st.composite
def weights_and_pattern(draw):
    n, m = draw(st.sampled_from(PATTERNS))
    ndim = draw(st.integers(min_value=2, max_value=4))
    shape = [draw(st.integers(min_value=1, max_value=19)) for _ in range(ndim)]
    axis = draw(st.integers(min_value=0, max_value=ndim - 1))
    seed = draw(st.integers(min_value=0, max_value=2**16))
    weight = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    return weight, n, m, axis


def _groups(tensor, m, axis, pad_value):
    moved = tensor.movedim(axis, -1)
    length = moved.shape[-1]
    padded = -(-length // m) * m
    moved = torch.nn.functional.pad(moved, (0, padded - length), value=pad_value)
    return moved.reshape(-1, padded // m, m), length


@settings(max_examples=200, deadline=None)
@given(weights_and_pattern())
def test_every_group_keeps_exactly_min_of_n_and_its_size(case):
    weight, n, m, axis = case
    mask = nm_mask(weight, n, m, axis)
    assert mask.dtype == torch.bool
    assert mask.shape == weight.shape
    kept, length = _groups(mask.to(torch.int64), m, axis, pad_value=0)
    group_sizes = torch.full((kept.shape[1],), m)
    group_sizes[-1] = length - m * (kept.shape[1] - 1)
    expected = torch.clamp(group_sizes, max=n)
    assert torch.equal(kept.sum(-1), expected.expand_as(kept.sum(-1)))
    assert nm_mask_is_valid(mask, n, m, axis)


@settings(max_examples=200, deadline=None)
@given(weights_and_pattern())
def test_kept_weights_are_the_largest_in_their_group(case):
    weight, n, m, axis = case
    mask = nm_mask(weight, n, m, axis)
    magnitude, _ = _groups(weight.abs(), m, axis, pad_value=-1.0)
    keep, _ = _groups(mask, m, axis, pad_value=False)
    smallest_kept = torch.where(keep, magnitude, torch.inf).amin(-1)
    largest_dropped = torch.where(~keep & (magnitude >= 0), magnitude, -torch.inf).amax(-1)
    assert bool((smallest_kept >= largest_dropped).all())


def test_axis_zero_for_transposed_conv_layout():
    weight = torch.randn(8, 3, 2, 2)  # ConvTranspose2d: [Cin, Cout, kh, kw], groups run along Cin
    mask = nm_mask(weight, 2, 4, axis=0)
    assert torch.equal(mask.sum(0), torch.full((3, 2, 2), 4))


def test_partial_group_keeps_its_largest():
    weight = torch.tensor([[1.0, 2.0, 3.0, 4.0, 9.0, -8.0, 0.5]])
    assert nm_mask(weight, 2, 4, axis=1).tolist() == [[False, False, True, True, True, True, False]]


def test_mask_works_for_half_precision():
    weight = torch.randn(4, 8, dtype=torch.bfloat16)
    assert nm_mask(weight, 2, 4, 1).sum().item() == 16


@pytest.mark.parametrize(("n", "m"), [(0, 4), (4, 4), (5, 4), (2.0, 4)])
def test_invalid_pattern_is_refused(n, m):
    with pytest.raises(ValueError, match=r"0 < n < m"):
        nm_mask(torch.randn(4, 8), n, m, 1)


def test_invalid_axis_is_refused():
    with pytest.raises(ValueError, match=r"axis=2 is out of range for a weight of shape \(4, 8\)"):
        nm_mask(torch.randn(4, 8), 2, 4, 2)
