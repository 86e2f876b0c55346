"""Measure one inner step: the bytes of a state and of a step's graph, and its time with and without it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..schedules import StepCosts
from ._executor import Executor
from ._memory import track_memory
from ._store import host_bytes

__all__ = ["measure_costs"]


def measure_costs(executor: Executor, state_tensors: Sequence[Tensor]) -> StepCosts:
    """Run inner step 0 of ``executor`` from ``state_tensors``: once with its graph under the memory
    tracker (which also warms it up), then timed without and with its graph. The model's buffers and the
    RNG state are left as they were."""
    step, context = executor.step, executor.context
    leaves = executor.state_leaves([t.detach() for t in state_tensors])
    buffers = context.buffers_snapshot()
    state = [t for t in leaves if isinstance(t, Tensor)] + list((buffers or {}).values())
    state_bytes = sum(t.numel() * t.element_size() for t in state)
    pinned = host_bytes(state) if any(t.is_cuda for t in state) else None
    device = next((t.device for t in state_tensors), torch.device("cpu"))
    extras = executor.extras_with([t.detach().requires_grad_(True) for t in executor.extra_inputs])

    def graph_step() -> None:
        inputs = [leaves[s].detach().requires_grad_(leaves[s].is_floating_point()) for s in executor.tensor_slots]
        with torch.enable_grad():
            out, _ = step(
                0, executor.state_leaves(inputs), executor.spec, extras, context.buffers_snapshot(buffers), "graph"
            )
            outputs = [o for o in (out[s] for s in executor.tensor_slots) if o.requires_grad]
            wrt = [t for t in inputs if t.requires_grad]
            if outputs and wrt:
                torch.autograd.grad(outputs, wrt, [torch.ones_like(o) for o in outputs], allow_unused=True)

    def nograph_step() -> None:
        step(0, leaves, executor.spec, extras, context.buffers_snapshot(buffers), "nograph")

    with context.restored(context.snapshot_rng()):
        with track_memory(device) as mem:
            graph_step()
        nograph = _timed(nograph_step, device)
        graph = _timed(graph_step, device)
    return StepCosts(int(state_bytes), int(mem.peak_bytes), nograph, graph, pinned)


def _timed(fn: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start
