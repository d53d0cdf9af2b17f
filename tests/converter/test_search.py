"""The ``max_accuracy_drop`` search (``converter.planning._search``) on a fake cost model and a fake metric: the
frontier is the predicted Pareto front, the search finds the known best plan, respects D and the budget, and
returns the original when nothing meets D."""

from __future__ import annotations

import itertools
import math

import pytest

from converter.planning import Choice, LayerMenu, Outcome, SearchPlan, frontier, search, uniform_plans


def _menus() -> list[LayerMenu]:
    # four layers; each rank halves the error and costs more; the layers differ in how much their error matters
    out = []
    for i, (ms, sens) in enumerate(((4.0, 0.2), (8.0, 1.0), (6.0, 3.0), (2.0, 0.5))):
        choices = [Choice("dw-pw", r, "split", cost=ms * (0.15 + 0.12 * r), error=0.4 / 2 ** (r - 1), params=10 * r)
                   for r in range(1, 7)]
        out.append(LayerMenu(f"conv{i}", ms, 100, None, sens, choices))
    return out


class FakeModel:
    """Speed-up: the plan's predicted cost against the original's; drop: proportional to the predicted error
    (so that the best plan is known), with a fixed time per measurement on a fake clock."""

    def __init__(self, menus: list[LayerMenu], scale: float = 0.5, seconds: float = 10.0, faster: bool = True):
        self.total = sum(m.cost for m in menus)
        self.scale, self.seconds, self.faster = scale, seconds, faster
        self.now = 0.0
        self.calls: list[int] = []

    def clock(self) -> float:
        return self.now

    def outcome(self, plan: SearchPlan) -> Outcome:
        speedup = self.total / plan.cost
        drop = self.scale * plan.predicted_error
        return Outcome(1.0 - drop, drop, speedup, speedup * 0.97, speedup * 1.03, self.faster and speedup * 0.97 > 1)

    def __call__(self, plan: SearchPlan) -> Outcome:
        self.now += self.seconds
        self.calls.append(plan.index)
        return self.outcome(plan)


def test_frontier_runs_from_the_original_to_every_layer_at_its_cheapest_along_the_pareto_front():
    menus = _menus()
    chain = frontier(menus)
    assert chain[0].choices == (None,) * 4 and chain[0].predicted_error == 0.0
    assert chain[0].cost == pytest.approx(sum(m.cost for m in menus))
    assert [p.index for p in chain] == list(range(len(chain)))
    for a, b in itertools.pairwise(chain):
        assert b.cost < a.cost and b.predicted_error >= a.predicted_error
    last = chain[-1].choices
    assert all(c is not None and c.cost == min(x.cost for x in m.choices) for m, c in zip(menus, last, strict=True))
    # no plan of all the combinations is both cheaper and less wrong than a plan of the chain
    options = [[None, *m.choices] for m in menus]
    for combo in itertools.product(*options):
        cost = sum(m.cost if c is None else c.cost for m, c in zip(menus, combo, strict=True))
        err = sum(0.0 if c is None else m.sensitivity * c.error for m, c in zip(menus, combo, strict=True))
        for p in chain:
            assert not (cost <= p.cost - 1e-9 and err < p.predicted_error - 1e-9)


def test_frontier_skips_options_that_are_not_cheaper_and_keeps_a_free_option_first():
    free = LayerMenu("a", 5.0, 10, None, 1.0, [Choice("dw-pw", 1, None, 3.0, 0.0), Choice("pw-dw", 1, None, 9.0, 0.0)])
    chain = frontier([free])
    assert len(chain) == 2 and chain[0].choices == (None,) and chain[1].choices[0].cost == 3.0


