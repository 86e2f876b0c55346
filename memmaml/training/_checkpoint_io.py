"""Checkpoint files: crash-safe writes, safe reads, and the configuration a checkpoint is compared on.

A checkpoint is a dict of tensors and plain Python values, written with
:func:`atomic_save` and read with :func:`load_checkpoint_file`
(``torch.load(..., weights_only=True)``). Its ``"config"`` entry is a flat
dict of plain values (``{"inner_optimizer.lr": 0.01, ...}``, built by
:func:`flatten` from nested plain data, see :func:`plain`); resuming compares
it with the resuming run's (:func:`config_diff`) and refuses a checkpoint
whose training problem differs (:class:`IncompatibleCheckpointError`).
What a training checkpoint holds, and why a resumed run repeats the
uninterrupted one, is NOTE [ Reproducible and resumable ] in
:mod:`memmaml.training._trainer`.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_FORMAT",
    "RESUME_MAY_CHANGE",
    "IncompatibleCheckpointError",
    "atomic_save",
    "atomic_write",
    "check_compatible",
    "config_diff",
    "flatten",
    "load_checkpoint_file",
    "plain",
]

CHECKPOINT_FORMAT = "memmaml.training/1"  # a format name, not a module path: checkpoints of earlier versions load

#: configuration keys (or key prefixes) that may differ between a checkpoint and the run that
#: resumes it: they change speed, rounding or what is evaluated, not the training problem.
#: ``randomness`` only matters on the vmap path, and ``vectorize`` may change; ``offload`` moves states, not values.
RESUME_MAY_CHANGE = frozenset(
    {
        "vectorize",
        "chunk_size",
        "randomness",
        "offload",
        "world_size",
        "eval_task",
        "eval_optimizer",
        "num_eval_tasks",
        "eval_steps",
        "eval_seed",
    }
)


class IncompatibleCheckpointError(ValueError):
    """A checkpoint was written by a run with a different configuration (or is no training checkpoint)."""


# ---------------------------------------------------------------------------- files
def _umask_mode() -> int:
    """File mode ``open()`` would give a new file (``mkstemp`` makes them private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """Write ``path`` through a temporary file that replaces it only once complete.

    The temporary file lives in the same folder; on leaving the block it is
    flushed, fsynced and renamed over ``path`` (atomic on POSIX and Windows),
    and the folder is fsynced so the rename survives a crash. An exception in
    the block removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written file at ``path`` (see ``atomic_write``)."""
    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :meth:`memmaml.MetaTrainer.save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IncompatibleCheckpointError: the file is not a memmaml training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        raise IncompatibleCheckpointError(
            f"checkpoint {str(path)!r} could not be read safely (torch.load(weights_only=True)): {error}"
        ) from error
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise IncompatibleCheckpointError(
            f"{str(path)!r} is not a memmaml training checkpoint of format {CHECKPOINT_FORMAT!r} (found {found!r})"
        )
    return data


# ---------------------------------------------------------------------- configuration
def plain(value: Any) -> Any:
    """``value`` as JSON-like plain data: a one-element constant tensor becomes its number,
    another tensor a description (``"tensor(3,) learnable"``), anything else unknown its ``repr``."""
    if isinstance(value, Tensor):
        if value.numel() == 1 and not value.requires_grad:
            return value.item()
        return f"tensor{tuple(value.shape)}{' learnable' if value.requires_grad else ''}"
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def flatten(nested: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": {}}`` -> ``{"a.b": 1, "c": {}}`` (an empty dict is a value)."""
    out: dict[str, Any] = {}

    def visit(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping) and value:
            for key, item in value.items():
                visit(f"{prefix}.{key}" if prefix else str(key), item)
        else:
            out[prefix] = value

    visit("", nested)
    return out


def config_diff(saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Iterable[str]) -> list[str]:
    """One line per key whose value differs, except keys in ``may_change`` or below them (``key.``)."""
    may_change = set(may_change)
    lines = []
    for key in sorted(set(saved) | set(current)):
        if any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"  {key}: checkpoint={old!r}, this run={new!r}")
    return lines


def check_compatible(
    saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Iterable[str], source: str = "checkpoint"
) -> None:
    """Raise :class:`IncompatibleCheckpointError` listing every :func:`config_diff` line, if there is one."""
    diff = config_diff(saved, current, may_change)
    if diff:
        raise IncompatibleCheckpointError(
            f"{source} was written by a run with a different configuration; refusing to resume it:\n" + "\n".join(diff)
        )
