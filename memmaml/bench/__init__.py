"""The benchmark library: what the command lines (``memmaml.cli``) and the notebooks share.

* :class:`Workload` -- a meta-step's problem as plain values (model, data,
  inner optimizer), built with :mod:`memmaml.models`;
* :class:`Method` and the peer adapters -- memmaml's engines
  (:func:`memmaml.parse_engine` text) and torch_maml, higher, torchopt;
* :class:`Runner` -- each configuration in a fresh process, failures recorded
  (one process helper underneath: a JSON spec in, an atomically written record
  out, the deadline, out-of-memory kills and errors mapped the same way for
  every caller);
* :func:`run_sweep` -- memory and interleaved time over engines and step
  counts, every finished run saved as it completes and kept by a resumed sweep;
* :func:`predict` -- engine text to the concrete engine that runs and its
  predicted peak, host bytes and seconds (:func:`concrete_engine`,
  :func:`engine_stats`), the one path every prediction here takes;
* :func:`fit_costs` / :func:`answer_budget` -- memmaml's cost model fitted to the
  runs, the longest unroll per engine;
* :func:`render` -- ``results.json`` to Markdown, CSV and a plot (:func:`read_results`
  checks the file first); :func:`write_json_atomic` -- a results file that is always whole;
  :func:`lock_folder` -- one job per output folder (:class:`FolderInUse`, :class:`FolderLockError`);
  :func:`move_aside` -- earlier results kept in ``previous/<time>/``, never overwritten;
  :func:`provenance` -- commit, versions, device and command of every result;
* the GPU check's parts (``GPU_PARTS``, ``GPU_SIZES``, the environment of their
  processes ``GPU_CHILD_ENV``): :func:`probe_device`
  (the CUDA context, the step costs), :func:`plan_gpu_part` (time planning from
  them, with :func:`predict_seconds` and :func:`fit_steps`), :func:`run_gpu_part`
  and :func:`write_gpu_report`;
* :func:`quick_mode` -- the notebooks' small-size switch.

The library sits on top of memmaml and uses only its public API
(``tests/test_bench_imports.py``); :func:`host_available_bytes` is memmaml's,
re-exported. Every notebook reads :func:`quick_mode` once to choose its sizes.
The test suite sets ``MEMMAML_NOTEBOOK_QUICK=1`` and runs each notebook top to
bottom in seconds; ``python notebooks/build.py --execute``
removes the variable and stores the outputs of a full run. The switch lives in
the package, not beside the notebooks, because the Colab notebook installs
memmaml and has no other file of the repository.
"""

from __future__ import annotations

import os

from memmaml import host_available_bytes

from ._device import GPU_CHILD_ENV
from ._engines import Prediction, concrete_engine, engine_stats, predict
from ._fit import Fit, answer_budget, fit_costs
from ._folders import FolderInUse, FolderLockError, lock_folder, move_aside
from ._gpu import probe_device, run_gpu_part
from ._gpu_plan import GPU_PARTS, GPU_SIZES, GpuPart, GpuSizes, fit_steps, plan_gpu_part, predict_seconds
from ._gpu_report import write_gpu_report
from ._methods import PEER_INSTALL, Method, meta_step, unavailable
from ._process import write_json_atomic
from ._provenance import provenance
from ._report import read_results, render
from ._runner import Runner
from ._sweep import run_sweep
from ._workload import Built, Workload

__all__ = [
    "Built",
    "Fit",
    "FolderInUse",
    "FolderLockError",
    "GPU_CHILD_ENV",
    "GPU_PARTS",
    "GPU_SIZES",
    "GpuPart",
    "GpuSizes",
    "Method",
    "PEER_INSTALL",
    "Prediction",
    "QUICK_MODE_VARIABLE",
    "Runner",
    "Workload",
    "answer_budget",
    "concrete_engine",
    "engine_stats",
    "fit_costs",
    "fit_steps",
    "host_available_bytes",
    "lock_folder",
    "meta_step",
    "move_aside",
    "plan_gpu_part",
    "predict",
    "predict_seconds",
    "probe_device",
    "provenance",
    "quick_mode",
    "read_results",
    "render",
    "run_gpu_part",
    "run_sweep",
    "unavailable",
    "write_gpu_report",
    "write_json_atomic",
]

#: the environment variable :func:`quick_mode` reads
QUICK_MODE_VARIABLE = "MEMMAML_NOTEBOOK_QUICK"


def quick_mode() -> bool:
    """Whether to run at the small sizes of a smoke test instead of the full ones.

    True when the environment variable ``MEMMAML_NOTEBOOK_QUICK`` is set to
    anything but an empty string or ``"0"``. It is read at every call.

    Example:
        >>> import os
        >>> from unittest import mock
        >>> with mock.patch.dict(os.environ, {"MEMMAML_NOTEBOOK_QUICK": "1"}):
        ...     quick_mode()
        True
        >>> with mock.patch.dict(os.environ, {"MEMMAML_NOTEBOOK_QUICK": "0"}):
        ...     quick_mode()
        False
    """
    return os.environ.get(QUICK_MODE_VARIABLE, "0") not in ("", "0")
