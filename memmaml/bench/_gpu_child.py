"""What the GPU check runs in its own fresh processes: the probe and the exactness part.

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
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._methods import Method, meta_step
from ._provenance import provenance
from ._workload import Workload

__all__: list[str] = []


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
