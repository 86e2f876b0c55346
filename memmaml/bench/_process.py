"""One way to run a measurement in a fresh process: a JSON spec in, an atomically written JSON record out.

NOTE [ Child processes ]
    Every measurement of the benchmark library runs in a fresh Python process,
    so that one run's peak cannot hide another's and a crash or an
    out-of-memory kill ends one run, not the sweep. :func:`run_child` is the
    only place that starts one: it writes ``TAG.spec.json``, removes any
    ``TAG.result.json`` left by an earlier run, starts a Python process that
    runs :func:`child_main` with ``TARGET TAG.spec.json TAG.result.json``
    (output in ``TAG.log``) in a session of its own and, on Linux, set to be killed when
    its parent dies (``prctl`` resolved in the parent: see
    :func:`_prctl`); it stops the child (and anything the child started) at
    the deadline, or when the parent is interrupted, and reads what the child
    wrote. The child (:func:`child_main`) writes its record only with
    :func:`write_json_atomic` -- a temporary file renamed over the result -- so
    the result file is always a whole record or absent, never a cut-short one.
    Outcomes map the same way for every caller:

    * a final record (``status`` ``"ok"``, ``"failed"`` or ``"oom"``): as the
      child wrote it; a failure's ``error`` is ``"Type: message"``
      (:func:`error_record`);
    * the deadline: ``"timeout"``;
    * killed by SIGKILL (on Linux, most likely the kernel's out-of-memory
      killer): ``"oom"``;
    * any other exit without a final record: ``"failed"``, the error naming
      the exit status and the log's last line (:func:`last_error_line`).

    Every record but an ``"ok"`` one keeps the end of the child's log
    (``log_tail``) and, where the child raised, its ``traceback``: the
    files of a run may be removed, the record's cause may not.

    Figures of a record the child saved while still running (``status``
    ``"running"``) are kept in the last three cases, but its status never is.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "FINAL_STATUSES",
    "MMAP_THRESHOLD",
    "child_env",
    "child_main",
    "error_record",
    "is_out_of_memory",
    "last_error_line",
    "replaced_atomically",
    "run_child",
    "write_json_atomic",
    "write_text_atomic",
]

#: the statuses a child's own record may end with; anything else is a record still being written
FINAL_STATUSES = ("ok", "failed", "oom")

#: glibc's mmap threshold every child gets unless the caller set one: without a fixed
#: threshold, glibc raises it after large frees and peak RSS measures heap fragmentation,
#: which differs run to run and method to method (it slows large allocations a little,
#: the same for every method compared)
MMAP_THRESHOLD = "65536"

#: how much of a child's log a failure without a record keeps
LOG_TAIL_CHARS = 1500

#: what a child runs (``python -c``; ``-m`` on this module would import it twice, once as ``__main__``)
_CHILD = "import sys; from memmaml.bench._process import child_main; sys.exit(child_main(sys.argv[1:]))"


@contextlib.contextmanager
def replaced_atomically(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path``, renamed over it when the block ends without an exception.

    ``os.replace`` is atomic on one file system: a reader sees the old file or
    the whole new one, and a process killed inside the block leaves at most
    the temporary file behind.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`replaced_atomically`, flushed to disk before the rename."""
    with replaced_atomically(path) as temporary, open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def write_json_atomic(path: str | os.PathLike, data: Any, *, indent: int | None = None) -> None:
    """``data`` as JSON, written with ``write_text_atomic`` (values JSON cannot hold as their ``str``)."""
    write_text_atomic(path, json.dumps(data, indent=indent, default=str))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the device or the host ran out of memory."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in text or "can't allocate memory" in text


def error_record(exc: BaseException) -> dict[str, Any]:
    """``status`` (``"oom"`` or ``"failed"``), ``error`` (``"Type: message"``) and ``traceback`` of ``exc``.

    Example:
        >>> error_record(ValueError("bad engine"))["error"], error_record(MemoryError())["status"]
        ('ValueError: bad engine', 'oom')
    """
    return {
        "status": "oom" if is_out_of_memory(exc) else "failed",
        "error": f"{type(exc).__name__}: {exc}"[:2000],
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:],
    }


