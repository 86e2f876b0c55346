"""Check memmaml's GPU predictions on a CUDA device, in one command and under 8 minutes.

Every GPU figure memmaml publishes was predicted from CPU measurements. This
command measures them on the seed's workload (``memmaml.bench.Workload()``):
ResNet-18 (``memmaml.models``), a random batch of 16x3x224x224, 10 classes,
cross-entropy, in-graph SGD with lr 0.01; one meta-step is the inner loop of
``n`` steps on the support batch, the query loss at the adapted model and
``.backward()``. Every measured meta-step runs in a fresh process
(``memmaml.bench.Runner``), part 5's comparisons together in one; a part that
fails or runs out of its time is recorded and the rest run. The parts (their
machinery in ``memmaml.bench``, engines in ``memmaml.parse_engine`` text):

1. naive: the longest n under the cap, searched from 16 (doubling up to the
   first out-of-memory error, or halving down to the first success, then
   bisection; 64 at most, and within the part's time);
2. ``uniform:5`` (the seed's ``checkpoint_steps=5``) at n = 500;
3. ``auto:10GiB`` (``--auto-budget``) at n = 2,000, doubled while the time
   allows: the binomial schedule Auto chooses from the probe's step costs;
4. offload: ``binomial:100+offload`` against ``binomial:100`` at n = 200 and 2,000
   (device peak; host use as the stored states' bytes beside the pinned
   allocator's rounded peak; time with over without);
5. exactness: naive (twice: where the two differ, the kernels are not
   deterministic), ``uniform:3``, ``binomial:2`` and ``binomial:2+offload``
   meta-gradients and BatchNorm buffers at n = 8 with dropout, float32, under
   default and deterministic settings (``CUBLAS_WORKSPACE_CONFIG=:4096:8``);
6. torch_maml's checkpointed MAML beside memmaml's at n = 100, k = 10, if installed;
7. overlap: part 4's schedule with and without offload at n = 500, untracked
   and interleaved, twice: the time ratio says whether the copies to and from
   host memory hide behind compute.

An offloading run on CUDA warms up at the n it measures, so that the pinned
host allocator holds its blocks before the timed run (a cold first run times
``cudaHostAlloc``, not the engine).

Memory: ``torch.cuda.set_per_process_memory_fraction`` caps the allocator at
``--cap`` (11 GiB), so an overrun is a real out-of-memory error. Peaks are
``max_memory_allocated`` / ``max_memory_reserved`` of the measured meta-step,
absolute (model and batches included). A probe process first measures the CUDA
context (outside the cap: nvidia-smi's memory.used after the first tensor minus
before, less the allocator's reserved bytes; devices numbered by PCI bus, as
nvidia-smi numbers them) and one step with and without its graph
(``memmaml.measure_step_costs``).

Time: each part's meta-steps are predicted from the probe's step costs (scaled
by naive's measured time per step once part 1 ran); its n is reduced, or the
part skipped, to stay within ``--time-budget`` seconds, process start-ups
included. Predicted and measured seconds, and the reason for a reduced n, are
recorded.

Outputs in ``--out``: results.json, results.md, results.png and parts/ (each
run's spec, record and log), rewritten atomically after every run, so a check
cut short (Ctrl-C: exit status 130) keeps its figures. An earlier check's
results in ``--out`` are moved to ``--out/previous/<UTC time>/`` first, never
overwritten; one check at a time may use an ``--out``. ``--smoke`` runs the
same code at toy sizes (a tiny conv net with BatchNorm, n <= 8, no cap) on the
CPU in about a minute.

Example::

    python scripts/gpu_check.py --out benchmarks/gpu
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

from memmaml import StepCosts, format_bytes
from memmaml.bench import (
    GPU_CHILD_ENV,
    GPU_PARTS,
    GPU_SIZES,
    FolderInUse,
    FolderLockError,
    lock_folder,
    move_aside,
    plan_gpu_part,
    probe_device,
    provenance,
    run_gpu_part,
    write_gpu_report,
)

from . import _types as t

__all__ = ["ORDER", "build_parser", "main", "parse_args"]

PROG = "memmaml-gpu-check"
SCRIPT = "scripts/gpu_check.py"
MODULE = "memmaml.cli.gpu_check"
ORDER = list(GPU_PARTS)  # cheap and vital first
#: the default cap, and what the default Auto budget leaves of it for the model, batches and workspaces
CAP, AUTO_ROOM = "11GiB", "1GiB"
#: what a check writes in --out, moved aside together before another check starts there
RESULT_FILES = ("results.json", "results.md", "results.png", "parts")
#: exit status after Ctrl-C, as a shell reports a process ended by SIGINT
INTERRUPTED = 130


def build_parser(prog: str = PROG) -> t.ArgumentParser:
    """The command line; every value is checked here, before any work."""
    parser = t.ArgumentParser(prog=prog, usage=t.USAGE_WITH_OUT, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out",
        type=t.output_folder,
        required=True,
        help="output folder (required): results.json, results.md, results.png, parts/",
    )
    parser.add_argument("--smoke", action="store_true", help="toy sizes and no cap, to check the command on a CPU")
    parser.add_argument(
        "--device",
        type=t.device,
        default=None,
        help="cuda or cuda:N; cpu only with --smoke (default: cuda where one is available, else cpu; "
        "the choice is printed)",
    )
    parser.add_argument(
        "--time-budget",
        type=t.positive_float,
        default="420",
        help="seconds for all parts; a part's n is reduced, or the part skipped, to fit",
    )
    parser.add_argument(
        "--cap",
        type=t.size,
        default=None,
        help=f"allocator cap (default: {CAP}; not with --smoke, which runs uncapped)",
    )
    parser.add_argument(
        "--auto-budget",
        type=t.size,
        default=None,
        help=f"part 3's Auto budget, at most --cap (default: the cap less {AUTO_ROOM} for the model, batches and "
        "workspaces, which Auto's memory model leaves out: 10GiB under an 11GiB cap; not with --smoke, which "
        "takes it from the probe)",
    )
    parser.add_argument(
        "--parts", type=t.name_list(ORDER), default=",".join(ORDER), help="the parts to run, separated by commas"
    )
    return parser


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> Any:
    """The checked arguments; a bad value exits with status 2 before anything is written."""
    return _parse(build_parser(prog), argv)


def _parse(parser: t.ArgumentParser, argv: list[str] | None) -> Any:
    # the children's device numbering (nvidia-smi's, by PCI bus), set here before --device's check asks CUDA
    # anything: the cuda:N checked here is the device the children measure
    os.environ.update(GPU_CHILD_ENV)
    args = parser.parse_args(argv)
    given_device = args.device is not None
    args.device = args.device or t.default_device()
    for flag in ("cap", "auto_budget"):
        if args.smoke and getattr(args, flag) is not None:
            parser.fail(f"--{flag.replace('_', '-')}", "a --smoke run is uncapped at toy sizes; leave it out")
    if not args.smoke:
        cap = args.cap or t.size(CAP)
        if args.auto_budget is None and cap <= t.size(AUTO_ROOM):
            parser.fail(
                "--cap",
                f"{format_bytes(cap)} leaves nothing of the default --auto-budget (the cap less "
                f"{AUTO_ROOM}): give --auto-budget too",
            )
        if args.auto_budget is not None and args.auto_budget > cap:
            parser.fail(
                "--auto-budget",
                f"{format_bytes(args.auto_budget)} is more than --cap {format_bytes(cap)}: Auto would plan for "
                "memory the allocator may not use",
            )
    if not args.smoke and not args.device.startswith("cuda"):
        parser.fail(
            "--device",
            f"no CUDA device ({args.device}): run on a machine with a GPU, or pass --smoke for a toy run "
            "of the same code on the CPU",
        )
    args.cap = args.cap or t.size(CAP)
    args.auto_budget = args.auto_budget or args.cap - t.size(AUTO_ROOM)
    if args.device == "cuda":
        args.device = "cuda:0"
    print(f"device: {args.device}" + ("" if given_device else " (the default here)"), file=sys.stderr)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status.

    0: the check ran (each part's status is in the report); 2: a bad command
    line, or an ``--out`` another check is using, before anything is written;
    130: interrupted (what finished is written).
    """
    prog, argv = t.command_line(SCRIPT, PROG, argv, MODULE)
    parser = build_parser(prog)
    args = _parse(parser, argv)
    command = [*t.invocation(prog, SCRIPT), *argv]
    try:
        with lock_folder(args.out, " ".join(command)):  # held until the check ends: one check per --out
            return _check(args, command)
    except FolderInUse as err:
        parser.fail("--out", f"{err}: wait for it to end, or choose another --out")
    except FolderLockError as err:  # not another job: the lock file or the filesystem
        parser.fail("--out", f"{err}; choose another --out")


