#!/usr/bin/env python
"""Check memmaml's GPU predictions on a CUDA device, in one command and under 8 minutes.

Every GPU figure memmaml publishes was predicted from CPU measurements. This
script measures them on the seed's workload: ResNet-18 (``memmaml.models``),
a random batch of 16x3x224x224, 10 classes, cross-entropy, in-graph SGD with
lr 0.01; one meta-step is the inner loop of ``n`` steps on the support batch,
the query loss at the adapted model and ``.backward()``. Parts, each in a fresh
subprocess with its own wall-clock limit (a failure is recorded, the rest run):

1. naive: the longest n under the cap, from 16 one step at a time (up until the
   first failure, or down until the first success);
2. ``checkpoint_steps=5`` (the seed's) at n = 500;
3. ``Auto(--auto-budget)`` at n = 2,000, doubled while the time allows;
4. offload, ``Binomial(100)``: device peak at n = 200 and 2,000, with against without;
5. exactness: naive (twice), uniform, binomial and offloaded meta-gradients at n = 8
   with dropout and BatchNorm, float32, under default and deterministic settings
   (``CUBLAS_WORKSPACE_CONFIG=:4096:8`` is set before CUDA starts);
6. torch_maml's checkpointed MAML beside memmaml's at n = 100, k = 10, if installed.

Memory: ``torch.cuda.set_per_process_memory_fraction`` caps the allocator at
``--cap`` (11 GiB), so an overrun is a real out-of-memory error. Peak statistics
are reset before each meta-step; ``max_memory_allocated`` / ``max_memory_reserved``
are absolute (model and batches included). The CUDA context is outside the cap:
its size is nvidia-smi's memory.used after the first tensor minus before, less
the allocator's reserved bytes (``mem_get_info`` when nvidia-smi is missing;
other processes then count too); the same difference at the end of part 1 also
holds the kernels and library handles loaded by then.

Time: part 1 also measures one step with and without its graph
(``memmaml.measure_step_costs``); later parts are predicted from it (no-graph
evaluations counted from the schedule's plan, scaled by naive's measured time
per step), and their n reduced, or the part skipped, to stay within
``--time-budget`` seconds. Predicted and actual seconds are recorded.

Outputs in ``--out``: results.json, results.md, results.png and parts/ (each
part's record and log). ``--smoke`` runs the same code at toy sizes (a tiny conv
net with BatchNorm and dropout, n <= 8, no cap) on the CPU in seconds.

Example::

    python scripts/gpu_check.py --out benchmarks/gpu
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib.metadata
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import memmaml
from memmaml import models
try:
    from memmaml import StepCosts, check_plan, format_bytes, parse_size
except ImportError:  # memmaml before its flat layout (these lived in memmaml.schedules)
    from memmaml.schedules import StepCosts, check_plan, format_bytes, parse_size

ORDER = ["naive", "exactness", "uniform", "binomial", "offload", "torch_maml"]  # cheap and vital first
PARTS = {  # name: (number, title, share of the time budget)
    "naive": (1, "naive: longest n under the cap", 0.08),
    "uniform": (2, "uniform checkpoint_steps=5", 0.15),
    "binomial": (3, "Auto schedule (binomial)", 0.33),
    "offload": (4, "host offload", 0.30),
    "exactness": (5, "exactness of the meta-gradients", 0.04),
    "torch_maml": (6, "torch_maml side by side", 0.10),
}
SIZES = {  # False: the seed's workload; True: the smoke run's toy one
    False: dict(batch=16, image=224, classes=10, naive_start=16, naive_max=64, uniform_n=500, uniform_k=5,
                binomial_n=2000, binomial_max=8000, offload_n=(200, 2000), offload_slots=100, exact_n=8,
                peer_n=100, peer_k=10),
    True: dict(batch=4, image=16, classes=10, naive_start=4, naive_max=8, uniform_n=8, uniform_k=5,
               binomial_n=8, binomial_max=8, offload_n=(4, 8), offload_slots=2, exact_n=8, peer_n=8, peer_k=2),
}


# ====================================================================== worker: one part, fresh process
def _smi(device: torch.device, field: str) -> str | None:
    """One nvidia-smi query field for the device (e.g. memory.used in MiB); None when unavailable."""
    visible, index = os.environ.get("CUDA_VISIBLE_DEVICES"), device.index or 0
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        token = visible.split(",")[index].strip() if visible else str(index)
        return subprocess.run(["nvidia-smi", f"--id={token}", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=20, check=True).stdout.strip() or None
    return None


def _smi_used(device: torch.device) -> int | None:
    """Device memory in use by all processes (nvidia-smi memory.used), in bytes; None when unavailable."""
    with contextlib.suppress(TypeError, ValueError):
        return int(_smi(device, "memory.used")) * 2**20
    return None


class Workload:
    """The model, batches and loss on the part's device, and one measured meta-step."""

    def __init__(self, spec: dict) -> None:
        self.spec, self.size, self.device = spec, SIZES[spec["smoke"]], torch.device(spec["device"])
        self.cuda = self.device.type == "cuda"
        gen = torch.Generator().manual_seed(0)
        shape = (self.size["batch"], 3, self.size["image"], self.size["image"])
        self.support, self.query = [(torch.randn(shape, generator=gen).to(self.device),
                                     torch.randint(0, self.size["classes"], shape[:1], generator=gen).to(self.device))
                                    for _ in range(2)]

    def model(self, *, dropout: bool = False) -> nn.Module:
        torch.manual_seed(0)
        if self.spec["smoke"]:  # tiny conv net with BatchNorm and dropout
            model = models.conv4(3, self.size["classes"], image_size=self.size["image"], filters=8)
            model.insert(len(model) - 1, nn.Dropout(0.2))
        else:
            model = models.resnet18(self.size["classes"])
            if dropout:
                model.fc = nn.Sequential(nn.Dropout(0.2), model.fc)
        return model.to(self.device).train()

    @staticmethod
    def loss(model: nn.Module, batch) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1])

    def maml(self, model: nn.Module, schedule=None, *, offload: bool = False):
        opt = memmaml.IngraphGradientDescent(0.01)
        if schedule is None:
            return memmaml.NaiveMAML(model, self.loss, opt)
        return memmaml.GradientCheckpointMAML(model, self.loss, opt, schedule=schedule, offload=offload)

    def meta_step(self, maml, n: int) -> None:
        result = maml([self.support] * n)
        self.loss(result.model, self.query).backward()

    def measure(self, model: nn.Module, maml, n: int, config: str) -> dict:
        """One meta-step from reset peak statistics; an out-of-memory error is a result, not a failure.

        CUDA: the allocator's absolute peaks, and the pinned host allocator's
        peak of active bytes. CPU: live tensor bytes created during the
        meta-step (``memmaml.track_memory``), offloaded states apart.
        """
        model.zero_grad(set_to_none=True)
        gc.collect()
        run = {"config": config, "n": n, "status": "ok", "error": None}
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            with contextlib.suppress(Exception):
                torch.cuda.reset_peak_host_memory_stats()
            run["baseline_allocated_bytes"] = torch.cuda.memory_allocated(self.device)
        start = time.perf_counter()
        try:
            with (contextlib.nullcontext() if self.cuda else memmaml.track_memory("cpu")) as mem:
                self.meta_step(maml, n)
                if self.cuda:
                    torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 -- an out-of-memory error is recorded, anything else raised
            if not (isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or "out of memory" in str(exc)):
                raise
            run.update(status="out of memory", error=f"{type(exc).__name__}: {str(exc)[:400]}")
        run.update(seconds=time.perf_counter() - start)
        run["seconds_per_step"] = run["seconds"] / n
        if self.cuda:
            run.update(peak_allocated_bytes=torch.cuda.max_memory_allocated(self.device),
                       peak_reserved_bytes=torch.cuda.max_memory_reserved(self.device))
            with contextlib.suppress(Exception):
                run["host_peak_bytes"] = torch.cuda.host_memory_stats().get("active_bytes.peak")
        else:
            run.update(peak_allocated_bytes=mem.peak_bytes, peak_reserved_bytes=None,
                       host_peak_bytes=mem.host_peak_bytes)
        model.zero_grad(set_to_none=True)
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
        return run


