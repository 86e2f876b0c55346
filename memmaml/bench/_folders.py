"""An output folder written by one job at a time, and earlier results moved aside, never overwritten.

NOTE [ One job per output folder ]
    A sweep and the GPU check write their results, reports and run files into
    one folder, number their runs from what is there and remove their
    scratch files when they finish. Two of them in one folder would number
    the same runs, overwrite each other's records and remove each other's
    files, so :func:`lock_folder` holds an exclusive ``flock`` on
    ``FOLDER/.lock`` for the whole job: a second job fails at once
    (:class:`FolderInUse`, naming the job that holds it), before it reads or
    writes anything else. The lock goes with the process (an exit, a crash, a
    kill), so a folder is never left locked; the file stays, empty of meaning
    once no process holds it (removing it would let two jobs lock two files).

    Results that a job will not resume are moved by :func:`move_aside` into
    ``FOLDER/previous/<UTC time they were last written>/``, every
    generation kept.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

__all__ = ["FolderInUse", "FolderLockError", "lock_folder", "move_aside"]

#: the lock file in the folder
LOCK = ".lock"


class FolderLockError(RuntimeError):
    """The folder's lock cannot be taken (its lock file cannot be opened, or the filesystem refuses ``flock``);
    ``str()`` names the lock file and the cause."""


class FolderInUse(FolderLockError):
    """Another process holds the folder's lock; ``str()`` names the folder and the job that holds it."""


@contextlib.contextmanager
def lock_folder(folder: str | os.PathLike, job: str) -> Iterator[Path]:
    """Hold ``folder``'s lock (created with its parents if need be) while the block runs; yields the folder.

    ``job`` (a command line) is written into the lock file, for the message a
    second job gets.

    Raises:
        FolderInUse: another process holds the lock (checked at once, never waited for).
        FolderLockError: the lock cannot be taken for another reason (``FOLDER/.lock`` is a
            folder or unreadable, or the filesystem has no ``flock``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # no flock (Windows): one job per folder is the user's to keep
        yield folder
        return
    try:
        descriptor = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise FolderLockError(f"cannot open the lock file {str(folder / LOCK)!r}: {err.strerror or err}") from None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode(errors="replace").strip() or "another process"
            raise FolderInUse(f"{str(folder)!r} is in use by another job ({holder})") from None
        except OSError as err:  # a filesystem without flock (some network mounts)
            raise FolderLockError(f"cannot lock {str(folder / LOCK)!r}: {err.strerror or err}") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()}: {job}\n".encode(), 0)
        yield folder
    finally:
        os.close(descriptor)  # releases the lock


def move_aside(folder: str | os.PathLike, names: Sequence[str]) -> Path | None:
    """Move the files and folders ``names`` that ``folder`` holds into ``folder/previous/<UTC time>/``.

    The time is when the newest of them was last written
    (``2025-12-02T08-12-33Z``; ``-2``, ``-3``, ... if that folder exists), so
    each generation keeps its own folder.

    Returns:
        The folder they went to, or ``None`` if ``folder`` held none of them.
    """
    folder = Path(folder)
    present = [folder / name for name in names if (folder / name).exists()]
    if not present:
        return None
    stamp = time.strftime("%Y-%m-%dT%H-%M-%SZ", time.gmtime(max(path.stat().st_mtime for path in present)))
    target = folder / "previous" / stamp
    number = 1
    while target.exists():
        number += 1
        target = folder / "previous" / f"{stamp}-{number}"
    target.mkdir(parents=True)
    for path in present:
        os.replace(path, target / path.name)
    return target
