"""Reports of a sweep: ``results.json`` in, ``results.md``, ``results.csv`` and ``results.png`` out.

Everything in a report is recomputed from ``results.json`` (the records, the
probe and the provenance), so ``render`` can be rerun at any time and a
report can never disagree with its data. Measured figures and predictions are
labelled as such; every figure carries the device it was measured on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import statistics
from pathlib import Path
from typing import Any

from memmaml import StepCosts, format_bytes

from ._engines import predict
from ._fit import Fit, answer_budget, fit_costs
from ._process import replaced_atomically, write_json_atomic, write_text_atomic

__all__ = ["read_results", "render"]

CSV_FIELDS = [
    "label",
    "library",
    "engine",
    "steps",
    "status",
    "offload",
    "peak_bytes",
    "host_peak_bytes",
    "rss_peak_bytes",
    "cuda_max_reserved_bytes",
    "seconds",
    "seconds_untracked",
    "seconds_runs",
    "grad_rel_diff",
    "grad_bitwise_equal",
    "probe_predicted_peak_bytes",
    "query_loss",
    "error",
]


#: what a sweep's ``results.json`` holds for :func:`render`: each key and the type of its value
RESULTS_KEYS = {"provenance": dict, "workload": dict, "engines": list, "records": list}
PROVENANCE_KEYS = ("device", "torch", "memmaml_version", "command")
WORKLOAD_KEYS = ("model", "batch_size", "channels", "image_size", "optimizer", "lr")
RECORD_KEYS = ("label", "engine", "steps", "status")


def read_results(out: str | os.PathLike) -> dict[str, Any]:
    """The sweep results in ``out/results.json``, checked to hold what :func:`render` reads.

    Raises:
        ValueError: the file cannot be read, is not JSON, or is not a sweep's
            results; the message says which, in one line.
    """
    path = Path(out) / "results.json"
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise ValueError(f"cannot read {str(path)!r}: {err.strerror or err}") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        raise ValueError(f"{str(path)!r} is not JSON ({err}): a sweep cut short while writing it?") from None
    what = f"{str(path)!r} is not a sweep's results"
    if not isinstance(data, dict):
        raise ValueError(f"{what}: a JSON {type(data).__name__}, not an object")
    for key, kind in RESULTS_KEYS.items():
        if not isinstance(data.get(key), kind):
            raise ValueError(f"{what}: no {key!r} {kind.__name__}")
    for key, keys in (("provenance", PROVENANCE_KEYS), ("workload", WORKLOAD_KEYS)):
        missing = [k for k in keys if k not in data[key]]
        if missing:
            raise ValueError(f"{what}: its {key!r} has no {missing[0]!r}")
    for index, record in enumerate(data["records"]):
        if not isinstance(record, dict) or any(k not in record for k in RECORD_KEYS):
            raise ValueError(f"{what}: record {index} is not a run's record (label, engine, steps, status)")
    if data.get("probe") is not None and not isinstance(data["probe"], dict):
        raise ValueError(f"{what}: its 'probe' is not an object")
    if not isinstance(data.get("other_records", []), list):
        raise ValueError(f"{what}: its 'other_records' is not a list")
    return data


def render(out: Path) -> str:
    """Write ``results.md``, ``results.csv`` and ``results.png`` in ``out`` from its ``results.json``; the Markdown.

    ``results.json`` gets the fit and the answers. Every file is written
    atomically, so a render cut short leaves each file whole, old or new.

    Raises:
        ValueError: ``results.json`` is not a sweep's results (:func:`read_results`); nothing is written.
    """
    out = Path(out)
    data = read_results(out)
    records = list(data["records"])
    probe = StepCosts(**data["probe"]["costs"]) if (data.get("probe") or {}).get("costs") else None
    fit = fit_costs(records, probe, prefetch=str(data["workload"].get("device", "cpu")).startswith("cuda"))
    host = data.get("host_budget_bytes")
    answers = (
        [answer_budget(fit, engine, data["budget_bytes"], host_budget=host) for engine in data["engines"]]
        if fit is not None and data.get("budget_bytes")
        else []
    )
    data["fit"] = None if fit is None else {**fit._asdict(), "costs": fit.costs._asdict()}
    data["answers"] = answers
    write_json_atomic(out / "results.json", data, indent=1)
    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: json.dumps(r[k]) if isinstance(r.get(k), list) else r.get(k) for k in CSV_FIELDS})
    write_text_atomic(out / "results.csv", table.getvalue())
    text = _markdown(data, records, fit, answers)
    write_text_atomic(out / "results.md", text)
    _plot(out / "results.png", data, records, fit, answers)
    return text


def _device(data: dict[str, Any]) -> str:
    p = data["provenance"]
    return f"{p.get('device_name') or p['device']} ({p['device']})"


def _ratio(record: dict[str, Any], reference: dict[str, Any] | None, key: str) -> str:
    if reference is None:
        return "–"
    if key == "seconds":  # the median of ratios within each repeat: drift in the machine's load cancels
        pairs = [
            a / b for a, b in zip(record.get("seconds_runs") or [], reference.get("seconds_runs") or []) if a and b
        ]
        return f"{statistics.median(pairs):.2f}" if pairs else "–"
    a, b = record.get(key), reference.get(key)
    return f"{a / b:.3f}" if a and b else "–"


def _per_step(record: dict[str, Any], naive: dict[int, dict[str, Any]]) -> str:
    """Seconds per inner step of the tracked run, and relative to naive's at the largest n measured for both."""
    if not record.get("seconds") or record.get("status") != "ok":
        return "–"
    per = record["seconds"] / record["steps"]
    reference = naive.get(record["steps"]) or (naive[max(naive)] if naive else None)
    if reference is None or reference is record or not reference.get("seconds"):
        return f"{per:.3g}"
    return f"{per:.3g} ({per / (reference['seconds'] / reference['steps']):.2f}x naive n={reference['steps']})"


