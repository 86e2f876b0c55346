#!/usr/bin/env python
"""How wrong are truncated, first-order and implicit hypergradients? Measured against the exact one (issue 22).

Five parts, each writing a JSON file next to this script (or to ``--out``) after every finished unit of work,
so a stopped run keeps what it has and a rerun resumes; ``render`` turns them into ``results.md``:

    python benchmarks/hypergradients/measure.py errors       # error, time and memory of every method, T = 10 .. 10,000
    python benchmarks/hypergradients/measure.py downstream   # 30 outer steps driven by each method, 5 seeds
    python benchmarks/hypergradients/measure.py long         # the exact hypergradient through 100,000 SGD steps
    python benchmarks/hypergradients/measure.py segments     # binomial over one-step and two-step segments, paired
    python benchmarks/hypergradients/measure.py same         # naive and the same plan through 100,000 steps, paired
    python benchmarks/hypergradients/measure.py render       # results.md from the JSON files

The problems and methods are in ``problems.py`` (its docstring says what each method means on each problem).
Times are the CPU time of this process with one thread (``time.process_time``): on a shared machine the wall
clock also counts other people's jobs; both are stored. Peak memory is ``memmaml.track_memory("cpu")`` (bytes
of live tensors created inside the measured block), measured in a separate pass from the time, because the
tracker slows every operator. Run with ``OMP_NUM_THREADS=1``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import memmaml
from memmaml.bench import provenance, write_json_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import (
    DT,
    METHODS,
    SCHEDULE,
    Clock,
    applies,
    compare,
    digits_split,
    end_point,
    hypergradient,
    implicit,
    is_implicit,
    long_schedule,
    max_relative_difference,
    problems,
    record_difference,
    state_bytes,
    unrolled,
)

HERE = Path(__file__).resolve().parent
SEED = 0  # the training run / task and initialisation of the error table


def _load(path: Path, config: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The results so far, if they were made with the same configuration (a key a record lacks reads as its value
    in ``defaults``: an option added later, whose default there is what ran before); a fresh record otherwise."""
    if path.exists():
        data = json.loads(path.read_text())
        if {**(defaults or {}), **data.get("config", {})} == config:
            data["config"] = config
            return data
        print(f"{path.name}: configuration changed, starting afresh", flush=True)
    return {"config": config, "records": {}}


#: the code that runs is the code loaded when the process starts: its commit is read then, not at each save
#: (other people commit to the same checkout while a long part runs)
PROVENANCE: dict[str, Any] = {}


def _save(path: Path, data: dict[str, Any]) -> None:
    data["provenance"] = PROVENANCE
    write_json_atomic(path, data, indent=1)


def _warm_up() -> None:
    """The first unroll of a process imports torch's symbolic-shape machinery (about a second): not a method's."""
    problem = problems()["sinusoid-maml"]
    unrolled(problem.instance(2, 0), "exact")
    unrolled(problem.instance(2, 0), "naive")


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _integer(text: str, least: float) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"expected an integer of at least {least}, got {value}")
    return value


def _positive(text: str) -> int:
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _horizon(text: str, least: int = 10) -> int:
    """A T for problem (a): a positive multiple of its 10 learning-rate blocks."""
    value = _integer(text, -math.inf)
    if value < least or value % 10:
        kind = "positive" if least else "non-negative"
        raise argparse.ArgumentTypeError(f"expected a {kind} multiple of 10 (the learning-rate blocks), got {value}")
    return value


def _horizon_or_none(text: str) -> int:
    """A T for problem (a), or 0 (for --naive-steps: none)."""
    return _horizon(text, 0)


def _names(choices):
    def parse(text: str) -> list[str]:
        values = text.split(",")
        unknown = [v for v in values if v not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(choices)}")
        return values

    return parse


