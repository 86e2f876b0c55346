#!/usr/bin/env python
"""Check memmaml's GPU predictions on a CUDA device, in one command and under 8 minutes.

Every GPU figure memmaml publishes was predicted from CPU measurements. This
script measures them on the seed's workload (``memmaml.bench.Workload()``):
ResNet-18 (``memmaml.models``), a random batch of 16x3x224x224, 10 classes,
cross-entropy, in-graph SGD with lr 0.01; one meta-step is the inner loop of
``n`` steps on the support batch, the query loss at the adapted model and
``.backward()``. Every measured meta-step runs in a fresh process
(``memmaml.bench.Runner``), part 5's comparisons together in one; a part that
fails or runs out of its time is recorded and the rest run. The parts (their
machinery in ``memmaml.bench``, engines in ``memmaml.parse_engine`` text):

1. naive: the longest n under the cap, from 16 one step at a time (up until the
   first out-of-memory error, or down until the first success);
2. ``uniform:5`` (the seed's ``checkpoint_steps=5``) at n = 500;
3. ``auto:10GiB`` (``--auto-budget``) at n = 2,000, doubled while the time
   allows: the binomial schedule Auto chooses from the probe's step costs;
4. offload: ``binomial:100+offload`` against ``binomial:100`` at n = 200 and 2,000
   (device peak, time with over without);
5. exactness: naive (twice), ``uniform:3``, ``binomial:2`` and ``binomial:2+offload``
   meta-gradients and BatchNorm buffers at n = 8 with dropout, float32, under
   default and deterministic settings (``CUBLAS_WORKSPACE_CONFIG=:4096:8``);
6. torch_maml's checkpointed MAML beside memmaml's at n = 100, k = 10, if installed.

Memory: ``torch.cuda.set_per_process_memory_fraction`` caps the allocator at
``--cap`` (11 GiB), so an overrun is a real out-of-memory error. Peaks are
``max_memory_allocated`` / ``max_memory_reserved`` of the measured meta-step,
absolute (model and batches included). A probe process first measures the CUDA
context (outside the cap: nvidia-smi's memory.used after the first tensor minus
before, less the allocator's reserved bytes) and one step with and without its
graph (``memmaml.measure_step_costs``).

Time: each part's meta-steps are predicted from the probe's step costs (scaled
by naive's measured time per step once part 1 ran); its n is reduced, or the
part skipped, to stay within ``--time-budget`` seconds, process start-ups
included. Predicted and measured seconds, and the reason for a reduced n, are
recorded.

Outputs in ``--out``: results.json, results.md, results.png and parts/ (each
run's spec, record and log). ``--smoke`` runs the same code at toy sizes (a tiny
conv net with BatchNorm, n <= 8, no cap) on the CPU in under a minute.

Example::

    python scripts/gpu_check.py --out benchmarks/gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from memmaml import StepCosts, parse_size
from memmaml.bench import (
    GPU_PARTS,
    GPU_SIZES,
    plan_gpu_part,
    probe_device,
    provenance,
    run_gpu_part,
    write_gpu_report,
)

ORDER = list(GPU_PARTS)  # cheap and vital first


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    def positive(text: str) -> float:
        try:
            if float(text) > 0:
                return float(text)
        except ValueError:
            pass
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")

    def size(text: str) -> int:
        try:
            return parse_size(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    def part_list(text: str) -> list[str]:
        names = {t.strip() for t in text.split(",") if t.strip()}
        if not names or names - set(ORDER):
            raise argparse.ArgumentTypeError(f"unknown parts {sorted(names - set(ORDER))}; known: {', '.join(ORDER)}")
        return [n for n in ORDER if n in names]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder: results.json, results.md, results.png, parts/")
    parser.add_argument("--smoke", action="store_true", help="toy sizes and no cap, to check the script on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--time-budget",
        type=positive,
        default=420.0,
        help="seconds for all parts; a part's n is reduced, or the part skipped, to fit (default 420)",
    )
    parser.add_argument("--cap", type=size, default=parse_size("11GiB"), help="allocator cap (default 11GiB)")
    parser.add_argument(
        "--auto-budget",
        type=size,
        default=parse_size("10GiB"),
        help="part 3's Auto budget (default 10GiB: the cap less 1 GiB for the model, batches and "
        "workspaces, which Auto's memory model leaves out)",
    )
    parser.add_argument("--parts", type=part_list, default=ORDER, help=f"a comma-separated subset of {','.join(ORDER)}")
    args = parser.parse_args(argv)
    if not args.out:
        parser.error("--out is required: the folder for results.json, results.md and results.png")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be a CUDA device (or cpu with --smoke), got {args.device!r}")
    if not args.smoke and (device.type != "cuda" or not torch.cuda.is_available()):
        parser.error(
            f"no CUDA device (--device {args.device}; torch.cuda.is_available() is "
            f"{torch.cuda.is_available()}): run on a machine with a GPU, or pass --smoke for a toy run "
            "of the same code on the CPU"
        )
    args.device = str(torch.device("cuda", device.index or 0) if device.type == "cuda" else device)
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from tqdm import tqdm

    sizes, out, start = GPU_SIZES[args.smoke], Path(args.out), time.monotonic()
    workload = dataclasses.replace(sizes.workload, device=args.device)
    end = start + 1.1 * args.time_budget  # no part runs past it
    cap, auto_budget = (None, None) if args.smoke else (args.cap, args.auto_budget)
    threads = 1 if args.device == "cpu" else 0  # one thread keeps a CPU smoke run steady on a shared machine
    command = ["python", "scripts/gpu_check.py", *argv]
    (out / "parts").mkdir(parents=True, exist_ok=True)
    results = {
        "label": (
            f"smoke run on {args.device}, toy sizes: not a measurement of the seed"
            if args.smoke
            else f"measured on {args.device}"
        ),
        "smoke": args.smoke,
        "device": args.device,
        "cap_bytes": cap,
        "auto_budget_bytes": auto_budget,
        "time_budget_seconds": args.time_budget,
        "total_seconds": 0.0,
        "workload": workload.__dict__,
        "workload_text": f"{workload.describe()}, cross-entropy, one support batch for every inner step",
        "provenance": None,
        "environment": {},
        "calibration": None,
        "parts": {},
    }
    probe = probe_device(
        workload,
        out / "parts" / "probe",
        cap_bytes=cap,
        command=command,
        threads=threads,
        timeout=min(120.0, end - time.monotonic()),
    )
    results.update(
        probe={k: probe.get(k) for k in ("status", "error", "wall_seconds")},
        environment=probe.get("environment") or {},
        provenance=probe.get("provenance"),
    )
    if not args.smoke and results["environment"].get("name"):
        results["label"] = f"measured on {results['environment']['name']}"
    costs = StepCosts(**probe["step_costs"]) if probe.get("step_costs") else None
    scale, overhead = 1.0, probe["wall_seconds"] if costs else (5.0 if args.smoke else 30.0)  # one process start-up
    if costs:
        results["calibration"] = {
            "step_costs": costs._asdict(),
            "scale": scale,
            "how": (
                "predicted seconds = (no-graph evaluations x nograph_seconds + n x graph_seconds) x scale, "
                "scale = naive's measured seconds per step / graph_seconds (1 until part 1 ran)"
            ),
        }
    print(f"[probe] {probe['status']} in {probe['wall_seconds']:.1f} s {(probe.get('error') or '')[:200]}")

    bar = tqdm(args.parts, desc="gpu_check", unit="part", file=sys.stdout, disable=not sys.stdout.isatty())
    for index, name in enumerate(bar):
        part = GPU_PARTS[name]
        bar.set_postfix_str(part.title)
        now = time.monotonic()
        left = max(start + args.time_budget - now, 0.0)
        share = left * part.share / sum(GPU_PARTS[n].share for n in args.parts[index:])
        spec, predicted, note = plan_gpu_part(
            name, sizes, costs, share - part.processes * overhead, scale=scale, auto_budget=auto_budget
        )
        entry = {"number": part.number, "title": part.title, "predicted_seconds": predicted, "plan_note": note}
        if spec is not None and end - now < 15:
            spec, entry["plan_note"] = None, "skipped: no time left in the budget"
        if spec is None:
            entry.update(status="skipped", wall_seconds=0.0)
        else:
            timeout = min(max(1.5 * (predicted or 0) + part.processes * overhead, share) + 30, end - now)
            record = run_gpu_part(
                name,
                spec,
                workload=workload,
                workdir=out / "parts" / name,
                timeout=timeout,
                cap_bytes=cap,
                threads=threads,
            )
            entry.update(record, timeout_seconds=timeout, spec=spec)
            if record["processes"]:  # measured: a process's start-up, build and warm-up step
                overhead = max(0.5, (record["wall_seconds"] - record["work_seconds"]) / record["processes"])
            if name == "naive" and costs and record.get("seconds_per_step"):
                scale = min(4.0, max(0.25, record["seconds_per_step"] / costs.graph_seconds))
                results["calibration"]["scale"] = scale
        results["parts"][name] = entry
        tqdm.write(
            f"[{part.number} {name}] {entry['status']} in {entry['wall_seconds']:.1f} s (predicted "
            f"{'—' if predicted is None else f'{predicted:.1f}'}) "
            f"{(entry.get('plan_note') or entry.get('error') or '')[:200]}",
            file=sys.stdout,
        )
        results["total_seconds"] = time.monotonic() - start
        write_gpu_report(results, out, with_plot=False)  # after every part: a cut-short run leaves its figures
    if results["provenance"] is None:  # the probe failed; here, after every part, CUDA may start in this process
        results["provenance"] = provenance(args.device, command, workers=True)
    results["total_seconds"] = time.monotonic() - start
    write_gpu_report(results, out)
    print(f"{results['label']}: {out / 'results.md'}, results.json, results.png ({results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
