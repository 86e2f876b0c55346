"""Each configuration in a fresh process: one run's peak cannot hide another's."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ._methods import Method, unavailable
from ._workload import Workload

__all__ = ["Runner", "host_available_bytes"]


def host_available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else ``None``."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class Runner:
    """Runs configurations of one workload, each in a fresh ``python -m memmaml.bench._worker`` process.

    Args:
        workload: what every run measures.
        workdir: where specs, results, logs and saved meta-gradients go
            (default: a temporary folder).
        timeout: seconds before a run is stopped and recorded as ``"timeout"``.
        threads: torch intra-op threads per run (0: torch's default). One thread
            on a CPU keeps times steady on a loaded machine.
    """

    def __init__(
        self, workload: Workload, workdir: str | os.PathLike | None = None, *, timeout: float = 7200.0, threads: int = 0
    ) -> None:
        self.workload = workload
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="memmaml_bench_")
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.threads = threads
        self.counter = 0

    def run(
        self,
        method: Method,
        steps: int,
        *,
        track: bool,
        save_grads: bool = False,
        memory_cap_bytes: int | None = None,
        measure_costs: bool = False,
    ) -> dict[str, Any]:
        """One configuration's record: ``status`` is ``ok``, ``oom``, ``failed``, ``timeout`` or ``unavailable``."""
        record: dict[str, Any] = {"library": method.library, "engine": method.engine, "steps": steps, "tracked": track}
        reason = unavailable(method, self.workload.optimizer)
        if reason:
            return {**record, "status": "unavailable", "error": reason}
        self.counter += 1
        tag = self.workdir / f"{self.counter:04d}"
        spec = {
            "workload": self.workload.__dict__,
            "method": method._asdict(),
            "steps": steps,
            "track": track,
            "threads": self.threads,
            "memory_cap_bytes": memory_cap_bytes,
            "measure_costs": measure_costs,
            "grad_path": f"{tag}.grad.pt" if save_grads else None,
        }
        Path(f"{tag}.spec.json").write_text(json.dumps(spec))
        result = Path(f"{tag}.result.json")
        command = [sys.executable, "-m", "memmaml.bench._worker", f"{tag}.spec.json", str(result)]
        try:
            with open(f"{tag}.log", "w") as log:
                returncode = subprocess.run(
                    command,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.timeout,
                    env=_child_env(),
                    preexec_fn=_die_with_parent,
                ).returncode
        except subprocess.TimeoutExpired:
            returncode = None
        if result.exists():
            record.update(json.loads(result.read_text()))
            record.pop("traceback", None)
        elif returncode is None:
            record.update(status="timeout", error=f"stopped after {self.timeout:g} s")
        elif returncode in (-9, 137):
            record.update(status="oom", error="killed by SIGKILL (most likely the kernel's out-of-memory killer)")
        else:
            tail = Path(f"{tag}.log").read_text(errors="replace")[-1500:]
            record.update(status="failed", error=f"exit status {returncode}: {tail}")
        record["grad_path"] = spec["grad_path"] if record.get("status") == "ok" else None
        return record


def _die_with_parent() -> None:
    """In the worker, before it starts: on Linux, be killed when the sweep's process dies."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


#: glibc's mmap threshold every worker gets unless the caller set one: without a fixed
#: threshold, glibc raises it after large frees and peak RSS measures heap fragmentation,
#: which differs run to run and method to method (it slows large allocations a little,
#: the same for every method compared)
MMAP_THRESHOLD = "65536"


def _child_env() -> dict[str, str]:
    """This environment, with the package importable from the worker even when it is not
    installed, and the same fixed ``MALLOC_MMAP_THRESHOLD_`` for every worker."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
