"""The GPU check's parts, their time planning and their report (``scripts/gpu_check.py``).

The check measures the seed's workload (:class:`~memmaml.bench.Workload`'s
default: ResNet-18, 16x3x224x224, in-graph SGD at 0.01) on a CUDA device in
six independent parts (:data:`GPU_PARTS`). Every meta-step a part measures runs
in a fresh process (:class:`~memmaml.bench.Runner`), under the allocator cap;
what the worker does not do runs in a fresh process of this module instead:
the probe (the CUDA context's size, the device, provenance and the step costs
every prediction starts from) and part 5 (exactness under default and
deterministic settings, with dropout and BatchNorm in the model).

NOTE [ Time planning ]
    The probe measures one inner step with and without its graph
    (:func:`~memmaml.measure_step_costs`). A part's seconds are predicted as
    ``(no-graph evaluations x nograph_seconds + n x graph_seconds) x scale``,
    the evaluations counted from the schedule's plan and ``scale`` naive's
    measured time per step over ``graph_seconds`` once part 1 has run
    (:func:`predict_seconds`). :func:`plan_gpu_part` then lowers a part's ``n``
    (or raises it, part 3) to fit the seconds it is given, or skips the part,
    and says so in a note. Process start-ups are not in the prediction: the
    caller subtracts them, measured, from each part's share.

NOTE [ The CUDA context ]
    The allocator cap does not cover the CUDA context. The probe measures it
    as nvidia-smi's ``memory.used`` after the first tensor minus before, less
    the allocator's reserved bytes (``mem_get_info`` when nvidia-smi is
    missing; other processes then count too); the same difference after the
    probe's steps also holds the kernels and library handles loaded by then.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from .._auto import Auto
from .._cost_model import StepCosts, predicted_seconds
from .._parse import parse_engine
from .._plans import PlanStats
from .._units import format_bytes
from ._methods import Method, meta_step, unavailable
from ._provenance import provenance
from ._runner import Runner, _child_env, _die_with_parent
from ._sweep import concrete_engine, engine_stats
from ._workload import Workload

__all__ = [
    "GPU_PARTS",
    "GPU_SIZES",
    "GpuPart",
    "GpuSizes",
    "fit_steps",
    "plan_gpu_part",
    "predict_seconds",
    "probe_device",
    "run_gpu_part",
    "write_gpu_report",
]


class GpuPart(NamedTuple):
    """A part of the check: its number in the issue, title, share of the time budget, processes it starts."""

    number: int
    title: str
    share: float
    processes: int


#: the parts in the order they run: cheap and vital first
GPU_PARTS = {
    "naive": GpuPart(1, "naive: longest n under the cap", 0.08, 3),
    "exactness": GpuPart(5, "exactness of the meta-gradients", 0.04, 1),
    "uniform": GpuPart(2, "uniform checkpoint_steps=5", 0.15, 1),
    "binomial": GpuPart(3, "Auto schedule (binomial)", 0.33, 1),
    "offload": GpuPart(4, "host offload", 0.30, 4),
    "torch_maml": GpuPart(6, "torch_maml side by side", 0.10, 2),
}


class GpuSizes(NamedTuple):
    """What each part runs: the workload, step counts and engines (:func:`~memmaml.parse_engine` text)."""

    workload: Workload
    naive_start: int  # part 1 searches from here, one step at a time
    naive_max: int
    uniform: str
    uniform_n: int
    binomial_n: int  # part 3 doubles it up to binomial_max while the time allows
    binomial_max: int
    offload_n: tuple[int, int]
    offload_slots: int
    exact_n: int
    exact_engines: tuple[str, ...]
    exact_dropout: float
    peer: str
    peer_n: int


#: ``False``: the seed's workload; ``True``: the smoke run's (a tiny conv net with BatchNorm, n <= 8, on a CPU).
#: Each meta-step of the smoke run is a process (~3 s on a CPU, most of it importing torch), so its naive search
#: is one run and its offload part one n: the tests check both searches and two n with stand-in runs.
GPU_SIZES = {
    False: GpuSizes(
        Workload(),
        naive_start=16,
        naive_max=64,
        uniform="uniform:5",
        uniform_n=500,
        binomial_n=2000,
        binomial_max=8000,
        offload_n=(200, 2000),
        offload_slots=100,
        exact_n=8,
        exact_engines=("uniform:3", "binomial:2", "binomial:2+offload"),
        exact_dropout=0.2,
        peer="uniform:10",
        peer_n=100,
    ),
    True: GpuSizes(
        Workload(model="conv4", image_size=16, batch_size=4, width=8),
        naive_start=8,
        naive_max=8,
        uniform="uniform:5",
        uniform_n=8,
        binomial_n=8,
        binomial_max=8,
        offload_n=(8, 8),
        offload_slots=2,
        exact_n=8,
        exact_engines=("uniform:3", "binomial:2", "binomial:2+offload"),
        exact_dropout=0.2,
        peer="uniform:2",
        peer_n=8,
    ),
}


# ====================================================================== time planning
def predict_seconds(engine: str, n: int, costs: StepCosts | None, *, scale: float = 1.0) -> float | None:
    """Seconds of ``n`` inner steps by ``engine`` (``"auto:BUDGET"`` as Auto would choose), or ``None`` without costs.

    Example:
        >>> costs = StepCosts(state_bytes=1, graph_bytes=10, nograph_seconds=0.01, graph_seconds=0.03)
        >>> round(predict_seconds("naive", 100, costs), 6), round(predict_seconds("uniform:5", 100, costs), 6)
        (3.0, 3.95)
    """
    if costs is None:
        return None
    schedule = parse_engine(engine).schedule
    if schedule is not None and schedule.needs_costs:
        engine = concrete_engine(engine, n, costs, schedule.budget)
    stats, _ = engine_stats(engine, n)
    return predicted_seconds(None if stats is None else PlanStats(**stats), n, costs) * scale


def fit_steps(
    target: int, predict: Callable[[int], float], seconds: float, minimum: int, grow_to: int | None = None
) -> tuple[int | None, str | None]:
    """The largest n whose predicted seconds fit: ``target``, doubled up to ``grow_to``, or less; ``(n, note)``.

    ``n`` is ``None`` (skip the part) when not even ``minimum`` fits.

    Example:
        >>> fit_steps(500, lambda n: 0.1 * n, 20.0, 50)
        (200, 'reduced from 500 to 200: n=500 is predicted at 50 s > 20 s')
    """
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


def plan_gpu_part(
    name: str,
    sizes: GpuSizes,
    costs: StepCosts | None,
    seconds: float,
    *,
    scale: float = 1.0,
    auto_budget: int | None = None,
) -> tuple[dict[str, Any] | None, float | None, str | None]:
    """``(spec for run_gpu_part or None to skip, predicted seconds of its meta-steps, note)``.

    ``seconds`` is the part's share of the time budget, process start-ups
    already taken out. ``auto_budget`` is part 3's Auto budget; ``None`` (the
    smoke run) gives one that forces a binomial schedule: one step's graph and
    five states.
    """

    def p(engine: str, n: int) -> float:
        return predict_seconds(engine, n, costs, scale=scale)

    if name == "naive":  # calibrates the others: no prediction
        return dict(n=sizes.naive_start, max_n=sizes.naive_max, seconds=max(seconds, 30.0)), None, None
    if name == "exactness":
        n, engines = sizes.exact_n, sizes.exact_engines
        predicted = costs and 2 * (2 * p("naive", n) + sum(p(e, n) for e in engines))
        return dict(n=n, engines=list(engines), dropout=sizes.exact_dropout), predicted, None
    if name == "torch_maml":
        reason = unavailable(Method("torch_maml"), sizes.workload.optimizer)
        if reason:
            return None, None, f"skipped: {reason}"
    budget = auto_budget or (costs and costs.graph_bytes + 5 * costs.state_bytes)
    if name == "binomial" and budget is None:
        return None, None, "skipped: the smoke run's Auto budget comes from the probe's step costs, and there are none"
    auto, (small, large), slots = f"auto:{budget}", sizes.offload_n, sizes.offload_slots

    def offload_engine(n: int) -> str:
        return f"binomial:{min(slots, max(1, n - 1))}"

    target, minimum, grow_to, predict = {
        "uniform": (sizes.uniform_n, 50, None, lambda n: p(sizes.uniform, n)),
        "binomial": (sizes.binomial_n, 100, sizes.binomial_max, lambda n: p(auto, n)),
        "offload": (large, small, None, lambda n: sum(2 * p(offload_engine(m), m) for m in dict.fromkeys((small, n)))),
        "torch_maml": (sizes.peer_n, 10, None, lambda n: 2 * p(sizes.peer, n)),
    }[name]
    if costs is None:
        n, note = target, "no prediction: the probe measured no step costs"
    else:
        try:
            n, note = fit_steps(target, predict, seconds, min(minimum, target), grow_to)
        except ValueError as err:  # Auto: not even one step fits the budget
            return None, None, f"skipped: {err}"
        if n is None:
            return None, predict(min(minimum, target)), note
    spec: dict[str, Any] = {"n": n}
    if name == "uniform":
        spec["engine"] = sizes.uniform
    elif name == "binomial":
        spec["auto_budget"] = budget
        if costs is None:
            spec.update(
                engine=auto,
                schedule=f"Auto(budget={format_bytes(budget)}) chose in the worker (not recorded: "
                "the probe measured no step costs)",
            )
        else:
            choice = Auto(budget).choose(n, costs)
            spec.update(engine=concrete_engine(auto, n, costs, budget), schedule=choice.describe())
    elif name == "offload":
        spec = {"runs": [[offload_engine(m), m] for m in dict.fromkeys((small, n))]}
    else:
        spec["engine"] = sizes.peer
    return spec, costs and predict(n), note


# ====================================================================== the parts, in the parent
class _OutOfTime(Exception):
    pass


class _ChildFailed(Exception):
    def __init__(self, child: dict[str, Any]) -> None:
        super().__init__(child.get("error"))
        self.traceback = child.get("traceback")


class _Part:
    """One part's runs: each meta-step in a fresh process, none past the part's deadline."""

    def __init__(
        self,
        workload: Workload,
        workdir: Path,
        record: dict[str, Any],
        *,
        cap_bytes: int | None,
        deadline: float,
        threads: int,
    ) -> None:
        self.workload, self.workdir, self.record = workload, workdir, record
        self.cap_bytes, self.deadline, self.threads = cap_bytes, deadline, threads
        self.runner = Runner(workload, workdir, threads=threads)

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime
        return left

    def measure(
        self, engine: str, n: int, *, library: str = "memmaml", config: str | None = None, save_grads: bool = False
    ) -> dict[str, Any]:
        """One tracked meta-step under the cap; an out-of-memory error is a result, a timeout ends the part."""
        self.runner.timeout = self.left()
        record = self.runner.run(
            Method(library, engine), n, track=True, save_grads=save_grads, memory_cap_bytes=self.cap_bytes
        )
        label = config or (f"{engine} n={n}" if library == "memmaml" else f"{library} {engine} n={n}")
        run = {
            "config": label,
            **record,
            "seconds_per_step": record["seconds"] / n if record.get("seconds") else None,
            "peak_allocated_bytes": record.get("cuda_max_allocated_bytes", record.get("peak_bytes")),
            "peak_reserved_bytes": record.get("cuda_max_reserved_bytes"),
            "host_peak_bytes": record.get("cuda_host_peak_bytes", record.get("host_peak_bytes")),
        }
        self.record["runs"].append(run)
        self.record["processes"] += 1
        self.record["work_seconds"] += record.get("seconds") or 0.0
        if record["status"] == "timeout":
            raise _OutOfTime
        return run

    def child(self, function: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        """One of this module's process functions; its figures merged into the record even when it fails."""
        child = _in_fresh_process(
            function,
            {**spec, "workload": self.workload.__dict__, "cap_bytes": self.cap_bytes, "threads": self.threads},
            self.workdir,
            timeout=self.left(),
            env=env,
        )
        self.record["processes"] += 1
        self.record["work_seconds"] += child.pop("work_seconds", 0.0)
        status = child.pop("status")
        self.record.update({k: v for k, v in child.items() if k not in ("error", "traceback")})
        if status == "timeout":
            raise _OutOfTime
        if status != "ok":
            raise _ChildFailed(child)
        return child