def part_naive(w: Workload, spec: dict, record: dict, save) -> None:
    model = w.model()
    costs = memmaml.measure_step_costs(model, w.loss, w.support, memmaml.IngraphGradientDescent(0.01))
    record["step_costs"] = costs._asdict()
    save()
    w.measure(model, w.maml(model), 1, "warm-up")
    deadline, runs, fits = time.monotonic() + spec["seconds"], record.setdefault("runs", []), {}

    def fits_at(n: int) -> bool:
        if n not in fits:
            runs.append(w.measure(model, w.maml(model), n, f"naive n={n}"))
            fits[n] = runs[-1]["status"] == "ok"
            save()
        return fits[n]

    n = spec["n"]
    if fits_at(n):
        while n < spec["max_n"] and time.monotonic() < deadline and fits_at(n + 1):
            n += 1
    else:
        while n > 1 and not fits_at(n - 1):
            n -= 1
    ok, failed = [r for r in runs if r["status"] == "ok"], [r for r in runs if r["status"] != "ok"]
    if not ok:
        raise RuntimeError(f"naive MAML does not fit even at n=1: {failed[0]['error']}")
    best, first = max(ok, key=lambda r: r["n"]), min(failed, key=lambda r: r["n"], default=None)
    record.update(longest_n=best["n"], seconds_per_step=best["seconds_per_step"],
                  first_failing_n=first and first["n"], first_failing_error=first and first["error"])
    if first is None:
        why = "the search limit" if n >= spec["max_n"] else "time ran out"
        record["note"] = f"no out-of-memory up to n={n}: {why}"
    low = min(ok, key=lambda r: r["n"])
    if best is not low:
        record["bytes_per_step"] = (best["peak_allocated_bytes"] - low["peak_allocated_bytes"]) / (best["n"] - low["n"])


