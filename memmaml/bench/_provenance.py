"""Where a figure came from: the code, the libraries, the machine and the command."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import memmaml

from ._process import MMAP_THRESHOLD

__all__ = ["provenance"]


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def provenance(device: str = "cpu", command: list[str] | None = None, *, workers: bool = False) -> dict[str, Any]:
    """The memmaml commit (and whether its code had uncommitted changes), versions, device and command line.

    Outside a git checkout the commit is ``None`` and the version stands alone.
    ``malloc_mmap_threshold`` is glibc's ``MALLOC_MMAP_THRESHOLD_`` of this
    process (``None``: glibc's adaptive default) or, with ``workers=True``, the
    one :class:`~memmaml.bench.Runner` gives its worker processes.
    """
    import torch

    commit = _git("rev-parse", "HEAD")
    # uncommitted changes to the code that ran (the package and the scripts), not to notes or notebooks
    status = _git("status", "--porcelain", "--untracked-files=no", "--", "memmaml", "scripts") if commit else None
    info: dict[str, Any] = {
        "memmaml_version": memmaml.__version__,
        "memmaml_commit": commit,
        "memmaml_dirty": None if status is None else bool(status),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "device": device,
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD if workers else None),
        "command": " ".join(command if command is not None else [Path(sys.argv[0]).name, *sys.argv[1:]]),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        info["cuda"] = torch.version.cuda
    else:
        info["device_name"] = platform.processor() or platform.machine()
    for library, dist in (("torch_maml", "torch-maml"), ("higher", "higher"), ("torchopt", "torchopt")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            info[library] = metadata.version(dist)
    return info
