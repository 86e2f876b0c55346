"""Run one configuration in this process and report it: ``python -m memmaml.bench._worker SPEC RESULT``.

A configuration is a :class:`~memmaml.bench.Workload`, a
:class:`~memmaml.bench.Method` and a step count. Its record holds the peak
memory (tracked runs), the seconds of the meta-step, the process's peak RSS,
the losses and, on request, the meta-gradient saved for comparison. On CUDA it
also holds the allocator's absolute peaks (``cuda_max_allocated_bytes``, model
and batches included, and ``cuda_max_reserved_bytes``) and the pinned host
allocator's peak of active bytes (``cuda_host_peak_bytes``: offloaded states). A failure
is recorded (``status`` ``"oom"`` or ``"failed"`` with the error), never
raised: a sweep goes on.
"""

from __future__ import annotations

import contextlib
import gc
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from ._methods import Method, meta_step
from ._workload import Workload

__all__ = ["is_out_of_memory", "run_configuration"]


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device or the host ran out of memory."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def run_configuration(spec: dict[str, Any]) -> dict[str, Any]:
    """Measure ``spec`` (see :class:`~memmaml.bench.Runner`) in this process; the record it produced."""
    import torch

    import memmaml

    workload, method = Workload(**spec["workload"]), Method(**spec["method"])
    record: dict[str, Any] = {}
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(workload.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        cap = spec.get("memory_cap_bytes")
        if cap:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), device)
            record["notes"] = f"allocator capped at {cap} of {total} bytes"
    built = workload.build()
    clip = workload.max_grad_grad_norm

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    try:
        if spec.get("measure_costs"):
            costs = memmaml.measure_step_costs(built.model, built.loss_function, built.inputs(1)[0], built.optimizer)
            record.update(costs=costs._asdict(), status="ok")
            return record
        meta_step(built, method, 1, max_grad_grad_norm=clip)  # warm-up: kernel selection, allocator, imports
        built.model.zero_grad(set_to_none=True)
        gc.collect()
        n = spec["steps"]
        if device.type == "cuda":
            with contextlib.suppress(AttributeError, RuntimeError):  # torch without host allocator statistics
                torch.cuda.reset_peak_host_memory_stats()
        with memmaml.track_memory(device) if spec["track"] else _no_tracking() as mem:
            sync()
            start = time.perf_counter()
            grads, query_loss, losses = meta_step(built, method, n, max_grad_grad_norm=clip)
            sync()
            record["seconds"] = time.perf_counter() - start
        if mem is not None:
            record["peak_bytes"] = int(mem.peak_bytes)
            record["peak_kind"] = "cuda_allocator_peak" if device.type == "cuda" else "cpu_live_tensors"
            if device.type == "cpu" and mem.host_peak_bytes:  # offloaded states, counted apart
                record["host_peak_bytes"] = int(mem.host_peak_bytes)
        if device.type == "cuda":
            record["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
            record["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
            with contextlib.suppress(AttributeError, RuntimeError):
                record["cuda_host_peak_bytes"] = int(torch.cuda.host_memory_stats().get("active_bytes.peak", 0))
        record.update(
            query_loss=float(query_loss), inner_loss_first=float(losses[0]), inner_loss_last=float(losses[-1])
        )
        names = [name for name, _ in built.model.named_parameters()]
        missing = [name for name, g in zip(names, grads) if g is None]
        if missing:
            raise RuntimeError(f"no meta-gradient reached {len(missing)} parameters, e.g. {missing[0]}")
        if spec.get("grad_path"):
            torch.save(torch.cat([g.detach().reshape(-1).to("cpu", torch.float64) for g in grads]), spec["grad_path"])
        record["status"] = "ok"
    except Exception as exc:  # recorded, never fatal to the sweep
        record["status"] = "oom" if is_out_of_memory(exc) else "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        record["traceback"] = traceback.format_exc()[-4000:]
    finally:
        record["rss_peak_bytes"] = memmaml.peak_rss_bytes()
    return record


class _no_tracking:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m memmaml.bench._worker SPEC.json RESULT.json", file=sys.stderr)
        return 2
    record = run_configuration(json.loads(Path(argv[0]).read_text()))
    Path(argv[1]).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
