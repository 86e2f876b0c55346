"""The GPU check's parts and the fresh processes they run in (``memmaml-gpu-check``, ``scripts/gpu_check.py``).

Their sizes and time planning are in ``_gpu_plan``, their report in ``_gpu_report``.

The check measures the seed's workload (:class:`~memmaml.bench.Workload`'s
default: ResNet-18, 16x3x224x224, in-graph SGD at 0.01) on a CUDA device in
independent parts (:data:`GPU_PARTS`). Every meta-step a part measures runs
in a fresh process (:class:`~memmaml.bench.Runner`), under the allocator cap;
what the worker does not do runs in a fresh process of ``_gpu_child``
instead: the probe (the CUDA context's size, the device, provenance and the
step costs every prediction starts from) and part 5 (exactness under default
and deterministic settings, with dropout and BatchNorm in the model). Both go
through :func:`~memmaml.bench._process.run_child`, with
``CUDA_DEVICE_ORDER=PCI_BUS_ID``. A part reports its record after every run
(``progress``), so a caller that stores it keeps the runs of a part cut short.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from memmaml import StepCosts, format_bytes

from ._device import GPU_CHILD_ENV
from ._engines import predict
from ._methods import Method
from ._process import error_record, run_child
from ._runner import Runner
from ._workload import Workload

__all__ = ["probe_device", "run_gpu_part"]


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
        costs: StepCosts | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.workload, self.workdir, self.record = workload, workdir, record
        self.cap_bytes, self.deadline, self.threads = cap_bytes, deadline, threads
        self.costs, self.progress = costs, progress
        self.runner = Runner(workload, workdir, threads=threads, env=GPU_CHILD_ENV)

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise _OutOfTime
        return left

    def measure(
        self,
        engine: str,
        n: int,
        *,
        library: str = "memmaml",
        config: str | None = None,
        save_grads: bool = False,
        track: bool = True,
    ) -> dict[str, Any]:
        """One meta-step under the cap; an out-of-memory error is a result, a timeout ends the part.

        ``host_state_bytes`` is the bytes of the states an offloading engine
        stores at once (the plan's count times the probe's state size), beside
        ``host_peak_bytes``, the pinned allocator's peak, which rounds each
        block up.
        """
        self.runner.timeout = self.left()
        record = self.runner.run(
            Method(library, engine), n, track=track, save_grads=save_grads, memory_cap_bytes=self.cap_bytes
        )
        label = config or (f"{engine} n={n}" if library == "memmaml" else f"{library} {engine} n={n}")
        offloads = library == "memmaml" and engine.endswith("+offload")
        run = {
            "config": label,
            **record,
            "seconds_per_step": record["seconds"] / n if record.get("seconds") else None,
            "peak_allocated_bytes": record.get("cuda_max_allocated_bytes", record.get("peak_bytes")),
            "peak_reserved_bytes": record.get("cuda_max_reserved_bytes"),
            "host_peak_bytes": record.get("cuda_host_peak_bytes", record.get("host_peak_bytes")),
            "host_state_bytes": predict(engine, n, self.costs).host_bytes if offloads and self.costs else None,
        }
        self.record["runs"].append(run)
        self.record["processes"] += 1
        self.record["work_seconds"] += record.get("seconds") or 0.0
        self.saved()
        if record["status"] == "timeout":
            raise _OutOfTime
        return run

    def child(self, function: str, spec: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
        """A process target of ``_gpu_child``; its figures merged into the record even when it fails."""
        child = run_child(
            f"memmaml.bench._gpu_child:{function}",
            {**spec, "workload": self.workload.__dict__, "cap_bytes": self.cap_bytes, "threads": self.threads},
            self.workdir / function,
            timeout=self.left(),
            env={**GPU_CHILD_ENV, **(env or {})},
        )
        self.record["processes"] += 1
        self.record["work_seconds"] += child.pop("work_seconds", 0.0)
        status = child.pop("status")
        self.record.update({k: v for k, v in child.items() if k not in ("error", "traceback", "log_tail")})
        self.saved()
        if status == "timeout":
            raise _OutOfTime
        if status != "ok":
            raise _ChildFailed(child)
        return child

    def saved(self) -> None:
        if self.progress is not None:
            self.progress(self.record)


def _part_naive(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    """The longest n naive fits: doubling from ``n`` (or halving) to bracket it, then bisection.

    The search stops at ``max_n`` and, past the first bracket, when its
    ``seconds`` run out; the record says which.
    """
    fits: dict[int, bool] = {}
    search_deadline = time.monotonic() + spec["seconds"]

    def fits_at(n: int) -> bool:
        if n not in fits:
            run = part.measure("naive", n)
            if run["status"] not in ("ok", "oom"):
                raise RuntimeError(f"naive n={n}: {run['status']}: {run.get('error')}")
            fits[n] = run["status"] == "ok"
        return fits[n]

    def time_left() -> bool:
        return time.monotonic() < search_deadline

    start, top = spec["n"], spec["max_n"]
    low, high = (start, None) if fits_at(start) else (None, start)  # the longest n that fits, the first that does not
    while low is None and high > 1:
        n = max(high // 2, 1)
        low, high = (n, high) if fits_at(n) else (None, n)
    if low is None:
        raise RuntimeError(f"naive MAML does not fit even at n=1: {part.record['runs'][-1].get('error')}")
    while high is None and low < top and time_left():
        n = min(2 * low, top)
        low, high = (n, None) if fits_at(n) else (low, n)
    while high is not None and high - low > 1 and time_left():
        n = (low + high) // 2
        low, high = (n, high) if fits_at(n) else (low, n)
    runs = record["runs"]
    ok = [r for r in runs if r["status"] == "ok"]
    best = next(r for r in ok if r["steps"] == low)
    first = next((r for r in runs if r["steps"] == high), None)
    record.update(
        longest_n=low,
        seconds_per_step=best["seconds_per_step"],
        first_failing_n=high,
        first_failing_error=first and first["error"],
    )
    if high is None:
        why = "the search limit" if low >= top else "time ran out"
        record["note"] = f"no out-of-memory up to n={low}: {why}"
    elif high - low > 1:
        record["note"] = f"time ran out: the longest n is between {low} and {high - 1}"
    lowest = min(ok, key=lambda r: r["steps"])
    if best is not lowest:
        record["bytes_per_step"] = (best["peak_allocated_bytes"] - lowest["peak_allocated_bytes"]) / (
            best["steps"] - lowest["steps"]
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


def _part_overlap(part: _Part, spec: dict[str, Any], record: dict[str, Any]) -> None:
    """The same schedule with and without offload at one n, untracked, interleaved, ``repeats`` times.

    The median ratio of their times within a repeat says whether the copies
    to and from host memory hide behind compute (1.0) or add to it.
    """
    engine, n = spec["engine"], spec["n"]
    ratios = []
    for repeat in range(spec["repeats"]):
        order = ("+offload", "") if repeat % 2 == 0 else ("", "+offload")
        runs = {
            suffix: part.measure(engine + suffix, n, track=False, config=f"{engine}{suffix} n={n} (untracked)")
            for suffix in order
        }
        on, off = runs["+offload"].get("seconds"), runs[""].get("seconds")
        if on and off:
            ratios.append(on / off)
    record.update(engine=engine, n=n, ratios=ratios)
    if ratios:
        record["time_with_over_without"] = statistics.median(ratios)


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


_PARTS = {
    "naive": _part_naive,
    "uniform": _part_uniform,
    "binomial": _part_binomial,
    "offload": _part_offload,
    "overlap": _part_overlap,
    "exactness": _part_exactness,
    "torch_maml": _part_torch_maml,
}


def run_gpu_part(
    name: str,
    spec: dict[str, Any],
    *,
    workload: Workload,
    workdir: str | os.PathLike,
    timeout: float,
    cap_bytes: int | None = None,
    threads: int = 0,
    costs: StepCosts | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run part ``name`` as planned (``spec``); its record, ``status`` ``"ok"`` or ``"failed"``, never an exception.

    Each meta-step runs in a fresh process under ``cap_bytes``; the part stops
    after ``timeout`` seconds, keeping the figures so far. ``costs`` (the
    probe's) give offloading runs their stored states' bytes; ``progress`` is
    called with the record after every run. The record holds the runs, the
    part's own figures, ``wall_seconds``, ``work_seconds`` (of the meta-steps)
    and ``processes`` (started).
    """
    record: dict[str, Any] = {"runs": [], "processes": 0, "work_seconds": 0.0}
    start = time.monotonic()
    part = _Part(
        workload,
        Path(workdir),
        record,
        cap_bytes=cap_bytes,
        deadline=start + timeout,
        threads=threads,
        costs=costs,
        progress=progress,
    )
    try:
        _PARTS[name](part, spec, record)
        record["status"] = "ok"
    except _OutOfTime:
        record.update(
            status="failed", error=f"timed out after {timeout:.0f} s (this part's limit); figures so far kept"
        )
    except _ChildFailed as exc:
        record.update(status="failed", error=str(exc), traceback=exc.traceback)
    except Exception as exc:  # recorded; the other parts run
        record.update({**error_record(exc), "status": "failed"})
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

    The record's ``status`` is ``"ok"``, ``"failed"``, ``"oom"`` or
    ``"timeout"``; with ``environment``, ``provenance``, ``step_costs`` and
    ``wall_seconds``.
    """
    start = time.monotonic()
    spec = {"workload": workload.__dict__, "cap_bytes": cap_bytes, "threads": threads, "command": command}
    record = run_child(
        "memmaml.bench._gpu_child:probe", spec, Path(workdir) / "probe", timeout=timeout, env=GPU_CHILD_ENV
    )
    record["wall_seconds"] = time.monotonic() - start
    return record
