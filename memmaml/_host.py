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
    kernel can reclaim without swapping). Elsewhere: free physical pages, where
    ``os.sysconf`` reports them.

    Example:
        >>> available = host_available_bytes()
        >>> available is None or available > 0
        True
    """
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_host_budget() -> int | None:
    """The host memory offloaded states may pin by default: 80% of :func:`host_available_bytes`, leaving the
    rest to the process itself (its batches, the pinned staging of the copies); ``None`` if unknown."""
    available = host_available_bytes()
    return None if available is None else int(HOST_SHARE * available)