# --------------------------------------------------------------------------- part 1: errors
def measure_cell(problem, steps: int, *, repeats: int, naive_max: int) -> dict[str, Any]:
    """Every method on one (problem, T): gradient and peak memory in a tracked pass, CPU time in ``repeats``
    interleaved untracked passes (the minimum is kept). The implicit methods share one inner loop: their
    time is the loop's plus the solve's, their peak the larger of the loop's and (end point + solve)."""
    methods = [m for m in METHODS if applies(m, steps) and (m != "naive" or steps <= naive_max)]
    fresh = lambda: problem.instance(steps, SEED)  # identical every call: same seed, same data
    grads, peaks, info, times = {}, {}, {}, {m: [] for m in methods}
    # tracked passes: the hypergradients and the peaks
    for method in (m for m in methods if not is_implicit(m)):
        inst = fresh()
        with memmaml.track_memory("cpu") as memory:
            grads[method] = unrolled(inst, method)
        peaks[method] = memory.peak_bytes
    inst = fresh()
    with memmaml.track_memory("cpu") as memory:
        params = end_point(inst)
    loop_peak, end_bytes = memory.peak_bytes, state_bytes(params)
    for method in (m for m in methods if is_implicit(m)):
        with memmaml.track_memory("cpu") as memory:
            grads[method], info[method] = implicit(inst, method, params)
        peaks[method] = max(loop_peak, end_bytes + memory.peak_bytes)
    # untracked passes: CPU time, interleaved
    loop_times, solve_times = [], {m: [] for m in methods if is_implicit(m)}
    for _ in range(repeats):
        for method in methods:
            if is_implicit(method):
                continue
            inst = fresh()
            with Clock() as clock:
                unrolled(inst, method)
            times[method].append((clock.seconds, clock.wall_seconds))
        inst = fresh()
        with Clock() as clock:
            params = end_point(inst)
        loop_times.append((clock.seconds, clock.wall_seconds))
        for method in solve_times:
            with Clock() as clock:
                implicit(inst, method, params)
            solve_times[method].append((clock.seconds, clock.wall_seconds))
    for method, solves in solve_times.items():
        times[method] = [(min(loop_times)[0] + min(solves)[0], min(loop_times)[1] + min(solves)[1])]
    exact = grads["exact"]
    records = {}
    for method in methods:
        cpu, wall = min(times[method])
        record = {
            "time_s": cpu,
            "wall_s": wall,
            "peak_bytes": peaks[method],
            "errors": compare(grads[method], exact, inst.groups),
            **info.get(method, {}),
        }
        if problem.kind == "hyper":  # 11 numbers: keep them
            record["grads"] = {name: grads[method][name].tolist() for name in ("lr", "wd")}
        records[method] = record
    if "naive" in grads:
        difference = max_relative_difference(exact, grads["naive"])
        records["exact"]["naive_max_relative_difference"] = difference
        records["exact"]["naive_bitwise"] = all(torch.equal(exact[n], grads["naive"][n]) for n in exact)
    records["_inner_loop"] = {"time_s": min(loop_times)[0], "peak_bytes": loop_peak, "end_point_bytes": end_bytes}
    return records


def run_errors(args: argparse.Namespace) -> None:
    config = {
        "problems": args.problems,
        "horizons": args.horizons,
        "repeats": args.repeats,
        "naive_max": args.naive_max,
        "schedule": SCHEDULE,
        "dtype": str(DT),
        "seed": SEED,
    }
    path = Path(args.out) / "errors.json"
    data = _load(path, config)
    catalogue = problems()
    _warm_up()
    for steps in args.horizons:
        for name in args.problems:
            key = f"{name}/T={steps}"
            if key in data["records"]:
                continue
            start = time.perf_counter()
            repeats = args.repeats if steps <= 1000 else 1
            data["records"][key] = {
                "problem": name,
                "steps": steps,
                "repeats": repeats,
                "methods": measure_cell(catalogue[name], steps, repeats=repeats, naive_max=args.naive_max),
            }
            data["records"][key]["cell_wall_s"] = time.perf_counter() - start
            _save(path, data)
            exact = data["records"][key]["methods"]["exact"]
            print(
                f"{key}: {time.perf_counter() - start:.0f} s; exact {exact['time_s']:.2f} s CPU, "
                f"{memmaml.format_bytes(exact['peak_bytes'])}",
                flush=True,
            )
    render(Path(args.out))


# --------------------------------------------------------------------------- part 2: downstream
DOWNSTREAM = {
    # outer optimiser and evaluation of each problem's downstream loop
    "digits-lr-wd": {"outer_lr": 0.1, "lr0": 0.1, "wd0": 1e-3, "lr_cap": 1.0, "eval_runs": 3},
    "digits-maml": {"outer_lr": 0.01, "meta_batch": 2, "eval_tasks": 20},
    "sinusoid-maml": {"outer_lr": 0.01, "meta_batch": 2, "eval_tasks": 20},
}
TRAIN_BASE, HELD_OUT_BASE = 1_000, 50_000
# the unrolled methods keep every step's graph here: at T = 100 it fits, runs about 2.5x faster than binomial:20,
# and gives the same hypergradient (errors.json: bitwise for MAML, to 1e-15 relative for problem (a))
DOWNSTREAM_ENGINE = None  # seeds of the outer loops' runs and of the held-out evaluation


def _finite(grads: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads.values())


