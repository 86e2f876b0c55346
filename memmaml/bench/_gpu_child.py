"""What the GPU check runs in its own fresh processes besides the worker: the probe and the exactness part.

Both are targets of :func:`~memmaml.bench._process.run_child` and start with
:func:`~memmaml.bench._device.start_device`, as the worker does.

NOTE [ The CUDA context ]
    The allocator cap does not cover the CUDA context. The probe measures it
    as nvidia-smi's ``memory.used`` after the first tensor minus before, less
    the allocator's reserved bytes (``mem_get_info`` when nvidia-smi is
    missing; other processes then count too); the same difference after the
    probe's steps also holds the kernels and library handles loaded by then.
    The GPU check's processes run with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``, so
    that CUDA's device numbers are nvidia-smi's (:func:`smi_token`).
"""

from __future__ import annotations

import contextlib
import copy
import os
import subprocess
import warnings
from collections.abc import Callable
from typing import Any

import memmaml

from ._device import start_device
from ._methods import Method, meta_step
from ._provenance import provenance
from ._workload import Workload

__all__ = ["exactness", "probe", "smi_token"]


def _smi(device: Any, field: str) -> str | None:
    """One nvidia-smi query field for ``device`` (e.g. ``memory.used`` in MiB); ``None`` when unavailable."""
    with contextlib.suppress(OSError, subprocess.SubprocessError, IndexError):
        token = smi_token(device.index or 0, os.environ.get("CUDA_VISIBLE_DEVICES"))
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


def smi_token(index: int, visible: str | None) -> str:
    """nvidia-smi's ``--id`` for CUDA device ``index`` under ``CUDA_VISIBLE_DEVICES=visible``.

    With ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` (:data:`~memmaml.bench._device.GPU_CHILD_ENV`)
    CUDA's numbers are nvidia-smi's; visible devices are renumbered from 0 in
    the order listed.

    Example:
        >>> smi_token(0, None), smi_token(1, "3, 5"), smi_token(0, "GPU-8f2e")
        ('0', '5', 'GPU-8f2e')
    """
    return visible.split(",")[index].strip() if visible else str(index)


def _environment(device: Any, before: int | None, found: dict[str, Any]) -> dict[str, Any]:
    """The CUDA device, its libraries' settings and the context's size, after :func:`start_device`."""
    import torch

    after = _smi_used(device)
    props, cudnn = torch.cuda.get_device_properties(device), torch.backends.cudnn
    environment = {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "total_bytes": found["total_bytes"],
        "driver": _smi(device, "driver_version"),
        "cudnn": cudnn.version(),
        "cudnn_enabled": cudnn.enabled,
        "cudnn_benchmark": cudnn.benchmark,
        "cudnn_deterministic": cudnn.deterministic,
        "cudnn_allow_tf32": cudnn.allow_tf32,
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cuda_device_order": os.environ.get("CUDA_DEVICE_ORDER"),
    }
    if before is not None and after is not None:
        environment.update(
            context_bytes=after - before - found["reserved_bytes"],
            context_method="nvidia-smi memory.used "
            "after the first tensor minus before, less the allocator's reserved bytes",
        )
    else:
        environment.update(
            context_bytes=found["total_bytes"] - found["free_bytes"] - found["reserved_bytes"],
            context_method="mem_get_info: device memory "
            "in use after the first tensor, less the allocator's reserved bytes (other processes "
            "count too)",
        )
    if "cap_fraction" in found:
        environment["cap_fraction"] = found["cap_fraction"]
    return environment


def probe(spec: dict[str, Any], record: dict[str, Any], save: Callable[[], None]) -> None:
    """The device, the CUDA context's size, provenance and the workload's step costs (a process target)."""
    import torch

    workload = Workload(**spec["workload"])
    device = torch.device(workload.device)
    before = _smi_used(device) if device.type == "cuda" else None
    found = start_device(workload.device, threads=spec.get("threads") or 0, cap_bytes=spec.get("cap_bytes"))
    environment = record["environment"] = {"device": workload.device, "name": workload.device}
    if found:
        environment.update(_environment(device, before, found))
    record["provenance"] = provenance(workload.device, spec.get("command"), workers=True)
    save()
    built = workload.build()
    costs = memmaml.measure_step_costs(built.model, built.loss_function, built.inputs(1)[0], built.optimizer)
    record["step_costs"] = costs._asdict()
    end = _smi_used(device) if before is not None else None
    if end is not None:
        environment["non_allocator_bytes_after_probe"] = end - before - torch.cuda.memory_reserved(device)


def exactness(spec: dict[str, Any], record: dict[str, Any], save: Callable[[], None]) -> None:
    """Meta-gradients and buffers of every engine against naive's, at the same seed, in two settings.

    ``"naive (again)"`` is naive run a second time: where it is not bitwise
    equal to the first, the kernels are not deterministic, and no engine can
    be bitwise equal either (a process target).
    """
    import torch

    start_device(spec["workload"]["device"], threads=spec.get("threads") or 0, cap_bytes=spec.get("cap_bytes"))
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