def _part_naive(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    fits: dict[int, bool] = {}
    search_deadline = time.monotonic() + spec["seconds"]

    def fits_at(n: int) -> bool:
        if n not in fits:
            run = part.measure("naive", n)
            if run["status"] not in ("ok", "oom"):
                raise RuntimeError(f"naive n={n}: {run['status']}: {run.get('error')}")
            fits[n] = run["status"] == "ok"
        return fits[n]

    n = spec["n"]
    if fits_at(n):
        while n < spec["max_n"] and time.monotonic() < search_deadline and fits_at(n + 1):
            n += 1
    else:
        while n > 1 and not fits_at(n - 1):
            n -= 1
    runs = record["runs"]
    ok, failed = [r for r in runs if r["status"] == "ok"], [r for r in runs if r["status"] == "oom"]
    if not ok:
        raise RuntimeError(f"naive MAML does not fit even at n=1: {failed[0]['error']}")
    best, first = max(ok, key=lambda r: r["steps"]), min(failed, key=lambda r: r["steps"], default=None)
    record.update(
        longest_n=best["steps"],
        seconds_per_step=best["seconds_per_step"],
        first_failing_n=first and first["steps"],
        first_failing_error=first and first["error"],
    )
    if first is None:
        why = "the search limit" if n >= spec["max_n"] else "time ran out"
        record["note"] = f"no out-of-memory up to n={n}: {why}"
    low = min(ok, key=lambda r: r["steps"])
    if best is not low:
        record["bytes_per_step"] = (best["peak_allocated_bytes"] - low["peak_allocated_bytes"]) / (
            best["steps"] - low["steps"]
        )


def _part_uniform(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    part.measure(spec["engine"], spec["n"])


def _part_binomial(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    record["schedule"] = spec["schedule"]
    part.measure(
        spec["engine"], spec["n"], config=f"{spec['engine']} n={spec['n']} (Auto {format_bytes(spec['auto_budget'])})"
    )


def _part_offload(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    for engine, n in spec["runs"]:  # one n only when the time budget reduced the large one to the small
        for suffix in ("+offload", ""):
            part.measure(engine + suffix, n)
    on, off = record["runs"][::2], record["runs"][1::2]
    if len(on) == 2 and on[0]["peak_allocated_bytes"] and on[1]["peak_allocated_bytes"]:
        record["device_peak_growth"] = on[1]["peak_allocated_bytes"] / on[0]["peak_allocated_bytes"]
    record["time_with_over_without"] = {
        str(a["steps"]): a["seconds"] / b["seconds"] for a, b in zip(on, off) if a.get("seconds") and b.get("seconds")
    }


def _part_exactness(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    part.child("exactness", spec, env={"CUBLAS_WORKSPACE_CONFIG": ":4096:8"})  # set before CUDA starts


def _part_torch_maml(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    import torch

    runs = [
        part.measure(spec["engine"], spec["n"], library=library, save_grads=True)
        for library in ("memmaml", "torch_maml")
    ]
    paths = [run.pop("grad_path") for run in runs]
    if all(paths):
        mine, theirs = (torch.load(path) for path in paths)
        record.update(
            relative_difference=float((theirs - mine).abs().max() / mine.abs().max().clamp_min(1e-30)),
            bitwise=bool(torch.equal(mine, theirs)),
        )
    for path in filter(None, paths):  # ResNet-18's meta-gradient in float64 is 90 MB: not an output
        Path(path).unlink(missing_ok=True)
    with contextlib.suppress(Exception):
        from importlib import metadata

        record["torch_maml_version"] = metadata.version("torch-maml")


def run_gpu_part(
    name: str,
    spec: dict[str, Any],
    *,
    workload: Workload,
    workdir: str | os.PathLike,
    timeout: float,
    cap_bytes: int | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """Run part ``name`` as planned (``spec``); its record, ``status`` ``"ok"`` or ``"failed"``, never an exception.

    Each meta-step runs in a fresh process under ``cap_bytes``; the part stops
    after ``timeout`` seconds, keeping the figures so far. The record holds the
    runs, the part's own figures, ``wall_seconds``, ``work_seconds`` (of the
    meta-steps) and ``processes`` (started).
    """
    record: dict[str, Any] = {"runs": [], "processes": 0, "work_seconds": 0.0}
    start = time.monotonic()
    part = _Part(workload, Path(workdir), record, cap_bytes=cap_bytes, deadline=start + timeout, threads=threads)
    try:
        {
            "naive": _part_naive,
            "uniform": _part_uniform,
            "binomial": _part_binomial,
            "offload": _part_offload,
            "exactness": _part_exactness,
            "torch_maml": _part_torch_maml,
        }[name](part, spec, record)
        record["status"] = "ok"
    except _OutOfTime:
        record.update(
            status="failed", error=f"timed out after {timeout:.0f} s (this part's limit); figures so far kept"
        )
    except _ChildFailed as exc:
        record.update(status="failed", error=str(exc), traceback=exc.traceback)
    except Exception as exc:  # recorded; the other parts run
        record.update(
            status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:]
        )
    record["wall_seconds"] = time.monotonic() - start
    return record


def probe_device(
    workload: Workload,
    workdir: str | os.PathLike,
    *,
    timeout: float,
    cap_bytes: int | None = None,
    command: list[str] | None = None,
    threads: int = 0,
) -> dict[str, Any]:
    """The device, the CUDA context's size, provenance and the workload's step costs, from a fresh process.

    The record's ``status`` is ``"ok"``, ``"failed"`` or ``"timeout"``; with
    ``environment``, ``provenance``, ``step_costs`` and ``wall_seconds``.
    """
    start = time.monotonic()
    spec = {"workload": workload.__dict__, "cap_bytes": cap_bytes, "threads": threads, "command": command}
    record = _in_fresh_process("probe", spec, Path(workdir), timeout=timeout)
    record["wall_seconds"] = time.monotonic() - start
    return record


# ====================================================================== the processes of this module
def _in_fresh_process(
    function: str, spec: dict[str, Any], workdir: Path, *, timeout: float, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Run ``function`` (``"probe"``, ``"exactness"``) in a fresh process, as :class:`Runner` runs a worker."""
    workdir.mkdir(parents=True, exist_ok=True)
    spec_path, result_path, log_path = (workdir / f"{function}{suffix}" for suffix in (".spec.json", ".json", ".log"))
    spec_path.write_text(json.dumps(spec, indent=1))
    result_path.unlink(missing_ok=True)
    code = "import sys; from memmaml.bench._gpu import _child_main; sys.exit(_child_main(sys.argv[1:]))"
    try:
        with open(log_path, "w") as log:
            returncode = subprocess.run(
                [sys.executable, "-c", code, function, str(spec_path), str(result_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                env={**_child_env(), **(env or {})},
                preexec_fn=_die_with_parent,
            ).returncode
    except subprocess.TimeoutExpired:
        returncode = None
    record: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):  # missing, or cut short by the kill
        record = json.loads(result_path.read_text())
    if returncode is None:
        record.update(status="timeout", error=f"stopped after {timeout:.0f} s")
    elif record.get("status") not in ("ok", "failed"):
        tail = log_path.read_text(errors="replace")[-1500:]
        record.update(status="failed", error=f"exit status {returncode}: {tail}")
    return record


def _smi(device: Any, field: str) -> str | None:
    """One nvidia-smi query field for ``device`` (e.g. ``memory.used`` in MiB); ``None`` when unavailable."""
    visible, index = os.environ.get("CUDA_VISIBLE_DEVICES"), device.index or 0
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        token = visible.split(",")[index].strip() if visible else str(index)
        return (
            subprocess.run(
                ["nvidia-smi", f"--id={token}", f"--query-gpu={field}", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            ).stdout.strip()
            or None
        )
    return None


def _smi_used(device: Any) -> int | None:
    with contextlib.suppress(TypeError, ValueError):
        return int(_smi(device, "memory.used")) * 2**20
    return None


def _start_device(spec: dict[str, Any], environment: dict[str, Any] | None = None) -> int | None:
    """Threads, the device, the allocator cap; with ``environment``, the context's size: nvidia-smi's before-figure."""
    import torch

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["workload"]["device"])
    if device.type != "cuda":
        return None
    before = _smi_used(device) if environment is not None else None
    torch.cuda.set_device(device)
    torch.ones(1, device=device)
    torch.cuda.synchronize(device)
    free, total = torch.cuda.mem_get_info(device)
    if environment is not None:
        after, reserved = _smi_used(device), torch.cuda.memory_reserved(device)
        props, cudnn = torch.cuda.get_device_properties(device), torch.backends.cudnn
        environment.update(
            name=props.name,
            capability=f"{props.major}.{props.minor}",
            total_bytes=total,
            driver=_smi(device, "driver_version"),
            cudnn=cudnn.version(),
            cudnn_enabled=cudnn.enabled,
            cudnn_benchmark=cudnn.benchmark,
            cudnn_deterministic=cudnn.deterministic,
            cudnn_allow_tf32=cudnn.allow_tf32,
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
        if before is not None and after is not None:
            environment.update(
                context_bytes=after - before - reserved,
                context_method="nvidia-smi memory.used "
                "after the first tensor minus before, less the allocator's reserved bytes",
            )
        else:
            environment.update(
                context_bytes=total - free - reserved,
                context_method="mem_get_info: device memory "
                "in use after the first tensor, less the allocator's reserved bytes (other processes "
                "count too)",
            )
    if spec.get("cap_bytes"):
        torch.cuda.set_per_process_memory_fraction(min(1.0, spec["cap_bytes"] / total), device)
        if environment is not None:
            environment["cap_fraction"] = min(1.0, spec["cap_bytes"] / total)
    return before


def _probe(spec: dict[str, Any], record: dict[str, Any], save: Callable[[], None]) -> None:
    import torch

    import memmaml

    workload = Workload(**spec["workload"])
    environment = record["environment"] = {"device": workload.device, "name": workload.device}
    before = _start_device(spec, environment)
    record["provenance"] = provenance(workload.device, spec.get("command"), workers=True)
    save()
    built = workload.build()
    costs = memmaml.measure_step_costs(built.model, built.loss_function, built.inputs(1)[0], built.optimizer)
    record["step_costs"] = costs._asdict()
    end = _smi_used(built.device) if before is not None else None
    if end is not None:
        environment["non_allocator_bytes_after_probe"] = end - before - torch.cuda.memory_reserved(built.device)


def _exactness(spec: dict[str, Any], record: dict[str, Any], save: Callable[[], None]) -> None:
    """Meta-gradients and buffers of every engine against naive's, at the same seed, in two settings."""
    import torch

    _start_device(spec)
    workload = Workload(**{**spec["workload"], "dropout": spec["dropout"]})
    built = workload.build()
    model, n = built.model, spec["n"]
    init = copy.deepcopy(model.state_dict())

    def gradient_and_buffers(engine: str) -> tuple[Any, list[Any]]:
        model.load_state_dict(init)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1234)
        grads, _, _ = meta_step(built, Method("memmaml", engine), n)
        return torch.cat([g.reshape(-1) for g in grads]), [b.clone() for b in model.buffers()]

    engines = {"naive": "naive", "naive (again)": "naive", **{engine: engine for engine in spec["engines"]}}
    record.update(
        workload_text=workload.describe(), cublas_workspace_config=os.environ.get("CUBLAS_WORKSPACE_CONFIG"), modes={}
    )
    for mode, deterministic in (("default", False), ("deterministic", True)):
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, deterministic
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = {name: gradient_and_buffers(engine) for name, engine in engines.items()}
        reference, buffers = got.pop("naive")
        scale = reference.abs().max().clamp_min(1e-30)
        record["modes"][mode] = {
            "settings": {
                "cudnn.benchmark": False,
                "cudnn.deterministic": deterministic,
                "use_deterministic_algorithms": deterministic,
                "warn_only": True,
            },
            "nondeterministic_op_warnings": sorted(
                {str(c.message)[:200] for c in caught if "deterministic" in str(c.message)}
            ),
            "methods": {
                name: {
                    "relative_difference": float((g - reference).abs().max() / scale),
                    "bitwise": bool(torch.equal(g, reference)),
                    "buffers_bitwise": all(torch.equal(a, b) for a, b in zip(bufs, buffers)),
                }
                for name, (g, bufs) in got.items()
            },
        }
        save()
    torch.use_deterministic_algorithms(False)


def _child_main(argv: list[str]) -> int:
    """``function spec.json result.json``: run it, saving the record as it grows; failures are recorded."""
    function, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    record: dict[str, Any] = {"status": "running"}
    started = time.perf_counter()

    def save() -> None:
        record["work_seconds"] = time.perf_counter() - started
        Path(result_path).write_text(json.dumps(record, indent=1, default=str))

    try:
        {"probe": _probe, "exactness": _exactness}[function](spec, record, save)
        record["status"] = "ok"
    except Exception as exc:  # recorded; the parent goes on with the other parts
        record.update(
            status="failed", error=f"{type(exc).__name__}: {exc}"[:2000], traceback=traceback.format_exc()[-4000:]
        )
    save()
    return 0


# ====================================================================== the report
def _b(num: float | None) -> str:
    return "—" if num is None else format_bytes(num)


def _s(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds:.1f}"


def write_gpu_report(results: dict[str, Any], out: str | os.PathLike, *, with_plot: bool = True) -> str:
    """Write ``results.json``, ``results.md`` and (``with_plot``) ``results.png`` in ``out``; the Markdown.

    Each run's time relative to naive's (``ratio_to_naive``) is recomputed
    here from part 1's time per step, so the files always agree.
    """
    out = Path(out)
    parts = results["parts"]
    naive_step = parts.get("naive", {}).get("seconds_per_step")
    runs = [r for part in parts.values() for r in part.get("runs", [])]
    for run in runs:
        ok = naive_step and run.get("status") == "ok" and run.get("seconds_per_step")
        run["ratio_to_naive"] = run["seconds_per_step"] / naive_step if ok else None
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    label, env, prov = results["label"], results.get("environment") or {}, results.get("provenance") or {}
    dirty = " (uncommitted changes)" if prov.get("memmaml_dirty") else ""
    commit = prov.get("memmaml_commit") or "unknown commit"
    lines = [
        f"# memmaml GPU check — {label}",
        "",
        f"- command: `{prov.get('command', '—')}`",
        f"- memmaml {prov.get('memmaml_version', '—')} at {commit}{dirty}; "
        f"torch {prov.get('torch', '—')}, CUDA {prov.get('cuda', '—')}, cuDNN {env.get('cudnn', '—')}",
        f"- device: {env.get('name', results['device'])}; allocator cap: {_b(results['cap_bytes'])}; "
        f"CUDA context: {_b(env.get('context_bytes'))} ({env.get('context_method', 'none on CPU')}); after the "
        f"probe's steps, with kernels and library handles: {_b(env.get('non_allocator_bytes_after_probe'))}",
        f"- workload: {results['workload_text']}",
        f"- {results['total_seconds']:.0f} s in all, of a {results['time_budget_seconds']:.0f} s budget",
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
            "Peaks are the allocator's, absolute (model and batches included); host: pinned active bytes."
            if env.get("total_bytes")
            else "Peaks are live tensor bytes created during the meta-step "
            "(memmaml.track_memory), whose overhead is in the times; host: offloaded states."
        ),
        "",
        "| configuration | status | peak allocated | peak reserved | host peak | time / step | × naive |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        per_step, ratio = r.get("seconds_per_step"), r.get("ratio_to_naive")
        lines.append(
            f"| {r['config']} | {r['status']} | {_b(r.get('peak_allocated_bytes'))} | "
            f"{_b(r.get('peak_reserved_bytes'))} | {_b(r.get('host_peak_bytes'))} | "
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
        if m["nondeterministic_op_warnings"]:
            lines.append(f"\nOps without a deterministic implementation: {m['nondeterministic_op_warnings']}")
    peer = parts.get("torch_maml", {})
    if peer.get("relative_difference") is not None:
        lines += [
            "",
            f"torch_maml {peer.get('torch_maml_version', '')} against memmaml, same schedule, {label}: "
            f"meta-gradients differ by {peer['relative_difference']:.3g} (relative to the largest), "
            f"bitwise equal: {peer['bitwise']}.",
        ]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    if with_plot:
        _plot(runs, results, out / "results.png")
    return text


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
    fig.savefig(path, dpi=110)
    plt.close(fig)
