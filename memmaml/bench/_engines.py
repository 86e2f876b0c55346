"""Engine text to what runs and what it is predicted to cost: the one place the benchmark library does this.

A sweep resolves ``"uniform:best"`` and ``"binomial:auto"`` per ``n`` and
predicts each run from the probe's step costs; the fit predicts from fitted
costs; the GPU check plans its parts' time. All three call :func:`predict`,
which asks memmaml's own :class:`~memmaml.Auto` and cost model
(:func:`~memmaml.predicted_peak_bytes`, :func:`~memmaml.predicted_host_bytes`,
:func:`~memmaml.predicted_seconds`), so a benchmark predicts exactly what the
library plans with.
"""

from __future__ import annotations

from typing import NamedTuple

from memmaml import (
    Auto,
    PlanStats,
    StepCosts,
    parse_engine,
    predicted_host_bytes,
    predicted_peak_bytes,
    predicted_seconds,
)

__all__ = ["Prediction", "concrete_engine", "engine_stats", "predict"]


def concrete_engine(
    text: str, n: int, costs: StepCosts | None, budget: int | None, host_budget: int | None = None
) -> str:
    """The engine text that runs ``n`` steps: ``"uniform:best"`` -> ``"uniform:K"`` and so on.

    ``budget`` is what the schedule may use besides the run's base (model,
    batches): the budget of ``"binomial:auto"`` and ``"uniform:best"``; an
    ``"auto:BUDGET"`` text plans for its own ``BUDGET``, whatever ``budget``
    is (the text names what runs). With ``+offload``, ``host_budget`` bounds
    the stored states in host memory (``None``: :class:`~memmaml.Auto`'s
    default, a share of what the host has available).

    Raises:
        ValueError: ``text`` is not an engine, it needs ``costs`` and there are
            none, or nothing of its family fits ``budget`` at ``n``.
    """
    spec = parse_engine(text, budget=budget)
    schedule = spec.schedule
    if schedule is not None and schedule.needs_costs:
        if costs is None:
            raise ValueError(f"{text!r} is chosen from measured step costs, and there are none")
        # parse_engine gave "uniform:best" and "binomial:auto" ``budget``; "auto:BUDGET" keeps its own
        auto = Auto(schedule.budget, among=schedule.among, host_budget=host_budget)
        schedule = auto.choose(n, costs, offload=spec.offload).schedule
    if schedule is None:
        return "naive"
    name = {
        "Uniform": f"uniform:{getattr(schedule, 'checkpoint_steps', 0)}",
        "Binomial": f"binomial:{getattr(schedule, 'slots', 0)}"
        + (f":{schedule.segment}" if getattr(schedule, "segment", 1) > 1 else ""),
        "SqrtUniform": "sqrt",
    }[type(schedule).__name__]
    return name + ("+offload" if spec.offload else "")


def engine_stats(text: str, n: int) -> tuple[dict[str, int] | None, bool]:
    """The plan statistics of a concrete engine text at ``n`` (``None`` for naive) and whether it offloads."""
    spec = parse_engine(text)
    if spec.schedule is None:
        return None, False
    return spec.schedule.stats(n)._asdict(), spec.offload


class Prediction(NamedTuple):
    """What :func:`predict` says about one engine at ``n``.

    Attributes:
        engine: the concrete engine text that runs (``"binomial:12+offload"``).
        stats: its plan's statistics as a dict (``None`` for naive).
        offload: whether its stored states live in host memory.
        peak_bytes: device bytes, ``base`` included.
        host_bytes: host bytes of the stored states (0 without offload).
        seconds: time of the unroll's steps.
    """

    engine: str
    stats: dict[str, int] | None
    offload: bool
    peak_bytes: int
    host_bytes: int
    seconds: float


def predict(
    text: str,
    n: int,
    costs: StepCosts,
    *,
    budget: int | None = None,
    host_budget: int | None = None,
    base: int = 0,
    prefetch: bool = True,
) -> Prediction:
    """The concrete engine ``text`` runs at ``n`` (:func:`concrete_engine`) and its predicted costs from ``costs``.

    ``prefetch``: offloaded states are copied back one ahead (what the engine does on CUDA; ``False`` for
    a CPU run).

    Raises:
        ValueError: as :func:`concrete_engine`.

    Example:
        >>> costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
        >>> p = predict("uniform:5", 10, costs)
        >>> p.engine, p.peak_bytes, p.host_bytes, p.seconds
        ('uniform:5', 10300, 0, 35.0)
        >>> predict("naive", 10, costs, base=500).peak_bytes
        20500
    """
    engine = concrete_engine(text, n, costs, budget, host_budget)
    stats, offload = engine_stats(engine, n)
    plan = None if stats is None else PlanStats(**stats)
    return Prediction(
        engine,
        stats,
        offload,
        predicted_peak_bytes(plan, n, costs, offload=offload, base=base, prefetch=prefetch),
        predicted_host_bytes(plan, n, costs, offload=offload),
        predicted_seconds(plan, n, costs),
    )
