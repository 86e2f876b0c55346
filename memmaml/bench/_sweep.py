"""A sweep: every engine at every step count, each run in a fresh process, and its records.

:func:`run_sweep` measures memory (one tracked run per engine and ``n``, with
the meta-gradient saved and compared with memmaml's naive one at the same
``n``) and time (untracked runs, engines interleaved and their order rotated
between repeats, so drift in the machine's load hits every engine alike). The
engines ``"uniform:best"`` and ``"binomial:auto"`` are resolved for each ``n``
from the step costs measured by a probe run (the costs :class:`~memmaml.Auto`
plans with), so every record names the concrete schedule that ran. Runs that
would need more host memory than the machine has, or more time than allowed,
are recorded as skipped with the reason; so are engines that cannot be
resolved (the probe failed, or nothing of the family fits the budget).

A sweep never loses a finished run: ``save`` is called with the records after
the probe and after every run, and a sweep given the records of an earlier,
interrupted one (``resume``) keeps its successful runs instead of running them
again; a run that failed, timed out or ran out of memory is run again, its
record (with its cause) kept until the new run replaces it. A record is kept
for the concrete engine it ran: the earlier runs that this sweep does not
make (other engines, other ``n``, or another concrete engine chosen for
``"uniform:best"`` or ``"binomial:auto"``, as after a change of budget),
successful or not, are returned apart, as ``other_records``: kept for a later
sweep that makes them, never among this sweep's ``records`` (which its report
shows).

A timing run's record is its own (the run's status and seconds under the
configuration's identity), folded into its configuration's record as one entry
of ``seconds_runs`` (``None`` where it did not succeed, its cause in
``time_failures``).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from memmaml import StepCosts, host_available_bytes

from ._engines import concrete_engine, engine_stats, predict
from ._methods import Method
from ._runner import Runner

__all__ = ["run_sweep"]

Records = dict[tuple[str, int], dict[str, Any]]

#: what names a configuration: a timing run's record is these and the run's own result
IDENTITY = ("label", "library", "engine", "steps")
#: what a run that did not succeed keeps of its cause
CAUSE = ("status", "error", "traceback", "log_tail")
#: the statuses of a record whose run never started (nothing to keep, nothing run again)
NOT_RUN = ("skipped", "unavailable")


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
    resume: dict[str, Any] | None = None,
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Measure ``engines`` (memmaml) and ``peers`` at every ``n`` of ``steps``; see the module docstring.

    Args:
        runner: runs each configuration in a fresh process.
        engines: memmaml engine texts (:func:`~memmaml.parse_engine`).
        steps: the inner-step counts ``n`` measured.
        peers: peer libraries' methods, run beside memmaml's.
        repeats: untracked timing runs per configuration at each ``n`` of ``time_steps``.
        time_steps: the ``n`` with timing runs (default: the largest of ``steps``).
        budget: the device budget ``"binomial:auto"`` chooses its slots for.
        host_budget: with ``+offload``, the host memory stored states may use.
        max_run_seconds: skip runs the probe predicts to take longer.
        host_check: on a CPU, skip runs the probe predicts to need more than
            the host's available memory.
        progress: called with a stage text and its record after every run.
        resume: an earlier sweep's ``{"probe": ..., "records": [...],
            "other_records": [...]}`` of the same workload and code. Its probe
            is reused if it succeeded; each run of it that succeeded is kept
            (a memory run when it names the concrete engine that would run
            now, time runs up to the number of repeats recorded), and every
            other run this sweep makes is run again.
        save: called with ``{"probe": ..., "records": [...], "other_records":
            [...]}`` after the probe and after every run.

    Returns:
        A dict of the probe's step costs (key ``probe``), one record per
        engine and ``n`` of this sweep (``records``; time runs are folded into
        each as ``seconds_runs``), the runs of ``resume`` this sweep does not
        make (``other_records``; see the module docstring), how many runs came
        from ``resume`` (``kept_runs``) and how many runs of ``resume`` that
        did not succeed were run again (``retried_runs``).
    """
    previous: dict[tuple[str, int, str], dict[str, Any]] = {}  # every earlier record, by its concrete engine
    for record in [*(resume or {}).get("records", []), *(resume or {}).get("other_records", [])]:
        key = (record["label"], record["steps"], record["engine"])
        if key not in previous or record.get("status") == "ok":
            previous[key] = record
    kept = retried = 0

    def report(stage: str, record: dict[str, Any] | None = None) -> None:
        if progress is not None:
            progress(stage, record)

    probe = (resume or {}).get("probe") or {}
    if probe.get("status") == "ok" and probe.get("costs"):
        kept += 1
        report("probe (kept)", probe)
    else:
        retried += bool(probe)
        probe = runner.run(Method("memmaml", "naive"), 1, track=False, measure_costs=True)
        report("probe", probe)
    costs = StepCosts(**probe["costs"]) if probe.get("status") == "ok" else None
    available = host_available_bytes() if runner.workload.device == "cpu" and host_check else None
    methods = [Method("memmaml", e) for e in engines] + list(peers)
    plans = {
        (method.label, n): _plan(
            method, n, costs, probe, (budget, host_budget), available, max_run_seconds, runner.workload.device
        )
        for n in steps
        for method in methods
    }
    records: Records = {}

    def state() -> dict[str, Any]:
        # an earlier sweep's record of a run this sweep makes (its configuration and the concrete engine chosen
        # now) stays in its records until it is kept or replaced, whatever its status (an interrupted sweep loses
        # no run and no failure's cause); the others that ran (engines or n not swept now, or another concrete
        # engine than chosen now, as after a change of budget) are kept apart, never overwritten
        pending, other = [], []
        for (label, n, engine), record in previous.items():
            plan = plans.get((label, n))
            if plan is None or plan["engine"] != engine:
                if record.get("status") not in NOT_RUN:
                    other.append(record)
            elif (label, n) not in records:
                pending.append(record)
        return {"probe": probe, "records": [*records.values(), *pending], "other_records": other}

    def store() -> None:
        if save is not None:
            save(state())

    store()
    for n in steps:
        for method in methods:
            planned = plans[method.label, n]
            earlier = previous.get((method.label, n, planned["engine"]))
            if earlier is not None and earlier.get("status") == "ok":
                records[method.label, n] = earlier
                kept += 1
                report(f"memory {method.label} n={n} (kept)", earlier)
                continue
            ran = earlier is not None and earlier.get("status") not in NOT_RUN  # and did not succeed
            if "status" in planned:  # skipped or unavailable now: an earlier failure keeps its cause
                record = earlier if ran else planned
            else:
                retried += ran
                record = _run(runner, planned, track=True)
            records[method.label, n] = record
            _compare_gradients(records, n)
            store()
            report(f"memory {method.label} n={n}", record)
    for n in sorted(set(steps))[-1:] if time_steps is None else time_steps:
        for repeat in range(repeats):
            shift = repeat % len(methods)
            for method in methods[shift:] + methods[:shift]:
                target = records.get((method.label, n))
                if target is None or target["status"] != "ok":
                    continue
                runs = target.setdefault("seconds_runs", [])
                stage = f"time {method.label} n={n} ({repeat + 1}/{repeats})"
                if len(runs) > repeat and runs[repeat] is not None:
                    kept += 1
                    report(f"{stage} (kept)", target)
                    continue
                retried += len(runs) > repeat  # a failed timing run of an earlier sweep
                identity = {key: target[key] for key in IDENTITY}
                timed = _run(runner, {**identity, "role": "time", "tracked": False}, track=False)
                _fold_time(target, repeat, timed)
                store()
                report(stage, timed)
    for record in [*records.values(), *state()["other_records"]]:  # the saved meta-gradients were compared
        if record.get("grad_path"):
            Path(record["grad_path"]).unlink(missing_ok=True)
        record["grad_path"] = None
    store()
    return {**state(), "kept_runs": kept, "retried_runs": retried}