def part_uniform(w: Workload, spec: dict, record: dict, save) -> None:
    model = w.model()
    w.measure(model, w.maml(model, memmaml.Uniform(2)), 4, "warm-up")
    record["runs"] = [w.measure(model, w.maml(model, memmaml.Uniform(spec["k"])), spec["n"],
                                f"uniform k={spec['k']} n={spec['n']}")]


def part_binomial(w: Workload, spec: dict, record: dict, save) -> None:
    model = w.model()
    w.measure(model, w.maml(model, memmaml.Binomial(1)), 4, "warm-up")
    budget = spec["auto_budget"]
    if budget is None:  # smoke: a budget that forces a binomial schedule (room for three stored states)
        costs = memmaml.measure_step_costs(model, w.loss, w.support, memmaml.IngraphGradientDescent(0.01))
        budget = costs.graph_bytes + 5 * costs.state_bytes
    schedule = memmaml.Auto(budget)
    config = f"Auto({format_bytes(budget)}) n={spec['n']}"
    maml = w.maml(model, schedule)
    record["runs"] = [w.measure(model, maml, spec["n"], config)]
    choice = getattr(maml, "last_choice", None)  # what Auto chose; older memmaml: Auto.describe()
    record["schedule"] = choice.describe() if choice is not None else schedule.describe()


def part_offload(w: Workload, spec: dict, record: dict, save) -> None:
    model = w.model()
    w.measure(model, w.maml(model, memmaml.Binomial(1), offload=True), 4, "warm-up")
    runs = record["runs"] = []
    for n in dict.fromkeys(spec["ns"]):  # one n only when the time budget reduced the large one to the small
        for offload in (True, False):
            schedule = memmaml.Binomial(min(spec["slots"], max(1, n - 1)))
            runs.append(w.measure(model, w.maml(model, schedule, offload=offload), n,
                                  f"{schedule!r}{' + offload' if offload else ''} n={n}"))
            save()
    on = runs[::2]
    if len(on) == 2 and on[0]["peak_allocated_bytes"]:
        record["device_peak_growth"] = on[1]["peak_allocated_bytes"] / on[0]["peak_allocated_bytes"]
    record["time_with_over_without"] = {str(a["n"]): a["seconds"] / b["seconds"] for a, b in zip(runs[::2], runs[1::2])}


def _grads_and_buffers(w: Workload, model: nn.Module, init: dict, maml, n: int):
    model.load_state_dict(init)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1234)
    w.meta_step(maml, n)
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()]), [b.clone() for b in model.buffers()]


