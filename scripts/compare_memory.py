#!/usr/bin/env python
"""Peak memory and wall time of checkpointed against naive MAML, and the longest unroll that fits a budget.

One meta-step is measured per configuration: the inner loop of ``n`` steps, the
query loss at the adapted parameters, and its backward pass into the model's
parameters. Every configuration runs in a fresh subprocess, so one run's peak
cannot hide another's.

Memory (``peak_bytes``):
    * CUDA: the caching allocator's peak (``torch.cuda.max_memory_allocated``)
      during the meta-step, minus what was allocated before it. Kernel
      workspaces allocated through the allocator are included; the CUDA
      context is not.
    * CPU: the bytes of live tensor storages created during the meta-step
      (:func:`memmaml.track_memory`), the figure a GPU's allocator would hold
      minus workspaces. The process's peak resident set size
      (``rss_peak_bytes``) is recorded beside it; it also holds the
      interpreter, the libraries, the model and the batches.

Time (``seconds``): the median over ``--repeats`` separate, untracked runs
(the CPU tracker slows every operator), with the methods interleaved and their
order rotated between repeats, so that drift in the machine's load hits every
method alike. Compare ratios within one run, not absolute times across runs.

Budget (``--budget``): peak(n) ~= base + stored_states * state_bytes +
graph_steps * step_bytes is fitted by least squares to the measured memmaml
runs (naive: 0 stored states, n graph steps; a schedule: the plan's most
stored states and its longest replayed segment); the longest unroll that fits
is predicted for each method and then run once to confirm, when the machine
can (enough host memory, predicted time under ``--confirm-max-seconds``). On
CUDA the confirming run is capped to the budget with
``torch.cuda.set_per_process_memory_fraction``, so an overrun is a real
out-of-memory error, caught and recorded.

Outputs in ``--out``: ``results.json`` (a list of records), ``results.csv``,
``results.md`` (tables, fit and predictions), ``results.png`` (peak memory
against steps, with the budget line) and ``fit.json``.

Peers (``--peers``) are optional and not dependencies of memmaml::

    pip install torch-maml                 # torch_maml (v1.0, pure Python)
    pip install higher                     # higher
    pip install torchopt                   # torchopt (needs optree)

Example (the seed demo's model, smaller images)::

    python scripts/compare_memory.py --image-size 64 --steps 1,2,4,8,16,32,100 \\
        --checkpoint-steps 10 --budget 4GiB --out benchmarks/compare_memory/resnet18-64
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import gc
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

DEFAULT_OUT = "benchmarks/compare_memory/latest"

# method name -> (library, kind); the memmaml engine first, then the peers
ENGINE_METHODS = ("naive", "checkpoint")
PEER_METHODS = {
    "torch_maml:naive": ("torch_maml", "naive"),
    "torch_maml:checkpoint": ("torch_maml", "checkpoint"),
    "higher": ("higher", "naive"),
    "torchopt": ("torchopt", "naive"),
}
PEER_GROUPS = {
    "torch_maml": ("torch_maml:naive", "torch_maml:checkpoint"),
    "higher": ("higher",),
    "torchopt": ("torchopt",),
}
PEER_INSTALL = {
    "torch_maml": "pip install torch-maml",
    "higher": "pip install higher",
    "torchopt": "pip install torchopt",
}
MODELS = ("resnet18", "conv4", "mlp")
# schedules of the checkpointed engine; each maps (checkpoint_steps, n) to a memmaml Schedule.
# 'binomial:SLOTS' takes its slot count; '+offload' after any of them keeps stored states in host memory.
SCHEDULES = ("uniform", "binomial:SLOTS")
RECORD_FIELDS = [
    "method", "library", "role", "status", "measured", "steps", "checkpoint_steps", "schedule",
    "stored_states", "graph_steps", "peak_bytes", "peak_kind", "host_peak_bytes", "rss_peak_bytes", "seconds",
    "seconds_runs", "seconds_tracked", "time_ratio_to_naive", "memory_ratio_to_naive", "grad_rel_diff",
    "grad_reference", "budget_bytes", "within_budget", "predicted_peak_bytes", "device", "dtype", "model", "image_size",
    "batch_size", "channels", "num_classes", "fresh_batches", "threads", "inner_loss_first", "inner_loss_last",
    "query_loss", "error", "notes",
]


# ---------------------------------------------------------------------------------------- parsing
def parse_size(text: str) -> int:
    """``'11GiB'`` -> bytes, as :func:`memmaml.parse_size` reads it (k/M/G/T powers of 1000,
    KiB/MiB/GiB/TiB powers of 1024), with an argparse error."""
    from memmaml import parse_size as size_in_bytes

    try:
        return size_in_bytes(str(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"not a memory size: {text!r} ({err})") from None


def parse_steps(text: str) -> list[int]:
    """``'1,2,4'`` -> ``[1, 2, 4]`` (positive integers, sorted, duplicates removed)."""
    try:
        steps = sorted({int(part) for part in str(text).split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"step counts must be comma-separated positive integers, got {text!r}")
    if not steps or steps[0] < 1:
        raise argparse.ArgumentTypeError(f"step counts must be comma-separated positive integers, got {text!r}")
    return steps


def parse_optional_steps(text: str) -> list[int] | None:
    if str(text).strip().lower() in ("all", ""):
        return None
    if str(text).strip().lower() == "none":
        return []
    return parse_steps(text)


def parse_checkpoint_steps(text: str) -> int | str:
    """A positive integer, or ``sqrt`` for ceil(sqrt(n))."""
    if str(text).strip().lower() == "sqrt":
        return "sqrt"
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--checkpoint-steps must be a positive integer or 'sqrt', got {text!r}")
    return value


def parse_positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def parse_peers(text: str) -> list[str]:
    """``'torch_maml,higher'`` -> peer method names; ``torch_maml`` means both of its methods."""
    methods: list[str] = []
    for name in (part.strip() for part in str(text).split(",")):
        if not name:
            continue
        if name in PEER_GROUPS:
            methods.extend(m for m in PEER_GROUPS[name] if m not in methods)
        elif name in PEER_METHODS:
            if name not in methods:
                methods.append(name)
        else:
            known = sorted(set(PEER_GROUPS) | set(PEER_METHODS))
            raise argparse.ArgumentTypeError(f"unknown peer {name!r}; known: {', '.join(known)}")
    return methods


def parse_methods(text: str) -> list[str]:
    methods = [part.strip() for part in str(text).split(",") if part.strip()]
    bad = [m for m in methods if m not in ENGINE_METHODS]
    if bad or not methods:
        raise argparse.ArgumentTypeError(
            f"--methods takes a comma-separated subset of {', '.join(ENGINE_METHODS)}, got {text!r}")
    return list(dict.fromkeys(methods))


def format_bytes(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(value) >= size:
            return f"{value / size:,.3g} {unit}" if abs(value) < 100 * size else f"{value / size:,.0f} {unit}"
    return f"{value:,.0f} B"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_memory.py",
        description=(
            "Measure one MAML meta-step (inner loop + query loss + backward) with memmaml's naive and "
            "checkpointed engines (and optional peer libraries): peak memory, wall time and meta-gradient "
            "agreement, each configuration in a fresh subprocess; then predict, and confirm by running, the "
            "longest unroll that fits a memory budget. Defaults reproduce the seed demo: ResNet-18 "
            "(10 classes), random 16x3x224x224 batches, IngraphGradientDescent(0.01), max_grad_grad_norm=100, "
            "the same batch at every step."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=("Peers are not dependencies of memmaml; install them for the comparison with "
                "'pip install torch-maml', 'pip install higher', 'pip install torchopt'. "
                "Results: results.json/csv/md/png and fit.json in --out."),
    )
    workload = parser.add_argument_group("workload")
    workload.add_argument("--model", choices=MODELS, default="resnet18",
                          help="resnet18: torchvision ResNet-18; conv4: the 4-layer conv net of few-shot MAML "
                               "(4 x [3x3 conv with --width filters, BatchNorm, ReLU, 2x2 max-pool], then a "
                               "linear head); mlp: flatten, two hidden layers of --width units with ReLU, linear head")
    workload.add_argument("--image-size", type=parse_positive_int, default=224,
                          help="height and width of the random images")
    workload.add_argument("--channels", type=parse_positive_int, default=3, help="image channels (1 for Omniglot)")
    workload.add_argument("--batch-size", type=parse_positive_int, default=16,
                          help="images per inner-step batch (and in the query batch)")
    workload.add_argument("--num-classes", type=parse_positive_int, default=10, help="classes of the head")
    workload.add_argument("--width", type=parse_positive_int, default=64,
                          help="filters of conv4 / hidden units of mlp (ignored by resnet18)")
    workload.add_argument("--lr", type=float, default=0.01, help="inner learning rate of IngraphGradientDescent")
    workload.add_argument("--max-grad-grad-norm", type=float, default=100.0,
                          help="clip the cotangent of each inner step's new parameters to this global L2 norm "
                               "(0 disables; higher and torchopt have no such option and run unclipped)")
    workload.add_argument("--fresh-batches", action="store_true",
                          help="draw a fresh random batch for every inner step (generated inside the loss from the "
                               "step index, so n batches are never all held at once) instead of reusing one batch")
    workload.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="model and data dtype")
    workload.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    workload.add_argument("--seed", type=int, default=0, help="seed of the model initialisation and the batches")

    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--steps", type=parse_steps, default=parse_steps("1,2,4"),
                       help="comma-separated inner-step counts n to measure")
    sweep.add_argument("--methods", type=parse_methods, default=list(ENGINE_METHODS),
                       help="memmaml engines to measure: naive (keeps every step's graph) and/or checkpoint")
    sweep.add_argument("--checkpoint-steps", type=parse_checkpoint_steps, default=5,
                       help="steps per segment of the checkpointed engine (and of torch_maml's): a positive "
                            "integer, or 'sqrt' for ceil(sqrt(n)) at each n")
    sweep.add_argument("--schedule", type=parse_schedule_arg, default="uniform",
                       help="checkpoint schedule of memmaml's checkpointed engine: 'uniform' (segments of "
                            "--checkpoint-steps) or 'binomial:SLOTS' (binomial checkpointing with SLOTS stored "
                            "states); append '+offload' to keep the stored states in host memory, e.g. "
                            "'binomial:8+offload'")
    sweep.add_argument("--peers", type=parse_peers, default=[],
                       help="comma-separated peer libraries to run on the same workload when installed: "
                            "torch_maml (its naive and checkpointed MAML; or torch_maml:naive / "
                            "torch_maml:checkpoint alone), higher, torchopt (naive unrolls)")
    sweep.add_argument("--repeats", type=int, default=3,
                       help="untracked timing runs per configuration (interleaved across methods); 0 skips timing")
    sweep.add_argument("--time-steps", type=parse_optional_steps, default=None,
                       help="step counts that get timing runs: 'all' (default: every --steps), 'none', or a list")
    sweep.add_argument("--threads", type=int, default=None,
                       help="torch intra-op threads in each run (default: 1 on CPU, where spinning OpenMP threads "
                            "make times erratic on a loaded machine; torch's default on CUDA); 0 keeps torch's default")
    sweep.add_argument("--timeout", type=float, default=7200.0,
                       help="seconds before one configuration's subprocess is stopped and recorded as timed out")

    budget = parser.add_argument_group("budget")
    budget.add_argument("--budget", type=parse_size, default=None,
                        help="memory budget, e.g. 11GiB, 4GiB, 512MiB, 8GB: predict and confirm the longest "
                             "unroll each memmaml engine fits")
    budget.add_argument("--probe-steps", type=int, default=8,
                        help="with --budget: also run the checkpointed engine at this n with checkpoint_steps=1, "
                             "so the fit can tell a stored state from a step's graph (0: no probe; the sweep "
                             "must then hold checkpointed runs with different numbers of stored states)")
    budget.add_argument("--confirm", choices=("all", "naive", "checkpoint", "none"), default="all",
                        help="which predicted longest unrolls to run to confirm")
    budget.add_argument("--confirm-max-seconds", type=float, default=3600.0,
                        help="skip a confirming run whose predicted time (from the measured runs) exceeds this")

    parser.add_argument("--out", default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    parser.add_argument("--render-only", action="store_true",
                        help="run nothing: rewrite results.csv/md/png in --out from its results.json and fit.json "
                             "(the workload is read from the command stored in fit.json)")
    return parser


# ------------------------------------------------------------------------------------------ models
def build_model(name: str, *, channels: int, image_size: int, num_classes: int, width: int):
    import torch
    from torch import nn

    if name == "resnet18":
        import torchvision

        model = torchvision.models.resnet18(num_classes=num_classes)
        if channels != 3:
            model.conv1 = nn.Conv2d(channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        return model
    if name == "conv4":
        layers: list[nn.Module] = []
        in_channels = channels
        for _ in range(4):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                       nn.MaxPool2d(2)]
            in_channels = width
        features = nn.Sequential(*layers, nn.Flatten())
        with torch.no_grad():
            num_features = features(torch.zeros(1, channels, image_size, image_size)).shape[1]
        return nn.Sequential(features, nn.Linear(num_features, num_classes))
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(), nn.Linear(channels * image_size * image_size, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, num_classes))
    raise ValueError(f"unknown model {name!r}; known: {', '.join(MODELS)}")


def checkpoint_steps_for(spec_k: int | str, n: int) -> int:
    from memmaml import sqrt_steps

    return sqrt_steps(n) if spec_k == "sqrt" else int(spec_k)


def parse_schedule_arg(text: str) -> str:
    """Validate a --schedule value: 'uniform' or 'binomial:SLOTS', optionally followed by '+offload'."""
    try:
        make_schedule(text, 1)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def schedule_offloads(schedule: str) -> bool:
    return schedule.endswith("+offload")


def make_schedule(schedule: str, checkpoint_steps: int):
    import memmaml
    from memmaml import parse_schedule

    name = schedule[: -len("+offload")] if schedule_offloads(schedule) else schedule
    if name == "uniform":
        return memmaml.Uniform(checkpoint_steps)
    if name.startswith("binomial:"):
        return parse_schedule(name)
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}, each optionally "
                     "followed by '+offload'")


def plan_shape(kind: str, schedule: str, n: int, checkpoint_steps: int | None) -> tuple[int, int]:
    """(stored states, graph steps alive at once) of a method at ``n`` steps, for the memory model."""
    if kind == "naive":
        return 0, n
    from memmaml import check_plan

    stats = check_plan(make_schedule(schedule, checkpoint_steps).plan(n))
    if schedule_offloads(schedule):
        return 0, stats.max_segment  # the stored states live in host memory
    return stats.max_stored, stats.max_segment


# ------------------------------------------------------------------------------------------ worker
def _oom(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one configuration in this (fresh) process and return its record."""
    import torch
    import torch.nn.functional as F

    import memmaml

    warnings.filterwarnings("ignore", message=".*use_reentrant.*")  # torch_maml calls checkpoint without it
    record: dict[str, Any] = {}
    device = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    if device.type == "cuda":
        torch.cuda.set_device(device)
        if spec.get("memory_cap_bytes"):
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, spec["memory_cap_bytes"] / total), device)
            record["notes"] = f"allocator capped at {spec['memory_cap_bytes']} of {total} bytes"

    torch.manual_seed(spec["seed"])
    model = build_model(spec["model"], channels=spec["channels"], image_size=spec["image_size"],
                        num_classes=spec["num_classes"], width=spec["width"]).to(device=device, dtype=dtype)
    model.train()
    named = list(model.named_parameters())

    def make_batch(index: int):
        generator = torch.Generator().manual_seed(spec["seed"] * 1_000_003 + 7919 * (index + 1))
        shape = (spec["batch_size"], spec["channels"], spec["image_size"], spec["image_size"])
        x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
        y = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=generator).to(device)
        return x, y

    support, query = make_batch(0), make_batch(-2)

    def loss_fn(net, batch):
        if isinstance(batch, int):  # --fresh-batches: batch i is generated from its index
            batch = make_batch(batch + 1)
        x, y = batch
        return F.cross_entropy(net(x), y)

    clip = spec["max_grad_grad_norm"] or None
    library, kind = spec["library"], spec["kind"]

    def meta_step(n: int) -> tuple[list, Any, list]:
        """Inner loop of n steps, query loss, backward; returns (grads in `named` order, query loss, inner losses)."""
        inputs = list(range(n)) if spec["fresh_batches"] else [support] * n
        lr = spec["lr"]
        if library == "memmaml":
            optimizer = memmaml.IngraphGradientDescent(lr)
            if kind == "naive":
                maml = memmaml.NaiveMAML(model, loss_fn, optimizer)
            else:
                maml = memmaml.GradientCheckpointMAML(
                    model, loss_fn, optimizer,
                    schedule=make_schedule(spec["schedule"], checkpoint_steps_for(spec["checkpoint_steps"], n)),
                    offload=schedule_offloads(spec["schedule"]))
            result = maml(inputs, max_grad_grad_norm=clip)
            query_loss = loss_fn(result.model, query)
            query_loss.backward()
            losses = result.loss_history
        elif library == "torch_maml":
            import torch_maml

            optimizer = torch_maml.IngraphGradientDescent(lr)
            if kind == "naive":
                maml = torch_maml.NaiveMAML(model, loss_fn, optimizer)
            else:
                maml = torch_maml.GradientCheckpointMAML(
                    model, loss_fn, optimizer, checkpoint_steps=checkpoint_steps_for(spec["checkpoint_steps"], n))
            kwargs = {"max_grad_grad_norm": clip} if clip else {}
            result = maml(inputs, **kwargs)
            query_loss = loss_fn(result.model, query)
            query_loss.backward()
            losses = result.loss_history
        elif library == "higher":
            import higher

            inner = torch.optim.SGD(model.parameters(), lr=lr)
            with higher.innerloop_ctx(model, inner, copy_initial_weights=False) as (fmodel, diffopt):
                losses = []
                for batch in inputs:
                    loss = loss_fn(fmodel, batch)
                    losses.append(loss)
                    diffopt.step(loss)
                query_loss = loss_fn(fmodel, query)
                query_loss.backward()
        elif library == "torchopt":
            import torchopt

            originals = dict(named)
            inner = torchopt.MetaSGD(model, lr=lr)
            state = torchopt.extract_state_dict(model)
            losses = []
            for batch in inputs:
                loss = loss_fn(model, batch)
                losses.append(loss)
                inner.step(loss)
            query_loss = loss_fn(model, query)
            query_loss.backward()
            torchopt.recover_state_dict(model, state)  # the module holds its original leaves again
            if any(dict(model.named_parameters())[name] is not param for name, param in originals.items()):
                raise RuntimeError("torchopt.recover_state_dict did not restore the original parameters")
        else:
            raise ValueError(f"unknown library {library!r}")
        grads = [p.grad for _, p in named]
        return grads, query_loss, losses

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        # warm-up: one inner step with the same method (kernel selection, allocator, lazy imports)
        meta_step(1)
        model.zero_grad(set_to_none=True)
        gc.collect()
        n = spec["steps"]
        if spec["track"]:
            with memmaml.track_memory(device) as mem:
                sync()
                start = time.perf_counter()
                grads, query_loss, losses = meta_step(n)
                sync()
                seconds = time.perf_counter() - start
            record["peak_bytes"] = int(mem.peak_bytes)
            record["peak_kind"] = "cuda_allocator_peak" if device.type == "cuda" else "cpu_live_tensors"
            if device.type == "cpu" and getattr(mem, "host_peak_bytes", None):  # offloaded states, counted apart
                record["host_peak_bytes"] = int(mem.host_peak_bytes)
            record["seconds_tracked"] = seconds
        else:
            sync()
            start = time.perf_counter()
            grads, query_loss, losses = meta_step(n)
            sync()
            record["seconds"] = time.perf_counter() - start
        record["rss_peak_bytes"] = memmaml.peak_rss_bytes()
        if device.type == "cuda":
            record["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        record["query_loss"] = float(query_loss)
        record["inner_loss_first"] = float(losses[0])
        record["inner_loss_last"] = float(losses[-1])
        missing = [name for (name, _), g in zip(named, grads) if g is None]
        if missing:
            raise RuntimeError(f"no meta-gradient reached {len(missing)} parameters, e.g. {missing[0]}")
        if spec.get("grad_path"):
            flat = torch.cat([g.detach().reshape(-1).to("cpu", torch.float64) for g in grads])
            torch.save(flat, spec["grad_path"])
        record["status"] = "ok"
    except Exception as exc:  # recorded, never fatal to the sweep
        record["status"] = "oom" if _oom(exc) else "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
        record["rss_peak_bytes"] = memmaml.peak_rss_bytes()
    return record


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    record = run_worker(spec)
    Path(spec["result_path"]).write_text(json.dumps(record))
    return 0


# ------------------------------------------------------------------------------------------ parent
def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Runner:
    """Launches configurations in fresh subprocesses and collects their records."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.counter = 0
        self.threads = args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)

    def base_record(self, method: str, steps: int) -> dict[str, Any]:
        args = self.args
        library, kind = ("memmaml", method) if method in ENGINE_METHODS else PEER_METHODS[method]
        record = {field: None for field in RECORD_FIELDS}
        k = None if kind == "naive" else checkpoint_steps_for(args.checkpoint_steps, steps)
        record.update(
            method=method, library=library, steps=steps, checkpoint_steps=k,
            schedule=(args.schedule if library == "memmaml" else "uniform") if k else None,
            device=args.device, dtype=args.dtype, model=args.model, image_size=args.image_size,
            batch_size=args.batch_size, channels=args.channels, num_classes=args.num_classes,
            fresh_batches=bool(args.fresh_batches), threads=self.threads, budget_bytes=args.budget,
        )
        record["stored_states"], record["graph_steps"] = plan_shape(kind, args.schedule, steps, k)
        if kind == "naive" and library != "memmaml":
            record["stored_states"] = 0
        if library in ("higher", "torchopt") and args.max_grad_grad_norm:
            record["notes"] = f"{library} has no clipping through the unroll: run without max_grad_grad_norm"
        return record

    def run(self, method: str, steps: int, *, track: bool, role: str, checkpoint_steps: int | str | None = None,
            memory_cap_bytes: int | None = None, save_grads: bool = False) -> dict[str, Any]:
        args = self.args
        library, kind = ("memmaml", method) if method in ENGINE_METHODS else PEER_METHODS[method]
        spec_k = args.checkpoint_steps if checkpoint_steps is None else checkpoint_steps
        record = self.base_record(method, steps)
        if kind != "naive":
            record["checkpoint_steps"] = checkpoint_steps_for(spec_k, steps)
            record["stored_states"], record["graph_steps"] = plan_shape(
                kind, args.schedule, steps, record["checkpoint_steps"])
        record.update(role=role, measured=True)
        if library != "memmaml" and importlib.util.find_spec(library) is None:
            record.update(status="unavailable", measured=False,
                          error=f"{library} is not installed ({PEER_INSTALL[library]})")
            return record
        self.counter += 1
        tag = f"{self.counter:04d}"
        spec = {
            "library": library, "kind": kind, "steps": steps, "checkpoint_steps": spec_k,
            "schedule": args.schedule, "model": args.model, "image_size": args.image_size,
            "channels": args.channels, "batch_size": args.batch_size, "num_classes": args.num_classes,
            "width": args.width, "lr": args.lr, "max_grad_grad_norm": args.max_grad_grad_norm,
            "fresh_batches": bool(args.fresh_batches), "dtype": args.dtype, "device": args.device,
            "seed": args.seed, "threads": self.threads, "track": track, "memory_cap_bytes": memory_cap_bytes,
            "result_path": str(self.workdir / f"{tag}.result.json"),
            "grad_path": str(self.workdir / f"{tag}.grad.pt") if save_grads else None,
        }
        spec_path = self.workdir / f"{tag}.spec.json"
        spec_path.write_text(json.dumps(spec))
        log_path = self.workdir / f"{tag}.log"
        command = [sys.executable, os.path.abspath(__file__), "--worker", str(spec_path)]
        try:
            with open(log_path, "w") as log:
                proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout)
            returncode = proc.returncode
        except subprocess.TimeoutExpired:
            returncode = None
        result_path = Path(spec["result_path"])
        if result_path.exists():
            child = json.loads(result_path.read_text())
            child.pop("traceback", None)
            record.update(child)
        elif returncode is None:
            record.update(status="timeout", error=f"stopped after --timeout {args.timeout:g} s")
        else:
            tail = log_path.read_text(errors="replace")[-1500:] if log_path.exists() else ""
            if returncode in (-9, 137):
                record.update(status="oom", error="killed by SIGKILL (the kernel's out-of-memory killer, most "
                                                  "likely) " + tail[-300:])
            else:
                record.update(status="failed", error=f"exit status {returncode}: {tail}")
        if record.get("status") != "ok":
            record["measured"] = record["status"] in ("oom",)
        record["grad_path"] = spec["grad_path"] if record.get("status") == "ok" else None
        if args.budget and record.get("peak_bytes") is not None:
            record["within_budget"] = record["peak_bytes"] <= args.budget
        if record.get("status") == "oom" and memory_cap_bytes:
            record["within_budget"] = False
        return record


def _progress(total: int, disable: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a dependency of memmaml; this only keeps the script usable without it
        return contextlib.nullcontext(None)
    return tqdm(total=total, desc="compare_memory", unit="run", disable=disable, dynamic_ncols=True)


def rel_diff(a_path: str, b_path: str) -> float:
    import torch

    a, b = torch.load(a_path), torch.load(b_path)
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --------------------------------------------------------------------------------- fit and predict
def fit_memory(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Least squares over memmaml's measured runs of

    peak = base[method] + stored_states * state_bytes + graph_steps * step_bytes,

    with one base per engine (the checkpointed engine also holds its output
    state and the cotangents) and the same per-state and per-step costs.
    """
    import numpy as np

    points = [r for r in records if r["library"] == "memmaml" and r["status"] == "ok"
              and r.get("peak_bytes") is not None and r["role"] in ("sweep", "fit-probe")]
    if not {r["method"] for r in points} >= set(ENGINE_METHODS):
        return None
    design = np.array([[r["method"] == "naive", r["method"] == "checkpoint", r["stored_states"], r["graph_steps"]]
                       for r in points], dtype=float)
    target = np.array([float(r["peak_bytes"]) for r in points])
    if np.linalg.matrix_rank(design) < design.shape[1]:
        return None
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    predicted = design @ coef
    residual = (target - predicted) / target
    return {
        "model": "peak = base[method] + stored_states * state_bytes + graph_steps * step_bytes",
        "base_bytes": {"naive": float(coef[0]), "checkpoint": float(coef[1])},
        "state_bytes": float(coef[2]), "step_bytes": float(coef[3]),
        "points": [{"method": r["method"], "steps": r["steps"], "checkpoint_steps": r["checkpoint_steps"],
                    "stored_states": r["stored_states"], "graph_steps": r["graph_steps"],
                    "peak_bytes": r["peak_bytes"], "fitted_bytes": float(p)} for r, p in zip(points, predicted)],
        "max_abs_relative_residual": float(np.max(np.abs(residual))),
    }


def predicted_peak(fit: dict[str, Any], stored: int, graph: int, method: str = "checkpoint") -> float:
    return fit["base_bytes"][method] + stored * fit["state_bytes"] + graph * fit["step_bytes"]


def best_uniform_k(fit: dict[str, Any], n: int) -> tuple[int, float]:
    """The segment length minimising the predicted peak at n, and that peak."""
    state, step = max(fit["state_bytes"], 1.0), max(fit["step_bytes"], 1.0)
    k0 = max(1, round(math.sqrt(n * state / step)))
    best = None
    for k in range(max(1, k0 // 2 - 2), min(n, 2 * k0 + 3) + 1):
        peak = predicted_peak(fit, -(-n // k), min(k, n))
        if best is None or peak < best[1]:
            best = (k, peak)
    return best


def longest_fitting(fits_at, limit: int = 10**7) -> int:
    """Largest n in [0, limit] with fits_at(n) true, for a predicate that is monotone in n."""
    if not fits_at(1):
        return 0
    low, high = 1, 2
    while high <= limit and fits_at(high):
        low, high = high, high * 2
    high = min(high, limit + 1)
    while high - low > 1:
        mid = (low + high) // 2
        if fits_at(mid):
            low = mid
        else:
            high = mid
    return low


def predict(fit: dict[str, Any], budget: int, fixed_k: int | str) -> dict[str, Any]:
    naive_n = longest_fitting(lambda n: predicted_peak(fit, 0, n, "naive") <= budget)
    best_n = longest_fitting(lambda n: best_uniform_k(fit, n)[1] <= budget)
    best_k, best_peak = best_uniform_k(fit, best_n) if best_n else (None, None)
    out = {
        "budget_bytes": budget,
        "naive": {"steps": naive_n,
                  "predicted_peak_bytes": predicted_peak(fit, 0, naive_n, "naive") if naive_n else None},
        "checkpoint_best_k": {"steps": best_n, "checkpoint_steps": best_k, "predicted_peak_bytes": best_peak},
    }
    if fixed_k != "sqrt":
        k = int(fixed_k)
        fixed_n = longest_fitting(lambda n: predicted_peak(fit, -(-n // k), min(k, n)) <= budget)
        out["checkpoint_fixed_k"] = {
            "steps": fixed_n, "checkpoint_steps": k,
            "predicted_peak_bytes": predicted_peak(fit, -(-fixed_n // k), min(k, fixed_n)) if fixed_n else None}
    else:
        sqrt_n = longest_fitting(lambda n: predicted_peak(fit, -(-n // checkpoint_steps_for("sqrt", n)),
                                                          checkpoint_steps_for("sqrt", n)) <= budget)
        out["checkpoint_fixed_k"] = {"steps": sqrt_n, "checkpoint_steps": "sqrt"}
    return out


def predict_seconds(records: list[dict[str, Any]], method: str, steps: int) -> float | None:
    """Seconds of a tracked run at ``steps`` from a line through the method's measured runs (an estimate)."""
    import numpy as np

    points = [(r["steps"], r.get("seconds_tracked") or r.get("seconds")) for r in records
              if r["method"] == method and r["status"] == "ok" and (r.get("seconds_tracked") or r.get("seconds"))]
    if not points:
        return None
    xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    if len(set(xs)) < 2:
        return float(ys.mean() / xs.mean() * steps)
    slope, intercept = np.polyfit(xs, ys, 1)
    slope = max(slope, float(ys.max() / xs.max()) / 2)
    return float(intercept + slope * steps)


# ------------------------------------------------------------------------------------------ outputs
def paired_time_ratio(a: dict[str, Any], b: dict[str, Any]) -> tuple[float | None, list[float]]:
    """Median over repeats of a's time / b's time in the same repeat, and the per-repeat ratios.

    The methods of one repeat run back to back, so a ratio within a repeat is
    insensitive to the machine's load drifting between repeats; a ratio of
    medians is not.
    """
    pairs = [x / y for x, y in zip(a.get("seconds_runs") or [], b.get("seconds_runs") or [])
             if x is not None and y is not None and y > 0]
    return (statistics.median(pairs) if pairs else None), pairs


def annotate_ratios(records: list[dict[str, Any]]) -> None:
    naive = {r["steps"]: r for r in records
             if r["method"] == "naive" and r["status"] == "ok" and r["role"] == "sweep"}
    for r in records:
        ref = naive.get(r["steps"])
        if ref is None or r["status"] != "ok" or r["role"] != "sweep":
            continue
        r["time_ratio_to_naive"] = paired_time_ratio(r, ref)[0]
        if r.get("peak_bytes") and ref.get("peak_bytes"):
            r["memory_ratio_to_naive"] = r["peak_bytes"] / ref["peak_bytes"]


def write_outputs(out: Path, records: list[dict[str, Any]], fit: dict[str, Any] | None,
                  prediction: dict[str, Any] | None, args: argparse.Namespace, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    clean = [{field: r.get(field) for field in RECORD_FIELDS} for r in records]
    (out / "results.json").write_text(json.dumps(clean, indent=1))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        for r in clean:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    (out / "fit.json").write_text(json.dumps(
        {"fit": fit, "prediction": prediction, "command": command, "environment": environment(args)}, indent=1))
    (out / "results.md").write_text(markdown(clean, fit, prediction, args, command))
    plot(out / "results.png", clean, fit, prediction, args)


def environment(args: argparse.Namespace) -> dict[str, Any]:
    import platform

    import torch

    import memmaml

    info = {"python": platform.python_version(), "torch": torch.__version__, "memmaml": memmaml.__version__,
            "memmaml_path": str(Path(memmaml.__file__).parent), "cpu_count": os.cpu_count(),
            "threads_per_run": args.threads if args.threads is not None else (1 if args.device == "cpu" else 0)}
    if args.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
    for library in ("torch_maml", "higher", "torchopt"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            info[library] = version({"torch_maml": "torch-maml"}.get(library, library))
    return info


def _fmt(value: Any, spec: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) if spec else str(value)


def ratio_lines(records: list[dict[str, Any]]) -> list[str]:
    """'a / b' memory and time ratios for the pairs that ran at the same n."""
    sweep = {(r["method"], r["steps"]): r for r in records if r["role"] == "sweep" and r["status"] == "ok"}
    pairs = [("checkpoint", "naive"), ("checkpoint", "torch_maml:checkpoint"), ("checkpoint", "torch_maml:naive"),
             ("torch_maml:checkpoint", "torch_maml:naive"), ("torch_maml:checkpoint", "naive")]
    lines = []
    for n in sorted({n for _, n in sweep}):
        for a, b in pairs:
            ra, rb = sweep.get((a, n)), sweep.get((b, n))
            if not ra or not rb:
                continue
            parts = []
            if ra.get("peak_bytes") and rb.get("peak_bytes"):
                parts.append(f"memory {ra['peak_bytes'] / rb['peak_bytes']:.3f}")
            ratio, per_repeat = paired_time_ratio(ra, rb)
            if ratio is not None:
                parts.append(f"time {ratio:.3f} (median of the per-repeat ratios "
                             f"{', '.join(f'{x:.3f}' for x in per_repeat)})")
            if parts and (ra.get("seconds") or n == max(m for _, m in sweep)):
                lines.append(f"- n={n}, {a} / {b}: " + ", ".join(parts))
    return lines


def markdown(records: list[dict[str, Any]], fit: dict[str, Any] | None, prediction: dict[str, Any] | None,
             args: argparse.Namespace, command: str) -> str:
    peak_name = "allocator peak" if args.device.startswith("cuda") else "live tensors"
    lines = [
        f"Model {args.model}, batches {args.batch_size}x{args.channels}x{args.image_size}x{args.image_size}, "
        f"{args.num_classes} classes, {args.dtype} on {args.device}, IngraphGradientDescent({args.lr:g}), "
        f"max_grad_grad_norm={args.max_grad_grad_norm:g}, "
        f"{'a fresh batch per step' if args.fresh_batches else 'the same batch at every step'}.",
        "",
        "```",
        command,
        "```",
        "",
        f"| method | n | k | stored states | peak ({peak_name}) | peak RSS | time (s) | time / naive | "
        "memory / naive | meta-grad rel. diff | measured | status |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in records:
        role = "" if r["role"] == "sweep" else f" ({r['role']})"
        seconds = r.get("seconds")
        if seconds is not None and r.get("seconds_runs"):
            time_text = f"{seconds:.2f} (median of {sum(t is not None for t in r['seconds_runs'])})"
        elif r.get("seconds_tracked") is not None:
            time_text = f"({r['seconds_tracked']:.2f} tracked)"
        else:
            time_text = "-"
        peak = r.get("peak_bytes") if r["measured"] else r.get("predicted_peak_bytes")
        peak_text = format_bytes(peak) if r["measured"] else f"{format_bytes(peak)} predicted"
        lines.append(
            f"| {r['method']}{role} | {r['steps']} | {_fmt(r['checkpoint_steps'])} | {_fmt(r['stored_states'])} | "
            f"{peak_text if peak is not None else '-'} | {format_bytes(r.get('rss_peak_bytes'))} | {time_text} | "
            f"{_fmt(r.get('time_ratio_to_naive'), '.2f')} | {_fmt(r.get('memory_ratio_to_naive'), '.3f')} | "
            f"{_fmt(r.get('grad_rel_diff'), '.1e')} | {'yes' if r['measured'] else 'no'} | {r['status']} |")
    lines += ["", "Time: median of the untracked runs (methods interleaved, order rotated between repeats); "
              "'(tracked)' is the run under the memory tracker, slowed by it. Time / naive: median of the per-repeat "
              "ratios. Meta-gradient difference: relative L2 distance to memmaml's naive meta-gradient at the same "
              "n."]
    comparisons = ratio_lines(records)
    if comparisons:
        lines += ["", "Ratios measured in this run (time: within each repeat the methods run back to back; "
                  "the median of the per-repeat ratios is given):", ""] + comparisons
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["", "Failures:", ""]
        lines += [f"- {r['method']} n={r['steps']}: {r['status']}: {str(r['error'])[:300]}" for r in errors]
    notes = sorted({f"{r['method']}: {r['notes']}" for r in records if r.get("notes")})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {note}" for note in notes]
    if fit:
        lines += [
            "", "Memory model (least squares over the measured memmaml runs above):", "",
            f"peak = base + stored_states x {format_bytes(fit['state_bytes'])} + graph_steps x "
            f"{format_bytes(fit['step_bytes'])}, base {format_bytes(fit['base_bytes']['naive'])} (naive) / "
            f"{format_bytes(fit['base_bytes']['checkpoint'])} (checkpoint) (largest relative residual "
            f"{fit['max_abs_relative_residual']:.1%}; the parameters alone take "
            f"{format_bytes(fit.get('param_bytes'))}).",
        ]
    if prediction:
        b = prediction["budget_bytes"]
        lines += ["", f"Longest unroll within {format_bytes(b)} ({b} bytes):", "",
                  "| method | n (predicted) | k | predicted peak | confirming run |", "|---|---:|---:|---:|---|"]
        for key, label in (("naive", "naive"), ("checkpoint_best_k", "checkpoint, best k"),
                           ("checkpoint_fixed_k", "checkpoint, fixed k")):
            item = prediction.get(key)
            if not item:
                continue
            confirm = item.get("confirm")
            if confirm is None:
                confirm_text = "-"
            elif confirm.get("status") == "ok":
                confirm_text = (f"measured {format_bytes(confirm['peak_bytes'])}: "
                                f"{'within' if confirm['within_budget'] else 'OVER'} budget")
            else:
                confirm_text = f"{confirm.get('status')}: {str(confirm.get('error') or '')[:120]}"
            lines.append(f"| {label} | {item['steps']} | {_fmt(item.get('checkpoint_steps'))} | "
                         f"{format_bytes(item.get('predicted_peak_bytes'))} | {confirm_text} |")
        naive_n = prediction["naive"]["steps"]
        if naive_n:
            lines += ["", f"Checkpointed (best k) / naive steps: "
                          f"{prediction['checkpoint_best_k']['steps'] / naive_n:.1f}x."]
    return "\n".join(lines) + "\n"


def plot(path: Path, records: list[dict[str, Any]], fit: dict[str, Any] | None, prediction: dict[str, Any] | None,
         args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    gib = 2**30
    methods = list(dict.fromkeys(r["method"] for r in records))
    colors = dict(zip(methods, plt.rcParams["axes.prop_cycle"].by_key()["color"] * 3))
    for method in methods:
        rows = sorted((r for r in records if r["method"] == method and r["role"] == "sweep"
                       and r["status"] == "ok" and r.get("peak_bytes") is not None), key=lambda r: r["steps"])
        if rows:
            label = method if method in PEER_METHODS else f"memmaml {method}"
            if method == "checkpoint":
                label += (f" (k={args.checkpoint_steps})" if args.schedule == "uniform" else f" ({args.schedule})")
            ax.plot([r["steps"] for r in rows], [r["peak_bytes"] / gib for r in rows], "o-", color=colors[method],
                    label=label + ", measured")
        if args.budget:  # out-of-memory runs drawn on the budget line
            for r in (r for r in records if r["method"] == method and r["status"] == "oom"):
                ax.plot([r["steps"]], [args.budget / gib], "x", color=colors[method], markersize=10)
    steps = [r["steps"] for r in records if r.get("steps")]
    if fit and steps:
        import numpy as np

        top = max(steps + [(prediction or {}).get("checkpoint_best_k", {}).get("steps") or 1])
        grid = np.unique(np.geomspace(1, top * 1.3, 200).astype(int))
        naive_curve = [predicted_peak(fit, 0, int(n), "naive") / gib for n in grid]
        best_curve = [best_uniform_k(fit, int(n))[1] / gib for n in grid]
        ax.plot(grid, naive_curve, "--", color=colors.get("naive", "C0"), alpha=0.6, label="naive, fitted model")
        ax.plot(grid, best_curve, "--", color=colors.get("checkpoint", "C1"), alpha=0.6,
                label="checkpoint with best k, fitted model")
    if prediction:
        for key, method, marker in (("naive", "naive", "*"), ("checkpoint_best_k", "checkpoint", "*")):
            item = prediction.get(key) or {}
            confirm = item.get("confirm") or {}
            if confirm.get("status") == "ok":
                ax.plot([confirm["steps"]], [confirm["peak_bytes"] / gib], marker, color=colors.get(method, "k"),
                        markersize=14, markeredgecolor="k", label=f"{method}: predicted longest unroll, measured")
            elif item.get("steps") and item.get("predicted_peak_bytes"):
                ax.plot([item["steps"]], [item["predicted_peak_bytes"] / gib], marker, color="w",
                        markeredgecolor=colors.get(method, "k"), markersize=14,
                        label=f"{method}: predicted longest unroll (not run)")
    if args.budget:
        ax.axhline(args.budget / gib, color="red", linestyle=":", label=f"budget {format_bytes(args.budget)}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("inner steps n")
    kind = "CUDA allocator peak" if args.device.startswith("cuda") else "peak live tensors (CPU)"
    ax.set_ylabel(f"{kind}, GiB")
    ax.set_title(f"{args.model}, {args.batch_size}x{args.channels}x{args.image_size}x{args.image_size}, "
                 f"{args.dtype}, {args.device}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        if len(argv) != 2:
            print("usage: compare_memory.py --worker SPEC.json (internal)", file=sys.stderr)
            return 2
        return worker_main(argv[1])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.device != "cpu" and not re.fullmatch(r"cuda(:\d+)?", args.device):
        parser.error(f"--device must be cpu, cuda or cuda:N, got {args.device!r}")
    if args.probe_steps < 0:
        parser.error(f"--probe-steps must be 0 or more, got {args.probe_steps}")
    if args.repeats < 0:
        parser.error(f"--repeats must be 0 or more, got {args.repeats}")
    if args.budget and args.schedule != "uniform":
        parser.error(f"--budget fits and predicts uniform segments only, not --schedule {args.schedule}; "
                     "scripts/bench_schedules.py predict gives the binomial and offload predictions")
    if args.max_grad_grad_norm < 0:
        parser.error(f"--max-grad-grad-norm must be positive (or 0 to disable), got {args.max_grad_grad_norm}")
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error(f"--device {args.device}: CUDA is not available on this machine")
    if args.render_only:
        return render_only(parser, Path(args.out))
    command = "python scripts/compare_memory.py " + " ".join(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    methods = list(args.methods) + list(args.peers)
    time_steps = args.steps if args.time_steps is None else args.time_steps
    missing = sorted({PEER_METHODS[m][0] for m in args.peers if importlib.util.find_spec(PEER_METHODS[m][0]) is None})
    for library in missing:
        print(f"peer {library} is not installed; its runs are recorded as unavailable ({PEER_INSTALL[library]})",
              file=sys.stderr)

    budget_runs = 0
    if args.budget:
        budget_runs = (args.probe_steps > 0) + (2 if args.confirm != "none" else 0)
    total = len(methods) * len(args.steps) + len(methods) * len(time_steps) * args.repeats + budget_runs
    records: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="compare_memory_") as tmp, _progress(total, args.no_progress) as bar:
        runner = Runner(args, Path(tmp))

        def step(record: dict[str, Any]) -> dict[str, Any]:
            # partial results survive an interrupted sweep
            done = records + ([record] if record not in records else [])
            (out / "results.partial.json").write_text(
                json.dumps([{field: r.get(field) for field in RECORD_FIELDS} for r in done], indent=1))
            if bar is not None:
                bar.update()
                bar.set_postfix_str(f"{record['method']} n={record['steps']}: {record['status']}")
            return record

        # 1. memory: one tracked run per (method, n); memmaml's naive meta-gradient is the reference
        for n in args.steps:
            for method in methods:
                if bar is not None:
                    bar.set_description(f"memory {method} n={n}")
                records.append(step(runner.run(method, n, track=True, role="sweep", save_grads=True)))
        by_key = {(r["method"], r["steps"]): r for r in records}
        for r in records:
            ref = by_key.get(("naive", r["steps"]))
            if r["method"] == "naive":
                r["grad_reference"] = "reference"
            elif ref and ref.get("grad_path") and r.get("grad_path"):
                r["grad_rel_diff"] = rel_diff(r["grad_path"], ref["grad_path"])
                r["grad_reference"] = "memmaml naive, same n"

        # 2. time: untracked runs, methods interleaved, order rotated between repeats
        for n in time_steps:
            for repeat in range(args.repeats):
                order = methods[repeat % len(methods):] + methods[:repeat % len(methods)]
                for method in order:
                    if bar is not None:
                        bar.set_description(f"time {method} n={n} ({repeat + 1}/{args.repeats})")
                    timed = step(runner.run(method, n, track=False, role="timing"))
                    target = by_key.get((method, n))
                    if target is None:
                        continue
                    runs = (target.get("seconds_runs") or []) + [timed["seconds"] if timed["status"] == "ok" else None]
                    target["seconds_runs"] = runs
                    if any(t is not None for t in runs):
                        target["seconds"] = statistics.median(t for t in runs if t is not None)
                    if timed["status"] != "ok" and not target.get("error"):
                        target["error"] = f"timing run {repeat + 1}: {timed['status']}: {timed.get('error')}"

        # 3. budget: fit, predict, confirm
        fit = prediction = None
        if args.budget:
            if "checkpoint" in args.methods and "naive" in args.methods and args.probe_steps > 0:
                probe_n = args.probe_steps
                if ("checkpoint", probe_n) not in by_key or by_key[("checkpoint", probe_n)]["checkpoint_steps"] != 1:
                    if bar is not None:
                        bar.set_description(f"fit probe checkpoint n={probe_n} k=1")
                    records.append(step(runner.run("checkpoint", probe_n, track=True, role="fit-probe",
                                                   checkpoint_steps=1)))
            fit = fit_memory(records)
            if fit is None:
                print("--budget: not enough measured memmaml runs to fit the memory model (need naive and "
                      "checkpoint runs at several n)", file=sys.stderr)
            else:
                fit["param_bytes"] = param_bytes(args)
                prediction = predict(fit, args.budget, args.checkpoint_steps)
                for key, method in (("naive", "naive"), ("checkpoint_best_k", "checkpoint")):
                    item = prediction[key]
                    row = runner.base_record(method, max(item["steps"], 1))
                    row.update(role="prediction", status="predicted", measured=False,
                               predicted_peak_bytes=item["predicted_peak_bytes"],
                               checkpoint_steps=item.get("checkpoint_steps") if method == "checkpoint" else None)
                    if method == "checkpoint" and item.get("checkpoint_steps"):
                        row["stored_states"], row["graph_steps"] = plan_shape(
                            "checkpoint", args.schedule, item["steps"], item["checkpoint_steps"])
                    records.append(row)
                    if args.confirm not in ("all", method) or not item["steps"]:
                        continue
                    reason = confirm_obstacle(args, records, method, item)
                    if reason:
                        item["confirm"] = {"status": "skipped", "error": reason}
                        row["notes"] = f"not run: {reason}"
                        if bar is not None:
                            bar.update()
                        continue
                    if bar is not None:
                        bar.set_description(f"confirm {method} n={item['steps']}")
                    confirm = step(runner.run(
                        method, item["steps"], track=True, role="confirm",
                        checkpoint_steps=item.get("checkpoint_steps") if method == "checkpoint" else None,
                        memory_cap_bytes=args.budget if args.device.startswith("cuda") else None))
                    confirm["predicted_peak_bytes"] = item["predicted_peak_bytes"]
                    records.append(confirm)
                    item["confirm"] = {k: confirm.get(k) for k in
                                       ("status", "steps", "peak_bytes", "rss_peak_bytes", "within_budget",
                                        "seconds_tracked", "error")}
        annotate_ratios(records)
        write_outputs(out, records, fit, prediction, args, command)
    (out / "results.partial.json").unlink(missing_ok=True)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.json'}, results.csv, results.md, results.png, fit.json")
    return 0


def render_only(parser: argparse.ArgumentParser, out: Path) -> int:
    import shlex

    try:
        records = json.loads((out / "results.json").read_text())
        saved = json.loads((out / "fit.json").read_text())
    except (OSError, ValueError) as exc:
        parser.error(f"--render-only needs results.json and fit.json in {out}: {exc}")
    command = saved["command"]
    args = parser.parse_args(shlex.split(command)[2:])
    for record in records:
        for field in RECORD_FIELDS:
            record.setdefault(field, None)
    annotate_ratios(records)
    clean = [{field: r.get(field) for field in RECORD_FIELDS} for r in records]
    (out / "results.json").write_text(json.dumps(clean, indent=1))
    with open(out / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RECORD_FIELDS)
        writer.writeheader()
        for r in clean:
            writer.writerow({k: (json.dumps(v) if isinstance(v, list) else v) for k, v in r.items()})
    (out / "results.md").write_text(markdown(clean, saved["fit"], saved["prediction"], args, command))
    plot(out / "results.png", clean, saved["fit"], saved["prediction"], args)
    print((out / "results.md").read_text())
    return 0


def param_bytes(args: argparse.Namespace) -> int:
    import torch

    model = build_model(args.model, channels=args.channels, image_size=args.image_size,
                        num_classes=args.num_classes, width=args.width)
    size = torch.finfo(getattr(torch, args.dtype)).bits // 8
    return sum(p.numel() for p in model.parameters()) * size


def confirm_obstacle(args: argparse.Namespace, records: list[dict[str, Any]], method: str,
                     item: dict[str, Any]) -> str | None:
    """Why the confirming run of a predicted longest unroll cannot run here, or None."""
    seconds = predict_seconds(records, method, item["steps"])
    if seconds is not None and seconds > args.confirm_max_seconds:
        return (f"predicted to take about {seconds:.0f} s (> --confirm-max-seconds {args.confirm_max_seconds:g} s)"
                if seconds < 120 else
                f"predicted to take about {seconds / 60:.0f} min (> --confirm-max-seconds "
                f"{args.confirm_max_seconds:g} s)")
    if args.device == "cpu":
        available = host_available_bytes()
        rss = max(((r.get("rss_peak_bytes") or 0) - (r.get("peak_bytes") or 0) for r in records
                   if r["status"] == "ok" and r["measured"]), default=0)
        need = (item.get("predicted_peak_bytes") or 0) + max(rss, 0)
        if available is not None and need > 0.9 * available:
            return (f"needs about {format_bytes(need)} of host memory, {format_bytes(available)} available")
    return None


if __name__ == "__main__":
    sys.exit(main())
