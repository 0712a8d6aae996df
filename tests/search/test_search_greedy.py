"""GreedySearch on a SearchProblem: target within one step, limits, alignment, exact costs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from search_models import make

from lightning_prune.coupling import analyze_coupling
from lightning_prune.search import GreedySearch, SearchProblem, count_macs, measure_macs, step_channels
from lightning_prune.surgery import prune_channels


def _problem(name: str, ratio: float, multiple: int = 1, max_prune: float = 1.0, scores=None):
    model, x = make(name)
    analysis = analyze_coupling(model, x)
    groups = analysis.prunable_groups
    if scores is None:
        gen = torch.Generator().manual_seed(0)
        scores = {g.id: torch.rand(g.channels, generator=gen, dtype=torch.float64) for g in groups}
    problem = SearchProblem(analysis, groups, scores, measure_macs(model, x), ratio, multiple, max_prune)
    return model, x, problem


def _check_limits(problem: SearchProblem, plan: dict[int, list[int]]) -> None:
    for g in problem.groups:
        pruned = plan.get(g.id, [])
        kept = g.channels - len(pruned)
        assert kept >= max(1, math.ceil(g.channels * (1 - problem.max_prune_ratio) - 1e-9)), g.id
        if pruned:
            assert kept % math.lcm(problem.channel_multiple, g.group) == 0, (g.id, kept)
        width = g.channels // g.group
        assert (
            len({sum(1 for i in pruned if i // width == j) for j in range(g.group)}) == 1
        )  # equal per slice
        scores = problem.sensitivity[g.id]
        for j in range(g.group):  # the cheapest channels of every slice go first
            mine = list(range(j * width, (j + 1) * width))
            gone = [scores[i] for i in mine if i in pruned]
            stay = [scores[i] for i in mine if i not in pruned]
            assert not gone or max(gone) <= min(stay)


@pytest.mark.parametrize(
    ("name", "ratio", "multiple"),
    [
        ("resnet", 1.5, 1),
        ("resnet", 2.0, 16),
        ("mobilenet_v2", 1.6, 1),
        ("mobilenet_v2", 1.6, 16),
        ("mlp", 2.0, 1),
        ("mlp", 3.0, 8),
        ("resnext", 1.5, 1),
    ],
)
def test_reaches_target_within_one_step(name: str, ratio: float, multiple: int) -> None:
    model, x, problem = _problem(name, ratio, multiple)
    search = GreedySearch()
    plan = search.channel_prune_search(problem)
    macs = problem.macs(plan)
    assert problem.original_macs / macs >= ratio
    before_last = search.steps[-2].macs_after if len(search.steps) > 1 else problem.original_macs
    assert problem.original_macs / before_last < ratio  # one step less would miss the target
    assert search.steps[-1].macs_after == macs  # the incremental cost equals the plan's cost
    assert sum(s.macs_saved for s in search.steps) == problem.original_macs - macs
    assert {s.channels for s in search.steps} <= {1, 2, 4, 8, 16, 32}  # steps are grid-sized
    _check_limits(problem, plan)
    assert count_macs(prune_channels(copy.deepcopy(model), problem.analysis, plan), x) == macs


def test_max_prune_ratio_is_honoured() -> None:
    _, _, problem = _problem("mlp", 3.0, 1, max_prune=0.5)
    plan = GreedySearch().channel_prune_search(problem)
    assert all(len(p) <= 64 for p in plan.values())
    _check_limits(problem, plan)


def test_unreachable_target_stops_at_the_limits_and_never_empties_a_group() -> None:
    _, _, problem = _problem("mobilenet_v2", 1000.0, 1)
    plan = GreedySearch().channel_prune_search(problem)
    assert problem.ratio(plan) < 1000
    assert {g.id: g.channels - len(plan[g.id]) for g in problem.groups} == dict.fromkeys(plan, 1)


def test_grouped_conv_groups_lose_whole_steps_per_slice() -> None:
    _, _, problem = _problem("resnext", 2.5, 1)
    search = GreedySearch()
    plan = search.channel_prune_search(problem)
    grouped = [g for g in problem.groups if g.group == 4]
    assert grouped
    assert all(plan.get(g.id) for g in grouped)
    assert all(s.channels == 4 for s in search.steps if problem.analysis.group(s.group_id).group == 4)
    _check_limits(problem, plan)


def test_lowest_sensitivity_per_mac_goes_first() -> None:
    model, x = make("mlp")
    analysis = analyze_coupling(model, x)
    scores = {
        0: torch.full((128,), 5.0, dtype=torch.float64),
        1: torch.full((128,), 5.0, dtype=torch.float64),
    }
    scores[1][:10] = 0.0  # ten free channels in group 1
    problem = SearchProblem(analysis, analysis.prunable_groups, scores, measure_macs(model, x), 1.2)
    search = GreedySearch()
    search.channel_prune_search(problem)
    assert [s.group_id for s in search.steps[:10]] == [1] * 10
    # group 0 saves 32 + 128 MACs per channel, group 1 only 128 + 10: once free channels are gone, group 0
    assert search.steps[10].group_id == 0


def test_fixed_plan_is_counted_but_not_searched() -> None:
    model, x = make("mlp")
    analysis = analyze_coupling(model, x)
    g0, g1 = analysis.prunable_groups
    scores = {g1.id: torch.rand(128, dtype=torch.float64)}
    fixed = {g0.id: list(range(64))}
    problem = SearchProblem(analysis, [g1], scores, measure_macs(model, x), 2.5, fixed_plan=fixed)
    plan = GreedySearch().channel_prune_search(problem)
    assert set(plan) == {g1.id}
    assert problem.ratio(plan) >= 2.5
    assert count_macs(prune_channels(copy.deepcopy(model), analysis, {**fixed, **plan}), x) == problem.macs(
        plan
    )


def test_step_channels() -> None:
    assert [step_channels(k, 16, 1) for k in (40, 32, 17, 16)] == [8, 16, 1, 16]
    assert [step_channels(k, 8, 4) for k in (36, 32)] == [4, 8]


def test_check_plan_rejects_broken_plans() -> None:
    _, _, problem = _problem("resnet", 1.5, 16, max_prune=0.5)
    g = problem.groups[0]
    with pytest.raises(
        ValueError, match=r"Mine: channel group 0 .* keeps 31 channels; kept counts must be multiples of 16"
    ):
        problem.check_plan({g.id: [0]}, "Mine")
    with pytest.raises(
        ValueError, match=r"keeps 8 of 32 channels; max_prune_ratio=0\.5 requires at least 16"
    ):
        problem.check_plan({g.id: list(range(24))}, "Mine")
    with pytest.raises(ValueError, match="prunes channel group 6, which is not searchable"):
        problem.check_plan({6: [0]}, "Mine")
    with pytest.raises(TypeError, match="must return"):
        problem.check_plan([1, 2], "Mine")
