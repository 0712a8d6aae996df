import pytest
import torch
from torch import nn

from lightning_prune.config import NOutOfMSpec
from lightning_prune.functional.nm import nm_mask, nm_mask_is_valid
from lightning_prune.sparsity import (
    apply_nm_sparsity,
    fold_nm_sparsity,
    masks_from_records,
    nm_masks,
    nm_records,
    nm_sparse_layers,
    refresh_nm_masks,
)


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 2, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )


SPEC = NOutOfMSpec(n=2, m=4, update_freq=0)
LAYERS = {"0": SPEC, "2": SPEC, "5": SPEC}


def _zero_pattern_holds(net):
    for name, mask in nm_sparse_layers(net).items():
        layer = net.get_submodule(name)
        if not nm_mask_is_valid(layer.weight != 0, mask.n, mask.m, mask.axis):
            return False
        if bool(layer.weight[~mask.mask].abs().sum() != 0):
            return False
    return True


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
        lambda p: torch.optim.Adam(p, lr=1e-2),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
)
def test_masked_weights_stay_exactly_zero_through_optimizer_steps(make_optimizer):
    net = _net()
    assert apply_nm_sparsity(net, LAYERS) == ["0", "2", "5"]
    before = nm_masks(net)
    optimizer = make_optimizer(net.parameters())
    for step in range(5):
        loss = net(torch.randn(4, 8, 4, 4)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert _zero_pattern_holds(net), f"zero pattern broken after step {step}"
    after = nm_masks(net)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_transposed_conv_groups_run_along_input_channels():
    net = _net()
    apply_nm_sparsity(net, {"2": SPEC})
    weight = net[2].weight  # [Cin=16, Cout=8, 2, 2]
    kept_per_group = (weight != 0).reshape(4, 4, 8, 2, 2).sum(1)
    assert bool((kept_per_group == 2).all())


def test_masked_gradient_is_exactly_zero():
    net = _net()
    apply_nm_sparsity(net, {"5": SPEC})
    net(torch.randn(2, 8, 4, 4)).sum().backward()
    original = net[5].parametrizations.weight.original
    assert bool((original.grad[~nm_masks(net)["5"]] == 0).all())
    assert bool((original.grad[nm_masks(net)["5"]] != 0).any())


def test_update_freq_recomputes_mask_every_k_training_forwards():
    torch.manual_seed(0)
    layer = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[4.0, 3.0, 2.0, 1.0]]))
    net = nn.Sequential(layer)
    apply_nm_sparsity(net, {"0": NOutOfMSpec(n=2, m=4, update_freq=3)})
    original = layer.parametrizations.weight.original
    assert nm_masks(net)["0"].tolist() == [[True, True, False, False]]
    with torch.no_grad():
        original.copy_(torch.tensor([[1.0, 2.0, 3.0, 4.0]]))  # now the last two are the largest
    x = torch.randn(1, 4)
    net.eval()
    for _ in range(5):  # eval-mode forwards do not count as training steps
        net(x)
    net.train()
    with torch.no_grad():
        net(x)  # neither do forwards without grad
    masks_seen = []
    for _ in range(7):
        net(x).sum().backward()
        masks_seen.append(nm_masks(net)["0"].tolist())
    old, new = [[True, True, False, False]], [[False, False, True, True]]
    # Steps 1-3 use the creation mask; the 4th training forward recomputes it from current weights.
    assert masks_seen == [old, old, old, new, new, new, new]
    assert layer.parametrizations.weight[0].steps.item() == 7


def test_update_freq_zero_never_changes_the_mask():
    net = _net()
    apply_nm_sparsity(net, {"5": SPEC})
    before = nm_masks(net)["5"]
    with torch.no_grad():
        net[5].parametrizations.weight.original.neg_().add_(torch.randn_like(net[5].weight))
    for _ in range(3):
        net(torch.randn(2, 8, 4, 4)).sum().backward()
    assert torch.equal(nm_masks(net)["5"], before)


