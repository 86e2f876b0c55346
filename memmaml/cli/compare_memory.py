"""Memory and time of every memmaml engine against naive MAML, and the longest unroll each fits a budget.

One meta-step is measured per configuration (the inner loop of n steps, the
query loss at the adapted parameters, its backward into the model), each in a
fresh process (memmaml.bench). Memory is the allocator's peak on CUDA and the
bytes of live tensors on CPU (memmaml.track_memory); time comes from untracked
runs, engines interleaved. With --budget, memmaml's cost model (the one Auto
plans with) is fitted to the measured runs and answers, per engine, the
longest unroll that fits -- or says that its memory does not grow with n.

Every finished run is written to --out/results.json as it completes. A run
that fails (or the probe) is recorded with its cause (its traceback and the
end of its log too) and the others go on; Ctrl-C keeps what finished.
Rerunning the same command with the same --out and workload at the same
memmaml commit keeps the runs that succeeded and runs the rest again (those
not run yet, and those that failed, timed out or ran out of memory, whose
records stay until the new run replaces them), so an interrupted sweep
resumes; runs recorded there that this command does not make (engines or n
not given now, or another engine chosen for uniform:best or binomial:auto, as
after a change of --budget or --host-budget), failed or not, are kept apart in
results.json (other_records), out of the report, for a later command that
makes them. Results of
another workload or commit in --out are moved to --out/previous/<UTC time>/,
never overwritten. One sweep at a time
may use an --out: a second one stops with exit status 2, naming the first.

Example (the seed demo; 19 minutes on a 2-core CPU):

    python scripts/compare_memory.py --steps 1,2,4 --budget 11GiB --out results/seed
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from memmaml import default_host_budget
from memmaml.bench import (
    PEER_INSTALL,
    FolderInUse,
    FolderLockError,
    Method,
    Runner,
    Workload,
    lock_folder,
    move_aside,
    provenance,
    read_results,
    render,
    run_sweep,
    unavailable,
    write_json_atomic,
)

from . import _types as t

__all__ = ["build_parser", "main"]

PROG = "memmaml-compare"
SCRIPT = "scripts/compare_memory.py"
MODULE = "memmaml.cli.compare_memory"
#: what a sweep writes in --out, moved aside together when another sweep starts afresh there
RESULT_FILES = ("results.json", "results.md", "results.csv", "results.png", "results.previous.json", "runs")
DEFAULT_ENGINES = "naive,uniform:5,uniform:best,binomial:auto,binomial:auto+offload"
PEERS = {
    "torch_maml": [Method("torch_maml", "naive"), Method("torch_maml", "uniform:{k}")],
    "torch_maml:checkpoint": [Method("torch_maml", "uniform:{k}")],
    "higher": [Method("higher")],
    "torchopt": [Method("torchopt")],
}
#: each Workload field's flag, to name it in an error
FLAGS = {
    "model": "--model",
    "image_size": "--image-size",
    "batch_size": "--batch-size",
    "channels": "--channels",
    "num_classes": "--num-classes",
    "width": "--width",
    "optimizer": "--optimizer",
    "lr": "--lr",
    "max_grad_grad_norm": "--max-grad-grad-norm",
    "dtype": "--dtype",
    "device": "--device",
    "seed": "--seed",
}
#: exit status after Ctrl-C, as a shell reports a process ended by SIGINT
INTERRUPTED = 130


def build_parser(prog: str = PROG) -> t.ArgumentParser:
    """The command line; every value is checked here, before any work."""
    p = t.ArgumentParser(
        prog=prog,
        description=__doc__.split("\n\n")[0],
        epilog=f"Peers are optional: pip install {' '.join(c.split()[-1] for c in PEER_INSTALL.values())}. "
        "Outputs in --out: "
        "results.json (every record, the fit, the answers, provenance), results.csv, "
        "results.md, results.png; runs/ holds each run's spec and log until the sweep is complete; previous/ "
        "holds earlier sweeps of another workload or commit; .lock is held while a sweep runs.",
    )
    w = p.add_argument_group("workload (defaults: the seed demo)")
    w.add_argument(
        "--model", type=t.lower, choices=("resnet18", "conv4", "mlp"), default="resnet18", help="the network"
    )
    w.add_argument("--image-size", type=t.positive_int, default="224", help="side of the random square images")
    w.add_argument("--batch-size", type=t.positive_int, default="16", help="images per inner batch")
    w.add_argument("--channels", type=t.positive_int, default="3", help="image channels")
    w.add_argument("--num-classes", type=t.positive_int, default="10", help="classes of the random labels")
    w.add_argument("--width", type=t.positive_int, default="64", help="conv4 filters / mlp hidden units")
    w.add_argument(
        "--optimizer",
        type=t.lower,
        choices=("sgd", "adam", "rmsprop"),
        default="sgd",
        help="the in-graph inner optimizer",
    )
    w.add_argument("--lr", type=t.positive_float, default="0.01", help="the inner optimizer's learning rate")
    w.add_argument(
        "--max-grad-grad-norm",
        type=t.non_negative_float,
        default="100",
        help="clip through the unroll at this norm; 0 disables it",
    )
    w.add_argument("--fresh-batches", action="store_true", help="a new batch per inner step instead of one reused")
    w.add_argument("--dtype", type=t.lower, choices=("float32", "float64"), default="float32", help="model and data")
    w.add_argument(
        "--device",
        type=t.device,
        default=None,
        help="cpu, cuda or cuda:N (default: cuda where one is available, else cpu; the choice is printed)",
    )
    w.add_argument("--seed", type=t.non_negative_int, default="0", help="seed of the model and the data")
    s = p.add_argument_group("sweep")
    s.add_argument(
        "--engines",
        type=t.engine_list,
        default=DEFAULT_ENGINES,
        help="memmaml engines, in memmaml.parse_engine's syntax: naive, uniform:K, sqrt, uniform:best, "
        "binomial:SLOTS, binomial:SLOTS:SEGMENT, binomial:auto, auto:BUDGET, any of them but naive +offload",
    )
    s.add_argument("--steps", type=t.positive_int_list, default="1,2,4", help="inner-step counts n to measure")
    s.add_argument(
        "--peers",
        type=t.name_list(PEERS),
        default=[],
        help=f"peer libraries run beside memmaml, separated by commas: {', '.join(PEERS)} (default: none)",
    )
    s.add_argument("--peer-checkpoint-steps", type=t.positive_int, default="5", help="torch_maml's checkpoint_steps")
    s.add_argument(
        "--repeats", type=t.non_negative_int, default="1", help="untracked timing runs per configuration (0: none)"
    )
    s.add_argument(
        "--time-steps",
        type=t.positive_int_list,
        default=None,
        help="the n of --steps with timing runs (default: the largest)",
    )
    s.add_argument(
        "--threads",
        type=t.positive_int,
        default=None,
        help="torch threads per run (default: 1 on a CPU, torch's own number on CUDA)",
    )
    s.add_argument("--timeout", type=t.positive_float, default="7200", help="seconds before a run is stopped")
    s.add_argument(
        "--max-run-seconds",
        type=t.positive_float,
        default=None,
        help="skip runs the probe predicts to take longer, recording the reason (default: no limit)",
    )
    s.add_argument(
        "--no-host-check",
        action="store_true",
        help="run configurations even where the probe predicts more than the host's available memory "
        "(its per-step figure holds a backward transient, so it runs high)",
    )
    p.add_argument("--budget", type=t.size, default="11GiB", help="memory budget to answer (the seed demo's card)")
    p.add_argument(
        "--host-budget",
        type=t.size,
        default=None,
        help="host memory for offloaded states (default: 80%% of what this machine has available when the sweep "
        "starts, as memmaml.Auto plans)",
    )
    p.add_argument("--out", type=t.output_folder, default="results/compare_memory", help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--render-only", action="store_true", help="rewrite the reports from --out's results.json")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status.

    0: at least one run succeeded (or ``--render-only``); 1: nothing could
    run, with one line naming the cause; 2: a bad command line (an
    unreadable ``results.json`` for ``--render-only``, an ``--out`` another
    sweep is using), before anything is written; 130: interrupted (the
    finished runs are kept).
    """
    prog, argv = t.command_line(SCRIPT, PROG, argv, MODULE)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        if not (out / "results.json").is_file():
            parser.fail("--out", f"--render-only needs {str(out / 'results.json')!r}, which does not exist")
        try:
            read_results(out)
        except ValueError as err:  # nothing is written: exit status 2, as for every bad --out
            parser.fail("--out", f"--render-only: {err}")
        try:
            with lock_folder(out, " ".join([*t.invocation(prog, SCRIPT), *argv])):  # not under a running sweep
                print(render(out))
        except FolderInUse as err:
            parser.fail("--out", f"{err}: wait for it to end, or choose another --out")
        except FolderLockError as err:  # not another job: the lock file or the filesystem
            parser.fail("--out", f"{err}; choose another --out")
        return 0
    if args.time_steps and set(args.time_steps) - set(args.steps):
        extra = sorted(set(args.time_steps) - set(args.steps))
        parser.fail("--time-steps", f"{extra[0]} is not one of --steps {','.join(map(str, args.steps))}")
    peers: list[Method] = []
    named: dict[Method, str] = {}  # each peer method and the --peers name that runs it
    for name in args.peers:
        for m in PEERS[name]:
            method = Method(m.library, m.engine.format(k=args.peer_checkpoint_steps))
            if method in named:  # the same run twice, and two rows of one method in the report
                parser.fail(
                    "--peers",
                    f"{name!r} runs {method.library} {method.engine}, which {named[method]!r} runs too: "
                    "name one of them",
                )
            named[method] = name
            peers.append(method)
    given_device = args.device is not None
    args.device = args.device or t.default_device()
    try:
        workload = Workload(
            model=args.model,
            image_size=args.image_size,
            batch_size=args.batch_size,
            channels=args.channels,
            num_classes=args.num_classes,
            width=args.width,
            optimizer=args.optimizer,
            lr=args.lr,
            max_grad_grad_norm=args.max_grad_grad_norm or None,
            fresh_batches=args.fresh_batches,
            dtype=args.dtype,
            device=args.device,
            seed=args.seed,
        )
    except ValueError as err:
        field = str(err).split()[0]
        parser.fail(FLAGS.get(field, "--model"), str(err))
    print(f"device: {args.device}" + ("" if given_device else " (the default here)"), file=sys.stderr)
    for library in dict.fromkeys(m.library for m in peers):
        reason = unavailable(Method(library), args.optimizer)
        if reason:
            print(f"skipping {library}: {reason}", file=sys.stderr)
    command = [*t.invocation(prog, SCRIPT), *argv]
    try:
        with lock_folder(out, " ".join(command)):  # held until the sweep ends: one sweep per --out
            return _sweep(args, workload, peers, prog, command)
    except FolderInUse as err:
        parser.fail("--out", f"{err}: wait for it to end, or choose another --out")
    except FolderLockError as err:  # not another job: the lock file or the filesystem
        parser.fail("--out", f"{err}; choose another --out")