def downstream_hyper(problem, method: str, seed: int, steps: int, outer_steps: int) -> dict[str, Any]:
    """Learn the 10 log learning rates and the log weight decay with Adam, each outer step's hypergradient by
    ``method`` on a fresh training run; then the test loss of fresh runs with the learned values."""
    setting = DOWNSTREAM[problem.name]
    log_lr = torch.full((problem.blocks,), math.log(setting["lr0"]), dtype=DT, requires_grad=True)
    log_wd = torch.tensor(math.log(setting["wd0"]), dtype=DT, requires_grad=True)
    optimizer = torch.optim.Adam([log_lr, log_wd], lr=setting["outer_lr"])
    losses, skipped = [], 0
    for step in range(outer_steps):
        inst = problem.instance(steps, TRAIN_BASE + 1000 * seed + step, lr=log_lr.exp(), wd=log_wd.exp())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grads = hypergradient(inst, method, schedule=DOWNSTREAM_ENGINE)
        if _finite(grads):
            optimizer.zero_grad()
            torch.autograd.backward([inst.wrt["lr"], inst.wrt["wd"]], [grads["lr"], grads["wd"]])
            optimizer.step()
        else:
            skipped += 1
        with torch.no_grad():
            log_lr.clamp_(max=math.log(setting["lr_cap"]))
            log_wd.clamp_(min=math.log(1e-6), max=0.0)
            losses.append(hyper_loss(problem, steps, log_lr.exp(), log_wd.exp(), TRAIN_BASE + 1000 * seed + step))
    final = [
        hyper_loss(problem, steps, log_lr.exp(), log_wd.exp(), HELD_OUT_BASE + 100 * seed + r, split="test")
        for r in range(setting["eval_runs"])
    ]
    return {
        "held_out_loss": sum(final) / len(final),
        "outer_losses": losses,
        "skipped_steps": skipped,
        "lr": log_lr.exp().tolist(),
        "wd": log_wd.exp().item(),
    }


def hyper_loss(problem, steps: int, lr, wd, seed: int, split: str = "val") -> float:
    """The ``split`` loss of a network trained by SGD with these hyperparameters (training run ``seed``)."""
    with torch.no_grad():
        inst = problem.instance(steps, seed, lr=lr.detach(), wd=wd.detach())
        result = memmaml.MAML(inst.model, inst.loss_fn, inst.optimizer)(inst.batches, loss_kwargs=inst.loss_kwargs)
        inputs, labels = digits_split()[split]
        return torch.nn.functional.cross_entropy(result.model(inputs), labels).item()


def downstream_maml(problem, method: str, seed: int, steps: int, outer_steps: int) -> dict[str, Any]:
    """Meta-train the initialisation with Adam, each task's meta-gradient by ``method``; then the mean query loss
    after ``steps`` inner steps on held-out tasks (test classes for digits)."""
    setting = DOWNSTREAM[problem.name]
    model = problem.fresh_model(TRAIN_BASE + seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=setting["outer_lr"])
    losses, skipped = [], 0
    for step in range(outer_steps):
        optimizer.zero_grad()
        total, ok = {n: torch.zeros_like(p) for n, p in model.named_parameters()}, True
        for t in range(setting["meta_batch"]):
            inst = problem.instance(steps, TRAIN_BASE + 1000 * seed + setting["meta_batch"] * step + t, model=model)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                grads = hypergradient(inst, method, schedule=DOWNSTREAM_ENGINE)
            ok = ok and _finite(grads)
            total = {n: total[n] + grads[n] / setting["meta_batch"] for n in total}
        if ok:
            for name, p in model.named_parameters():
                p.grad = total[name]
            optimizer.step()
        else:
            skipped += 1
        losses.append(maml_loss(problem, model, steps, [TRAIN_BASE + 1000 * seed + setting["meta_batch"] * step]))
    held_out = maml_loss(problem, model, steps, [HELD_OUT_BASE + i for i in range(setting["eval_tasks"])], test=True)
    return {"held_out_loss": held_out, "outer_losses": losses, "skipped_steps": skipped}


def maml_loss(problem, model, steps: int, seeds: list[int], test: bool = False) -> float:
    """Mean query loss after ``steps`` inner steps from ``model``'s parameters, over tasks ``seeds``."""
    source = problem.source
    if test and hasattr(source, "split"):
        from memmaml.tasks import Digits

        source = Digits(5, 5, 15, split="test", flatten=True, dtype=DT)
    values = []
    for seed in seeds:
        task = source.sample(seed=seed)
        with torch.no_grad():
            adapted = memmaml.MAML(model, problem.loss_fn, memmaml.SGD(problem.inner_lr))([task.support] * steps)
            values.append(problem.loss_fn(adapted.model, task.query).item())
    return sum(values) / len(values)


