"""Taylor sensitivity: brute-force equality, untouched model state, batching, errors, custom loss."""

from __future__ import annotations

import copy

import pytest
import torch
from search_models import make
from torch import nn

from lightning_prune.channel_masks import layer_masks
from lightning_prune.coupling import analyze_coupling
from lightning_prune.search import SensitivityBase, TaylorLossSensitivity, split_batches


def _brute_force(
    model: nn.Module,
    analysis,
    x: torch.Tensor,
    labels: torch.Tensor,
    chunks: list[int],
    loss_fn,
    criterion: str = "squared",
    batch_statistics: bool = True,
):
    """Per group channel, from the entries a one-channel mask zeroes: ``sum_b (sum w * dL_b/dw)^2``
    (``criterion="squared"``) or ``sum |w * sum_b dL_b/dw|`` (``"abs"``), each batch's gradient
    taken in a fresh copy of the model (eval mode, BatchNorm in train mode if ``batch_statistics``)."""
    batch_grads = []
    start = 0
    for size in chunks:
        replica = copy.deepcopy(model).eval()
        for m in replica.modules():
            if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
                m.train(batch_statistics and size > 1)
        loss_fn(replica(x[start : start + size]), labels[start : start + size]).backward()
        batch_grads.append({name: p.grad.double() for name, p in replica.named_parameters()})
        start += size
    if criterion == "abs":
        batch_grads = [{name: sum(g[name] for g in batch_grads) for name in batch_grads[0]}]
    scores = {}
    for g in analysis.prunable_groups:
        values = []
        for c in range(g.channels):
            per_layer: dict[str, dict[str, list[int]]] = {}
            for node in g.nodes:
                per_layer.setdefault(node.name, {}).setdefault(node.axis, []).extend(node.absolute([c]))
            total = 0.0
            for grads in batch_grads:
                change = 0.0
                for name, axes in per_layer.items():
                    module = model.get_submodule(name)
                    for pname, mask in layer_masks(module, name, axes).items():
                        w = getattr(module, pname).detach().double()
                        removed = (1 - mask.double()).expand_as(w)
                        product = w * grads[f"{name}.{pname}"]
                        change += float(((product.abs() if criterion == "abs" else product) * removed).sum())
                total += change if criterion == "abs" else change**2
            values.append(total)
        scores[g.id] = torch.tensor(values, dtype=torch.float64)
    return scores


