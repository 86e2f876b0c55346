"""A sweep: every engine at every step count, each run in a fresh process, and its records.

:func:`run_sweep` measures memory (one tracked run per engine and ``n``, with
the meta-gradient saved and compared with memmaml's naive one at the same
``n``) and time (untracked runs, engines interleaved and their order rotated
between repeats, so drift in the machine's load hits every engine alike). The
engines ``"uniform:best"`` and ``"binomial:auto"`` are resolved for each ``n``
from the step costs measured by a probe run (the costs :class:`~memmaml.Auto`
plans with), so every record names the concrete schedule that ran. Runs that
would need more host memory than the machine has, or more time than allowed,
are recorded as skipped with the reason.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

from .._auto import Auto
from .._cost_model import StepCosts, predicted_peak_bytes, predicted_seconds
from .._parse import EngineSpec, parse_engine
from .._schedules import Binomial
from ._methods import Method
from ._runner import Runner, host_available_bytes

__all__ = ["concrete_engine", "engine_stats", "run_sweep"]


def concrete_engine(
    text: str, n: int, costs: StepCosts | None, budget: int | None, host_budget: int | None = None
) -> str:
    """The engine text that runs ``n`` steps: ``"uniform:best"`` -> ``"uniform:K"`` and so on.

    ``budget`` is what the schedule may use besides the run's base (model,
    batches); with ``+offload``, ``host_budget`` bounds the stored states in
    host memory (a binomial schedule keeps at most ``host_budget // S`` slots).
    """
    spec = parse_engine(text, budget=budget)
    schedule = spec.schedule
    if schedule is not None and schedule.needs_costs:
        if costs is None:
            raise ValueError(f"{text!r} needs measured step costs")
        schedule = (
            Auto(None if schedule.budget is None else budget, among=schedule.among)
            .choose(n, costs, offload=spec.offload)
            .schedule
        )
        if spec.offload and host_budget is not None and isinstance(schedule, Binomial):
            schedule = Binomial(max(1, min(schedule.slots, host_budget // max(costs.state_bytes, 1))))
    if schedule is None:
        return "naive"
    name = {
        "Uniform": f"uniform:{getattr(schedule, 'checkpoint_steps', 0)}",
        "Binomial": f"binomial:{getattr(schedule, 'slots', 0)}",
        "SqrtUniform": "sqrt",
    }[type(schedule).__name__]
    return name + ("+offload" if spec.offload else "")


def engine_stats(text: str, n: int) -> tuple[dict[str, int] | None, bool]:
    """The plan statistics of a concrete engine text at ``n`` (``None`` for naive) and whether it offloads."""
    spec: EngineSpec = parse_engine(text)
    if spec.schedule is None:
        return None, False
    return spec.schedule.stats(n)._asdict(), spec.offload


def _prediction(text: str, n: int, costs: StepCosts) -> tuple[int, float]:
    stats, offload = engine_stats(text, n)
    from .._plans import PlanStats

    plan = None if stats is None else PlanStats(**stats)
    return predicted_peak_bytes(plan, n, costs, offload=offload), predicted_seconds(plan, n, costs)


def run_sweep(
    runner: Runner,
    engines: Sequence[str],
    steps: Sequence[int],
    *,
    peers: Sequence[Method] = (),
    repeats: int = 1,
    time_steps: Sequence[int] | None = None,
    budget: int | None = None,
    host_budget: int | None = None,
    max_run_seconds: float | None = None,
    host_check: bool = True,
    progress: Callable[[str, dict[str, Any] | None], None] | None = None,
) -> dict[str, Any]:
    """Measure ``engines`` (memmaml) and ``peers`` at every ``n`` of ``steps``; see the module docstring.

    ``host_check=False`` runs configurations the probe predicts to exceed the
    host's available memory (on CPU they are skipped otherwise).

    Returns ``{"probe": ..., "records": [...]}``: the probe's step costs and one
    record per run (``role`` ``"memory"`` or ``"time"``; time runs are folded
    into their memory record as ``seconds_runs``).
    """

    def report(stage: str, record: dict[str, Any] | None = None) -> None:
        if progress is not None:
            progress(stage, record)

    probe = runner.run(Method("memmaml", "naive"), 1, track=False, measure_costs=True)
    report("probe", probe)
    costs = StepCosts(**probe["costs"]) if probe.get("status") == "ok" else None
    available = host_available_bytes() if runner.workload.device == "cpu" and host_check else None
    methods = [Method("memmaml", e) for e in engines] + list(peers)
    records: dict[tuple[str, int], dict[str, Any]] = {}
    for n in steps:
        for method in methods:
            record = _run_one(runner, method, n, costs, (budget, host_budget), available, max_run_seconds, track=True)
            records[method.label, n] = record
            report(f"memory {method.label} n={n}", record)
    _compare_gradients(records)
    for n in steps[-1:] if time_steps is None else time_steps:
        for repeat in range(repeats):
            shift = repeat % len(methods)
            for method in methods[shift:] + methods[:shift]:
                target = records.get((method.label, n))
                if target is None or target["status"] != "ok":
                    continue
                timed = _run_one(
                    runner, method, n, costs, (budget, host_budget), available, max_run_seconds, track=False
                )
                target.setdefault("seconds_runs", []).append(timed.get("seconds") if timed["status"] == "ok" else None)
                report(f"time {method.label} n={n} ({repeat + 1}/{repeats})", timed)
    for record in records.values():
        runs = [t for t in record.get("seconds_runs", []) if t is not None]
        if runs:
            record["seconds_untracked"] = statistics.median(runs)
    return {"probe": probe, "records": list(records.values())}


def _run_one(
    runner: Runner,
    method: Method,
    n: int,
    costs: StepCosts | None,
    budgets: tuple[int | None, int | None],
    available: int | None,
    max_run_seconds: float | None,
    *,
    track: bool,
) -> dict[str, Any]:
    engine = method.engine
    if method.library == "memmaml":
        engine = concrete_engine(method.engine, n, costs, *budgets)
    record = {
        "label": method.label,
        "library": method.library,
        "engine": engine,
        "steps": n,
        "tracked": track,
        "role": "memory" if track else "time",
    }
    stats, offload = engine_stats(engine, n)
    record.update(stats=stats, offload=offload)
    if costs is not None:
        peak, seconds = _prediction(engine, n, costs)
        record.update(probe_predicted_peak_bytes=peak, probe_predicted_seconds=seconds)
        # the probe's graph bytes hold one step's backward transient too, so n steps' prediction
        # runs high (ResNet-18 at 224 px: 1.25 GB per step from the probe, 654 MiB fitted to the
        # measured runs): skip only what would not fit even then
        if available is not None and peak > available:
            return {
                **record,
                "status": "skipped",
                "error": f"predicted peak {peak / 2**30:.1f} GiB > the host's available {available / 2**30:.1f} GiB",
            }
        if max_run_seconds is not None and seconds > max_run_seconds:
            return {
                **record,
                "status": "skipped",
                "error": f"predicted {seconds:.0f} s > --max-run-seconds {max_run_seconds:g}",
            }
    result = runner.run(Method(method.library, engine), n, track=track, save_grads=track)
    return {**result, **record, "engine": engine}


def _compare_gradients(records: dict[tuple[str, int], dict[str, Any]]) -> None:
    """Relative L2 distance of every meta-gradient to memmaml naive's at the same ``n``."""
    import torch

    for (label, n), record in records.items():
        reference = records.get(("naive", n))
        if label == "naive" or reference is None or not (record.get("grad_path") and reference.get("grad_path")):
            continue
        a, b = torch.load(record["grad_path"]), torch.load(reference["grad_path"])
        record["grad_rel_diff"] = float((a - b).norm() / b.norm().clamp_min(1e-300))
        record["grad_bitwise_equal"] = bool(torch.equal(a, b))
