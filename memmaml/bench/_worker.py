"""One configuration measured in a child process (:func:`measure`, run by :class:`~memmaml.bench.Runner`).

A configuration is a :class:`~memmaml.bench.Workload`, a
:class:`~memmaml.bench.Method` and a step count. Its record holds the peak
memory (tracked runs), the seconds of the meta-step, the process's peak RSS,
the losses and, on request, the meta-gradient saved for comparison. On CUDA it
also holds the allocator's absolute peaks (``cuda_max_allocated_bytes``, model
and batches included, and ``cuda_max_reserved_bytes``) and the pinned host
allocator's peak of active bytes (``cuda_host_peak_bytes``: offloaded states,
rounded up to the allocator's block sizes). A failure raises, and the child's
main (:func:`~memmaml.bench._process.child_main`) records it.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable
from typing import Any

import memmaml

from ._device import start_device, warmup_steps
from ._methods import Method, meta_step
from ._workload import Workload

__all__ = ["measure"]


def measure(spec: dict[str, Any], record: dict[str, Any], save: Callable[[], None]) -> None:
    """Measure ``spec`` (see :class:`~memmaml.bench.Runner`) in this process, filling ``record``."""
    import torch

    workload, method = Workload(**spec["workload"]), Method(**spec["method"])
    found = start_device(workload.device, threads=spec.get("threads") or 0, cap_bytes=spec.get("memory_cap_bytes"))
    if found.get("notes"):
        record["notes"] = found["notes"]
    device = torch.device(workload.device)
    try:
        built = workload.build()
        if spec.get("measure_costs"):
            costs = memmaml.measure_step_costs(built.model, built.loss_function, built.inputs(1)[0], built.optimizer)
            record["costs"] = costs._asdict()
            return
        _measure_step(spec, record, built, method, device, workload.max_grad_grad_norm)
    finally:
        record["rss_peak_bytes"] = memmaml.peak_rss_bytes()


def _measure_step(
    spec: dict[str, Any], record: dict[str, Any], built: Any, method: Method, device: Any, clip: float | None
) -> None:
    import torch

    n = spec["steps"]
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(device)

    warmup = warmup_steps(method.engine, n, str(device)) if method.library == "memmaml" else 1
    meta_step(built, method, warmup, max_grad_grad_norm=clip)  # kernel selection, allocators, imports
    record["warmup_steps"] = warmup
    built.model.zero_grad(set_to_none=True)
    gc.collect()
    if cuda:
        with contextlib.suppress(AttributeError, RuntimeError):  # torch without host allocator statistics
            torch.cuda.reset_peak_host_memory_stats()
    with memmaml.track_memory(device) if spec["track"] else contextlib.nullcontext() as mem:
        sync()
        start = time.perf_counter()
        grads, query_loss, losses = meta_step(built, method, n, max_grad_grad_norm=clip)
        sync()
        record["seconds"] = time.perf_counter() - start
    if mem is not None:
        record["peak_bytes"] = int(mem.peak_bytes)
        record["peak_kind"] = "cuda_allocator_peak" if cuda else "cpu_live_tensors"
        if not cuda and mem.host_peak_bytes:  # offloaded states, counted apart
            record["host_peak_bytes"] = int(mem.host_peak_bytes)
    if cuda:
        record["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        record["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
        with contextlib.suppress(AttributeError, RuntimeError):
            record["cuda_host_peak_bytes"] = int(torch.cuda.host_memory_stats().get("active_bytes.peak", 0))
    record.update(query_loss=float(query_loss), inner_loss_first=float(losses[0]), inner_loss_last=float(losses[-1]))
    names = [name for name, _ in built.model.named_parameters()]
    missing = [name for name, g in zip(names, grads) if g is None]
    if missing:
        raise RuntimeError(f"no meta-gradient reached {len(missing)} parameters, e.g. {missing[0]}")
    if spec.get("grad_path"):
        torch.save(torch.cat([g.detach().reshape(-1).to("cpu", torch.float64) for g in grads]), spec["grad_path"])