def run_downstream(args: argparse.Namespace) -> None:
    methods = [m for m in METHODS if m != "naive" and applies(m, args.steps)]
    config = {
        "problems": args.problems,
        "steps": args.steps,
        "outer_steps": args.outer_steps,
        "seeds": args.seeds,
        "methods": methods,
        "settings": {name: DOWNSTREAM[name] for name in args.problems},
        "schedule": DOWNSTREAM_ENGINE,
        "dtype": str(DT),
    }
    path = Path(args.out) / "downstream.json"
    data = _load(path, config)
    catalogue = problems()
    _warm_up()
    for name in args.problems:
        problem = catalogue[name]
        key = f"{name}/baseline"
        if key not in data["records"]:  # the starting point, evaluated like the learned ones
            data["records"][key] = {"problem": name, "method": "none (initial values)", "seeds": {}}
            for seed in range(args.seeds):
                data["records"][key]["seeds"][str(seed)] = _baseline(problem, seed, args.steps)
            _save(path, data)
        for seed in range(args.seeds):
            for method in methods:
                key = f"{name}/{method}"
                record = data["records"].setdefault(key, {"problem": name, "method": method, "seeds": {}})
                if str(seed) in record["seeds"]:
                    continue
                run = downstream_hyper if problem.kind == "hyper" else downstream_maml
                with Clock() as clock:
                    record["seeds"][str(seed)] = run(problem, method, seed, args.steps, args.outer_steps)
                record["seeds"][str(seed)]["time_s"] = clock.seconds
                _save(path, data)
                print(
                    f"{key} seed {seed}: held-out loss {record['seeds'][str(seed)]['held_out_loss']:.4f} "
                    f"({clock.seconds:.0f} s CPU)",
                    flush=True,
                )
    render(Path(args.out))


def _baseline(problem, seed: int, steps: int) -> dict[str, Any]:
    if problem.kind == "hyper":
        setting = DOWNSTREAM[problem.name]
        lr = torch.full((problem.blocks,), setting["lr0"], dtype=DT)
        wd = torch.tensor(setting["wd0"], dtype=DT)
        final = [
            hyper_loss(problem, steps, lr, wd, HELD_OUT_BASE + 100 * seed + r, split="test")
            for r in range(setting["eval_runs"])
        ]
        return {"held_out_loss": sum(final) / len(final)}
    model = problem.fresh_model(TRAIN_BASE + seed)
    held_out = [HELD_OUT_BASE + i for i in range(DOWNSTREAM[problem.name]["eval_tasks"])]
    return {"held_out_loss": maml_loss(problem, model, steps, held_out, test=True)}


# --------------------------------------------------------------------------- part 3: 100,000 steps
def time_paired(
    partial: dict[str, Any],
    repeats: int,
    time_naive: Callable[[], dict[str, Any]] | None,
    run_plan: Callable[[], dict[str, Any]],
    keep: Callable[[], None],
) -> list[dict[str, Any]]:
    """``repeats`` runs of ``run_plan`` with ``time_naive`` timed before each and after the last (none when it is
    ``None``), going on from what ``partial`` already holds; ``keep()`` after each finished run and each naive
    timing. The runs go to ``partial["runs"]``; ``time_naive`` returns its times (a list of runs' times at each T)
    by the name of the list in ``partial`` each is appended to, and ``partial["brackets"]`` counts its calls.
    Returns the runs."""

    def naive() -> None:
        if time_naive is not None and partial.get("brackets", 0) == len(partial["runs"]):
            for key, seconds in time_naive().items():
                partial.setdefault(key, []).append(seconds)
            partial["brackets"] = len(partial["runs"]) + 1
            keep()

    while len(partial["runs"]) < repeats:
        naive()
        partial["runs"].append(run_plan())
        keep()
        print(f"long run {len(partial['runs'])} of {repeats}: {partial['runs'][-1]['time_s']:.0f} s CPU", flush=True)
    naive()
    return partial["runs"]


def naive_count(seconds: float, run_seconds: float) -> int:
    """How many naive runs of about ``run_seconds`` each make ``seconds`` (at least one; one when ``seconds`` is 0).

    NOTE [ Naive runs around the long runs ]
        A run at T = 100,000 takes minutes; naive at T = 10,000 seconds, at 1,000 one or two. On a shared machine
        whose speed changes from minute to minute (naive's time per step at T = 10,000 ranged over 1.18-2.08 ms
        between the runs of one measurement), one naive run samples a moment where a long run's time per step is its
        CPU time over minutes. So before, between and after the long runs naive runs about ``--naive-seconds`` at
        each T, and the report pairs each long run with all the naive runs just before and after it: their CPU time
        over their steps, like for like with the long run's, from more of the minutes around it. The number of runs
        is fixed for each T before the long runs start, from the fastest interleaved naive run at that T (and kept
        when a stopped run resumes): running until the times add up to ``--naive-seconds`` would end a timing more
        often on a slow run than on a fast one, and so make naive look slower than it is. The count rounds up, and
        naive may run slower around the long runs than in its fastest interleaved run, so a timing usually takes
        longer than ``--naive-seconds``. Each timing runs T = ``--reference-steps`` first, so each T has one timing
        next to a long run and one further away.
    """
    return max(1, math.ceil(seconds / run_seconds)) if seconds else 1


