"""memmaml's cost model fitted to measured runs, and the budget answered per engine.

The model is memmaml's own cost model -- the one :class:`~memmaml.Auto`
plans with (:func:`~memmaml.predicted_peak_bytes`,
:func:`~memmaml.predicted_seconds`) -- plus what a measured run holds besides
the unroll (the model, the batches, the meta-gradient: a base per engine
family):

* memory: naive ``base_naive + n * A``; checkpointed ``base_checkpoint +
  (max_stored + 1) * S + max_segment * A`` (fewer states with offload: as the
  cost model counts them);
* time: ``base_seconds + forward_steps * t_nograph + n * t_graph``.

The model is linear in ``S``, ``A``, ``t_nograph`` and ``t_graph``, so each
run's coefficients are the cost model's predictions at unit costs; least
squares over the measured records then gives ``S``, ``A`` and the bases.
Every answer below is a prediction from measurements, and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from memmaml import StepCosts, longest_steps

from ._engines import predict

__all__ = ["Fit", "answer_budget", "fit_costs"]

FLAT_STEPS = (1_000, 10_000, 100_000)


class Fit(NamedTuple):
    """Fitted costs: ``costs`` (``S``, ``A``, ``t_nograph``, ``t_graph``) and the bases."""

    costs: StepCosts
    base_naive: float
    base_checkpoint: float
    base_seconds: float
    memory_points: int
    max_relative_residual: float
    time_from: str  # "fit" or "probe ratio" (when the timed runs cannot separate t_nograph from t_graph)
    prefetch: bool = True  # the measured device copies offloaded states back one ahead (CUDA, not a CPU)

    def peak(self, engine: str, n: int) -> float:
        """Predicted peak bytes of a concrete ``engine`` at ``n`` on the measured device, the family's base
        included."""
        base = self.base_naive if engine == "naive" else self.base_checkpoint
        return predict(engine, n, self.costs, base=int(base), prefetch=self.prefetch).peak_bytes

    def seconds(self, engine: str, n: int) -> float:
        """Predicted seconds of a concrete ``engine`` at ``n``, the base included."""
        return self.base_seconds + predict(engine, n, self.costs).seconds


#: unit costs: the cost model at one of them is the coefficient of that cost
_UNIT = {
    "state": StepCosts(1, 0, 0.0, 0.0),
    "graph": StepCosts(0, 1, 0.0, 0.0),
    "nograph": StepCosts(0, 0, 1.0, 0.0),
    "graph_time": StepCosts(0, 0, 0.0, 1.0),
}


def _coefficient(record: dict[str, Any], unit: str, prefetch: bool = True) -> float:
    """The coefficient of one cost in a measured record's prediction (its concrete engine at its ``n``)."""
    p = predict(record["engine"], record["steps"], _UNIT[unit], prefetch=prefetch)
    return float(p.seconds if unit in ("nograph", "graph_time") else p.peak_bytes)


def _lstsq(rows: list[list[float]], target: list[float]) -> tuple[list[float], list[float]] | None:
    import numpy as np

    if not rows:
        return None
    design, y = np.array(rows, dtype=float), np.array(target, dtype=float)
    if len(rows) < design.shape[1] or np.linalg.matrix_rank(design) < design.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return coef.tolist(), (design @ coef).tolist()


def fit_costs(
    records: Sequence[dict[str, Any]], probe: StepCosts | None = None, *, prefetch: bool = True
) -> Fit | None:
    """Fit the model to memmaml's measured records; ``None`` when they cannot determine it.

    ``prefetch``: whether the measured device copied offloaded states back one ahead (CUDA does, a CPU run
    does not); the fit and its answers then model that device.

    Memory needs naive and checkpointed runs with different numbers of stored
    states and graph steps. Time uses the untracked runs; when they cannot
    separate the two step times (every schedule replayed nothing, say), the
    probe's ratio of no-graph to graph time fixes it and only the scale is fitted.
    """
    points = [
        r
        for r in records
        if r.get("library") == "memmaml" and r.get("status") == "ok" and r.get("peak_bytes") is not None
    ]
    rows, target = [], []
    for r in points:
        naive = r.get("stats") is None
        rows.append(
            [float(naive), float(not naive), _coefficient(r, "state", prefetch), _coefficient(r, "graph", prefetch)]
        )
        target.append(float(r["peak_bytes"]))
    memory = _lstsq(rows, target)
    if memory is None:
        return None
    (base_naive, base_checkpoint, state, graph), fitted = memory
    residual = max(abs(f - t) / t for f, t in zip(fitted, target))
    timed = [r for r in points if r.get("seconds_untracked")] or [r for r in points if r.get("seconds")]
    seconds_of = lambda r: r.get("seconds_untracked") or r["seconds"]
    rows = [[1.0, _coefficient(r, "nograph"), _coefficient(r, "graph_time")] for r in timed]
    time = _lstsq(rows, [seconds_of(r) for r in timed])
    how = "fit"
    if time is None or time[0][1] < 0 or time[0][2] <= 0:
        ratio = probe.nograph_seconds / probe.graph_seconds if probe else 0.3
        rows = [[1.0, row[1] * ratio + row[2]] for row in rows]
        scale = _lstsq(rows, [seconds_of(r) for r in timed]) if timed else None
        if scale is None:
            t_graph = probe.graph_seconds if probe else 1.0
            base_seconds = 0.0
        else:
            base_seconds, t_graph = scale[0]
        time, how = ([base_seconds, ratio * t_graph, t_graph], None), "probe ratio"
    base_seconds, t_nograph, t_graph = time[0]
    costs = StepCosts(round(state), round(graph), float(t_nograph), float(t_graph))
    return Fit(costs, base_naive, base_checkpoint, float(base_seconds), len(points), residual, how, prefetch)


def answer_budget(
    fit: Fit, engine: str, budget: int, *, host_budget: int | None = None, limit: int = 10**7
) -> dict[str, Any]:
    """The longest unroll ``engine`` fits in ``budget`` (predicted), with its time per step relative to naive's.

    For an engine whose memory does not grow with ``n`` (binomial with slots
    chosen for the budget, offload) there is no longest unroll: the answer says
    so and gives the time per step at 1,000, 10,000 and 100,000 steps instead.
    With offload, ``host_budget`` bounds the stored states in host memory.
    """
    room = max(int(budget - fit.base_checkpoint), 1)

    def concrete(n: int) -> str | None:
        try:
            return predict(engine, n, fit.costs, budget=room, host_budget=host_budget).engine
        except ValueError:  # nothing of this family fits the room at n
            return None

    def peak(n: int) -> float:
        text = concrete(n)
        return float("inf") if text is None else fit.peak(text, n)

    def per_step(n: int) -> dict[str, Any]:
        text = concrete(n)
        seconds = fit.seconds(text, n)
        naive = fit.seconds("naive", n)
        return {
            "steps": n,
            "engine": text,
            "predicted_peak_bytes": peak(n),
            "predicted_seconds_per_step": seconds / n,
            "time_ratio_to_naive": seconds / naive,
        }

    longest = longest_steps(peak, budget, limit=limit)
    answer: dict[str, Any] = {
        "engine": engine,
        "budget_bytes": budget,
        "host_budget_bytes": host_budget,
        "measured": False,
        "one_step_bytes": fit.peak(concrete(1) or "naive", 1),
    }
    if longest is None:
        answer.update(grows_with_steps=False, at=[per_step(n) for n in FLAT_STEPS])
    else:
        answer.update(grows_with_steps=True, longest_steps=longest, at=[per_step(longest)] if longest else [])
    return answer
