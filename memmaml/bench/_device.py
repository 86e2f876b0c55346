"""The device a child process measures on: threads, the CUDA device, the allocator cap, the warm-up.

Every child of the benchmark library (a sweep's worker, the GPU check's probe
and exactness processes) starts with :func:`start_device`. What only CUDA
needs is a few lines behind functions whose CPU answers are tested:
:func:`start_device` on a CPU sets the threads and returns, and
:func:`warmup_steps` is a pure function.
"""

from __future__ import annotations

from typing import Any

__all__ = ["GPU_CHILD_ENV", "start_device", "warmup_steps"]

#: the environment of the GPU check's processes: CUDA numbers devices as nvidia-smi does (by PCI bus),
#: not fastest first, so the probe's nvidia-smi query reads the device it measures
GPU_CHILD_ENV = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


def start_device(device: str, *, threads: int = 0, cap_bytes: int | None = None) -> dict[str, Any]:
    """Set torch's threads (0: its default), and on CUDA select ``device``, start its context and cap the allocator.

    Returns what it found: on CUDA ``total_bytes`` and ``free_bytes`` of the
    device after the context started, ``reserved_bytes`` (the allocator's, by
    then) and, with ``cap_bytes``, ``cap_fraction`` and a ``notes`` line; on a
    CPU an empty dict (there is no allocator to cap).
    """
    import torch

    if threads:
        torch.set_num_threads(threads)
    where = torch.device(device)
    if where.type != "cuda":
        return {}
    torch.cuda.set_device(where)
    torch.ones(1, device=where)  # the CUDA context
    torch.cuda.synchronize(where)
    free, total = torch.cuda.mem_get_info(where)
    found: dict[str, Any] = {
        "total_bytes": total,
        "free_bytes": free,
        "reserved_bytes": torch.cuda.memory_reserved(where),
    }
    if cap_bytes:
        fraction = min(1.0, cap_bytes / total)
        torch.cuda.set_per_process_memory_fraction(fraction, where)
        found.update(cap_fraction=fraction, notes=f"allocator capped at {cap_bytes} of {total} bytes")
    return found


def warmup_steps(engine: str, steps: int, device: str) -> int:
    """Inner steps of the warm-up meta-step that runs before the measured one.

    One step selects kernels and fills the allocator for everything but
    offload on CUDA: there the first pinned host allocations are slow (each is
    a ``cudaHostAlloc``), so a cold run would time the allocator rather than
    the engine, and the warm-up runs the measured ``steps``, leaving the
    caching host allocator holding every block the measured run needs.

    Example:
        >>> warmup_steps("binomial:4+offload", 100, "cuda:0"), warmup_steps("binomial:4+offload", 100, "cpu")
        (100, 1)
        >>> warmup_steps("binomial:4", 100, "cuda")
        1
    """
    offload = engine.strip().lower().endswith("+offload")
    return steps if offload and device.startswith("cuda") else 1
