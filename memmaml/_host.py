"""What the host can hold: the memory a plan may pin for offloaded states.

Pure Python, no torch: the planning layer (:class:`~memmaml.Auto`) reads it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["host_available_bytes"]


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