def naive_for(steps: int, runs: int) -> list[float]:
    """The CPU times of ``runs`` naive runs at ``steps``, one after another."""
    return [hypergradient_with(steps, None, False)["time_s"] for _ in range(runs)]


def hypergradient_with(steps: int, engine: str | None, track: bool) -> dict[str, Any]:
    """Problem (a)'s hypergradient through ``steps`` steps with ``engine``: its CPU and wall time, its peak (when
    ``track``) and the hypergradient."""
    inst = problems()["digits-lr-wd"].instance(steps, SEED)
    maml = memmaml.MAML(inst.model, inst.loss_fn, inst.optimizer, schedule=engine, preserve_rng_state=False)
    tracker = memmaml.track_memory("cpu") if track else contextlib.nullcontext()
    with tracker as memory, Clock() as clock:
        loss = inst.outer(maml(inst.batches, loss_kwargs=inst.loss_kwargs).model)
        grads = torch.autograd.grad(loss, [inst.wrt["lr"], inst.wrt["wd"]])
    return {
        "time_s": clock.seconds,
        "wall_s": clock.wall_seconds,
        "peak_bytes": memory.peak_bytes if track else None,
        "lr": grads[0].tolist(),
        "wd": grads[1].item(),
    }


def run_long(args: argparse.Namespace) -> None:
    """Problem (a) through ``--steps`` SGD steps with ``binomial:--slots:--segment`` (timed ``--long-repeats``
    times, naive at ``--reference-steps`` and at ``--naive-steps`` timed before, between and after: a count of runs
    at each T making about ``--naive-seconds``); naive's per-step time at ``--reference-steps`` and at
    ``--naive-steps`` (each interleaved with the same plan there, and with the plan of one-step segments when
    ``--segment`` is more), and the peaks of the plan at ``--reference-steps`` and at ``--steps``."""
    schedule = long_schedule(args.slots, args.segment)
    single = long_schedule(args.slots, 1)
    config = {
        "steps": args.steps,
        "slots": args.slots,
        "segment": args.segment,
        "reference_steps": args.reference_steps,
        "dtype": str(DT),
    }
    path = Path(args.out) / "long_run.json"
    data = _load(path, config, {"segment": 1})  # before --segment, every plan reversed one step at a time
    records = data["records"]
    _warm_up()

    def interleaved(steps, track):
        """Naive and the plan at ``steps`` (and the plan of one-step segments, when it is another), timed in
        ``--repeats`` interleaved passes (load from other jobs hits all alike; the fastest is kept), with their
        peaks from one tracked pass each when ``track``."""
        engines = {"naive": None, schedule: schedule, single: single}
        runs = {name: [] for name in engines}
        names = list(engines)
        for r in range(args.repeats):  # each pass starts with another engine: none always runs right after naive
            for name in names[r % len(names) :] + names[: r % len(names)]:
                runs[name].append(hypergradient_with(steps, engines[name], False))
        reference = {}
        for name, engine in engines.items():
            best = min(runs[name], key=lambda r: r["time_s"])
            peak = hypergradient_with(steps, engine, True)["peak_bytes"] if track else None
            reference[name] = {**best, "peak_bytes": peak, "all_times_s": [r["time_s"] for r in runs[name]]}
        reference["max_relative_difference"] = record_difference(reference[schedule], reference["naive"])
        print(
            f"T = {steps}: "
            + ", ".join(f"{name} {reference[name]['time_s'] / steps * 1e3:.2f} ms/step" for name in engines),
            flush=True,
        )
        return reference

    if "reference" not in records:
        records["reference"] = interleaved(args.reference_steps, True)
        _save(path, data)
    if args.naive_steps and records.get("reference_long", {}).get("steps") != args.naive_steps:
        # naive's time per step at the longest T timed: its graph grows with T, and so may its time per step
        # (its T is not part of the configuration: another --naive-steps redoes this part alone)
        records["reference_long"] = {"steps": args.naive_steps, **interleaved(args.naive_steps, False)}
        _save(path, data)
    long_time = records.get("long_time", {})
    if (
        long_time.get("naive_steps") != args.naive_steps
        or long_time.get("naive_seconds", 0) != args.naive_seconds  # before the option: one naive run each time
        or len(long_time.get("all_times_s", [])) != args.long_repeats
        or "reference_naive_times_s" not in long_time
    ):
        # the plan at --steps, --long-repeats times, with naive at --reference-steps and at --naive-steps timed
        # before, between and after (a shared machine's load changes over minutes: the report pairs each run with
        # the naive runs around it), about --naive-seconds at each T each time (NOTE [ Naive runs around the long
        # runs ]); each finished run is saved at once, and a rerun goes on from them
        partial = records.get("long_time_partial")
        commit = PROVENANCE.get("memmaml_commit")
        counts = {"reference_naive_times_s": naive_count(args.naive_seconds, records["reference"]["naive"]["time_s"])}
        if args.naive_steps:
            counts["naive_times_s"] = naive_count(args.naive_seconds, records["reference_long"]["naive"]["time_s"])
        if (
            not partial
            or partial["naive_steps"] != args.naive_steps
            or partial.get("naive_seconds", 0) != args.naive_seconds  # before the option: one naive run each time
            or partial.get("commit") != commit
            or "brackets" not in partial  # from a version that timed naive at --naive-steps only
            or len(partial["runs"]) > args.long_repeats
        ):
            partial = {
                "naive_steps": args.naive_steps,
                "naive_seconds": args.naive_seconds,
                "commit": commit,
                "runs": [],
                "brackets": 0,
            }
        elif partial["runs"] or partial["brackets"]:
            print(f"{args.steps} steps: going on from {len(partial['runs'])} finished run(s)", flush=True)

        def keep() -> None:
            records["long_time_partial"] = partial
            _save(path, data)

        counts = partial.setdefault("naive_counts", counts)  # a resumed run keeps the counts it started with
        lengths = {"reference_naive_times_s": args.reference_steps, "naive_times_s": args.naive_steps}

        def time_naive() -> dict[str, list[float]]:
            return {key: naive_for(lengths[key], count) for key, count in counts.items()}

        runs = time_paired(
            partial, args.long_repeats, time_naive, lambda: hypergradient_with(args.steps, schedule, False), keep
        )
        records["long_time"] = {
            **min(runs, key=lambda r: r["time_s"]),
            "all_times_s": [r["time_s"] for r in runs],
            "naive_steps": args.naive_steps,
            "naive_seconds": args.naive_seconds,
            "naive_counts": counts,
            "naive_times_s": partial.get("naive_times_s", []),
            "reference_naive_times_s": partial["reference_naive_times_s"],
        }
        _save(path, data)
    if records.pop("long_time_partial", None) is not None:  # done, or left from other flags: not to be resumed
        _save(path, data)
    if "long_memory" not in records:
        records["long_memory"] = hypergradient_with(args.steps, schedule, True)
        _save(path, data)
        print(f"{args.steps} steps, tracked: {memmaml.format_bytes(records['long_memory']['peak_bytes'])}", flush=True)
    plan = memmaml.parse_schedule(schedule)
    records["plan"] = {
        "schedule": schedule,
        # counted on the plan the engine ran, not taken from the closed form the optima below come from
        "stats": memmaml.check_plan(plan.plan(args.steps))._asdict(),
        # the fewest evaluations of any plan with --slots stored states reversing one step at a time, and (when
        # --segment divides --steps) reversing --segment steps at a time
        "revolve_optimum_evaluations": memmaml.binomial_evaluations(args.steps, args.slots),
        "segment_optimum_evaluations": (
            args.segment * memmaml.binomial_evaluations(args.steps // args.segment, args.slots)
            if args.steps % args.segment == 0
            else None
        ),
        "reference_stats": plan.stats(args.reference_steps)._asdict(),
    }
    _save(path, data)
    render(Path(args.out))


# --------------------------------------------------------------------------- part 4: segments
def paired_rounds(
    path: Path, data: dict[str, Any], engines: dict[str, str | None], steps: int, rounds: int
) -> list[dict[str, Any]]:
    """``rounds`` rounds of one run of each of ``engines`` (name: schedule, ``None`` for naive) at ``steps``, the
    order swapped every round (what runs first in a round meets another state of the machine than what runs
    second), going on from the rounds ``data["records"]["rounds"]`` holds; each round is saved to ``path`` at
    once, so a rerun goes on from them (:func:`resumable`). ``rounds_asked`` records the most rounds asked for, so
    a report can tell a finished record from a stopped one."""
    names = list(engines)
    records = data["records"]
    records["rounds_asked"] = max(rounds, records.get("rounds_asked", 0))
    done = records.setdefault("rounds", [])
    if len(done) < rounds:
        _warm_up()
    while len(done) < rounds:
        order = names if len(done) % 2 == 0 else names[::-1]
        done.append({"order": order, **{name: hypergradient_with(steps, engines[name], False) for name in order}})
        _save(path, data)
        times = ", ".join(f"{name} {done[-1][name]['time_s'] / steps * 1e3:.2f} ms/step" for name in names)
        print(f"round {len(done)} of {rounds}: {times}", flush=True)
    return done


def resumable(path: Path, data: dict[str, Any], work_left: bool) -> dict[str, Any]:
    """``data`` to go on from, or a fresh record when work is left and what there is was made at another commit: the
    file's provenance names one commit for all it holds."""
    commit = PROVENANCE.get("memmaml_commit")
    if work_left and data["records"] and data["records"].get("commit") != commit:
        print(f"{path.name}: made at another commit, starting afresh", flush=True)
        data["records"].clear()
    if work_left:
        data["records"]["commit"] = commit
    return data


def run_segments(args: argparse.Namespace) -> None:
    """``binomial:--slots`` reversing one step and ``--segment`` steps at a time, at ``--steps``: ``--rounds``
    paired rounds (:func:`paired_rounds`)."""
    engines = [long_schedule(args.slots, 1), long_schedule(args.slots, args.segment)]
    config = {"steps": args.steps, "slots": args.slots, "segment": args.segment, "dtype": str(DT)}
    path = Path(args.out) / "segments.json"
    data = _load(path, config)
    data = resumable(path, data, len(data["records"].get("rounds", [])) < args.rounds)
    paired_rounds(path, data, {e: e for e in engines}, args.steps, args.rounds)
    render(Path(args.out))


# --------------------------------------------------------------------------- part 5: naive at the same T
#: resident memory per byte of naive's peak of live tensors, with a margin: measured on this benchmark's machine, the
#: process's peak resident memory grew by 160 MiB per 1,000 steps from T = 10,000 to 30,000, against 99 MiB of live
#: tensors (1.6x: the allocator's and autograd's bookkeeping of many small tensors)
RESIDENT_PER_TENSOR_BYTE = 1.8


def available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """The memory the kernel says new work can use (``MemAvailable``), or ``None`` where there is no /proc/meminfo."""
    try:
        lines = meminfo.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def check_naive_fits(steps: int, probe: int = 1000) -> None:
    """Refuse, before the first long run, a T whose naive run would not fit: naive's peak at ``probe`` steps
    (tracked), scaled to ``steps`` and by :data:`RESIDENT_PER_TENSOR_BYTE`, against :func:`available_bytes`."""
    probe = min(probe, steps)
    per_step = hypergradient_with(probe, None, True)["peak_bytes"] / probe
    tensors = per_step * steps
    needed, available = tensors * RESIDENT_PER_TENSOR_BYTE, available_bytes()
    if available is not None and needed > available:
        raise SystemExit(
            f"measure.py same: naive at T = {steps:,} would hold about {memmaml.format_bytes(tensors)} of tensors "
            f"(predicted from its peak at T = {probe:,}), which takes up to {memmaml.format_bytes(needed)} of "
            "resident memory besides what this process holds already, but "
            f"{memmaml.format_bytes(available)} is available; pass a smaller --steps or free memory"
        )
    print(f"naive at T = {steps:,}: about {memmaml.format_bytes(tensors)} of tensors predicted", flush=True)


def run_same(args: argparse.Namespace) -> None:
    """Naive and ``binomial:--slots:--segment`` through the same ``--steps``, where naive fits: one naive warm-up
    run (timed, not paired), then ``--rounds`` paired rounds (:func:`paired_rounds`), then naive's peak there from
    one tracked run. Refused before any long run when naive would not fit (:func:`check_naive_fits`)."""
    schedule = long_schedule(args.slots, args.segment)
    config = {"steps": args.steps, "slots": args.slots, "segment": args.segment, "dtype": str(DT)}
    path = Path(args.out) / "same_steps.json"
    data = _load(path, config)
    work_left = len(data["records"].get("rounds", [])) < args.rounds or "naive_memory" not in data["records"]
    records = resumable(path, data, work_left)["records"]
    if work_left:
        check_naive_fits(args.steps)
    if len(records.get("rounds", [])) < args.rounds:
        # NOTE: a process's first naive run at T grows its heap to naive's peak, and the page faults count in its
        # CPU time (in the first measurement, round 1's naive run took 1.23 ms/step, rounds 2 and 3's 1.03-1.04):
        # one naive warm-up run first, in every process that has rounds to run, its time kept but not paired
        records.setdefault("naive_warm_up_s", []).append(hypergradient_with(args.steps, None, False)["time_s"])
        _save(path, data)
        print(f"naive warm-up at T = {args.steps:,}: {records['naive_warm_up_s'][-1]:.0f} s CPU", flush=True)
    paired_rounds(path, data, {"naive": None, schedule: schedule}, args.steps, args.rounds)
    if "naive_memory" not in records:
        records["naive_memory"] = hypergradient_with(args.steps, None, True)
        import resource  # (Unix only)

        # the process's peak resident memory (Linux reports kilobytes): what RESIDENT_PER_TENSOR_BYTE is judged by
        records["resident_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        _save(path, data)
        peak = memmaml.format_bytes(records["naive_memory"]["peak_bytes"])
        print(f"naive at T = {args.steps:,}, tracked: {peak}", flush=True)
    render(Path(args.out))


# --------------------------------------------------------------------------- results.md
def render(out: Path) -> None:
    from report import write_report

    write_report(out)


def main(argv: list[str] | None = None) -> None:
    def subparser(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, formatter_class=formatter)

    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=formatter)
    parser.add_argument("--out", default=str(HERE), help="folder of the JSON files and results.md")
    sub = parser.add_subparsers(dest="part", required=True)
    names = list(problems())
    errors = subparser("errors", "error, time and memory of every method against the exact hypergradient")
    errors.add_argument("--problems", type=_names(names), default=",".join(names), help="comma-separated problems")
    errors.add_argument("--horizons", type=_ints, default="10,100,1000,10000", help="comma-separated T")
    errors.add_argument(
        "--repeats", type=_positive, default=3, help="interleaved timing passes for T <= 1,000 (1 above)"
    )
    errors.add_argument("--naive-max", type=_positive, default=1000, help="largest T checked against naive")
    downstream = subparser("downstream", "outer loops driven by each method")
    downstream.add_argument("--problems", type=_names(names), default=",".join(names), help="comma-separated problems")
    downstream.add_argument("--steps", type=_positive, default=100, help="inner steps T")
    downstream.add_argument("--outer-steps", type=_positive, default=30, help="outer steps per run")
    downstream.add_argument("--seeds", type=_positive, default=5, help="runs per method")
    long = subparser("long", "the exact hypergradient of problem (a) through 100,000 steps")
    long.add_argument("--steps", type=_horizon, default=100_000, help="T of the long run")
    long.add_argument(
        "--slots",
        type=_positive,
        default=447,
        help="binomial slots (with --segment 1, 446 or more replay each of 100,000 steps at most once; with 2, 315)",
    )
    long.add_argument(
        "--segment",
        type=_positive,
        default=2,
        help="steps per reversed segment (long_run.json was measured with 2; 1 reverses one step at a time)",
    )
    long.add_argument("--reference-steps", type=_horizon, default=1000, help="T of the memory reference (and a timing)")
    long.add_argument(
        "--naive-steps", type=_horizon_or_none, default=10_000, help="a longer T naive is timed at (0: none)"
    )
    long.add_argument(
        "--repeats", type=_positive, default=3, help="interleaved timing passes at --reference-steps and --naive-steps"
    )
    long.add_argument(
        "--long-repeats", type=_positive, default=5, help="timed runs at --steps (the report gives the median ratio)"
    )
    long.add_argument(
        "--naive-seconds",
        type=_non_negative,
        default=60,
        help="about this many CPU seconds of naive runs at each T before, between and after the runs at --steps "
        "(0: one run)",
    )
    segments = subparser("segments", "problem (a) with one-step and multi-step binomial segments, paired runs")
    segments.add_argument("--steps", type=_horizon, default=10_000, help="T")
    segments.add_argument("--slots", type=_positive, default=447, help="binomial slots")
    segments.add_argument("--segment", type=_positive, default=2, help="steps per segment compared with one")
    segments.add_argument("--rounds", type=_positive, default=8, help="rounds of one run each, the order swapped")
    same = subparser(
        "same", "naive and the long run's plan through the same T, where naive fits (9.7 GiB at T = 100,000 here)"
    )
    same.add_argument("--steps", type=_horizon, default=100_000, help="T")
    same.add_argument("--slots", type=_positive, default=447, help="binomial slots")
    same.add_argument("--segment", type=_positive, default=2, help="steps per reversed segment")
    same.add_argument("--rounds", type=_positive, default=5, help="rounds of one run each, the order swapped")
    subparser("render", "results.md from the JSON files")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"argument --out: {args.out} exists and is not a folder")
    # problem (a) has 10 learning-rate blocks: its T must be a multiple of 10 (checked before any work)
    if args.part in ("errors", "downstream") and "digits-lr-wd" in args.problems:
        bad = [t for t in (args.horizons if args.part == "errors" else [args.steps]) if t % 10]
        if bad:
            flag = "--horizons" if args.part == "errors" else "--steps"
            sub.choices[args.part].error(
                f"argument {flag}: problem digits-lr-wd needs multiples of its 10 learning-rate blocks, got {bad}"
            )
    if args.part == "segments" and args.segment < 2:
        sub.choices["segments"].error(
            f"argument --segment: compared with one-step segments, needs 2 or more, got {args.segment}"
        )
    PROVENANCE.update(provenance())
    torch.set_num_threads(1)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    runners = {
        "errors": run_errors,
        "downstream": run_downstream,
        "long": run_long,
        "segments": run_segments,
        "same": run_same,
    }
    runners.get(args.part, lambda a: render(Path(a.out)))(args)


if __name__ == "__main__":
    main()
