"""The GPU check's parts and the fresh processes they run in (``scripts/gpu_check.py``).

Their sizes and time planning are in ``_gpu_plan``, their report in ``_gpu_report``.

The check measures the seed's workload (:class:`~memmaml.bench.Workload`'s
default: ResNet-18, 16x3x224x224, in-graph SGD at 0.01) on a CUDA device in
six independent parts (:data:`GPU_PARTS`). Every meta-step a part measures runs
in a fresh process (:class:`~memmaml.bench.Runner`), under the allocator cap;
what the worker does not do runs in a fresh process of ``_gpu_child`` instead:
the probe (the CUDA context's size, the device, provenance and the step costs
every prediction starts from) and part 5 (exactness under default and
deterministic settings, with dropout and BatchNorm in the model).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .._units import format_bytes
from ._methods import Method
from ._runner import Runner, _child_env, _die_with_parent
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
    code = "import sys; from memmaml.bench._gpu_child import _child_main; sys.exit(_child_main(sys.argv[1:]))"
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
