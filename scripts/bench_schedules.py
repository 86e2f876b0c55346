#!/usr/bin/env python
"""Schedules beyond sqrt(n): measured runs and the longest unroll predicted for a memory budget.

Two subcommands, each writing JSON and a Markdown table to ``--out``:

``run``
    Runs a meta-step (inner loop + query loss + backward) of ResNet-18 on random
    batches for each configuration in a fresh subprocess: naive at the
    ``--naive-steps`` counts, ``Binomial(--slots)`` at the ``--steps`` counts (and
    the same with ``--offload``). Records the peak live-tensor bytes
    (``memmaml.track_memory``), the process's peak RSS, the wall time per inner
    step, and the number of loss evaluations, checked against
    ``memmaml.binomial_evaluations``.

``combine``
    Plots peak memory against steps for several ``scripts/compare_memory.py``
    runs (naive, uniform, binomial, offload) in one figure.

``predict``
    Measures one inner step at the given size with ``memmaml.measure_step_costs``
    (bytes of a state, bytes of one step's graph, seconds without and with the
    graph) for SGD and Adam, then predicts the longest unroll that fits
    ``--budget`` for naive, uniform segments, binomial checkpointing (longest n
    at no more than ``--max-slowdown`` times naive's time per step) and host
    offload.

Example (the figures in the README)::

    python scripts/bench_schedules.py run --out benchmarks/schedules/run-32px \\
        --image-size 32 --batch-size 16 --slots 10 --steps 100,1000 --naive-steps 100
    python scripts/bench_schedules.py predict --out benchmarks/schedules/predict-224px \\
        --image-size 224 --batch-size 16 --budget 11GiB
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

import memmaml
from memmaml import Binomial, binomial_evaluations, format_bytes, parse_size


def _model_and_batch(image_size: int, batch_size: int, seed: int = 0):
    import torchvision

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10)
    gen = torch.Generator().manual_seed(seed)
    batch = (torch.randn(batch_size, 3, image_size, image_size, generator=gen),
             torch.randint(0, 10, (batch_size,), generator=gen))
    return model, batch


def _loss(model, batch):
    return torch.nn.functional.cross_entropy(model(batch[0]), batch[1])


# ----------------------------------------------------------------------------- run
def _worker(spec: dict) -> dict:
    """One configuration, in this (fresh) process."""
    torch.set_num_threads(spec["threads"])
    model, batch = _model_and_batch(spec["image_size"], spec["batch_size"])
    calls = [0]

    def loss(m, b):
        calls[0] += 1
        return _loss(m, b)

    opt = memmaml.IngraphGradientDescent(0.01)
    if spec["method"] == "naive":
        maml = memmaml.NaiveMAML(model, loss, opt)
    else:
        maml = memmaml.GradientCheckpointMAML(model, loss, opt, schedule=Binomial(spec["slots"]),
                                              offload=spec["offload"])
    n = spec["steps"]
    start = time.perf_counter()
    with memmaml.track_memory("cpu") as mem:
        result = maml([batch] * n, max_grad_grad_norm=100.0)
        _loss(result.model, batch).backward()
        del result
    seconds = time.perf_counter() - start
    grad_norm = float(torch.linalg.vector_norm(torch.cat([p.grad.reshape(-1) for p in model.parameters()])))
    return {**spec, "peak_bytes": mem.peak_bytes, "host_peak_bytes": mem.host_peak_bytes,
            "rss_peak_bytes": memmaml.peak_rss_bytes(), "seconds": seconds, "seconds_per_step": seconds / n,
            "loss_evaluations": calls[0], "meta_grad_norm": grad_norm,
            "expected_evaluations": (n if spec["method"] == "naive" else
                                     binomial_evaluations(n, spec["slots"]) + n)}


def cmd_run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    specs = [dict(method="naive", steps=n, slots=None, offload=False) for n in args.naive_steps]
    for n in args.steps:
        specs.append(dict(method="binomial", steps=n, slots=args.slots, offload=False))
        if args.offload:
            specs.append(dict(method="binomial", steps=n, slots=args.slots, offload=True))
    records = []
    from tqdm.auto import tqdm

    for spec in tqdm(specs, desc="configurations"):
        spec.update(image_size=args.image_size, batch_size=args.batch_size, threads=args.threads)
        proc = subprocess.run([sys.executable, __file__, "_worker", json.dumps(spec)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            records.append({**spec, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
        else:
            records.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        (out / "results.json").write_text(json.dumps(records, indent=1))
    _write_run_table(records, out, args)


def _write_run_table(records, out: Path, args) -> None:
    naive = {r["steps"]: r for r in records if r["method"] == "naive" and "error" not in r}
    naive_per_step = min((r["seconds_per_step"] for r in naive.values()), default=None)
    lines = [f"ResNet-18, batch {args.batch_size}×3×{args.image_size}×{args.image_size}, SGD lr 0.01, "
             f"max_grad_grad_norm 100, CPU ({os.cpu_count()} cores, {args.threads} threads), float32.",
             "", "| method | steps | peak live tensors | host (offloaded) | peak RSS | s / inner step | "
             "× naive's s / step | loss evaluations (expected) |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        name = "naive" if r["method"] == "naive" else f"binomial(slots={r['slots']})" + (
            " + offload" if r["offload"] else "")
        if "error" in r:
            lines.append(f"| {name} | {r['steps']} | failed: {r['error']} | | | | | |")
            continue
        ratio = f"{r['seconds_per_step'] / naive_per_step:.2f}" if naive_per_step else "—"
        lines.append(f"| {name} | {r['steps']} | {format_bytes(r['peak_bytes'])} | "
                     f"{format_bytes(r['host_peak_bytes'])} | {format_bytes(r['rss_peak_bytes'])} | "
                     f"{r['seconds_per_step']:.3f} | {ratio} | {r['loss_evaluations']} "
                     f"({r['expected_evaluations']}) |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------- predict
SEARCH_LIMIT = 10**12


def _longest(fits, upper: int = SEARCH_LIMIT) -> int:
    """The largest n >= 0 with fits(n) true, fits monotone decreasing."""
    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi < upper and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, upper)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def _uniform_peak(n: int, S: int, A: int, base: int) -> int:
    k_best = max(1, round(math.sqrt(n * S / A)))
    return min(base + (-(-n // k) + 1) * S + k * A for k in {1, k_best - 1 or 1, k_best, k_best + 1, n})


def predict(costs: memmaml.StepCosts, params_bytes: int, budget: int, max_slowdown: float,
            host_bytes: int) -> dict:
    S, A = costs.state_bytes, costs.graph_bytes
    base = 2 * params_bytes  # the meta-parameters and their .grad, outside the unroll
    t_ng, t_g = costs.nograph_seconds, costs.graph_seconds
    naive_n = max(0, (budget - base) // A)
    uniform_n = _longest(lambda n: _uniform_peak(n, S, A, base) <= budget)
    slots = (budget - base - A - 2 * S) // S

    def slowdown(n: int) -> float:
        return (binomial_evaluations(n, slots) / n * t_ng + t_g) / t_g

    binomial_n = _longest(lambda n: slowdown(n) <= max_slowdown) if slots >= 1 else 0
    offload_device = base + A + 2 * S
    return {
        "state_bytes": S, "graph_bytes": A, "nograph_seconds": t_ng, "graph_seconds": t_g, "base_bytes": base,
        "budget_bytes": budget, "naive_max_steps": int(naive_n), "uniform_max_steps": int(uniform_n),
        "binomial_slots": int(slots), "binomial_max_steps": int(binomial_n), "max_slowdown": max_slowdown,
        "binomial_slowdown_at_100k": slowdown(100_000) if slots >= 1 else None,
        "binomial_evaluations_per_step_at_100k": (binomial_evaluations(100_000, slots) / 100_000
                                                  if slots >= 1 else None),
        "offload_device_bytes": offload_device, "offload_fits": offload_device <= budget,
        "offload_uniform1_max_steps_host": int(host_bytes // S),
    }


def _steps(n: int) -> str:
    return f"≥ {SEARCH_LIMIT:.0e} (search limit)" if n >= SEARCH_LIMIT - 1 else f"{n:,}"


def cmd_predict(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    budget = parse_size(args.budget)
    host = parse_size(args.host_memory)
    model, batch = _model_and_batch(args.image_size, args.batch_size)
    params_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    records = []
    for name, opt in [("SGD", memmaml.SGD(0.01)), ("Adam", memmaml.Adam(1e-3))]:
        costs = memmaml.measure_step_costs(model, _loss, batch, opt)
        record = {"optimizer": name, "image_size": args.image_size, "batch_size": args.batch_size,
                  **predict(costs, params_bytes, budget, args.max_slowdown, host)}
        records.append(record)
        print(json.dumps(record))
    (out / "predictions.json").write_text(json.dumps(records, indent=1))
    lines = [f"ResNet-18, batch {args.batch_size}×3×{args.image_size}×{args.image_size}, one step measured on "
             f"CPU (`memmaml.measure_step_costs`); budget {args.budget}, of which the meta-parameters and their "
             f"gradients take 2 × {format_bytes(params_bytes)}.", "",
             "| optimizer | state S | step graph A | s / step (no graph) | s / step (graph + backward) | "
             "naive | uniform (best k) | binomial (slots) | binomial × naive time at 100k | "
             "offload (device bytes) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        slow = r["binomial_slowdown_at_100k"]
        lines.append(
            f"| {r['optimizer']} | {format_bytes(r['state_bytes'])} | {format_bytes(r['graph_bytes'])} | "
            f"{r['nograph_seconds']:.2f} | {r['graph_seconds']:.2f} | {r['naive_max_steps']} | "
            f"{r['uniform_max_steps']} | {_steps(r['binomial_max_steps'])} at ≤ {r['max_slowdown']}× "
            f"({r['binomial_slots']} slots) | {slow:.2f}× | "
            f"unbounded by the device ({format_bytes(r['offload_device_bytes'])}); "
            f"{r['offload_uniform1_max_steps_host']:,} states fit {args.host_memory} of host memory |")
    (out / "predictions.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


# ------------------------------------------------------------------------- combine
def cmd_combine(args) -> None:
    """Peak memory against steps for several scripts/compare_memory.py runs, in one plot and table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, list[tuple[int, int, float | None]]] = {}
    for folder in args.runs:
        path = Path(folder) / "results.json"
        if not path.exists():
            raise ValueError(f"no results.json in {folder}: run scripts/compare_memory.py --out {folder} first")
        for r in json.loads(path.read_text()):
            if r.get("status") != "ok" or r.get("peak_bytes") is None or r.get("role") not in (None, "sweep"):
                continue
            if r["method"] == "naive":
                name = "naive"
            elif r.get("schedule") in (None, "uniform"):
                name = f"uniform (k={r['checkpoint_steps']})" if args.fixed_k else "uniform (k=ceil(sqrt(n)))"
            else:
                name = str(r["schedule"])
            series.setdefault(name, []).append((r["steps"], r["peak_bytes"], r.get("seconds")))
    if not series:
        raise ValueError("the runs hold no successful measurements")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    lines = ["| schedule | steps | peak live tensors (device) | seconds |", "|---|---|---|---|"]
    for name, rows in series.items():
        rows = sorted(set(rows))
        ax.plot([r[0] for r in rows], [r[1] / 2**20 for r in rows], "o-", label=name)
        lines += [f"| {name} | {s} | {format_bytes(p)} | {'' if t is None else f'{t:.2f}'} |" for s, p, t in rows]
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps")
    ax.set_ylabel("peak live tensors on the device (MiB)")
    ax.set_title(args.title)
    ax.legend()
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(out / "schedules.png", dpi=120)
    (out / "schedules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "_worker":
        print(json.dumps(_worker(json.loads(sys.argv[2]))))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--out", required=True, help="output folder for JSON and Markdown results")
        p.add_argument("--image-size", type=int, default=32, help="height and width of the random images")
        p.add_argument("--batch-size", type=int, default=16, help="images per inner-step batch")
        p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch intra-op threads")

    def counts(text):
        try:
            values = [int(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated step counts, got {text!r}") from None
        if not values or min(values) < 1:
            raise argparse.ArgumentTypeError(f"step counts must be positive integers, got {text!r}")
        return values

    run = sub.add_parser("run", help="measure naive and binomial meta-steps")
    common(run)
    run.add_argument("--slots", type=int, default=10, help="stored states of the binomial schedule")
    run.add_argument("--steps", type=counts, default=[100, 1000], help="binomial step counts, e.g. 100,1000")
    run.add_argument("--naive-steps", type=counts, default=[100], help="naive step counts, e.g. 10,100")
    run.add_argument("--offload", action="store_true", help="also run binomial with offloaded states")
    pred = sub.add_parser("predict", help="measure one step and predict the longest unroll in a budget")
    common(pred)
    pred.add_argument("--budget", default="11GiB", help="device memory budget, e.g. 11GiB")
    pred.add_argument("--max-slowdown", type=float, default=4.0,
                      help="longest binomial unroll whose time per step is at most this multiple of naive's")
    pred.add_argument("--host-memory", default="24GiB", help="host memory available to offloaded states")
    comb = sub.add_parser("combine", help="plot several scripts/compare_memory.py runs side by side")
    comb.add_argument("runs", nargs="+", help="output folders of scripts/compare_memory.py")
    comb.add_argument("--out", required=True, help="output folder for schedules.png and schedules.md")
    comb.add_argument("--title", default="peak memory of a meta-step", help="plot title")
    comb.add_argument("--fixed-k", action="store_true", help="uniform runs used a fixed --checkpoint-steps")
    args = parser.parse_args(argv)
    if args.command == "run" and args.slots < 1:
        parser.error(f"--slots must be a positive integer, got {args.slots}")
    try:
        {"run": cmd_run, "predict": cmd_predict, "combine": cmd_combine}[args.command](args)
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
