"""The planner's seams: the rank-policy registry, the cost-model protocol (a fake model changes decisions),
per-layer lowering (decided per layer, rewritten per layer, exact at full rank), and factorising apart from
deciding (factors can be refined before the rewrite)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import converter
from converter import ConversionConfig
from converter._config import POLICY_FIELDS, REPEATABLE_FIELDS
from converter.pipeline import _convert as pipeline
from converter.planning._cost import Candidate, Cost, CostModel, CountingCostModel, macs_of, params_of
from converter.planning._factorize import Spectra, factorize, rewrites
from converter.planning._plan import plan
from converter.planning._policies import RANK_POLICIES
from tests.converter.test_plan import layer
from tests.utils import onnx_models as om


def test_policy_registry_matches_the_config():
    assert set(RANK_POLICIES) == set(POLICY_FIELDS)
    for name, policy in RANK_POLICIES.items():
        assert policy.name == name
        assert (policy.budget is None) == (policy.narrow is not None and policy.prefer is not None)
    assert {"exclude", "layer_rank", "input_shape"} <= REPEATABLE_FIELDS
    assert not REPEATABLE_FIELDS & {"rank", "energy", "order", "device", "verify"}


class _Recording(CountingCostModel):
    name = "recording"

    def __init__(self) -> None:
        self.calls: list[int] = []

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        self.calls.append(len(candidates))
        return super().costs(candidates)


def test_cost_model_is_asked_once_for_every_candidate():
    layers = [layer("a", decay=0.5), layer("b", seed=2), layer("pw", kernel=(1, 1))]
    model = _Recording()
    assert isinstance(model, CostModel)
    p = plan(layers, ConversionConfig(order="auto", lowering="split"), model, total_params=10**6, total_macs=None)
    # every layer kept (3), plus for a and b: 2 orders × 9 ranks
    assert model.calls == [3 + 2 * 2 * 9]
    assert p.policy["cost_model"] == "recording"


class _FakeLatency:
    """Measured-latency stand-in: dw-pw is slow for layers named ``slow*``; fused is faster than split for layers
    named ``*fused*``; keeping a layer costs 100 ms."""

    name = "fake-latency"

    def costs(self, candidates: Sequence[Candidate]) -> list[Cost]:
        out = []
        for c in candidates:
            ms = 100.0
            if not c.keeps:
                ms = 10.0 * (c.rank or 1)
                if c.order == "dw-pw" and c.layer.name.startswith("slow"):
                    ms += 1000.0
                if (c.lowering == "fused") == ("fused" in c.layer.name):
                    ms -= 1.0
            out.append(Cost(params_of(c.layer, c.order, c.rank), macs_of(c.layer, c.order, c.rank), latency_ms=ms))
        return out


def test_a_fake_cost_model_changes_decisions():
    lay = layer("slow.conv", n=32, m=32, decay=0.3)
    counted = plan([lay], ConversionConfig(energy=0.9, order="dw-pw"), total_params=1, total_macs=None)
    assert counted.decisions[0].converted
    # the default policy (energy 0.9, never slower) keeps a layer measured slower in every form it may take
    timed = plan([lay], ConversionConfig(order="dw-pw"), _FakeLatency(), total_params=1, total_macs=None)
    d = timed.decisions[0]
    assert d.status == "skipped" and "would be slower" in d.reason
    # so does an explicit policy, naming --force, which converts it anyway in the fastest lowering
    explicit = plan([lay], ConversionConfig(energy=0.9, order="dw-pw"), _FakeLatency(), total_params=1,
                    total_macs=None).decisions[0]
    assert explicit.status == "skipped" and "would be slower" in explicit.reason and "--force" in explicit.reason
    forced = plan([lay], ConversionConfig(energy=0.9, order="dw-pw", force=True), _FakeLatency(), total_params=1,
                  total_macs=None).decisions[0]
    assert forced.converted and forced.lowering == "split"
    # with both orders allowed the slow form is avoided instead
    auto = plan([lay], ConversionConfig(), _FakeLatency(), total_params=1, total_macs=None).decisions[0]
    assert auto.converted and auto.order == "pw-dw" and auto.cost_after.latency_ms < 100.0


def test_measured_error_replaces_the_weight_error():
    class Pessimist(CountingCostModel):
        name = "pessimist"

        def costs(self, candidates):  # ranks above 1 (measured to) do worse than rank 1 on the user's data
            return [Cost(c.params, c.macs, error=0.5 if (cand.rank or 0) > 1 else None)
                    for cand, c in zip(candidates, super().costs(candidates), strict=True)]

    lay = layer("a", n=32, m=32, decay=0.5)
    total = params_of(lay, None, None)
    cfg = ConversionConfig(target_params=0.5, order="dw-pw")
    base = plan([lay], cfg, total_params=total, total_macs=None).decisions[0]
    assert base.rank == 3  # the most the budget allows: the weight error falls with every rank
    measured = plan([lay], cfg, Pessimist(), total_params=total, total_macs=None).decisions[0]
    assert measured.rank == 1 and measured.rel_weight_error == pytest.approx(np.sqrt(1 - measured.energy))


def test_lowering_is_decided_per_layer():
    layers = [layer("a.fused", decay=0.5), layer("b.split", seed=3, decay=0.5)]
    p = plan(layers, ConversionConfig(rank=2, lowering="auto"), _FakeLatency(), total_params=1, total_macs=None)
    assert [d.lowering for d in p.decisions] == ["fused", "split"]
    # counted costs cannot tell the lowerings apart: auto falls back to split everywhere
    p = plan(layers, ConversionConfig(rank=2, lowering="auto"), total_params=1, total_macs=None)
    assert [d.lowering for d in p.decisions] == ["split", "split"]
    factors = factorize(p.decisions)
    assert [f.lowering for f in factors] == ["split", "split"]


def test_factors_can_be_refined_before_the_rewrite():
    lay = layer("a", decay=0.5)
    spectra = Spectra()
    p = plan([lay], ConversionConfig(rank=2, order="dw-pw"), total_params=1, total_macs=None, spectra=spectra)
    (f,) = factorize(p.decisions, spectra)
    assert f.depthwise.shape == (16 * 2, 1, 3, 3) and f.pointwise.shape == (16, 16 * 2, 1, 1)
    refined = f.with_weights(f.depthwise * 2, f.pointwise / 2)
    (rw,) = rewrites([refined])
    assert rw.layer is lay and np.allclose(rw.lowered.steps[0].weight, 2 * f.lowered().steps[0].weight)
    with pytest.raises(ValueError, match="keep their shapes"):
        f.with_weights(f.depthwise[:1], f.pointwise)
    # a replacement bias (calibration's) travels with the rewrite to the adapter
    (rw,) = rewrites([f.with_weights(f.depthwise, f.pointwise, bias=np.ones(16, np.float32))])
    assert rw.bias is not None and np.allclose(rw.bias, 1.0)


def test_per_layer_lowering_is_rewritten_exactly(tmp_path, monkeypatch):
    """Full rank, lowering chosen per layer by a cost model: the ONNX model is rewritten with both lowerings and
    still computes the original function."""
    model_path = tmp_path / "vgg.onnx"
    model_path.write_bytes(om.zoo_onnx("vgg"))
    names: list[str] = []

    class Alternating(_FakeLatency):
        def costs(self, candidates):
            for c in candidates:
                if c.layer.name not in names:
                    names.append(c.layer.name)
            out = []
            for c, cost in zip(candidates, super().costs(candidates), strict=True):
                prefer_fused = names.index(c.layer.name) % 2 == 0
                bonus = -5.0 if (c.lowering == "fused") == prefer_fused and not c.keeps else 0.0
                out.append(Cost(cost.params, cost.macs, latency_ms=cost.latency_ms + bonus))
            return out

    real_plan = pipeline.plan
    monkeypatch.setattr(pipeline, "plan", lambda layers, cfg, _model, **kw: real_plan(layers, cfg, Alternating(),
                                                                                      **kw))
    result = converter.convert(model_path, tmp_path / "out.onnx", rank=9, order="dw-pw", lowering="auto",
                               force=True, measure=False, latency_runs=3, input_shape=["x=2x3x32x32"])
    conv = result.report.converted_layers
    assert len(conv) >= 2 and {lay.lowering for lay in conv} == {"fused", "split"}
    assert result.report.fidelity.rel_l2 < 1e-4