def last_error_line(text: str) -> str:
    """The last non-empty line of a log (a Python traceback ends with ``Type: message``); ``""`` if none.

    Example:
        >>> last_error_line("Traceback (most recent call last):\\n  ...\\nValueError: lr is nan\\n\\n")
        'ValueError: lr is nan'
    """
    lines = [line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return lines[-1][:500] if lines else ""


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment for a child: the package importable even when it is not installed, the same
    ``MALLOC_MMAP_THRESHOLD_`` for every child (unless set), then ``extra``."""
    env = dict(os.environ)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", MMAP_THRESHOLD)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra or {})
    return env


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's ``prctl`` on Linux (``None`` elsewhere, or where it cannot be loaded), resolved once, in the parent.

    NOTE [ Nothing is loaded in a child before exec ]
        ``preexec_fn`` runs in the child between ``fork`` and ``exec``, where
        only the forking thread exists: a lock another thread of the parent
        held at the fork (the dynamic loader's, the allocator's; tqdm's
        monitor thread is one such thread) stays held forever. So ``dlopen``
        (``ctypes.CDLL``) happens here, in the parent, and the child only
        calls the function it found.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def _die_with_parent(prctl: Callable[..., int] | None, parent: int) -> None:
    """In the child, before it starts: be killed when the parent dies (even by SIGKILL), and end at once if the
    parent is already gone (it died before ``prctl`` took effect: the child has another parent by then)."""
    if prctl is not None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(128 + signal.SIGKILL)


def _stop(process: subprocess.Popen) -> None:
    """Kill the child's whole session (it and whatever it started) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError, AttributeError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        process.kill()
    process.wait()


def _read_record(path: Path) -> dict[str, Any]:
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(path.read_text())
        if isinstance(record, dict):
            return record
    return {}


def run_child(
    target: str,
    spec: Mapping[str, Any],
    tag: str | os.PathLike,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``target`` (``"module:function"``, see :func:`child_main`) on ``spec`` in a fresh process; its record.

    Files: ``TAG.spec.json``, ``TAG.result.json`` and ``TAG.log``. The record
    always has a ``status`` (``"ok"``, ``"failed"``, ``"oom"`` or
    ``"timeout"``) and, unless ``"ok"``, an ``error`` line; see the module
    notes for how each outcome maps. ``env`` is added to :func:`child_env`.
    A ``KeyboardInterrupt`` in the parent stops the child and propagates.
    """
    tag = str(tag)
    spec_path, result_path, log_path = Path(f"{tag}.spec.json"), Path(f"{tag}.result.json"), Path(f"{tag}.log")
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(spec_path, dict(spec), indent=1)
    result_path.unlink(missing_ok=True)  # an earlier run's record is never read as this one's
    command = [sys.executable, "-c", _CHILD, target, str(spec_path), str(result_path)]
    posix = os.name == "posix"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=child_env(env),
            preexec_fn=functools.partial(_die_with_parent, _prctl(), os.getpid()) if posix else None,
            start_new_session=posix,  # a Ctrl-C reaches the parent only, which stops the child
        )
        try:
            returncode: int | None = process.wait(timeout=max(timeout, 0.0))
        except subprocess.TimeoutExpired:
            _stop(process)
            returncode = None
        except BaseException:  # KeyboardInterrupt, SystemExit: the child goes with the parent
            _stop(process)
            raise
    record = _read_record(result_path)
    tail = log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:] if log_path.is_file() else ""
    if record.get("status") in FINAL_STATUSES:
        if record["status"] != "ok" and tail.strip():
            record.setdefault("log_tail", tail)
        return record
    record.pop("traceback", None)
    if returncode is None:
        record.update(status="timeout", error=f"stopped after {timeout:g} s")
    elif returncode in (-signal.SIGKILL, 128 + signal.SIGKILL):
        record.update(status="oom", error="killed by SIGKILL (most likely the kernel's out-of-memory killer)")
    else:
        line = last_error_line(tail) or "no output"
        record.update(status="failed", error=f"exit status {returncode} without a result: {line}")
    if tail.strip() or record["status"] == "failed":
        record["log_tail"] = tail
    return record


def child_main(argv: list[str]) -> int:
    """The child's side: ``TARGET SPEC.json RESULT.json``.

    ``TARGET`` is ``"module:function"``; the function is called as
    ``function(spec, record, save)``: it fills the ``record`` dict and may call
    ``save()`` to store it as it grows (``status`` ``"running"``), so that a
    child killed later leaves its figures so far. When it returns, ``status``
    is ``"ok"``; when it raises, the record gets :func:`error_record`'s fields.
    Either way the record (with ``work_seconds``, the time since the function
    started) is written atomically and the exit status is 0.
    """
    if len(argv) != 3:
        print("usage: child_main MODULE:FUNCTION SPEC.json RESULT.json", file=sys.stderr)
        return 2
    target, spec_path, result_path = argv
    module, _, name = target.partition(":")
    function: Callable[[dict[str, Any], dict[str, Any], Callable[[], None]], None] = getattr(
        importlib.import_module(module), name
    )
    spec = json.loads(Path(spec_path).read_text())
    record: dict[str, Any] = {"status": "running"}
    started = time.perf_counter()

    def save() -> None:
        record["work_seconds"] = time.perf_counter() - started
        write_json_atomic(result_path, record, indent=1)

    try:
        function(spec, record, save)
        record["status"] = "ok"
    except Exception as exc:  # recorded: the parent goes on with the other runs
        record.update(error_record(exc))
    save()
    return 0
