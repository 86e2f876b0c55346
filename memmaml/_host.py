"""What the host can hold: the memory a plan may pin for offloaded states.

Pure Python, no torch: the planning layer (:class:`~memmaml.Auto`) reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["default_host_budget", "host_available_bytes"]

#: the share of the available host memory that offloaded states may pin when no host budget is given
HOST_SHARE = 0.8


def host_available_bytes() -> int | None:
    """The host memory available to a new allocation now, in bytes (``None`` if the system does not say).

    Linux: ``MemAvailable`` from ``/proc/meminfo`` (free memory plus what the
    kernel can reclaim without swapping), or less inside a control group with a
    memory limit (a container or a batch job): its limit minus its usage, since
    ``/proc/meminfo`` describes the whole machine. Elsewhere: free physical
    pages, where ``os.sysconf`` reports them.

    Example:
        >>> available = host_available_bytes()
        >>> available is None or available > 0
        True
    """
    figures = [f for f in (_meminfo_available(), _cgroup_room()) if f is not None]
    if figures:
        return min(figures)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Limit minus usage of this process's memory control group (v2, or v1), ``None`` without a limit."""
    pairs = [("memory.max", "memory.current"), ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")]
    for limit_file, usage_file in pairs:
        try:
            limit = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 2**60:  # no limit (v1 writes a huge number)
            return None
        return max(int(limit) - usage, 0)
    return None


def default_host_budget(reusable: int = 0) -> int | None:
    """The host memory offloaded states may pin by default: 80% of :func:`host_available_bytes` plus
    ``reusable`` (pinned memory this process already holds and can reuse, which the system counts as
    taken), leaving the rest to the process itself; ``None`` if the available memory is unknown."""
    available = host_available_bytes()
    return None if available is None else int(HOST_SHARE * (available + reusable))