def _check(args: Any, command: list[str]) -> int:
    out, start = Path(args.out), time.monotonic()
    moved = move_aside(out, RESULT_FILES)  # a check cut short in its probe left parts/ without results.json
    if moved is not None:
        print(f"{out} held an earlier check's results: moved to {moved}", file=sys.stderr)
    workload = dataclasses.replace(GPU_SIZES[args.smoke].workload, device=args.device)
    cap, auto_budget = (None, None) if args.smoke else (args.cap, args.auto_budget)
    threads = 1 if args.device == "cpu" else 0  # one thread keeps a CPU smoke run steady on a shared machine
    (out / "parts").mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
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
    try:
        _run_parts(args, results, workload, command, start=start, threads=threads)
    except KeyboardInterrupt:  # the child was stopped (run_child); what finished is written, the rest is not run
        if results["provenance"] is None:  # stopped in the probe: the report still names its code and command
            results["provenance"] = provenance(args.device, command, workers=True)
        results.update(interrupted=True, total_seconds=time.monotonic() - start)
        write_gpu_report(results, out)
        print(
            f"\ninterrupted: the parts that finished are in {out / 'results.json'} and results.md; "
            "the rest did not run",
            file=sys.stderr,
        )
        return INTERRUPTED
    if results["provenance"] is None:  # the probe failed; here, after every part, CUDA may start in this process
        results["provenance"] = provenance(args.device, command, workers=True)
    results["total_seconds"] = time.monotonic() - start
    write_gpu_report(results, out)
    print(f"{results['label']}: {out / 'results.md'}, results.json, results.png ({results['total_seconds']:.0f} s)")
    return 0


def _run_parts(
    args: Any, results: dict[str, Any], workload: Any, command: list[str], *, start: float, threads: int
) -> None:
    """The probe, then every part of ``args.parts`` in turn, each written into ``results`` (and --out) as it ends."""
    from tqdm import tqdm

    out, sizes, end = Path(args.out), GPU_SIZES[args.smoke], start + 1.1 * args.time_budget  # no part runs past end
    cap, auto_budget = results["cap_bytes"], results["auto_budget_bytes"]
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
    write_gpu_report(results, out, with_plot=False)

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

            def progress(
                record: dict[str, Any], name: str = name, entry: dict[str, Any] = entry, spec: dict[str, Any] = spec
            ) -> None:
                # a part cut short (the check killed) keeps its runs so far, marked as such
                results["parts"][name] = {**entry, **record, "status": "incomplete", "spec": spec}
                results["total_seconds"] = time.monotonic() - start
                write_gpu_report(results, out, with_plot=False)

            record = run_gpu_part(
                name,
                spec,
                workload=workload,
                workdir=out / "parts" / name,
                timeout=timeout,
                cap_bytes=cap,
                threads=threads,
                costs=costs,
                progress=progress,
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


if __name__ == "__main__":
    sys.exit(main())