def _sweep(args: Any, workload: Workload, peers: list[Method], prog: str, command: list[str]) -> int:
    out = Path(args.out)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    host_budget = args.host_budget or default_host_budget()
    time_steps = args.time_steps or [max(args.steps)]
    origin = provenance(args.device, command, workers=True)  # the code the runs import
    payload: dict[str, Any] = {
        "provenance": origin,
        "workload": workload.__dict__,
        "engines": args.engines,
        "peers": [m._asdict() for m in peers],
        "budget_bytes": args.budget,
        "host_budget_bytes": host_budget,
        "threads": threads,
        "wall_seconds": 0.0,
        "complete": False,
        "probe": None,
        "records": [],
        "other_records": [],
    }
    resume, earlier_seconds = _resumable(out, payload)
    started = time.time()

    def save(state: dict[str, Any]) -> None:
        payload.update(state, wall_seconds=earlier_seconds + time.time() - started)
        write_json_atomic(out / "results.json", payload, indent=1)

    methods = len(args.engines) + len(peers)
    total = 1 + len(args.steps) * methods + len(time_steps) * args.repeats * methods
    runner = Runner(workload, out / "runs", timeout=args.timeout, threads=threads)
    try:
        with _progress_bar(total, args.no_progress) as bar:

            def progress(stage: str, record: dict[str, Any] | None) -> None:
                bar.update()
                bar.set_postfix_str(f"{stage}: {record.get('status') if record else ''}")

            sweep = run_sweep(
                runner,
                args.engines,
                args.steps,
                peers=peers,
                repeats=args.repeats,
                time_steps=time_steps,
                budget=args.budget,
                host_budget=host_budget,
                max_run_seconds=args.max_run_seconds,
                host_check=not args.no_host_check,
                progress=progress,
                resume=resume,
                save=save,
            )
    except KeyboardInterrupt:
        finished = sum(1 for r in payload["records"] if r.get("status") not in (None, "skipped", "unavailable"))
        if payload["records"]:
            render(out)
        print(
            f"\ninterrupted: {finished} finished run(s) kept in {out / 'results.json'}; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    kept, retried = sweep.pop("kept_runs"), sweep.pop("retried_runs")
    if kept:
        print(f"kept {kept} run(s) already recorded in {out / 'results.json'} (not run again)", file=sys.stderr)
    if retried:
        print(f"ran again {retried} run(s) of the earlier sweep that had not succeeded", file=sys.stderr)
    if sweep["other_records"]:
        print(
            f"{len(sweep['other_records'])} run(s) this command does not make (other engines or n, or another "
            "engine chosen for a budget) kept apart in results.json (other_records), not in the report",
            file=sys.stderr,
        )
    payload["complete"] = True
    save(sweep)
    shutil.rmtree(out / "runs", ignore_errors=True)  # specs and logs of a complete sweep: its records say it all
    print(render(out))
    if not any(r.get("status") == "ok" for r in sweep["records"]):
        print(f"{prog}: error: no run succeeded: {_cause(sweep)}", file=sys.stderr)
        return 1
    return 0


def _not_a_sweep(data: Any) -> str | None:
    """Why ``data`` (an earlier ``results.json``) is not a sweep's results, or ``None`` when its shape is one's:
    an object with a ``provenance`` object and ``records`` / ``other_records`` lists of records that name their
    label, n and engine (a GPU check's results, say, are not)."""
    if not isinstance(data, dict):
        return f"is not a sweep's results (a JSON {type(data).__name__})"
    if not isinstance(data.get("provenance", {}), dict) or "workload" not in data:
        return "is not a sweep's results (no workload or provenance)"
    for key in ("records", "other_records"):
        records = data.get(key, [])
        if not isinstance(records, list) or not all(
            isinstance(r, dict) and {"label", "steps", "engine"} <= r.keys() for r in records
        ):
            return f"is not a sweep's results (its {key!r} are not runs with a label, n and engine)"
    return None


def _resumable(out: Path, payload: dict[str, Any]) -> tuple[dict[str, Any] | None, float]:
    """An earlier sweep in ``out`` of the same workload, threads and code (to resume) and its seconds so far.

    An earlier sweep of anything else is moved, with its reports and run files, into
    ``out/previous/<UTC time>/`` (:func:`~memmaml.bench.move_aside`), and this one starts afresh.
    """
    path = out / "results.json"
    if not path.is_file():
        return None, 0.0
    try:
        earlier = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        earlier, unreadable = None, f"is not a readable results file ({err})"
    else:
        unreadable = _not_a_sweep(earlier)
    if unreadable is not None:
        moved = move_aside(out, RESULT_FILES)
        print(f"{path} {unreadable}: moved with its reports to {moved}; starting afresh", file=sys.stderr)
        return None, 0.0
    then, now = earlier.get("provenance") or {}, payload["provenance"]
    same = {
        "workload": earlier.get("workload") == payload["workload"],
        "threads": earlier.get("threads") == payload["threads"],
        "commit": (then.get("memmaml_commit"), then.get("memmaml_version"))
        == (now.get("memmaml_commit"), now.get("memmaml_version")),
        "uncommitted changes": then.get("memmaml_dirty") == now.get("memmaml_dirty"),
    }
    if not all(same.values()):
        differ = ", ".join(k for k, v in same.items() if not v)
        moved = move_aside(out, RESULT_FILES)
        print(
            f"{path} holds a sweep with another {differ}: moved with its reports to {moved}; starting afresh",
            file=sys.stderr,
        )
        return None, 0.0
    commit = now["memmaml_commit"][:10] if now.get("memmaml_commit") else now.get("memmaml_version")
    note = " over uncommitted changes, which the kept runs may not have had" if now.get("memmaml_dirty") else ""
    print(f"resuming the sweep in {path} (same workload, memmaml {commit}){note}", file=sys.stderr)
    return earlier, float(earlier.get("wall_seconds") or 0.0)


def _cause(sweep: dict[str, Any]) -> str:
    """Why nothing ran: the probe's error if it failed, else the first run's."""
    probe = sweep["probe"] or {}
    if probe.get("status") != "ok" and probe.get("error"):
        return f"the probe failed: {probe['error']}"
    errors = [f"{r['label']} n={r['steps']}: {r['error']}" for r in sweep["records"] if r.get("error")]
    return errors[0] if errors else "no configuration to run"


def _progress_bar(total: int, disable: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="compare_memory", unit="run", disable=disable, dynamic_ncols=True)


if __name__ == "__main__":
    sys.exit(main())