def part_exactness(w: Workload, spec: dict, record: dict, save) -> None:
    model = w.model(dropout=True)
    init, n = copy.deepcopy(model.state_dict()), spec["n"]
    methods = {"naive": (None, False), "naive (again)": (None, False), "uniform k=3": (memmaml.Uniform(3), False),
               "binomial slots=2": (memmaml.Binomial(2), False),
               "binomial slots=2 + offload": (memmaml.Binomial(2), True)}
    record.update(cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"), modes={})
    for mode, deterministic in (("default", False), ("deterministic", True)):
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, deterministic
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = {name: _grads_and_buffers(w, model, init, w.maml(model, s, offload=o), n)
                   for name, (s, o) in methods.items()}
        reference, buffers = got.pop("naive")
        scale = reference.abs().max().clamp_min(1e-30)
        record["modes"][mode] = {
            "settings": {"cudnn.benchmark": False, "cudnn.deterministic": deterministic,
                         "use_deterministic_algorithms": deterministic, "warn_only": True},
            "nondeterministic_op_warnings": sorted({str(c.message)[:200] for c in caught
                                                    if "deterministic" in str(c.message)}),
            "methods": {name: {"relative_difference": float((g - reference).abs().max() / scale),
                               "bitwise": torch.equal(g, reference),
                               "buffers_bitwise": all(torch.equal(a, b) for a, b in zip(bufs, buffers))}
                        for name, (g, bufs) in got.items()}}
        save()
    torch.use_deterministic_algorithms(False)


def part_torch_maml(w: Workload, spec: dict, record: dict, save) -> None:
    import torch_maml

    warnings.filterwarnings("ignore", message=".*use_reentrant.*")  # torch_maml calls checkpoint without it
    model = w.model()
    init, n, k = copy.deepcopy(model.state_dict()), spec["n"], spec["k"]
    makers = {"memmaml": lambda: w.maml(model, memmaml.Uniform(k)),
              "torch_maml": lambda: torch_maml.GradientCheckpointMAML(
                  model, w.loss, torch_maml.IngraphGradientDescent(0.01), checkpoint_steps=k)}
    runs, grads = record.setdefault("runs", []), {}
    for name, make in makers.items():
        for steps, config in ((2, "warm-up"), (n, f"{name} checkpointed k={k} n={n}")):
            model.load_state_dict(init)
            runs.append(w.measure(model, make(), steps, config))
        model.load_state_dict(init)  # before make(): torch_maml may copy the module it is given
        grads[name] = _grads_and_buffers(w, model, init, make(), min(n, 4))[0]
        save()
    scale = grads["memmaml"].abs().max().clamp_min(1e-30)
    record.update(relative_difference_at_n4=float((grads["torch_maml"] - grads["memmaml"]).abs().max() / scale),
                  torch_maml_version=importlib.metadata.version("torch-maml"))


def worker(part: str, spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    record, started = {"status": "running"}, time.perf_counter()

    def save() -> None:
        record["work_seconds"] = time.perf_counter() - started
        Path(spec["record_path"]).write_text(json.dumps(record, indent=1, default=str))

    try:
        device = torch.device(spec["device"])
        env = record["environment"] = {"device": str(device), "name": "cpu"}
        before = None
        if device.type == "cuda":
            before = _smi_used(device)
            torch.cuda.set_device(device)
            torch.ones(1, device=device)
            torch.cuda.synchronize(device)
            after, (free, total) = _smi_used(device), torch.cuda.mem_get_info(device)
            reserved, props = torch.cuda.memory_reserved(device), torch.cuda.get_device_properties(device)
            env.update(name=props.name, capability=f"{props.major}.{props.minor}", total_bytes=total,
                       driver=_smi(device, "driver_version"), cudnn=torch.backends.cudnn.version(),
                       cudnn_enabled=torch.backends.cudnn.enabled, cudnn_benchmark=torch.backends.cudnn.benchmark,
                       cudnn_deterministic=torch.backends.cudnn.deterministic,
                       cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
                       float32_matmul_precision=torch.get_float32_matmul_precision())
            if before is not None and after is not None:
                env.update(context_bytes=after - before - reserved, context_method="nvidia-smi memory.used after the "
                           "first tensor minus before, less the allocator's reserved bytes")
            else:
                env.update(context_bytes=total - free - reserved, context_method="mem_get_info: device memory in use "
                           "after the first tensor, less the allocator's reserved bytes (other processes count too)")
            if spec["cap_bytes"]:
                torch.cuda.set_per_process_memory_fraction(min(1.0, spec["cap_bytes"] / total), device)
                env["cap_fraction"] = min(1.0, spec["cap_bytes"] / total)
        elif spec["smoke"]:
            torch.set_num_threads(1)
        save()
        globals()[f"part_{part}"](Workload(spec), spec, record, save)
        end = _smi_used(device) if before is not None else None
        if end is not None:
            record["non_allocator_bytes_at_end"] = end - before - torch.cuda.memory_reserved(device)
        record["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 -- recorded; the parent goes on with the other parts
        record.update(status="failed", error=f"{type(exc).__name__}: {exc}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
    save()


# ====================================================================== parent: plan, run, report
def predicted_seconds(costs: dict | None, scale: float, schedule, n: int, auto_budget: int | None = None):
    """Seconds of a meta-step of n steps: no-graph evaluations (counted from the plan) plus n graph steps."""
    if costs is None:
        return None
    c = StepCosts(**costs)
    if schedule == "auto":
        return memmaml.Auto(auto_budget or c.graph_bytes + 5 * c.state_bytes).choose(n, c).predicted_seconds * scale
    evaluations = 0 if schedule is None else check_plan(schedule.plan(n)).forward_steps
    return (evaluations * c.nograph_seconds + n * c.graph_seconds) * scale


def fit_steps(target: int, predict, seconds: float, minimum: int, grow_to: int | None = None):
    """The largest n whose prediction fits in seconds: target, doubled up to grow_to, or less; (n, note)."""
    if seconds <= 0:
        return None, "skipped: no time left in the budget"
    if predict(target) <= seconds:
        n = target
        while grow_to and 2 * n <= grow_to and predict(2 * n) <= seconds:
            n *= 2
        return n, (f"raised from {target} to {n}: the time allowed it" if n != target else None)
    if predict(minimum) > seconds:
        return None, f"skipped: even n={minimum} is predicted at {predict(minimum):.0f} s > {seconds:.0f} s left for it"
    low, high = minimum, target
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if predict(mid) <= seconds else (low, mid)
    return low, f"reduced from {target} to {low}: n={target} is predicted at {predict(target):.0f} s > {seconds:.0f} s"


def plan_part(name: str, size: dict, auto_budget: int | None, costs: dict | None, scale: float, seconds: float):
    """(spec for the worker or None to skip, predicted seconds, note)."""
    p = lambda schedule, n: predicted_seconds(costs, scale, schedule, n, auto_budget)  # noqa: E731
    if name == "naive":  # calibrates the others: no prediction
        return dict(n=size["naive_start"], max_n=size["naive_max"], seconds=max(seconds, 30.0)), None, None
    if name == "exactness":
        n = size["exact_n"]
        predicted = costs and 2 * (2 * p(None, n) + p(memmaml.Uniform(3), n) + 2 * p(memmaml.Binomial(2), n))
        return dict(n=n), predicted, None
    if name == "torch_maml" and importlib.util.find_spec("torch_maml") is None:
        return None, None, "skipped: pip install torch-maml"
    small, slots = size["offload_n"][0], size["offload_slots"]
    target, minimum, grow_to, predict, spec = {
        "uniform": (size["uniform_n"], 50, None, lambda n: p(memmaml.Uniform(size["uniform_k"]), n),
                    dict(k=size["uniform_k"])),
        "binomial": (size["binomial_n"], 100, size["binomial_max"], lambda n: p("auto", n),
                     dict(auto_budget=auto_budget)),
        "offload": (size["offload_n"][1], small, None,
                    lambda n: 2 * p(memmaml.Binomial(slots), small) + 2 * p(memmaml.Binomial(slots), n),
                    dict(slots=slots)),
        "torch_maml": (size["peer_n"], 10, None, lambda n: 2 * p(memmaml.Uniform(size["peer_k"]), n),
                       dict(k=size["peer_k"])),
    }[name]
    n, note = (target, "no prediction: part 1 measured no step costs") if costs is None else fit_steps(
        target, predict, seconds, min(minimum, target), grow_to)
    if n is None:
        return None, predict(min(minimum, target)), note
    spec.update(ns=[small, n]) if name == "offload" else spec.update(n=n)
    return spec, costs and predict(n), note


def run_part(name: str, spec: dict, out: Path, timeout: float) -> tuple[dict, float]:
    """One part in a fresh process, killed after timeout seconds: (its record, wall seconds)."""
    spec_path, record_path, log_path = (out / "parts" / f"{name}{suffix}" for suffix in (".spec.json", ".json", ".log"))
    spec_path.write_text(json.dumps({**spec, "record_path": str(record_path)}, indent=1))
    record_path.unlink(missing_ok=True)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"} if name == "exactness" else None  # before CUDA starts
    start, timed_out = time.monotonic(), False
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--spec", str(spec_path)],
                                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            timed_out = True
    record = {}
    with contextlib.suppress(OSError, ValueError):  # missing, or cut short by the kill
        record = json.loads(record_path.read_text())
    if timed_out:
        record.update(status="failed",
                      error=f"timed out after {timeout:.0f} s (this part's limit); figures so far kept")
    elif record.get("status") not in ("ok", "failed"):
        record.update(status="failed",
                      error=f"worker exited with code {proc.returncode}: {log_path.read_text()[-1500:]}")
    return record, time.monotonic() - start


def _b(num) -> str:
    return "—" if num is None else format_bytes(num)


def _s(seconds) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def write_outputs(results: dict, out: Path, *, with_plot: bool = True) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    label, env, parts = results["label"], results.get("environment", {}), results["parts"]
    runs = [r for part in parts.values() for r in part.get("runs", []) if r.get("config") != "warm-up"]
    mm = results["memmaml"]
    lines = [f"# memmaml GPU check — {label}", "", f"- command: `{results['command']}`",
             f"- memmaml {mm['version']} at {mm['commit']}{' (uncommitted changes)' if mm['dirty'] else ''}; "
             f"torch {results['torch']}, CUDA {results['cuda']}, cuDNN {env.get('cudnn')}",
             f"- device: {env.get('name', results['device'])}; allocator cap: {_b(results['cap_bytes'])}; "
             f"CUDA context: {_b(env.get('context_bytes'))} ({env.get('context_method', 'none on CPU')}); at the end "
             "of part 1, with kernels and library handles: "
             f"{_b(parts.get('naive', {}).get('non_allocator_bytes_at_end'))}",
             f"- workload: {results['workload']}",
             f"- {results['total_seconds']:.0f} s in all, of a {results['time_budget_seconds']:.0f} s budget", "",
             "| part | status | predicted s | worker s | wall s | note |", "|---|---|---|---|---|---|"]
    for part in parts.values():
        note = "; ".join(str(part[k]) for k in ("plan_note", "error", "note", "schedule") if part.get(k))
        lines.append(f"| {part['number']}. {part['title']} | {part['status']} | {_s(part.get('predicted_seconds'))} | "
                     f"{_s(part.get('work_seconds'))} | {_s(part.get('actual_seconds'))} | "
                     f"{note[:300].replace('|', '/').replace(chr(10), ' ')} |")
    lines += ["", f"Runs, {label}. " + ("Peaks are the allocator's, absolute (model and batches included); host: "
              "pinned active bytes." if env.get("total_bytes") else "Peaks are live tensor bytes created during the "
              "meta-step (memmaml.track_memory); host: offloaded states."), "",
              "| configuration | status | peak allocated | peak reserved | host peak | time / step | × naive |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        ratio = r.get("ratio_to_naive")
        lines.append(f"| {r['config']} | {r['status']} | {_b(r.get('peak_allocated_bytes'))} | "
                     f"{_b(r.get('peak_reserved_bytes'))} | {_b(r.get('host_peak_bytes'))} | "
                     f"{r.get('seconds_per_step', 0) * 1e3:.1f} ms | {'—' if ratio is None else f'{ratio:.2f}'} |")
    naive = parts.get("naive", {})
    if naive.get("longest_n"):
        lines += ["", f"Naive, {label}: longest n = {naive['longest_n']}, first failing n = "
                      f"{naive.get('first_failing_n')} ({naive.get('first_failing_error') or naive.get('note')})."]
    for mode, m in parts.get("exactness", {}).get("modes", {}).items():
        lines += ["", f"Exactness against naive, {mode} settings ({m['settings']}), {label}:", "",
                  "| method | relative difference | bitwise | buffers bitwise |", "|---|---|---|---|"]
        lines += [f"| {k} | {v['relative_difference']:.3g} | {v['bitwise']} | {v['buffers_bitwise']} |"
                  for k, v in m["methods"].items()]
        if m["nondeterministic_op_warnings"]:
            lines.append(f"\nOps without a deterministic implementation: {m['nondeterministic_op_warnings']}")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    if with_plot:
        plot(runs, results, out / "results.png")


def plot(runs: list, results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in runs if r.get("peak_allocated_bytes") is not None]
    fig, (mem_ax, time_ax) = plt.subplots(1, 2, figsize=(13, 1.8 + 0.4 * len(runs)))
    y = list(range(len(runs)))
    largest = max([r["peak_allocated_bytes"] for r in runs] + [results["cap_bytes"] or 0])
    unit, scale = ("GiB", 2**30) if largest > 2**29 else ("MiB", 2**20)
    if any(r.get("peak_reserved_bytes") for r in runs):  # behind the allocated bars: their excess shows hatched
        mem_ax.barh(y, [(r.get("peak_reserved_bytes") or 0) / scale for r in runs], color="white",
                    edgecolor="tab:blue", hatch="//", label="peak reserved")
    mem_ax.barh(y, [r["peak_allocated_bytes"] / scale for r in runs], color="tab:blue", label="peak allocated")
    if results["cap_bytes"]:
        mem_ax.axvline(results["cap_bytes"] / scale, color="red", label=f"cap {_b(results['cap_bytes'])}")
    mem_ax.set(yticks=y, yticklabels=[r["config"] + ("" if r["status"] == "ok" else " (OOM)") for r in runs],
               xlabel=f"peak device memory ({unit})")
    mem_ax.legend(loc="lower right", fontsize=8)
    time_ax.barh(y, [r.get("ratio_to_naive") or 0 for r in runs], color="tab:orange")
    time_ax.axvline(1.0, color="black", linewidth=0.8)
    time_ax.set(yticks=y, yticklabels=[], xlabel="time per inner step / naive's")
    for ax in (mem_ax, time_ax):
        ax.invert_yaxis()  # the first configuration on top, as in results.md
    fig.suptitle(results["label"])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _git(*args: str) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["git", *args], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                              text=True, timeout=20, check=True).stdout.strip()
    return None


def parse_args(argv=None) -> argparse.Namespace:
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
        if not names or names - set(PARTS):
            raise argparse.ArgumentTypeError(f"unknown parts {sorted(names - set(PARTS))}; known: {', '.join(ORDER)}")
        return [n for n in ORDER if n in names]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", help="output folder: results.json, results.md, results.png, parts/")
    parser.add_argument("--smoke", action="store_true", help="toy sizes and no cap, to check the script on a CPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--time-budget", type=positive, default=420.0,
                        help="seconds for all parts; a part's n is reduced, or the part skipped, to fit (default 420)")
    parser.add_argument("--cap", type=size, default=parse_size("11GiB"), help="allocator cap (default 11GiB)")
    parser.add_argument("--auto-budget", type=size, default=parse_size("10GiB"),
                        help="part 3's Auto budget (default 10GiB: the cap less 1 GiB for the model, batches and "
                             "workspaces, which Auto's memory model leaves out)")
    parser.add_argument("--parts", type=part_list, default=ORDER, help=f"a comma-separated subset of {','.join(ORDER)}")
    parser.add_argument("--worker", choices=list(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and not args.out:
        parser.error("--out is required: the folder for results.json, results.md and results.png")
    try:
        device = torch.device(args.device)
    except RuntimeError as err:
        parser.error(f"--device {args.device!r}: {err}")
    if device.type not in ("cpu", "cuda"):
        parser.error(f"--device must be a CUDA device (or cpu with --smoke), got {args.device!r}")
    if args.worker is None and not args.smoke and (device.type != "cuda" or not torch.cuda.is_available()):
        parser.error(f"no CUDA device (--device {args.device}; torch.cuda.is_available() is "
                     f"{torch.cuda.is_available()}): run on a machine with a GPU, or pass --smoke for a toy run "
                     "of the same code on the CPU")
    args.device = str(torch.device("cuda", device.index or 0) if device.type == "cuda" else device)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        return worker(args.worker, args.spec)
    from tqdm import tqdm

    out, size, start = Path(args.out), SIZES[args.smoke], time.monotonic()
    (out / "parts").mkdir(parents=True, exist_ok=True)
    commit = _git("rev-parse", "HEAD")
    results = {
        "label": (f"smoke run on {args.device}, toy sizes: not a measurement of the seed" if args.smoke
                  else f"measured on {args.device}"),
        "smoke": args.smoke, "command": shlex.join([sys.executable, *sys.argv]), "device": args.device,
        "memmaml": {"version": memmaml.__version__, "commit": commit,
                    "dirty": bool(_git("status", "--porcelain", "--untracked-files=no")) if commit else None},
        "torch": torch.__version__, "cuda": torch.version.cuda, "python": sys.version.split()[0],
        "cap_bytes": None if args.smoke else args.cap, "auto_budget_bytes": None if args.smoke else args.auto_budget,
        "time_budget_seconds": args.time_budget, "total_seconds": 0.0,
        "workload": (f"{'tiny conv4 (8 filters) + dropout' if args.smoke else 'ResNet-18'}, batch {size['batch']}x3x"
                     f"{size['image']}x{size['image']}, {size['classes']} classes, cross-entropy, "
                     "in-graph SGD lr 0.01, one support batch for every inner step, float32"),
        "parts": {},
    }
    costs, scale, overhead = None, 1.0, 5.0 if args.smoke else 30.0  # overhead: a worker's start-up, until measured
    bar = tqdm(args.parts, desc="gpu_check", unit="part", file=sys.stdout, disable=not sys.stdout.isatty())
    for index, name in enumerate(bar):
        number, title, weight = PARTS[name]
        bar.set_postfix_str(title)
        now = time.monotonic()
        share = max(start + args.time_budget - now, 0.0) * weight / sum(PARTS[n][2] for n in args.parts[index:])
        spec, predicted, note = plan_part(name, size, results["auto_budget_bytes"], costs, scale, share - overhead)
        entry = {"number": number, "title": title, "predicted_seconds": predicted, "plan_note": note}
        if spec is not None and start + 1.1 * args.time_budget - now < 15:
            spec, entry["plan_note"] = None, "skipped: no time left in the budget"
        if spec is None:
            entry.update(status="skipped", actual_seconds=0.0)
        else:
            timeout = min(max(1.5 * (predicted or 0), share) + overhead + 30, start + 1.1 * args.time_budget - now)
            spec.update(smoke=args.smoke, device=args.device, cap_bytes=results["cap_bytes"])
            record, wall = run_part(name, spec, out, timeout)
            entry.update(record, actual_seconds=wall, timeout_seconds=timeout, spec=spec)
            overhead = max(1.0, wall - record["work_seconds"]) if record.get("work_seconds") else overhead
            if "environment" in record and "environment" not in results:
                results["environment"] = record["environment"]
                if not args.smoke:
                    results["label"] = f"measured on {record['environment']['name']}"
            if name == "naive" and record.get("step_costs"):
                costs = record["step_costs"]
                if record.get("seconds_per_step"):
                    scale = min(4.0, max(0.25, record["seconds_per_step"] / costs["graph_seconds"]))
                results["calibration"] = {"step_costs": costs, "scale": scale, "how": (
                    "predicted seconds = (no-graph evaluations x nograph_seconds + n x graph_seconds) x scale, "
                    "scale = naive's measured seconds per step / graph_seconds")}
        results["parts"][name] = entry
        tqdm.write(f"[{number} {name}] {entry['status']} in {entry['actual_seconds']:.1f} s (predicted "
                   f"{_s(predicted)}) {(entry.get('plan_note') or entry.get('error') or '')[:200]}", file=sys.stdout)
        results["total_seconds"] = time.monotonic() - start
        naive_step = results["parts"].get("naive", {}).get("seconds_per_step")
        for run in (r for part in results["parts"].values() for r in part.get("runs", [])):
            ok = naive_step and run["status"] == "ok"
            run["ratio_to_naive"] = run["seconds_per_step"] / naive_step if ok else None
        write_outputs(results, out, with_plot=False)  # after every part, so that a cut-short run leaves its figures
    write_outputs(results, out)
    print(f"{results['label']}: {out / 'results.md'}, results.json, results.png ({results['total_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
