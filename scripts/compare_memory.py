#!/usr/bin/env python
"""Memory and time of every memmaml engine against naive MAML, and the longest unroll each fits a budget.

One meta-step is measured per configuration (the inner loop of n steps, the
query loss at the adapted parameters, its backward into the model), each in a
fresh process (memmaml.bench). Memory is the allocator's peak on CUDA and the
bytes of live tensors on CPU (memmaml.track_memory); time comes from untracked
runs, engines interleaved. With --budget, memmaml's cost model (the one Auto
plans with) is fitted to the measured runs and answers, per engine, the
longest unroll that fits -- or says that its memory does not grow with n.

Example (the seed demo; 19 minutes on a 2-core CPU):

    python scripts/compare_memory.py --steps 1,2,4 --budget 11GiB --out results/seed
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from memmaml import parse_engine, parse_size
from memmaml.bench import Method, Runner, Workload, host_available_bytes, provenance, render, run_sweep, unavailable

DEFAULT_ENGINES = "naive,uniform:5,uniform:best,binomial:auto,binomial:auto+offload"
PEERS = {
    "torch_maml": [Method("torch_maml", "naive"), Method("torch_maml", "uniform:{k}")],
    "torch_maml:checkpoint": [Method("torch_maml", "uniform:{k}")],
    "higher": [Method("higher")],
    "torchopt": [Method("torchopt")],
}


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="Peers are optional: pip install torch-maml higher torchopt. Outputs in --out: "
        "results.json (every record, the fit, the answers, provenance), results.csv, "
        "results.md, results.png.",
    )
    w = p.add_argument_group("workload (defaults: the seed demo)")
    w.add_argument("--model", choices=("resnet18", "conv4", "mlp"), default="resnet18")
    w.add_argument("--image-size", type=int, default=224)
    w.add_argument("--batch-size", type=int, default=16)
    w.add_argument("--channels", type=int, default=3)
    w.add_argument("--num-classes", type=int, default=10)
    w.add_argument("--width", type=int, default=64, help="conv4 filters / mlp hidden units")
    w.add_argument("--optimizer", choices=("sgd", "adam", "rmsprop"), default="sgd")
    w.add_argument("--lr", type=float, default=0.01)
    w.add_argument("--max-grad-grad-norm", type=float, default=100.0, help="0 disables clipping through the unroll")
    w.add_argument("--fresh-batches", action="store_true", help="a new batch per inner step instead of one reused")
    w.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    w.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    w.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("sweep")
    s.add_argument(
        "--engines",
        default=DEFAULT_ENGINES,
        help="memmaml engines, in memmaml.parse_engine's syntax: naive, uniform:K, sqrt, uniform:best, "
        "binomial:SLOTS, binomial:auto, auto:BUDGET, any of them +offload",
    )
    s.add_argument("--steps", type=_positive_ints, default=[1, 2, 4], help="inner-step counts n to measure")
    s.add_argument("--peers", default="", help=f"peer libraries run beside memmaml: {', '.join(PEERS)}")
    s.add_argument("--peer-checkpoint-steps", type=int, default=5, help="torch_maml's checkpoint_steps")
    s.add_argument("--repeats", type=int, default=1, help="untracked timing runs per configuration (0: none)")
    s.add_argument("--time-steps", type=_positive_ints, default=None, help="n with timing runs (default: the largest)")
    s.add_argument("--threads", type=int, default=None, help="torch threads per run (default 1 on CPU)")
    s.add_argument("--timeout", type=float, default=7200.0, help="seconds before a run is stopped")
    s.add_argument(
        "--max-run-seconds",
        type=float,
        default=None,
        help="skip runs the probe predicts to take longer (recorded with the reason)",
    )
    s.add_argument(
        "--no-host-check",
        action="store_true",
        help="run configurations even where the probe predicts more than the host's available memory "
        "(its per-step figure holds a backward transient, so it runs high)",
    )
    p.add_argument("--budget", type=_size, default="11GiB", help="memory budget to answer (the seed demo's card)")
    p.add_argument(
        "--host-budget",
        type=_size,
        default=None,
        help="host memory for offloaded states (default: what this machine has available)",
    )
    p.add_argument("--out", default="results/compare_memory", help="output folder")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--render-only", action="store_true", help="rewrite the reports from --out's results.json")
    return p


def _progress_bar(total: int, disable: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="compare_memory", unit="run", disable=disable, dynamic_ncols=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.render_only:
        if not (out / "results.json").exists():
            parser.error(f"--render-only needs {out / 'results.json'}")
        print(render(out))
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    try:
        for engine in engines:
            parse_engine(engine, budget=args.budget)
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
    except (ValueError, TypeError) as err:
        parser.error(str(err))
    unknown = [name for name in args.peers.split(",") if name and name not in PEERS]
    if unknown:
        parser.error(f"unknown peer {unknown[0]!r}; known: {', '.join(PEERS)}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    peers = [
        Method(m.library, m.engine.format(k=args.peer_checkpoint_steps))
        for name in args.peers.split(",")
        if name
        for m in PEERS[name]
    ]
    for library in dict.fromkeys(m.library for m in peers):
        reason = unavailable(Method(library), args.optimizer)
        if reason:
            print(f"skipping {library}: {reason}", file=sys.stderr)
    threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)
    host_budget = args.host_budget or host_available_bytes()
    time_steps = args.time_steps or args.steps[-1:]
    total = (
        1 + len(args.steps) * (len(engines) + len(peers)) + len(time_steps) * args.repeats * (len(engines) + len(peers))
    )
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    origin = provenance(
        args.device, ["python", "scripts/compare_memory.py", *argv], workers=True
    )  # the code the runs import
    with _progress_bar(total, args.no_progress) as bar:

        def progress(stage: str, record: dict | None) -> None:
            bar.update()
            bar.set_postfix_str(f"{stage}: {record.get('status') if record else ''}")

        runner = Runner(workload, timeout=args.timeout, threads=threads)  # runs in a temporary folder
        sweep = run_sweep(
            runner,
            engines,
            args.steps,
            peers=peers,
            repeats=args.repeats,
            time_steps=time_steps,
            budget=args.budget,
            host_budget=host_budget,
            max_run_seconds=args.max_run_seconds,
            host_check=not args.no_host_check,
            progress=progress,
        )
    payload = {
        "provenance": origin,
        "workload": workload.__dict__,
        "engines": engines,
        "peers": [m._asdict() for m in peers],
        "budget_bytes": args.budget,
        "host_budget_bytes": host_budget,
        "threads": threads,
        "wall_seconds": time.time() - started,
        **sweep,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    print(render(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
