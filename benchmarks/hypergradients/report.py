"""``results.md`` and ``errors.png`` from the JSON files that ``measure.py`` writes (any of them may be missing)."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

from problems import APPROXIMATIONS, METHODS, long_schedule, record_difference

from memmaml import format_bytes

LABELS = {
    "exact": "exact (binomial:20)",
    "naive": "naive (schedule=None)",
    "first-order": "first-order",
}
GROUP_TITLES = {"lr": "10 learning rates", "wd": "weight decay", "init": "initialisation"}


def label(method: str) -> str:
    if method in LABELS:
        return LABELS[method]
    kind, number = method.split(":")
    return {"truncated": f"truncated K={number}", "cg": f"CG, {number} HVPs", "neumann": f"Neumann, {number} HVPs"}[
        kind
    ]


def _read(out: Path, name: str) -> dict[str, Any] | None:
    path = out / name
    return json.loads(path.read_text()) if path.exists() else None


def _provenance_line(data: dict[str, Any]) -> str:
    p = data.get("provenance", {})
    dirty = " (with uncommitted changes)" if p.get("memmaml_dirty") else ""
    return (
        f"memmaml `{p.get('memmaml_commit')}`{dirty}, torch {p.get('torch')}, Python {p.get('python')}, "
        f"{p.get('cpu_count')} CPUs ({p.get('device_name')}); command `{p.get('command')}`"
        + (f". {p['provenance_note']}" if p.get("provenance_note") else "")
    )


def _fmt_error(errors: dict[str, Any], group: str) -> str:
    e = errors[group]
    if group == "wd":  # a scalar: the cosine is its sign
        return f"{e['relative_error']:.2g} ({'same sign' if e['cosine'] > 0 else 'wrong sign'})"
    return f"{e['cosine']:+.3f} / {e['relative_error']:.2g}"


def error_tables(data: dict[str, Any]) -> list[str]:
    lines = []
    by_problem: dict[str, list[dict[str, Any]]] = {}
    for record in data["records"].values():
        by_problem.setdefault(record["problem"], []).append(record)
    for problem, records in by_problem.items():
        records.sort(key=lambda r: r["steps"])
        groups = list(next(iter(records))["methods"]["exact"]["errors"])
        for group in groups:
            what = "relative error (sign)" if group == "wd" else "cosine similarity / relative error"
            lines += [f"### {problem}: {GROUP_TITLES[group]} — {what}", ""]
            horizons = [r["steps"] for r in records]
            lines.append("| method | " + " | ".join(f"T = {t:,}" for t in horizons) + " |")
            lines.append("|---|" + "---:|" * len(horizons))
            for method in [m for m in APPROXIMATIONS if any(m in r["methods"] for r in records)]:
                cells = [
                    _fmt_error(r["methods"][method]["errors"], group) if method in r["methods"] else "—"
                    for r in records
                ]
                lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
            lines.append("")
        lines += [f"### {problem}: CPU time and peak memory of one hypergradient", ""]
        horizons = [r["steps"] for r in records]
        lines.append("| method | " + " | ".join(f"T = {t:,}" for t in horizons) + " |")
        lines.append("|---|" + "---:|" * len(horizons))
        for method in [m for m in METHODS if any(m in r["methods"] for r in records)]:
            cells = []
            for r in records:
                m = r["methods"].get(method)
                cells.append("—" if m is None else f"{m['time_s']:.3g} s, {format_bytes(m['peak_bytes'])}")
            lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
        lines.append("")
        implicit = [m for m in records[-1]["methods"] if m.startswith(("cg:", "neumann:"))]
        if implicit:
            lines += [
                f"### {problem}: the implicit methods' assumptions (gradient norm of the inner objective at the "
                "end point; relative residual of the linear solve; Hessian-vector products spent)",
                "",
                "| method | " + " | ".join(f"T = {t:,}" for t in horizons) + " |",
                "|---|" + "---:|" * len(horizons),
            ]
            for method in implicit:
                cells = []
                for r in records:
                    m = r["methods"].get(method)
                    cells.append("—" if m is None else f"{m['inner_grad_norm']:.2g}; {m['residual']:.2g}; {m['hvps']}")
                lines.append(f"| {label(method)} | " + " | ".join(cells) + " |")
            lines.append("")
        exacts = [(r["steps"], r["methods"]["exact"]) for r in records]
        checks = [
            (t, e["naive_max_relative_difference"], e["naive_bitwise"])
            for t, e in exacts
            if "naive_max_relative_difference" in e
        ]
        if checks:
            lines.append(
                f"Exact (binomial:20) against naive, {problem}: "
                + "; ".join(
                    f"T = {t:,}: {'bitwise equal' if bitwise else f'max relative difference {d:.1e}'}"
                    for t, d, bitwise in checks
                )
                + ".\n"
            )
    return lines


def downstream_table(data: dict[str, Any]) -> list[str]:
    config = data["config"]
    lines = [
        f"Each method drives {config['outer_steps']} outer steps of Adam at T = {config['steps']}, from the same "
        f"start, for {config['seeds']} seeds (each seed: its own training runs or tasks); the held-out loss is "
        "measured after the last outer step on data and runs the outer loop never saw (problem a: test-set loss of "
        "fresh training runs with the learned hyperparameters; MAML: query loss after T inner steps on held-out tasks, "
        "test digits 5-9 for digits). Mean ± standard deviation over seeds. The outer loss is what each outer "
        "step's run or tasks scored after the update (validation loss; query loss of the training tasks), mean "
        "over the last 5 outer steps and the seeds. The paired difference is the method's held-out loss minus the "
        "exact method's on the same seed (same initialisation, runs and tasks), mean ± 1.96 standard errors.",
        "",
    ]
    by_problem: dict[str, dict[str, Any]] = {}
    for record in data["records"].values():
        by_problem.setdefault(record["problem"], {})[record["method"]] = record
    for problem, methods in by_problem.items():
        lines += [f"### {problem}", ""]
        lines.append(
            "| driven by | held-out loss | paired difference from exact | outer loss, last 5 steps | seeds "
            "| CPU time per seed |"
        )
        lines.append("|---|---:|---:|---:|---:|---:|")
        exact = methods.get("exact", {}).get("seeds", {})
        for method, record in methods.items():
            seeds = list(record["seeds"].values())
            values = [s["held_out_loss"] for s in seeds]
            times = [s["time_s"] for s in seeds if "time_s" in s]
            late = [statistics.mean(s["outer_losses"][-5:]) for s in seeds if "outer_losses" in s]
            spread = statistics.stdev(values) if len(values) > 1 else math.nan
            name = method if method.startswith("none") else "exact" if method == "exact" else label(method)
            time_text = f"{statistics.mean(times):.0f} s" if times else "—"
            late_text = f"{statistics.mean(late):.4f}" if late else "—"
            pairs = [
                s["held_out_loss"] - exact[seed]["held_out_loss"]
                for seed, s in record["seeds"].items()
                if seed in exact
            ]
            if method != "exact" and len(pairs) > 1:
                half = 1.96 * statistics.stdev(pairs) / math.sqrt(len(pairs))
                paired = f"{statistics.mean(pairs):+.4f} ± {half:.4f}"
            else:
                paired = "—"
            lines.append(
                f"| {name} | {statistics.mean(values):.4f} ± {spread:.4f} | {paired} | {late_text} | {len(values)} "
                f"| {time_text} |"
            )
        lines.append("")
    return lines


def _seconds(times: list[float]) -> str:
    return ", ".join(f"{t:.1f} s" for t in times)


def naive_runs(timing: float | list[float]) -> list[float]:
    """The times of the naive runs of one timing around the long runs: a list (``measure.py long
    --naive-seconds``), or one number in records from before that option."""
    return timing if isinstance(timing, list) else [timing]


def paired_ratios(runs: list[float], steps: int, timings: list[list[float]], naive_steps: int) -> list[float]:
    """Each run's time per step (``runs`` at ``steps``) against the mean per-step time of all the naive runs
    timed just before and after it (``timings`` at ``naive_steps``: one timing more than ``runs``, each the list
    of its runs' times; NOTE [ Naive runs around the long runs ] in measure.py)."""
    return [
        (run / steps) / (statistics.fmean(before + after) / naive_steps)
        for run, before, after in zip(runs, timings, timings[1:])
    ]


def _timings_text(timings: list[list[float]], naive_steps: int) -> str:
    """The naive timings around the long runs, in order: each run's time, or (several runs a timing) each
    timing's mean time per step and its number of runs."""
    if all(len(timing) == 1 for timing in timings):
        return _seconds([timing[0] for timing in timings])
    return "each timing's mean, runs: " + ", ".join(
        f"{statistics.fmean(timing) / naive_steps * 1e3:.2f} ms/step ({len(timing)})" for timing in timings
    )


#: the issue's time target: the long run's time per step at most this many times naive's
TIME_TARGET = 2.0


def long_time_lines(
    long_time: dict[str, Any],
    steps: int,
    naive_step: float,
    ref_steps: int,
    longer: dict[str, Any] | None,
    same: list[float] | None = None,
) -> list[str]:
    """The long run's time per step against naive's: against the naive runs timed around it (each run paired with
    all the naive runs timed just before and after it, and the fastest against the fastest timing) at each T where
    they were timed, else against the interleaved runs at that T (timed earlier, under whatever load there was
    then); against naive through the same T when ``same`` gives those rounds' ratios (``same_steps.json``); and
    the verdict on the target.

    NOTE [ Which comparison judges the time target ]
        The target is the long run's time per step within :data:`TIME_TARGET` times naive's "at a T where naive
        fits". Naive's time per step changes with T (its graph outgrows the caches; the machine's load changes over
        the minutes a long run takes), so the comparison that needs no other T is naive through the long run's own
        T, where it fits, in paired rounds within one process (``measure.py same``): when that record is finished
        and ran the long run's plan, T and dtype, its median alone is the verdict, and the medians against naive
        at shorter T are shown but not counted. Without it, the verdict needs the median at every T naive was
        timed at around the long runs."""
    step = long_time["time_s"] / steps
    runs = long_time.get("all_times_s", [long_time["time_s"]])
    which = "one run" if len(runs) == 1 else f"the fastest of {len(runs)} runs ({_seconds(runs)})"
    lines = [
        f"* T = {steps:,}, {which}: {long_time['time_s']:.0f} s CPU ({long_time['wall_s']:.0f} s wall), "
        f"{step * 1e3:.2f} ms/step."
    ]
    # (T, naive's times around the runs at T or None, naive's per-step time at T timed separately or None)
    brackets = [(ref_steps, long_time.get("reference_naive_times_s"), naive_step)]
    separate = longer["naive"]["time_s"] / longer["steps"] if longer else None
    if long_time.get("naive_steps"):
        brackets.append((long_time["naive_steps"], long_time.get("naive_times_s"), separate))
    elif longer:  # no naive runs at a longer T around the runs: older records, or --naive-steps 0 after a run with it
        brackets.append((longer["steps"], None, separate))
    medians = []
    for n, bracket, apart in brackets:
        if bracket:
            timings = [naive_runs(timing) for timing in bracket]
            paired = paired_ratios(runs, steps, timings, n)
            medians.append((f"T = {n:,}", statistics.median(paired)))
            fastest = min(map(statistics.fmean, timings)) / n
            lines.append(
                f"* Against naive at T = {n:,}, timed before, between and after the runs at T = {steps:,} "
                f"({_timings_text(timings, n)}; the fastest {fastest * 1e3:.2f} ms/step): each run against the mean "
                f"of the naive runs around it, **{', '.join(f'{r:.2f}×' for r in paired)}** (median "
                f"**{medians[-1][1]:.2f}×**); fastest against fastest, **{step / fastest:.2f}×**. Each naive timing "
                f"is shorter than a run at T = {steps:,}, so the fastest may catch a quieter spell of a shared "
                "machine than any long run can: that errs against the plan."
            )
        elif apart is not None:
            lines.append(
                f"* Against naive at T = {n:,} (timed separately, above): **{step / apart:.2f}×** naive's per-step "
                "time."
            )
    if same:
        median = statistics.median(same)
        lines.append(
            f"* Against naive through the same T = {steps:,} (same_steps.json, below, with its own commit, time and "
            "machine: "
            f"{len(same)} rounds of one run each, the order swapped): **{', '.join(f'{r:.2f}×' for r in same)}** "
            f"(median **{median:.2f}×**)."
        )
        lines.append(
            f"* Time target (≤ {TIME_TARGET:g}× naive, judged like for like since 4c1cad9: the median paired ratio "
            f"of naive and the plan both timed through the same T = {steps:,} in same_steps.json, on the machine its "
            "provenance names, where naive fits; any medians at shorter T are shown, not counted): "
            f"**{'met' if median <= TIME_TARGET else 'not met'}** ({median:.2f}×)."
        )
    elif medians and len(medians) == len(brackets):
        met = all(m <= TIME_TARGET for _, m in medians)
        lines.append(
            f"* Time target (≤ {TIME_TARGET:g}× naive, the median paired ratio at every T naive was timed at): "
            f"**{'met' if met else 'not met'}** ({'; '.join(f'{t}: {m:.2f}×' for t, m in medians)})."
        )
    return lines


#: records of reference passes that were timed again (each with its "steps"), shown beside the ones that replaced them
FIRST_PASSES = ("reference_first_pass", "reference_long_first_pass")


def _interleaved_times(record: dict[str, Any], steps: int, *schedules: str) -> str:
    """Naive's and each plan's time per step in one interleaved timing at ``steps``, and their ratios to naive's
    (a plan the record lacks is left out)."""
    naive = record["naive"]["time_s"] / steps
    text = f"naive {naive * 1e3:.2f} ms/step"
    for schedule in dict.fromkeys(s for s in schedules if s in record):
        plan = record[schedule]["time_s"] / steps
        text += f", `{schedule}` {plan * 1e3:.2f} ms/step ({plan / naive:.2f}×)"
    return text


def long_lines(data: dict[str, Any], same: list[float] | None = None) -> list[str]:
    """The long run's section; ``same``: the ratios of the paired rounds with naive through the same T and plan."""
    config, records = data["config"], data["records"]
    steps, ref_steps = config["steps"], config["reference_steps"]
    schedule = long_schedule(config["slots"], config.get("segment", 1))  # older records: one-step segments
    single = long_schedule(config["slots"], 1)
    lines = [f"Problem (a) through {steps:,} SGD steps, `{schedule}`, float64, CPU time of one thread.", ""]
    reference = records.get("reference")
    if reference:
        naive_step = reference["naive"]["time_s"] / ref_steps
        plan_step = reference[schedule]["time_s"] / ref_steps
        lines += [
            f"* Reference, T = {ref_steps:,} (best of {len(reference['naive']['all_times_s'])} interleaved runs): "
            f"naive {naive_step * 1e3:.2f} ms/step, peak {format_bytes(reference['naive']['peak_bytes'])}; "
            f"`{schedule}` {plan_step * 1e3:.2f} ms/step ({plan_step / naive_step:.2f}×), peak "
            f"{format_bytes(reference[schedule]['peak_bytes'])}; hypergradients agree to "
            f"{reference['max_relative_difference']:.1e} (max relative difference).",
        ]
        if single != schedule and single in reference:
            single_step = reference[single]["time_s"] / ref_steps
            lines.append(
                f"* The same slots reversing one step at a time, in the same interleaved runs: `{single}` "
                f"{single_step * 1e3:.2f} ms/step ({single_step / naive_step:.2f}×), peak "
                f"{format_bytes(reference[single]['peak_bytes'])}, hypergradients agree with naive's to "
                f"{record_difference(reference[single], reference['naive']):.1e}; `{schedule}` took "
                f"{plan_step / single_step:.2f}× its time per step."
            )
        longer = records.get("reference_long")
        if longer:
            both = single in longer and single != schedule
            lines.append(
                f"* Naive at T = {longer['steps']:,} (best of {len(longer['naive']['all_times_s'])} runs interleaved "
                f"with the {'plans' if both else 'plan'}): "
                f"{_interleaved_times(longer, longer['steps'], schedule, single)}; hypergradients agree to "
                f"{longer['max_relative_difference']:.1e}"
                + (f" (`{single}`'s to {record_difference(longer[single], longer['naive']):.1e})." if both else ".")
            )
        first = [records[key] for key in FIRST_PASSES if key in records]
        if first:
            lines.append(
                "* Earlier passes of the same interleaved timing, kept (see the provenance note): "
                + "; ".join(f"T = {r['steps']:,}: {_interleaved_times(r, r['steps'], schedule)}" for r in first)
                + "."
            )
        long_time = records.get("long_time")
        if long_time:
            lines += long_time_lines(long_time, steps, naive_step, ref_steps, longer, same)
        long_memory = records.get("long_memory")
        if long_memory:
            ratio = long_memory["peak_bytes"] / reference[schedule]["peak_bytes"]
            naive_peak = format_bytes(reference["naive"]["peak_bytes"])
            lines.append(
                f"* Peak memory at T = {steps:,}: {format_bytes(long_memory['peak_bytes'])} = **{ratio:.3f}× the same "
                f"plan at T = {ref_steps:,}** (naive at T = {ref_steps:,}: {naive_peak})."
            )
            if long_time:
                a, b = long_time["lr"] + [long_time["wd"]], long_memory["lr"] + [long_memory["wd"]]
                if a == b:
                    lines.append("* The tracked and untracked runs' hypergradients are bitwise equal.")
                else:
                    lines.append(
                        "* The tracked and untracked runs' hypergradients differ by "
                        f"{record_difference(long_memory, long_time):.1e} (max relative difference; see the provenance "
                        "note)."
                    )
    plan = records.get("plan")
    if plan:
        stats = plan["stats"]
        optimum = plan.get("segment_optimum_evaluations")
        graph = "one step's" if stats["max_segment"] == 1 else f"{stats['max_segment']} steps'"
        if stats["max_segment"] > 1 and optimum is not None:
            against = (
                f"the fewest for {config['slots']} slots reversing {stats['max_segment']} steps at a time, "
                f"{optimum:,} (reversing one step at a time, Revolve's optimum is "
                f"{plan['revolve_optimum_evaluations']:,})"
            )
        else:
            against = f"Revolve's optimum for {config['slots']} slots, {plan['revolve_optimum_evaluations']:,}"
        lines.append(
            f"* Plan: at most {stats['max_stored']} stored states and {graph} graph; "
            f"{stats['forward_steps']:,} steps evaluated without a graph ({stats['forward_steps'] / steps:.3f} per "
            f"step: the forward pass and one replay of almost every step) against {against}; "
            f"{stats['reversed_steps']:,} steps run with their graph."
        )
    lines.append("")
    return lines


def round_ratios(data: dict[str, Any], base: str, other: str) -> list[float]:
    """Each paired round's time of ``other`` over ``base`` (``data["records"]["rounds"]``)."""
    return [r[other]["time_s"] / r[base]["time_s"] for r in data["records"].get("rounds", [])]


def _round_lines(data: dict[str, Any], base: str, other: str, pair: str, digits: int, unit: str) -> list[str]:
    """Paired rounds of ``base`` and ``other`` (``data["records"]["rounds"]``): the heading line, then each round's
    time of ``other`` over ``base``, their median and range, each engine's times per step, and how far the two
    hypergradients (of ``pair``) differ."""
    config, rounds = data["config"], data["records"].get("rounds", [])
    steps = config["steps"]
    name = {e: "naive" if e == "naive" else f"`{e}`" for e in (base, other)}
    dtype = config["dtype"].removeprefix("torch.")
    lines = [
        f"Problem (a) through {steps:,} SGD steps, {name[other]} against {name[base]}, {dtype}, CPU time of one "
        f"thread; {len(rounds)} rounds of one run each, the order swapped every round.",
        "",
    ]
    if not rounds:
        return lines
    ratios = round_ratios(data, base, other)
    per_step = {e: [r[e]["time_s"] / steps * 1e3 for r in rounds] for e in (base, other)}

    def ratio(x: float) -> str:
        return f"{x:.{digits}f}{unit}"

    return [
        *lines,
        f"* {name[other]} / {name[base]}, per round: "
        + ", ".join(map(ratio, ratios))
        + f"; median **{ratio(statistics.median(ratios))}**, range {min(ratios):.{digits}f}-{ratio(max(ratios))}.",
        *(f"* {name[e]}: {min(v):.2f}-{max(v):.2f} ms/step." for e, v in per_step.items()),
        f"* Hypergradients of {pair} differ by at most "
        f"{max(record_difference(r[other], r[base]) for r in rounds):.1e} (max relative difference).",
    ]


def segment_lines(data: dict[str, Any]) -> list[str]:
    """The paired rounds of one-step and multi-step segments: each round's ratio, their median and range."""
    config = data["config"]
    one, more = long_schedule(config["slots"], 1), long_schedule(config["slots"], config["segment"])
    lines = _round_lines(data, one, more, "the two plans", 3, "")
    return [*lines, ""] if data["records"].get("rounds") else lines


def same_ratios(same: dict[str, Any]) -> list[float]:
    """Each round's plan time over naive's, from ``same_steps.json`` (naive and the plan through the same T)."""
    return round_ratios(same, "naive", long_schedule(same["config"]["slots"], same["config"]["segment"]))


def same_finished(same: dict[str, Any]) -> bool:
    """Whether ``same_steps.json`` holds every round asked for and naive's peak (not a stopped or running part)."""
    records = same["records"]
    rounds = records.get("rounds", [])
    return bool(rounds) and "naive_memory" in records and len(rounds) >= records.get("rounds_asked", 0)


def same_lines(data: dict[str, Any], long_run: dict[str, Any] | None) -> list[str]:
    """Naive and the plan through the same T, in paired rounds: each round's ratio, their median, naive's peak (and
    the plan's, from ``long_run`` when it ran the same plan through the same T), and how far the hypergradients
    differ."""
    config, records = data["config"], data["records"]
    schedule = long_schedule(config["slots"], config["segment"])
    lines = _round_lines(data, "naive", schedule, "naive and the plan", 2, "×")
    warm_up = records.get("naive_warm_up_s")
    if warm_up:
        lines.insert(
            2,
            f"* Before the rounds, in each process that went on to run some, one naive warm-up run at "
            f"T = {config['steps']:,}, timed but not paired ({_seconds(warm_up)} of CPU).",
        )
    if not same_finished(data):
        lines.append(
            f"* Stopped or still running: {len(records.get('rounds', []))} of {records.get('rounds_asked', '?')} "
            "rounds" + ("" if "naive_memory" in records else ", naive's peak not yet measured") + "."
        )
    memory = records.get("naive_memory")
    if memory:
        peak = format_bytes(memory["peak_bytes"])
        text = f"* Naive's peak memory at T = {config['steps']:,}, one tracked run: **{peak}**"
        plan = long_run["records"].get("long_memory") if long_run and _same_plan(data, long_run) else None
        if plan:
            ratio = memory["peak_bytes"] / plan["peak_bytes"]
            text += f", {ratio:,.0f}× the plan's {format_bytes(plan['peak_bytes'])} (long_run.json)"
        lines.append(text + ".")
    lines.append("")
    return lines


def _same_plan(same: dict[str, Any], long_run: dict[str, Any]) -> bool:
    """Whether ``same_steps.json`` ran the plan of ``long_run.json`` through the same T."""
    a, b = same["config"], long_run["config"]
    return (a["steps"], a["slots"], a["segment"], a["dtype"]) == (
        b["steps"],
        b["slots"],
        b.get("segment", 1),
        b["dtype"],
    )


#: the largest relative difference read as agreement in the torchopt cross-check: both libraries run the same
#: 10 CG iterations in float64, so agreeing results differ by rounding only (measured: 3e-16 and 2e-10)
AGREEMENT = 1e-6
CROSS_CHECK_ITERATIONS = 10  # torchopt_check.py's


def torchopt_lines(data: dict[str, Any]) -> list[str]:
    lines = [
        f"`torchopt_check.py`, torchopt {data['torchopt']} in a scratch environment: memmaml's and torchopt's "
        f"(`custom_root` with `solve_cg`, {CROSS_CHECK_ITERATIONS} iterations, no tolerance) implicit hypergradients "
        "of the MAML problems (iMAML's proximal objective at the end point of T steps); they agree when the "
        f"largest relative difference is at most {AGREEMENT:.0e}:",
        "",
    ]
    for key, r in data["records"].items():
        difference = r["max_relative_difference"]
        if difference <= AGREEMENT:
            verdict = f"agree to {difference:.1e} (max relative difference)"
        else:
            verdict = f"differ ({difference:.2g}, max relative difference)"
            if r["memmaml_hvps"] < CROSS_CHECK_ITERATIONS:
                verdict += (
                    f": memmaml's CG met non-positive curvature after {r['memmaml_hvps']} products and stopped "
                    "(with a warning); torchopt's goes on with an indefinite matrix, where CG's iterates mean nothing"
                )
        lines.append(f"* {key}: {verdict}.")
    return [*lines, ""]


def plot_errors(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for record in data["records"].values():
        for group in record["methods"]["exact"]["errors"]:
            if (record["problem"], group) not in panels:
                panels.append((record["problem"], group))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False)
    for ax, (problem, group) in zip(axes[0], panels):
        records = sorted((r for r in data["records"].values() if r["problem"] == problem), key=lambda r: r["steps"])
        methods = [m for m in APPROXIMATIONS if any(m in r["methods"] for r in records)]
        for i, method in enumerate(methods):
            points = [(r["steps"], r["methods"][method]["errors"][group]["relative_error"]) for r in records
                      if method in r["methods"]]  # fmt: skip
            style = "--" if method.startswith(("cg", "neumann")) else "-"
            ax.plot(*zip(*points), style, marker="o", color=f"C{i}", label=label(method))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xlabel("inner steps T")
        ax.set_title(f"{problem}: {GROUP_TITLES[group]}", fontsize=10)
    axes[0][0].set_ylabel("relative error against the exact hypergradient")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path) -> None:
    errors, downstream, long_run = (_read(out, n) for n in ("errors.json", "downstream.json", "long_run.json"))
    lines = [
        "# Exact against approximate hypergradients",
        "",
        "Made by `benchmarks/hypergradients/measure.py` (see its docstring and `problems.py`); measured on 2-core CPU "
        "virtual machines shared with other jobs (each section's provenance names its machine; torch 2.14.1, one "
        "thread, float64). Times are CPU time of the measuring "
        'process, peaks are `memmaml.track_memory("cpu")` (live tensor bytes), each from its own pass.',
        "",
    ]
    if errors:
        lines += ["## Errors against the exact hypergradient, time and memory", "", _provenance_line(errors), ""]
        lines += ["![relative error against horizon](errors.png)", ""]
        lines += error_tables(errors)
        plot_errors(errors, out / "errors.png")
    if downstream:
        lines += ["## Downstream: outer loops driven by each method", "", _provenance_line(downstream), ""]
        lines += downstream_table(downstream)
    same = _read(out, "same_steps.json")
    if long_run:
        lines += ["## The exact hypergradient through 100,000 steps", "", _provenance_line(long_run), ""]
        counted = same and _same_plan(same, long_run) and same_finished(same)
        lines += long_lines(long_run, same_ratios(same) if counted else None)
    if same:
        lines += [
            f"## Naive through the same {same['config']['steps']:,} steps",
            "",
            _provenance_line(same),
            "",
        ]
        lines += same_lines(same, long_run)
    segments = _read(out, "segments.json")
    if segments:
        lines += [f"## Reversing {segments['config']['segment']} steps at a time", "", _provenance_line(segments), ""]
        lines += segment_lines(segments)
    cross_check = _read(out, "torchopt_check.json")
    if cross_check:
        lines += ["## Cross-check of the implicit hypergradient against torchopt", ""]
        lines += [_provenance_line(cross_check), ""]
        lines += torchopt_lines(cross_check)
    (out / "results.md").write_text("\n".join(lines) + "\n")
