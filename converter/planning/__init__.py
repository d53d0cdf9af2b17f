"""Deciding what to convert: which layers, in which order, at which rank and lowering, given a cost model.

``_plan`` returns decisions with reasons; ``_policies`` is the registry of rank policies (energy, rank, budgets);
``_cost`` is the cost-model protocol and the counting model (parameters, MACs, weight error); ``_latency_cost``
the cost model over measured latency (from ``latency``); ``_outerr`` the per-layer output error on the user's
samples; ``_sensitivity`` how much of a layer's error reaches the model's output; ``_search`` the
``max_accuracy_drop`` frontier and the search over it; ``_factorize`` turns decisions into factors (from
``algebra``) and rewrites for the format adapters.

It measures nothing itself (``latency`` does) and touches no graph (the format adapters do).
"""

from __future__ import annotations

from ._cost import Candidate, Cost, CostModel, CountingCostModel, Lowering, error_report, macs_of, params_of
from ._factorize import Factors, Spectra, factorize, rewrites
from ._latency_cost import LatencyCostModel
from ._outerr import OutputErrorCostModel, OutputErrors, measure_output_errors, plans_on_output_error
from ._plan import LayerDecision, Plan, eligibility, orders, plan, priced_options
from ._search import Choice, LayerMenu, Outcome, SearchPlan, SearchResult, Trial, frontier, search, uniform_plans
from ._sensitivity import Probe, Sensitivities, measure_sensitivities, probe_rank

__all__ = [
    "Candidate",
    "Choice",
    "Cost",
    "CostModel",
    "CountingCostModel",
    "Factors",
    "LatencyCostModel",
    "LayerDecision",
    "LayerMenu",
    "Lowering",
    "Outcome",
    "OutputErrorCostModel",
    "OutputErrors",
    "Plan",
    "Probe",
    "SearchPlan",
    "SearchResult",
    "Sensitivities",
    "Spectra",
    "Trial",
    "eligibility",
    "error_report",
    "factorize",
    "frontier",
    "macs_of",
    "measure_output_errors",
    "measure_sensitivities",
    "orders",
    "params_of",
    "plan",
    "plans_on_output_error",
    "priced_options",
    "probe_rank",
    "rewrites",
    "search",
    "uniform_plans",
]
