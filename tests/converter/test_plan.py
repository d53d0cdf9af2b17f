"""Eligibility and rank policies, on synthetic layers (no model format involved)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from converter import ConversionConfig, InvalidOptionsError
from converter.algebra._decompose import energy_curve, singular_values
from converter.formats import ConvLayer
from converter.planning._factorize import factorize
from converter.planning._plan import eligibility, macs_of, params_of
from converter.planning._plan import plan as plan_layers


def layer(name, n=16, m=16, kernel=(3, 3), groups=1, *, weight=True, seed=0, spatial=(8, 8), decay=None, **kw):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n, m // groups, *kernel)).astype(np.float32) if weight else None
    if w is not None and decay is not None:
        # Make the kernel compressible: scale its spatial SVD components geometrically.
        flat = w.reshape(n * (m // groups), -1)
        u, s, vt = np.linalg.svd(flat, full_matrices=False)
        w = ((u * (s * decay ** np.arange(len(s)))) @ vt).reshape(w.shape).astype(np.float32)
    return ConvLayer(name=name, op="Conv", kernel=kernel, in_channels=m, out_channels=n, groups=groups, weight=w,
                     in_spatial=spatial, out_spatial=spatial, **kw)


def cfg(**kw):
    return ConversionConfig(**kw)


def test_eligibility_reasons():
    c = cfg(exclude=["head*"])
    assert eligibility(layer("a", kernel=(1, 1)), c) == "1×1 conv: already pointwise"
    assert "already depthwise" in eligibility(layer("a", groups=16), c)
    assert eligibility(layer("a", transposed=True), c) is None  # transposed convs are converted too
    assert eligibility(layer("a", weight=False, note="weight is a graph input"), c) == "weight is a graph input"
    assert eligibility(layer("a", weight=False), c) == "weight is not a constant"
    assert eligibility(layer("head.conv"), c) == "excluded by pattern 'head*'"
    assert eligibility(layer("body.conv"), c) is None
    assert eligibility(layer("a", groups=4), c) is None  # grouped but not depthwise: eligible


def test_rank_policy_and_unprofitable_skip():
    layers = [layer("small", n=4, m=4), layer("big", n=64, m=64, seed=1), layer("pw", kernel=(1, 1))]
    plan = plan_layers(layers, cfg(rank=2, order="dw-pw"), total_params=10**6, total_macs=None)
    small, big, pw = plan.decisions
    # small: 2·(4·9 + 4·4) = 104 ≥ 4·4·9 = 144? no: 104 < 144, converted
    assert small.converted and small.params_after == 2 * (4 * 9 + 4 * 4)
    assert big.converted and big.rank == 2 and big.params_after == 2 * (64 * 9 + 64 * 64)
    assert pw.status == "skipped" and pw.reason == "1×1 conv: already pointwise"
    (_, f_big) = factorize(plan.decisions)  # small and big are converted
    assert f_big.layer is big.layer and f_big.depthwise.shape == (64 * 2, 1, 3, 3)
    # rank 9 (full) never reduces parameters → skipped with the numbers, unless forced
    plan = plan_layers([layer("a")], cfg(rank=9, order="dw-pw"), total_params=1, total_macs=None)
    d = plan.decisions[0]
    assert d.status == "skipped" and "would not reduce parameters" in d.reason
    assert str(params_of(d.layer, None, None)) in d.reason
    plan = plan_layers([layer("a")], cfg(rank=9, order="dw-pw", force=True), total_params=1, total_macs=None)
    assert plan.decisions[0].converted and plan.decisions[0].rel_weight_error < 1e-6


def test_rank_is_clipped_to_the_layer_maximum():
    # pw-dw of a 3-in-channel stem: max rank min(C=3, k=9) = 3
    plan = plan_layers([layer("stem", n=32, m=3)], cfg(rank=8, order="pw-dw", force=True), total_params=1,
                       total_macs=None)
    assert plan.decisions[0].rank == 3 and plan.decisions[0].rel_weight_error < 1e-6


def test_energy_policy_picks_smallest_rank_per_order_then_cheapest():
    lay = layer("a", n=32, m=32, decay=0.3)
    for order in ("dw-pw", "pw-dw"):
        plan = plan_layers([lay], cfg(energy=0.95, order=order), total_params=1, total_macs=None)
        d = plan.decisions[0]
        curve = energy_curve(singular_values(lay.weight, 1, order))
        k = int(np.argmax(curve >= 0.95)) + 1
        assert d.rank == k and d.energy >= 0.95 and (k == 1 or curve[k - 2] < 0.95)
    auto = plan_layers([lay], cfg(energy=0.95), total_params=1, total_macs=None).decisions[0]
    options = []
    for order in ("dw-pw", "pw-dw"):
        curve = energy_curve(singular_values(lay.weight, 1, order))
        k = int(np.argmax(curve >= 0.95)) + 1
        options.append((params_of(lay, order, k), order, k))
    assert (auto.params_after, auto.order, auto.rank) == min(options)


def test_default_policy_is_energy():
    plan = plan_layers([layer("a", decay=0.3)], cfg(), total_params=1, total_macs=None)
    assert plan.policy["kind"] == "energy" and plan.policy["value"] == ConversionConfig().policy[1]


def test_layer_rank_override_wins():
    layers = [layer("a.conv"), layer("b.conv", seed=2)]
    plan = plan_layers(layers, cfg(rank=2, layer_rank={"a.*": 1}, order="dw-pw"), total_params=1, total_macs=None)
    assert [d.rank for d in plan.decisions] == [1, 2]
    assert "set for this layer" in plan.decisions[0].reason


def _brute_force(layers, budget_share, total, metric):
    """Least summed squared error under the budget, by enumerating every option of every layer."""
    menus = []
    for lay in layers:
        keep = params_of(lay, None, None) if metric == "params" else macs_of(lay, None, None)
        menu = [(keep, 0.0)]
        for order in ("dw-pw", "pw-dw"):
            curve = energy_curve(singular_values(lay.weight, lay.groups, order))
            for r in range(1, len(curve) + 1):
                c = params_of(lay, order, r) if metric == "params" else macs_of(lay, order, r)
                if c < keep:
                    menu.append((c, 1.0 - curve[r - 1]))
        menus.append(menu)
    fixed = total - sum(m[0][0] for m in menus)
    best = None
    for combo in itertools.product(*menus):
        cost = fixed + sum(c for c, _ in combo)
        if cost <= budget_share * total + 1e-9:
            err = sum(e for _, e in combo)
            best = err if best is None else min(best, err)
    return best


@pytest.mark.parametrize("share", [0.35, 0.5, 0.7])
def test_target_params_meets_budget_near_optimally(share):
    layers = [layer("a", n=16, m=16, decay=0.5, seed=1), layer("b", n=8, m=16, decay=0.8, seed=2),
              layer("c", n=16, m=8, kernel=(5, 5), decay=0.4, seed=3)]
    other = 500  # non-conv parameters
    total = other + sum(params_of(lay, None, None) for lay in layers)
    plan = plan_layers(layers, cfg(target_params=share), total_params=total, total_macs=None)
    after = other + sum(d.params_after for d in plan.decisions)
    assert after <= share * total
    assert plan.policy["achieved"] == pytest.approx(after / total, abs=1e-6)
    got = sum((d.rel_weight_error or 0.0) ** 2 for d in plan.decisions)
    best = _brute_force(layers, share, total, "params")
    # greedy on convex hulls: optimal up to the last partial step; allow a small gap, never better than optimal
    assert best - 1e-9 <= got <= best + 0.35 * max(best, 1e-3)


def test_target_macs_accounts_for_pw_dw_input_resolution():
    lay = layer("s2", n=16, m=16, spatial=None, decay=0.5)
    lay.in_spatial, lay.out_spatial = (16, 16), (8, 8)  # a stride-2 conv
    # pw-dw runs its 1×1 conv at the input resolution: 4× the MACs of the same conv after the stride
    assert macs_of(lay, "pw-dw", 2) == 2 * 16 * 16 * 256 + 2 * 16 * 9 * 64
    assert macs_of(lay, "dw-pw", 2) == 2 * (16 * 9 + 16 * 16) * 64
    total = macs_of(lay, None, None)
    plan = plan_layers([lay], cfg(target_macs=0.5), total_params=10**6, total_macs=total)
    assert plan.decisions[0].macs_after <= 0.5 * total


def test_budget_errors_name_what_is_reachable():
    layers = [layer("a", n=8, m=8)]
    total = 10 * params_of(layers[0], None, None)  # the conv is a tenth of the model
    with pytest.raises(InvalidOptionsError, match=r"smallest reachable is 0\.9"):
        plan_layers(layers, cfg(target_params=0.5), total_params=total, total_macs=None)
    unknown = [layer("a", spatial=None)]
    with pytest.raises(InvalidOptionsError, match="input-shape"):
        plan_layers(unknown, cfg(target_macs=0.5), total_params=1, total_macs=None)


def test_excluded_and_ineligible_layers_count_as_fixed_budget():
    layers = [layer("keep.me", decay=0.5), layer("b", decay=0.5, seed=3), layer("pw", kernel=(1, 1))]
    total = sum(params_of(lay, None, None) for lay in layers)
    plan = plan_layers(layers, cfg(target_params=0.8, exclude=["keep.*"]), total_params=total, total_macs=None)
    d0, d1, d2 = plan.decisions
    assert d0.status == "skipped" and d0.reason.startswith("excluded")
    assert d2.status == "skipped"
    assert sum(d.params_after for d in plan.decisions) <= 0.8 * total
    assert d1.converted


def test_single_input_channel_conv_is_not_depthwise():
    """groups = in_channels = 1 is a dense conv (a grayscale stem): eligible."""
    assert eligibility(layer("stem", n=32, m=1), cfg()) is None


def test_min_reduction_skips_conversions_that_save_too_little():
    stem = layer("stem", n=32, m=1)  # 288 weights; dw-pw rank 7 keeps 7·9 + 32·7 = 287
    plan = plan_layers([stem], cfg(rank=7, order="dw-pw"), total_params=1, total_macs=None)
    d = plan.decisions[0]
    assert d.status == "skipped" and "not reduce parameters enough (287 vs 288" in d.reason
    plan = plan_layers([stem], cfg(rank=7, order="dw-pw", min_reduction=0), total_params=1, total_macs=None)
    assert plan.decisions[0].converted and plan.decisions[0].params_after == 287


def test_conversions_that_add_macs_are_skipped():
    lay = layer("s2", n=16, m=16)
    lay.in_spatial, lay.out_spatial = (32, 32), (8, 8)  # stride 4: a pw-dw 1×1 conv at 32×32 costs a lot
    plan = plan_layers([lay], cfg(rank=4, order="pw-dw"), total_params=1, total_macs=None)
    d = plan.decisions[0]
    assert d.status == "skipped" and "would add MACs" in d.reason
    assert macs_of(lay, "pw-dw", 4) > macs_of(lay, None, None)


def test_auto_order_prefers_a_form_worth_converting():
    """At a stride, pw-dw may have the smaller error yet add MACs; auto then takes dw-pw instead of skipping."""
    lay = layer("s2", n=16, m=16, seed=5)
    lay.in_spatial, lay.out_spatial = (16, 16), (8, 8)
    plan = plan_layers([lay], cfg(rank=2, order="pw-dw"), total_params=1, total_macs=None)
    assert "would add MACs" in plan.decisions[0].reason
    plan = plan_layers([lay], cfg(rank=2), total_params=1, total_macs=None)
    assert plan.decisions[0].converted and plan.decisions[0].order == "dw-pw"