def _plan(
    method: Method,
    n: int,
    costs: StepCosts | None,
    probe: dict[str, Any],
    budgets: tuple[int | None, int | None],
    available: int | None,
    max_run_seconds: float | None,
    device: str = "cpu",
) -> dict[str, Any]:
    """A memory run's record before it runs: the concrete engine and the probe's predictions, or a skip."""
    record: dict[str, Any] = {
        "label": method.label,
        "library": method.library,
        "engine": method.engine,
        "steps": n,
        "tracked": True,
        "role": "memory",
    }
    if method.library != "memmaml":
        stats, offload = engine_stats(method.engine, n)
        return {**record, "stats": stats, "offload": offload}
    budget, host_budget = budgets
    try:
        record["engine"] = concrete_engine(method.engine, n, costs, budget, host_budget)
    except ValueError as err:  # needs the probe's costs, or nothing of the family fits
        cause = f"{err}; the probe failed: {probe.get('error')}" if costs is None else str(err)
        return {**record, "stats": None, "offload": None, "status": "skipped", "error": cause}
    record["stats"], record["offload"] = engine_stats(record["engine"], n)
    if costs is None:
        return record
    prediction = predict(record["engine"], n, costs, prefetch=device.startswith("cuda"))
    peak, seconds = prediction.peak_bytes, prediction.seconds
    record.update(probe_predicted_peak_bytes=peak, probe_predicted_seconds=seconds)
    # the probe's graph bytes hold one step's backward transient too, so n steps' prediction
    # runs high (ResNet-18 at 224 px: 1.25 GB per step from the probe, 654 MiB fitted to the
    # measured runs): skip only what would not fit even then
    if available is not None and peak > available:
        why = f"predicted peak {peak / 2**30:.1f} GiB > the host's available {available / 2**30:.1f} GiB"
        return {**record, "status": "skipped", "error": why}
    if max_run_seconds is not None and seconds > max_run_seconds:
        return {
            **record,
            "status": "skipped",
            "error": f"predicted {seconds:.0f} s > --max-run-seconds {max_run_seconds:g}",
        }
    return record


