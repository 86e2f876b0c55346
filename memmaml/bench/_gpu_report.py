"""The GPU check's report: ``results.json``, ``results.md`` and ``results.png``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from memmaml import format_bytes

from ._process import replaced_atomically, write_json_atomic, write_text_atomic

__all__ = ["write_gpu_report"]


def _b(num: float | None) -> str:
    return "—" if num is None else format_bytes(num)


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def write_gpu_report(results: dict[str, Any], out: str | os.PathLike, *, with_plot: bool = True) -> str:
    """Write ``results.json``, ``results.md`` and (``with_plot``) ``results.png`` in ``out``; the Markdown.

    Each tracked run's time relative to naive's (``ratio_to_naive``) is
    recomputed here from part 1's time per step, so the files always agree. Each file is
    written atomically: a check killed while writing keeps the previous one.
    """
    out = Path(out)
    parts = results["parts"]
    naive_step = parts.get("naive", {}).get("seconds_per_step")
    runs = [r for part in parts.values() for r in part.get("runs", [])]
    for run in runs:  # naive's time is a tracked run's: an untracked run's ratio to it would mislead
        ok = naive_step and run.get("status") == "ok" and run.get("seconds_per_step") and run.get("tracked", True)
        run["ratio_to_naive"] = run["seconds_per_step"] / naive_step if ok else None
    write_json_atomic(out / "results.json", results, indent=1)
    label, env, prov = results["label"], results.get("environment") or {}, results.get("provenance") or {}
    dirty = " (uncommitted changes)" if prov.get("memmaml_dirty") else ""
    # outside a git checkout no commit is recorded: the version stands alone, as in compare_memory's report
    commit = (
        f" at {prov['memmaml_commit']}{dirty}" if prov.get("memmaml_commit") else f"{dirty} (no git commit recorded)"
    )
    lines = [
        f"# memmaml GPU check — {label}",
        "",
        f"- command: `{prov.get('command', '—')}`",
        f"- memmaml {prov.get('memmaml_version', '—')}{commit}; "
        f"torch {prov.get('torch', '—')}, CUDA {prov.get('cuda', '—')}, cuDNN {env.get('cudnn', '—')}",
        f"- device: {env.get('name', results['device'])}; allocator cap: {_b(results['cap_bytes'])}; "
        f"CUDA context: {_b(env.get('context_bytes'))} ({env.get('context_method', 'none on CPU')}); after the "
        f"probe's steps, with kernels and library handles: {_b(env.get('non_allocator_bytes_after_probe'))}",
        f"- workload: {results['workload_text']}",
        f"- {results['total_seconds']:.0f} s in all, of a {results['time_budget_seconds']:.0f} s budget",
        *(
            ["", "**Interrupted:** the check was stopped (Ctrl-C); the parts below ran, the rest did not."]
            if results.get("interrupted")
            else []
        ),
        "",
        "| part | status | predicted s | measured s | wall s | note |",
        "|---|---|---|---|---|---|",
    ]
    for part in parts.values():
        note = "; ".join(str(part[k]) for k in ("plan_note", "error", "note", "schedule") if part.get(k))
        lines.append(
            f"| {part['number']}. {part['title']} | {part['status']} | {_s(part.get('predicted_seconds'))} | "
            f"{_s(part.get('work_seconds'))} | {_s(part.get('wall_seconds'))} | "
            f"{note[:300].replace('|', '/').replace(chr(10), ' ')} |"
        )
    lines += [
        "",
        f"Runs, {label}, each in a fresh process. "
        + (
            "Peaks are the allocator's, absolute (model and batches included); host: the offloaded states' "
            "bytes (stored at once x one state, from the probe) / the pinned allocator's peak of active bytes, "
            "which rounds each block up."
            if env.get("total_bytes")
            else "Peaks are live tensor bytes created during the meta-step "
            "(memmaml.track_memory), whose overhead is in the times; host: the offloaded states' bytes (stored "
            "at once x one state, from the probe) / the live bytes of the offloaded copies, measured."
        ),
        "",
        "| configuration | status | peak allocated | peak reserved | host: states / measured | time / step | × naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        per_step, ratio = r.get("seconds_per_step"), r.get("ratio_to_naive")
        host = (
            _b(r.get("host_peak_bytes"))
            if r.get("host_state_bytes") is None
            else f"{_b(r['host_state_bytes'])} / {_b(r.get('host_peak_bytes'))}"
        )
        lines.append(
            f"| {r['config']} | {r['status']} | {_b(r.get('peak_allocated_bytes'))} | "
            f"{_b(r.get('peak_reserved_bytes'))} | {host} | "
            f"{'—' if per_step is None else f'{per_step * 1e3:.1f} ms'} | "
            f"{'—' if ratio is None else f'{ratio:.2f}'} |"
        )
    naive = parts.get("naive", {})
    if naive.get("longest_n"):
        lines += [
            "",
            f"Naive, {label}: longest n = {naive['longest_n']}, first failing n = "
            f"{naive.get('first_failing_n')} ({naive.get('first_failing_error') or naive.get('note')}).",
        ]
    exact = parts.get("exactness", {})
    for mode, m in exact.get("modes", {}).items():
        lines += [
            "",
            f"Exactness against naive, {mode} settings ({m['settings']}), {label}; "
            f"{exact.get('workload_text')}, n = {exact.get('spec', {}).get('n')}:",
            "",
            "| engine | relative difference | bitwise | buffers bitwise |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['relative_difference']:.3g} | {v['bitwise']} | {v['buffers_bitwise']} |"
            for k, v in m["methods"].items()
        ]
        again = m["methods"].get("naive (again)")
        if again is not None and not again["bitwise"]:
            lines.append(
                "\nnaive (again) is naive run a second time: it is not bitwise equal to the first, so these "
                "kernels are not deterministic and 'bitwise False' above says nothing against an engine by itself; "
                "compare its relative difference with naive (again)'s."
            )
        if m["nondeterministic_op_warnings"]:
            lines.append(f"\nOps without a deterministic implementation: {m['nondeterministic_op_warnings']}")
    for paragraph in _paragraphs(parts, label):
        lines += ["", paragraph]
    text = "\n".join(lines) + "\n"
    write_text_atomic(out / "results.md", text)
    if with_plot:
        _plot(runs, results, out / "results.png")
    return text


def _paragraphs(parts: dict[str, Any], label: str) -> list[str]:
    """The sentences of part 7 (offload's time over no offload's) and part 6 (torch_maml), where they ran."""
    overlap, peer, found = parts.get("overlap", {}), parts.get("torch_maml", {}), []
    if overlap.get("time_with_over_without") is not None:
        each = ", ".join(f"{r:.2f}" for r in overlap["ratios"])
        found.append(
            f"Offload's copies against compute, {label}: {overlap['engine']} at n = {overlap['n']} with offload "
            f"over without, untracked and interleaved, median of {len(overlap['ratios'])} repeats: "
            f"{overlap['time_with_over_without']:.2f} (1.00: the copies hide behind compute; each repeat: {each})."
        )
    if peer.get("relative_difference") is not None:
        found.append(
            f"torch_maml {peer.get('torch_maml_version', '')} against memmaml, same schedule, {label}: "
            f"meta-gradients differ by {peer['relative_difference']:.3g} (relative to the largest), "
            f"bitwise equal: {peer['bitwise']}."
        )
    return found


def _plot(runs: list[dict[str, Any]], results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is optional (pip install memmaml[plot]); the tables are written anyway
        return
    runs = [r for r in runs if r.get("peak_allocated_bytes") is not None]
    cap = results["cap_bytes"]
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 1.8 + 0.4 * len(runs)))
    y = list(range(len(runs)))
    largest = max([r["peak_allocated_bytes"] for r in runs] + [cap or 0])
    unit, scale = ("GiB", 2**30) if largest > 2**29 else ("MiB", 2**20)
    if any(r.get("peak_reserved_bytes") for r in runs):  # behind the allocated bars: their excess shows hatched
        mem_ax.barh(
            y,
            [(r.get("peak_reserved_bytes") or 0) / scale for r in runs],
            color="white",
            edgecolor="tab:blue",
            hatch="//",
            label="peak reserved",
        )
    mem_ax.barh(y, [r["peak_allocated_bytes"] / scale for r in runs], color="tab:blue", label="peak allocated")
    if cap:
        mem_ax.axvline(cap / scale, color="red", label=f"cap {_b(cap)}")
    mem_ax.set(
        yticks=y,
        yticklabels=[r["config"] + ("" if r["status"] == "ok" else f" ({r['status']})") for r in runs],
        xlabel=f"peak device memory ({unit})",
    )
    mem_ax.legend(loc="lower right", fontsize=8)
    time_ax.barh(y, [r.get("ratio_to_naive") or 0 for r in runs], color="tab:orange")
    time_ax.axvline(1.0, color="black", linewidth=0.8)
    time_ax.set(yticks=y, yticklabels=[], xlabel="time per inner step / naive's")
    for ax in (mem_ax, time_ax):
        ax.invert_yaxis()  # the first configuration on top, as in results.md
    fig.suptitle(results["label"])
    fig.tight_layout()
    with replaced_atomically(path) as temporary:
        fig.savefig(temporary, dpi=110, format="png")
    plt.close(fig)