@pytest.mark.parametrize(
    ("criterion", "batch_statistics"), [("squared", True), ("squared", False), ("abs", False), ("abs", True)]
)
def test_taylor_equals_brute_force_per_channel(criterion: str, batch_statistics: bool) -> None:
    model, x = make("tiny")
    x = torch.randn(7, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.randn(7, 3, generator=torch.Generator().manual_seed(2))
    analysis = analyze_coupling(model, x)
    sens = TaylorLossSensitivity(criterion=criterion, batch_statistics=batch_statistics)
    sens.setup_initialization(model, [x, labels], test_iteration=3)
    got = sens.get_sensitivity(analysis.prunable_groups)
    want = _brute_force(model, analysis, x, labels, [3, 2, 2], nn.L1Loss(), criterion, batch_statistics)
    assert set(got) == {g.id for g in analysis.prunable_groups}
    for gid, scores in want.items():
        torch.testing.assert_close(got[gid], scores, rtol=1e-6, atol=1e-9)
        assert float(scores.sum()) > 0


def test_batch_statistics_change_the_scores_and_batches_of_one_sample_work() -> None:
    model, _ = make("tiny")
    x = torch.randn(5, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    labels = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    groups = analyze_coupling(model, x).prunable_groups
    scores = {}
    for batch_statistics in (True, False):
        sens = TaylorLossSensitivity(batch_statistics=batch_statistics)
        sens.setup_initialization(model, [x, labels], test_iteration=5)  # five batches of one sample
        scores[batch_statistics] = sens.get_sensitivity(groups)
    # One-sample batches fall back to the running statistics: the same scores either way.
    for g in groups:
        torch.testing.assert_close(scores[True][g.id], scores[False][g.id])
    two_batches = {}
    for batch_statistics in (True, False):
        sens = TaylorLossSensitivity(batch_statistics=batch_statistics)
        sens.setup_initialization(model, [x, labels], test_iteration=2)
        two_batches[batch_statistics] = sens.get_sensitivity(groups)
    assert any(not torch.allclose(two_batches[True][g.id], two_batches[False][g.id]) for g in groups)


def test_unknown_criterion_is_refused() -> None:
    with pytest.raises(ValueError, match=r"criterion must be one of \['squared', 'abs'\], got 'l1'"):
        TaylorLossSensitivity(criterion="l1")


def test_batches_are_real_size_chunks_not_single_samples() -> None:
    model, _ = make("mlp")
    x, labels = torch.randn(7, 32), torch.randn(7, 10)
    analysis = analyze_coupling(model, x)
    groups = analysis.prunable_groups
    sens = TaylorLossSensitivity(nn.MSELoss())
    sens.setup_initialization(model, [x, labels], test_iteration=3)
    got = sens.get_sensitivity(groups)
    torch.testing.assert_close(got[0], _brute_force(model, analysis, x, labels, [3, 2, 2], nn.MSELoss())[0])
    per_sample = _brute_force(model, analysis, x, labels, [1] * 7, nn.MSELoss())[0]
    assert not torch.allclose(got[0], per_sample)
    assert [b[0][0].shape[0] for b in split_batches([x, labels], 3)] == [3, 2, 2]


def test_model_state_is_untouched() -> None:
    model, x = make("tiny")
    model.train()
    model.bn_dw.eval()
    model.fc1.weight.requires_grad_(False)
    model.conv1.weight.grad = torch.full_like(model.conv1.weight, 3.0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    sens = TaylorLossSensitivity()
    sens.setup_initialization(model, [x, torch.randn(x.shape[0], 3)], test_iteration=2)
    scores = sens.get_sensitivity(analyze_coupling(model, x).prunable_groups)
    assert float(scores[4].sum()) > 0  # fc1's input columns were scored although frozen
    assert {name: m.training for name, m in model.named_modules()} == flags
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert not model.fc1.weight.requires_grad
    assert model.conv1.weight.requires_grad
    assert torch.equal(model.conv1.weight.grad, torch.full_like(model.conv1.weight, 3.0))
    assert all(p.grad is None for name, p in model.named_parameters() if name != "conv1.weight")


def test_cross_entropy_loss_with_class_labels() -> None:
    model, _ = make("mlp")
    x, labels = torch.randn(6, 32), torch.randint(0, 10, (6,))
    analysis = analyze_coupling(model, x)
    sens = TaylorLossSensitivity()
    sens.set_loss_func(nn.CrossEntropyLoss())
    sens.setup_initialization(model, [x, labels], test_iteration=2)
    got = sens.get_sensitivity(analysis.prunable_groups)
    want = _brute_force(model, analysis, x, labels, [3, 3], nn.CrossEntropyLoss())
    torch.testing.assert_close(got[1], want[1])


@pytest.mark.parametrize(
    ("input_data", "iterations", "error", "match"),
    [
        (
            [torch.zeros(3, 4), torch.zeros(3)],
            4,
            ValueError,
            "holds 3 sample.*test_iteration is 4.*at least 4",
        ),
        (
            [torch.zeros(3, 4), torch.zeros(2)],
            1,
            ValueError,
            r"disagree on the number of samples.*\[3\] vs 2",
        ),
        ([torch.zeros(3, 4)], 1, TypeError, r"must be \[inputs, labels\]"),
        (["x", torch.zeros(3)], 1, TypeError, r"input_data\[0\] must be a tensor"),
        ([torch.zeros(3, 4), 5], 1, TypeError, r"input_data\[1\] \(the labels\)"),
    ],
)
def test_split_batches_errors(input_data, iterations: int, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        split_batches(input_data, iterations)


def test_tuple_inputs_are_split_alike() -> None:
    batches = split_batches([(torch.zeros(5, 2), torch.ones(5, 3)), torch.zeros(5)], 2)
    assert [tuple(t.shape[0] for t in inputs) for inputs, _ in batches] == [(3, 3), (2, 2)]


def test_loss_errors() -> None:
    model, _ = make("mlp")
    x = torch.randn(4, 32)
    groups = analyze_coupling(model, x).prunable_groups
    with pytest.raises(TypeError, match="expected a callable"):
        TaylorLossSensitivity().set_loss_func("L1")
    sens = TaylorLossSensitivity(nn.L1Loss(reduction="none"))
    sens.setup_initialization(model, [x, torch.zeros(4, 10)], 1)
    with pytest.raises(ValueError, match=r"scalar tensor.*reduction"):
        sens.get_sensitivity(groups)
    sens.set_loss_func(lambda out, y: torch.tensor(1.0))
    with pytest.raises(ValueError, match="does not depend on the model"):
        sens.get_sensitivity(groups)


def test_sensitivity_base_is_abstract() -> None:
    with pytest.raises(TypeError, match="abstract"):
        SensitivityBase()
