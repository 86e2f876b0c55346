"""Planning: which inner-loop states to keep and what to replay, and what that costs. Pure Python, no torch.

A schedule turns a number of inner steps into a :class:`Plan` (the states the
forward pass stores, the operations of the backward pass); :class:`Auto`
chooses a schedule from measured :class:`StepCosts` and a memory budget, using
the one cost model in :mod:`._cost_model`; :mod:`._parse` reads the text forms
(``"binomial:20"``, ``"auto:11GiB+offload"``). Nothing here runs a step, so the
Revolve recursion and the plans can be read and tested alone.

Imports: the standard library and the root helpers (``memmaml._checks``,
``memmaml._units``, ``memmaml._host``); never torch, never another wing
(``tests/test_layers.py`` checks both).
"""

from ._auto import Auto, best_uniform, binomial_slots
from ._cost_model import (
    Choice,
    StepCosts,
    longest_steps,
    pinned_bytes,
    predicted_host_bytes,
    predicted_peak_bytes,
    predicted_seconds,
)
from ._parse import EngineSpec, parse_engine, parse_schedule
from ._plans import Advance, Drop, Op, Plan, PlanStats, Reverse, check_plan, kept_graph_start
from ._schedules import Binomial, Schedule, SqrtUniform, Uniform, binomial_evaluations, check_num_steps, sqrt_steps

__all__ = [
    "Advance",
    "Auto",
    "Binomial",
    "Choice",
    "Drop",
    "EngineSpec",
    "Op",
    "Plan",
    "PlanStats",
    "Reverse",
    "Schedule",
    "SqrtUniform",
    "StepCosts",
    "Uniform",
    "best_uniform",
    "binomial_evaluations",
    "binomial_slots",
    "check_num_steps",
    "check_plan",
    "kept_graph_start",
    "longest_steps",
    "parse_engine",
    "parse_schedule",
    "pinned_bytes",
    "predicted_host_bytes",
    "predicted_peak_bytes",
    "predicted_seconds",
    "sqrt_steps",
]
