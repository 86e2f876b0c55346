"""The metrics log of a training run: rows appended to a JSON-lines or CSV file, train rows averaged over a window."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._checkpoint_io import atomic_write

__all__ = ["MetricsLog", "TrainWindow"]


class MetricsLog:
    """Rows of metrics appended to a JSON-lines (``.jsonl``) or CSV (``.csv``) file.

    Every row has ``iteration`` and ``kind`` (``"train"`` or ``"eval"``). A CSV
    file has one header: the ``fieldnames`` given (missing values are empty).

    Args:
        path: the file; its suffix picks the format.
        fieldnames: CSV columns (ignored for JSON lines).

    Example:
        >>> import tempfile, pathlib
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "metrics.csv"
        >>> log = MetricsLog(path, ["loss"])
        >>> log.start(0)
        >>> log.write({"iteration": 1, "kind": "train", "loss": 0.5})
        >>> log.read()
        [{'iteration': 1, 'kind': 'train', 'loss': 0.5}]
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str] = ()) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise ValueError(f"log path must end in .jsonl or .csv, got {str(self.path)!r}")
        self.format = suffix[1:]
        self.fieldnames = ["iteration", "kind", *(f for f in fieldnames if f not in ("iteration", "kind"))]

    def read(self) -> list[dict[str, Any]]:
        """All rows in the file (numbers parsed back from CSV)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                return [json.loads(line) for line in f if line.strip()]
            return [{k: _parse_csv_value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def start(self, iteration: int) -> None:
        """Prepare the file for a run that starts after ``iteration``.

        ``iteration == 0`` starts a new file; otherwise rows past ``iteration``
        (logged after the checkpoint being resumed) are removed, atomically.
        """
        rows = [r for r in self.read() if r.get("iteration", 0) <= iteration] if iteration > 0 else []
        with atomic_write(self.path, "w", newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            else:
                writer = csv.DictWriter(f, self.fieldnames, restval="", extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row."""
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                f.write(json.dumps(dict(row)) + "\n")
            else:
                csv.DictWriter(f, self.fieldnames, restval="", extrasaction="ignore").writerow(dict(row))


class TrainWindow:
    """The iterations since the last ``"train"`` row, summed; :meth:`close` averages them into the row.

    ``state`` (a dict of floats) is what a checkpoint stores, so a run resumed
    in the middle of a window logs the same averages as one never stopped.
    """

    KEYS = ("loss", "loss_before", "grad_norm")

    def __init__(self, state: Mapping[str, float] | None = None) -> None:
        self.state: dict[str, float] = dict(state) if state is not None else self._empty()

    @classmethod
    def _empty(cls) -> dict[str, float]:
        return {"count": 0, **dict.fromkeys(cls.KEYS, 0.0), "time": 0.0}

    def add(self, metrics: Mapping[str, float], seconds: float) -> None:
        """Add one iteration's ``metrics`` (``KEYS``) and its wall time."""
        self.state["count"] += 1
        for key in self.KEYS:
            self.state[key] += metrics[key]
        self.state["time"] += seconds

    def close(self, iteration: int, elapsed_s: float) -> dict[str, Any]:
        """The ``"train"`` row of the averages (and ``sec_per_iter``, ``elapsed_s``); starts a new window."""
        state, count = self.state, self.state["count"]
        row = {
            "iteration": iteration,
            "kind": "train",
            **{key: state[key] / count for key in self.KEYS},
            "sec_per_iter": state["time"] / count,
            "elapsed_s": elapsed_s,
        }
        self.state = self._empty()
        return row


def _parse_csv_value(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value