@pytest.mark.parametrize("max_drop", [0.001, 0.01, 0.03, 0.08, 0.2])
def test_search_finds_the_known_best_plan_in_few_measurements_and_respects_the_drop(max_drop):
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus)
    result = search(chain, fake, max_drop, budget_s=1e9, clock=fake.clock)
    # the known best: the fastest plan of the chain whose drop meets D
    meeting = [p for p in chain[1:] if fake.outcome(p).drop <= max_drop]
    best = max(meeting, key=lambda p: fake.outcome(p).speedup, default=None)
    if best is None:
        assert result.chosen is None
    else:
        assert result.chosen is not None and result.chosen.plan.index == best.index
        assert result.chosen.outcome.drop <= max_drop
    assert all(t.meets == (t.outcome.drop <= max_drop) for t in result.trials)
    assert len(result.trials) <= 2 * math.ceil(math.log2(len(chain))) + 1 < len(chain)
    assert result.stopped == "converged"
    assert len(set(fake.calls)) == len(fake.calls)  # no plan measured twice


def test_search_takes_the_fastest_plan_when_it_already_meets_the_drop():
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus)
    result = search(chain, fake, 10.0, budget_s=1e9, clock=fake.clock)
    assert fake.calls == [len(chain) - 1] and result.chosen is not None and result.chosen.step == "fastest"


def test_search_narrows_by_bisection_when_the_drop_is_not_proportional():
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus)
    # a metric that collapses past a threshold: interpolation overshoots, bisection steps bound the count
    threshold = chain[len(chain) // 3].predicted_error
    fake.outcome = lambda p: Outcome(0.0, 0.0 if p.predicted_error <= threshold else 0.5, fake.total / p.cost,  # type: ignore[method-assign]
                                     fake.total / p.cost, fake.total / p.cost, True)
    result = search(chain, fake, 0.01, budget_s=1e9, clock=fake.clock)
    assert result.chosen is not None and result.chosen.plan.index == len(chain) // 3
    assert len(result.trials) <= 2 * math.ceil(math.log2(len(chain))) + 1


def test_search_respects_the_budget_and_keeps_the_best_found_so_far():
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus, seconds=10.0)
    result = search(chain, fake, 0.01, budget_s=35.0, clock=fake.clock)
    assert result.stopped == "budget"
    assert fake.now <= 35.0 and len(result.trials) == 3
    assert "budget" in result.reason
    if result.chosen is not None:
        assert result.chosen.meets and result.chosen.outcome.faster


def test_search_returns_the_original_when_no_plan_meets_the_drop():
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus, scale=1000.0)
    result = search(chain, fake, 0.01, budget_s=1e9, clock=fake.clock)
    assert result.chosen is None and not any(t.meets for t in result.trials)
    assert "unchanged" in result.reason
    best = result.best_tried
    assert best is not None and best.outcome.drop == min(t.outcome.drop for t in result.trials)


def test_search_never_returns_a_plan_that_is_not_measured_faster():
    menus = _menus()
    chain = frontier(menus)
    fake = FakeModel(menus, faster=False)
    result = search(chain, fake, 10.0, budget_s=1e9, clock=fake.clock)
    assert result.chosen is None and result.trials and result.trials[0].meets
    assert "faster" in result.reason and "unchanged" in result.reason


def test_search_with_nothing_to_convert_measures_nothing():
    fake = FakeModel([])
    result = search(frontier([]), fake, 0.01, budget_s=10, clock=fake.clock)
    assert result.chosen is None and result.trials == [] and fake.calls == []


def test_uniform_plans_are_what_rank_k_gives_and_are_measured_first():
    menus = _menus()
    anchors = uniform_plans(menus)
    assert [p.uniform_rank for p in anchors] == [6, 5, 4, 3, 2, 1]  # slowest first
    assert all(c is not None and c.rank == p.uniform_rank for p in anchors for c in p.choices)
    fake = FakeModel(menus)
    chain = frontier(menus)
    # a drop scale that favours uniform plans: the search still returns the fastest measured within D
    result = search(chain, fake, 0.03, budget_s=1e9, anchors=anchors, clock=fake.clock)
    steps = [t.step for t in result.trials]
    assert steps[0] == "uniform" and "uniform" not in steps[steps.index(next(s for s in steps if s != "uniform")):]
    meeting = [p for p in anchors if fake.outcome(p).drop <= 0.03]
    best_uniform = max((fake.outcome(p).speedup for p in meeting), default=1.0)
    assert result.chosen is not None and result.chosen.outcome.speedup >= best_uniform
    assert len({t.plan.key for t in result.trials}) == len(result.trials)  # each plan measured once
