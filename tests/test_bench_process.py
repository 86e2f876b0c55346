"""memmaml.bench's one process helper: a child's record is read only when the child finished it, every way a
child can end (its own error, a deadline, SIGKILL, an exit without a record, the parent interrupted) maps the same
way for every caller, a record's file is never seen cut short (a writer killed or failing mid-write leaves the old
file whole), and a child loads nothing between fork and exec."""

from __future__ import annotations

import builtins
import ctypes
import functools
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from memmaml.bench._process import (
    _die_with_parent,
    _prctl,
    error_record,
    last_error_line,
    run_child,
    write_json_atomic,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[1]

#: process targets for the tests, in a module the children import from the test's folder
TARGETS = """
import builtins, io, json, os, signal, sys, time
from pathlib import Path


def raises(spec, record, save):
    record["before"] = 1
    print("loading the batches", flush=True)
    raise ValueError("lr is nan")


class CutShort:
    # a file whose first write stops the process half-way: the kernel keeps what reached the file, no more
    def __init__(self, handle):
        self.handle = handle

    def write(self, text):
        self.handle.write(text[: len(text) // 2])
        self.handle.flush()
        os.fsync(self.handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.close()

    def __getattr__(self, name):
        return getattr(self.handle, name)


def killed_while_writing(spec, record, save):
    record["figure"] = 7
    save()  # a whole record, still being written: status "running"
    real = builtins.open

    def cut_short(file, mode="r", *args, **kwargs):
        handle = real(file, mode, *args, **kwargs)
        return CutShort(handle) if "w" in mode else handle

    builtins.open = io.open = cut_short  # whatever opens the next file to write, the write is cut short
    record["figure"] = 8
    record["padding"] = "x" * 10_000
    save()


def exits(spec, record, save):
    print("warming up\\nRuntimeError: CUDA driver initialization failed", flush=True)
    os._exit(3)


def sleeps(spec, record, save):
    Path(spec["pid"]).write_text(str(os.getpid()))
    time.sleep(120)
"""


@pytest.fixture
def targets(tmp_path):
    (tmp_path / "targets_for_tests.py").write_text(textwrap.dedent(TARGETS))
    return {"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_childs_own_error_is_its_record(tmp_path, targets):
    record = run_child("targets_for_tests:raises", {"lr": "nan"}, tmp_path / "b", timeout=120, env=targets)
    assert record["status"] == "failed" and record["error"] == "ValueError: lr is nan" and record["before"] == 1
    assert "raise ValueError" in record["traceback"] and record["work_seconds"] >= 0
    assert record["log_tail"] == "loading the batches\n"  # the end of its log, kept with the record
    assert json.loads((tmp_path / "b.spec.json").read_text()) == {"lr": "nan"}


def test_a_worker_killed_mid_write_leaves_its_last_whole_record(tmp_path, targets):
    """The child's second save is cut short half-way by SIGKILL: the result file still holds the first, whole."""
    tag = tmp_path / "run"
    result = Path(f"{tag}.result.json")
    result.write_text(json.dumps({"status": "ok", "stale": True}))  # an earlier run's record
    record = run_child("targets_for_tests:killed_while_writing", {}, tag, timeout=120, env=targets)
    assert record["status"] == "oom" and "killed by SIGKILL" in record["error"]
    assert record["figure"] == 7  # the figures of its last whole save are kept, its "running" status is not
    assert "stale" not in record and "padding" not in record
    on_disk = json.loads(result.read_text())  # whole: the cut-short write never reached it
    assert on_disk == {**on_disk, "status": "running", "figure": 7} and "padding" not in on_disk
    record = run_child("targets_for_tests:exits", {}, tag, timeout=120, env=targets)
    assert record == {
        "status": "failed",
        "error": "exit status 3 without a result: RuntimeError: CUDA driver initialization failed",
        "log_tail": "warming up\nRuntimeError: CUDA driver initialization failed\n",
    }


def test_an_interrupted_parent_stops_the_child(tmp_path, targets):
    """Ctrl-C in the parent kills the child (a deadline does the same: ``_stop``) and propagates."""
    pid_file = tmp_path / "pid"

    def interrupt(*_):
        raise KeyboardInterrupt

    def press_ctrl_c_once_the_child_sleeps():
        while not pid_file.exists():
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=press_ctrl_c_once_the_child_sleeps, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            run_child("targets_for_tests:sleeps", {"pid": str(pid_file)}, tmp_path / "slow", timeout=120, env=targets)
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert _gone(int(pid_file.read_text()))  # the child went with the interrupted parent


def test_a_write_that_fails_leaves_the_old_file_whole_and_no_temporary(tmp_path, monkeypatch):
    """The text cannot be encoded, so the write fails after its file was opened: the old file stays whole, the
    temporary it went to (beside it, never the file itself) is removed."""
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    opened = []
    real_open = builtins.open

    def spy(file, mode="r", *args, **kwargs):
        if "w" in mode:
            opened.append(Path(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    with pytest.raises(UnicodeEncodeError):
        write_text_atomic(path, '{"a": [3, 4]}' + "\ud800")  # a lone surrogate: no encoding writes it
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"a": [1, 2]}  # the old file, whole
    assert opened and path not in opened and all(p.parent == tmp_path for p in opened)  # through a temporary
    assert not any(p.exists() for p in opened) and [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_text_atomic(path, '{"a": [3, 4]}')
    assert json.loads(path.read_text()) == {"a": [3, 4]} and [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_error_lines():
    assert error_record(MemoryError())["status"] == "oom"
    assert error_record(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))["status"] == "oom"
    assert error_record(ValueError("shape"))["error"] == "ValueError: shape"
    assert last_error_line("a\n  b\r\nValueError: x\n\n") == "ValueError: x" and last_error_line("") == ""


def test_the_child_loads_nothing_before_exec(tmp_path, targets, monkeypatch):
    """``prctl`` is resolved in the parent (``ctypes.CDLL``, a ``dlopen``, is not safe between fork and exec with
    other threads alive): every CDLL call comes from this process, none from a child."""
    calls = tmp_path / "cdll_calls"
    real = ctypes.CDLL

    def spy(*args, **kwargs):
        with open(calls, "a") as log:
            log.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)

    _prctl.cache_clear()
    monkeypatch.setattr(ctypes, "CDLL", spy)
    try:
        record = run_child("targets_for_tests:raises", {}, tmp_path / "a", timeout=120, env=targets)
        _prctl()  # cached: the next child costs no second load
    finally:
        _prctl.cache_clear()
    assert record["error"] == "ValueError: lr is nan"  # the child ran
    pids = calls.read_text().split() if calls.exists() else []
    if sys.platform.startswith("linux"):
        assert pids == [str(os.getpid())]  # once, here
    else:
        assert pids == []


def test_a_child_whose_parent_is_gone_does_not_start():
    """After ``prctl``, a child whose parent is no longer the process that started it ends before it runs."""
    command = [sys.executable, "-c", "print('ran')"]
    gone = subprocess.run(command, preexec_fn=functools.partial(_die_with_parent, None, -1), capture_output=True)
    assert gone.returncode == 128 + signal.SIGKILL and gone.stdout == b""
    here = functools.partial(_die_with_parent, _prctl(), os.getpid())
    assert subprocess.run(command, preexec_fn=here, capture_output=True, text=True).stdout == "ran\n"
