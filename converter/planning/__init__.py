"""Deciding what to convert: which layers, in which order, at which rank and lowering, given a cost model.

``_plan`` returns decisions with reasons; ``_policies`` is the registry of rank policies (energy, rank, budgets);
``_cost`` is the cost-model protocol and the counting model (parameters, MACs, weight error); ``_latency_cost``
the cost model over measured latency (from ``latency``); ``_outerr`` the per-layer output error on the user's
samples; ``_factorize`` turns decisions into factors (from ``algebra``) and rewrites for the format adapters.

It measures nothing itself (``latency`` does) and touches no graph (the format adapters do).
"""

from __future__ import annotations

from ._cost import Candidate, Cost, CostModel, CountingCostModel, Lowering, error_report, macs_of, params_of
from ._factorize import Factors, Spectra, factorize, rewrites
from ._latency_cost import LatencyCostModel
from ._outerr import OutputErrorCostModel, OutputErrors, measure_output_errors, plans_on_output_error
from ._plan import LayerDecision, Plan, eligibility, orders, plan

__all__ = [
    "Candidate",
    "Cost",
    "CostModel",
    "CountingCostModel",
    "Factors",
    "LatencyCostModel",
    "LayerDecision",
    "Lowering",
    "OutputErrorCostModel",
    "OutputErrors",
    "Plan",
    "Spectra",
    "eligibility",
    "error_report",
    "factorize",
    "macs_of",
    "measure_output_errors",
    "orders",
    "params_of",
    "plan",
    "plans_on_output_error",
    "rewrites",
]
