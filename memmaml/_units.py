"""Memory sizes as people write them: ``"11GiB"`` in, ``"11.0 GiB"`` out."""

from __future__ import annotations

import math

__all__ = ["format_bytes", "parse_size"]

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"11GiB"``, ``"500 MB"``, ``"4g"`` (k/M/G are powers of 1000).

    Raises:
        ValueError: for anything else, naming the value.

    Example:
        >>> parse_size("1.5 KiB"), parse_size("4g")
        (1536, 4000000000)
    """
    if isinstance(size, bool):
        raise ValueError(f"a memory size must be bytes or a string like '11GiB', got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"a memory size must be positive, got {size}")
        return size
    if isinstance(size, str):
        text = size.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number) :]
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is not None and unit in _UNITS and math.isfinite(value):
            if value <= 0:
                raise ValueError(f"a memory size must be positive, got {size!r}")
            if int(value * _UNITS[unit]) < 1:  # 0.5 bytes is no size either
                raise ValueError(f"a memory size must be at least one byte, got {size!r}")
            return int(value * _UNITS[unit])
    raise ValueError(f"cannot read {size!r} as a memory size; use bytes or a string like '11GiB', '500MB', '4G'")


def format_bytes(num: float | None) -> str:
    """``1536 -> '1.5 KiB'``; ``None -> '–'`` (a figure that was not measured).

    Example:
        >>> format_bytes(1536), format_bytes(11 * 2**30)
        ('1.5 KiB', '11.0 GiB')
    """
    if num is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(num) < 1024:
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    return f"{num:.1f} TiB"