def _run(runner: Runner, planned: dict[str, Any], *, track: bool) -> dict[str, Any]:
    """The run's result under ``planned``'s keys (a memory run's plan, or a timing run's identity)."""
    result = runner.run(Method(planned["library"], planned["engine"]), planned["steps"], track=track, save_grads=track)
    return {**result, **planned}


def _fold_time(record: dict[str, Any], repeat: int, timed: dict[str, Any]) -> None:
    """Timing run ``repeat`` into its configuration's ``record``: its seconds (``None`` unless it succeeded) at
    that place of ``seconds_runs``, the median of those that succeeded, and the cause of one that did not."""
    runs = record["seconds_runs"]
    seconds = timed.get("seconds") if timed.get("status") == "ok" else None
    if len(runs) > repeat:
        runs[repeat] = seconds  # a failed repeat of an earlier sweep, run again
    else:
        runs.append(seconds)
    failures = [f for f in record.get("time_failures", []) if f["repeat"] != repeat + 1]
    if seconds is None:
        failures.append({"repeat": repeat + 1, **{key: timed[key] for key in CAUSE if timed.get(key) is not None}})
    if failures:
        record["time_failures"] = failures
    else:
        record.pop("time_failures", None)
    succeeded = [t for t in runs if t is not None]
    if succeeded:
        record["seconds_untracked"] = statistics.median(succeeded)
    else:
        record.pop("seconds_untracked", None)


def _compare_gradients(records: Records, n: int) -> None:
    """Relative L2 distance of every meta-gradient at ``n`` to memmaml naive's, once both are saved.

    A compared meta-gradient's file is removed; naive's stays until the sweep ends.
    """
    import torch

    reference = records.get(("naive", n))
    if reference is None or not reference.get("grad_path") or not Path(reference["grad_path"]).exists():
        return
    for (label, m), record in records.items():
        path = record.get("grad_path")
        if m != n or label == "naive" or not path or not Path(path).exists():
            continue
        a, b = torch.load(path), torch.load(reference["grad_path"])
        record["grad_rel_diff"] = float((a - b).norm() / b.norm().clamp_min(1e-300))
        record["grad_bitwise_equal"] = bool(torch.equal(a, b))
        Path(path).unlink()
        record["grad_path"] = None