def test_shared_weight_layer_is_left_dense_with_a_warning_naming_it():
    net = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    net[2].weight = net[0].weight
    with pytest.warns(
        UserWarning, match=r"Layer '0' is left dense: its weight is shared by 0.weight, 2.weight"
    ):
        assert apply_nm_sparsity(net, {"0": SPEC}) == []
    assert not nm_sparse_layers(net)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (nn.Conv1d(8, 8, 3), r"Layer '0' is left dense: its type Conv1d is not one of"),
        (
            nn.Linear(2, 8),
            r"Layer '0' is left dense: its input-channel axis has 2 weights, not more than n=2",
        ),
    ],
)
def test_unsupported_layers_are_left_dense_with_a_warning(layer, message):
    with pytest.warns(UserWarning, match=message):
        assert apply_nm_sparsity(nn.Sequential(layer), {"0": SPEC}) == []


def test_applying_twice_warns_and_keeps_one_mask():
    net = _net()
    apply_nm_sparsity(net, {"5": SPEC})
    with pytest.warns(UserWarning, match=r"Layer '5' is left dense: it is already N:M-sparse"):
        apply_nm_sparsity(net, {"5": SPEC})
    assert len(net[5].parametrizations.weight) == 1


def test_fold_gives_plain_layers_with_the_same_outputs():
    net = _net()
    apply_nm_sparsity(net, {"0": NOutOfMSpec(2, 4, 5), "5": SPEC})
    x = torch.randn(3, 8, 4, 4)
    expected = net.eval()(x)
    fold_nm_sparsity(net)
    assert not nm_sparse_layers(net)
    assert set(net.state_dict()) == set(_net().state_dict())
    assert not net[0]._forward_pre_hooks
    torch.testing.assert_close(net(x), expected)
    assert bool((net[5].weight == 0).sum() == net[5].weight.numel() // 2)


def test_records_round_trip_masks_exactly():
    net = _net()
    apply_nm_sparsity(net, LAYERS)
    records = nm_records(net)
    assert [(r.name, r.type, list(r.weight_shape), r.n, r.m, r.axis) for r in records] == [
        ("0", "Conv2d", [16, 8, 3, 3], 2, 4, 1),
        ("2", "ConvTranspose2d", [16, 8, 2, 2], 2, 4, 0),
        ("5", "Linear", [10, 512], 2, 4, 1),
    ]
    restored = masks_from_records(records)
    assert all(torch.equal(restored[name], mask) for name, mask in nm_masks(net).items())


def test_state_dict_carries_masks_into_a_fresh_sparse_model():
    trained = _net(seed=0)
    apply_nm_sparsity(trained, {"5": NOutOfMSpec(2, 4, 2)})
    for _ in range(5):
        trained(torch.randn(2, 8, 4, 4)).sum().backward()
    fresh = _net(seed=1)
    apply_nm_sparsity(fresh, {"5": NOutOfMSpec(2, 4, 2)})
    assert not torch.equal(nm_masks(fresh)["5"], nm_masks(trained)["5"])
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(nm_masks(fresh)["5"], nm_masks(trained)["5"])
    assert fresh[5].parametrizations.weight[0].steps.item() == 5


def test_given_masks_must_match_the_weight_shape():
    net = _net()
    with pytest.raises(
        ValueError, match=r"Mask for layer '5' has shape \(10, 4\) but its weight has \(10, 512\)"
    ):
        apply_nm_sparsity(net, {"5": SPEC}, masks={"5": torch.ones(10, 4, dtype=torch.bool)})


def test_refresh_recomputes_from_current_weights():
    net = _net()
    apply_nm_sparsity(net, {"5": SPEC})
    with torch.no_grad():
        net[5].parametrizations.weight.original.copy_(torch.randn(10, 512))
    refresh_nm_masks(net)
    expected = nm_mask(net[5].parametrizations.weight.original, 2, 4, 1)
    assert torch.equal(nm_masks(net)["5"], expected)


def test_folding_a_deep_copy_leaves_the_original_working():
    import copy

    net = _net()
    apply_nm_sparsity(net, LAYERS)
    x = torch.randn(2, 8, 4, 4)
    expected = net(x)
    fold_nm_sparsity(copy.deepcopy(net))
    torch.testing.assert_close(net(x), expected)
    assert set(nm_sparse_layers(net)) == {"0", "2", "5"}