def _markdown(data: dict[str, Any], records: list[dict[str, Any]], fit: Fit | None, answers: list[dict]) -> str:
    p, w = data["provenance"], data["workload"]
    dirty = " (uncommitted changes)" if p.get("memmaml_dirty") else ""
    # outside a git checkout (an installed package) no commit is recorded: the version stands alone
    commit = (
        f" at {p['memmaml_commit'][:10]}{dirty}" if p.get("memmaml_commit") else f"{dirty} (no git commit recorded)"
    )
    lines = [
        f"# compare_memory: {w['model']} at {w['batch_size']}x{w['channels']}x{w['image_size']}x"
        f"{w['image_size']}, {w['optimizer']} lr {w['lr']:g}",
        "",
        f"Measured on {_device(data)}, torch {p['torch']}, memmaml {p['memmaml_version']}{commit}, "
        f"{data.get('threads')} thread(s) per run.",
        f"Command: `{p['command']}`",
        *(
            [
                "",
                "**Incomplete:** the sweep was stopped; the runs below finished. Run the same command again "
                "to run the rest (the finished runs are kept).",
            ]
            if data.get("complete") is False
            else []
        ),
        *(
            [
                "",
                f"{len(data['other_records'])} run(s) of an earlier sweep in this folder that this command does "
                "not make (other engines or n, or another engine chosen for a budget) are kept in results.json "
                "(`other_records`) and not shown here.",
            ]
            if data.get("other_records")
            else []
        ),
        "",
        "Peak memory: "
        + (
            "the CUDA allocator's peak"
            if p["device"].startswith("cuda")
            else "bytes of live tensors (memmaml.track_memory), what a GPU allocator would hold less workspaces"
        )
        + "; time: median of untracked runs; ratios are to memmaml naive "
        "at the same n.",
        "",
        "Time per step is the tracked run's (the tracker's overhead is included, so compare it within the table); "
        "time / naive is the median ratio of interleaved untracked runs at the same n. Stored states, graph "
        "steps and no-graph steps are memmaml's plan (the graph steps: the longest segment held at once); a peer's "
        "own checkpointing shows '–'.",
        "",
        "| engine | n | stored states | graph steps | no-graph steps | peak (measured) | host (offloaded) | "
        "s per step (tracked) | time / naive | memory / naive | meta-grad rel. diff | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    naive = {r["steps"]: r for r in records if r["label"] == "naive" and r.get("status") == "ok"}
    for r in records:
        stats = r.get("stats") or {}
        ref = naive.get(r["steps"])
        diff = r.get("grad_rel_diff")
        diff_text = (
            "reference"
            if r["label"] == "naive"
            else ("–" if diff is None else ("0 (bitwise)" if r.get("grad_bitwise_equal") else f"{diff:.1e}"))
        )
        # the whole one-line cause (a cut one hid the size the message was about), safe inside a table cell
        cause = " ".join(str(r["error"]).split()).replace("|", "/") if r.get("error") else ""
        status = str(r.get("status")) + (f": {cause}" if cause else "")
        name = r["label"] if r["label"] == r["engine"] else f"{r['label']} ({r['engine']})"
        if r.get("library", "memmaml") != "memmaml" and stats:  # a peer's own checkpointing: not memmaml's plan
            counts = "– | – | –"
        else:
            counts = (
                f"{max(stats.get('max_stored', 1) - 1, 0) if stats else 0} | "
                f"{stats.get('max_segment', r['steps'])} | {stats.get('forward_steps', 0)}"
            )
        lines.append(
            f"| {name} | {r['steps']} | {counts} | "
            f"{format_bytes(r.get('peak_bytes'))} | {format_bytes(r.get('host_peak_bytes'))} | "
            f"{_per_step(r, naive)} | {_ratio(r, ref, 'seconds')} | "
            f"{_ratio(r, ref, 'peak_bytes')} | {diff_text} | {status} |"
        )
    if fit is not None:
        c = fit.costs
        lines += [
            "",
            "## Fitted cost model (least squares over the measured runs)",
            "",
            f"One stored state S = {format_bytes(c.state_bytes)}, one step's graph A = "
            f"{format_bytes(c.graph_bytes)}, base {format_bytes(fit.base_naive)} (naive) and "
            f"{format_bytes(fit.base_checkpoint)} (checkpointed); largest relative residual "
            f"{fit.max_relative_residual:.2%} over {fit.memory_points} runs. Time per step: "
            f"{c.graph_seconds:.3g} s with its graph, {c.nograph_seconds:.3g} s without "
            f"({'fitted' if fit.time_from == 'fit' else 'scale fitted, ratio from the probe'}).",
        ]
    if answers:
        lines += [
            "",
            f"## The budget: {format_bytes(answers[0]['budget_bytes'])} (predicted from the fit)",
            "",
            "| engine | longest n | schedule at that n | predicted peak | time per step / naive's |",
            "|---|---:|---|---:|---:|",
        ]
        for a in answers:
            if a["grows_with_steps"]:
                at = a["at"][0] if a["at"] else None
                lines.append(
                    f"| {a['engine']} | {a['longest_steps']} | {at['engine']} | "
                    f"{format_bytes(at['predicted_peak_bytes'])} | {at['time_ratio_to_naive']:.2f} |"
                    if at
                    else f"| {a['engine']} | 0: one step needs {format_bytes(a['one_step_bytes'])} | – | – | – |"
                )
            else:
                per = ", ".join(f"{x['time_ratio_to_naive']:.2f} at n={x['steps']:,}" for x in a["at"])
                if a.get("host_budget_bytes") and "offload" in a["engine"]:
                    per += f" (stored states within {format_bytes(a['host_budget_bytes'])} of host memory)"
                lines.append(
                    f"| {a['engine']} | does not grow with n | {a['at'][-1]['engine']} | "
                    f"{format_bytes(a['at'][-1]['predicted_peak_bytes'])} | {per} |"
                )
    return "\n".join(lines) + "\n"


def _model_curve(
    fit: Fit, engine: str, budget: int, host: int | None, top: int
) -> tuple[list[int], list[float], list[float]]:
    """The fitted model's peak (GiB) and time relative to naive for ``engine`` at log-spaced n up to ``top``."""
    room = max(int(budget - fit.base_checkpoint), 1)
    xs, ys, ts = [], [], []
    for n in sorted({round(10 ** (i / 20)) for i in range(int(20 * math.log10(max(top, 2))) + 1)}):
        try:
            text = predict(engine, n, fit.costs, budget=room, host_budget=host).engine
        except ValueError:  # nothing of this family fits at n
            continue
        xs.append(n)
        ys.append(fit.peak(text, n) / 2**30)
        ts.append(fit.seconds(text, n) / fit.seconds("naive", n))
    return xs, ys, ts


def _plot(
    path: Path, data: dict[str, Any], records: list[dict[str, Any]], fit: Fit | None, answers: list[dict]
) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional (pip install memmaml[plot]); the tables are written anyway
        return
    fig, (mem, tim) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = list(dict.fromkeys(r["label"] for r in records))
    for index, label in enumerate(labels):
        color = f"C{index}"
        rows = [r for r in records if r["label"] == label and r.get("status") == "ok" and r.get("peak_bytes")]
        mem.plot([r["steps"] for r in rows], [r["peak_bytes"] / 2**30 for r in rows], "o", color=color, label=label)
        answer = next((a for a in answers if a["engine"] == label), None)
        if fit is not None and answer is not None:
            xs, ys, ts = _model_curve(
                fit, label, data["budget_bytes"], data.get("host_budget_bytes"), answer.get("longest_steps") or 100_000
            )
            mem.plot(xs, ys, "-", color=color, alpha=0.6)
            tim.plot(xs, ts, "-", color=color, label=label)
    if data.get("budget_bytes"):
        mem.axhline(data["budget_bytes"] / 2**30, color="k", ls="--", lw=1, label="budget")
    mem.set(
        xlabel="inner steps n",
        ylabel="peak memory (GiB)",
        title=f"measured (dots) and fitted model (lines), {_device(data)}",
    )
    if any(r.get("status") == "ok" and r.get("peak_bytes") for r in records):  # log scales need data
        mem.set(xscale="log", yscale="log")
    tim.set(
        xlabel="inner steps n", ylabel="time per step / naive's (predicted)", title="predicted time relative to naive"
    )
    if tim.lines:
        tim.set(xscale="log")
    mem.legend(fontsize=8)
    if tim.lines:
        tim.legend(fontsize=8)
    fig.tight_layout()
    with replaced_atomically(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
