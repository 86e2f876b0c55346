"""Each configuration in a fresh process: one run's peak cannot hide another's."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._methods import Method, unavailable
from ._process import run_child
from ._workload import Workload

__all__ = ["Runner"]


class Runner:
    """Runs configurations of one workload, each in a fresh process (``run_child``).

    Args:
        workload: what every run measures.
        workdir: where specs, results, logs and saved meta-gradients go
            (default: a temporary folder). Runs are numbered on from the
            files already there, so a rerun into the same folder never
            overwrites an earlier run's files.
        timeout: seconds before a run is stopped and recorded as ``"timeout"``.
        threads: torch intra-op threads per run (0: torch's default). One thread
            on a CPU keeps times steady on a loaded machine.
        env: variables added to each child's environment.
    """

    def __init__(
        self,
        workload: Workload,
        workdir: str | os.PathLike | None = None,
        *,
        timeout: float = 7200.0,
        threads: int = 0,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workload = workload
        self._tmp = None if workdir is not None else tempfile.TemporaryDirectory(prefix="memmaml_bench_")
        self.workdir = Path(workdir if workdir is not None else self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self.threads = threads
        self.env = dict(env or {})
        numbers = [int(m.group(1)) for p in self.workdir.iterdir() if (m := re.match(r"(\d+)\.", p.name))]
        self.counter = max(numbers, default=0)

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
        """One configuration's record: ``status`` is ``ok``, ``oom``, ``failed``, ``timeout`` or ``unavailable``.

        A failure's ``error`` is one line: the worker's exception (``"Type:
        message"``), or the exit status and the last line of its log; its
        ``traceback`` (where the worker raised) and ``log_tail`` (the end of
        its log) are kept in the record, which outlives the run's files.
        """
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
        result = run_child("memmaml.bench._worker:measure", spec, tag, timeout=self.timeout, env=self.env)
        result.pop("work_seconds", None)  # the worker's own time, not a figure of the run
        record.update(result)
        record["grad_path"] = spec["grad_path"] if record.get("status") == "ok" else None
        return record
