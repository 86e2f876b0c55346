"""memmaml.bench's one process helper: a child's record is read only when the child finished it, and every way a
child can end (its own error, a deadline, SIGKILL, an exit without a record, the parent interrupted) maps the same
way for every caller."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import threading
import time
from pathlib import Path

import pytest

from memmaml.bench._process import error_record, last_error_line, run_child, write_json_atomic

ROOT = Path(__file__).resolve().parents[1]

#: process targets for the tests, in a module the children import from the test's folder
TARGETS = """
import json, os, signal, sys, time
from pathlib import Path


def raises(spec, record, save):
    record["before"] = 1
    raise ValueError("lr is nan")


def killed_while_writing(spec, record, save):
    record["figure"] = 7
    save()  # a record still being written: status "running"
    result = Path(spec["result"])
    result.with_name("." + result.name + ".cut.tmp").write_text('{"status": "ok", "val')  # a write cut short
    os.kill(os.getpid(), signal.SIGKILL)


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
    assert json.loads((tmp_path / "b.spec.json").read_text()) == {"lr": "nan"}


def test_a_killed_workers_partial_result_is_never_read_as_a_result(tmp_path, targets):
    tag = tmp_path / "run"
    Path(f"{tag}.result.json").write_text(json.dumps({"status": "ok", "stale": True}))  # an earlier run's record
    spec = {"result": f"{tag}.result.json"}
    record = run_child("targets_for_tests:killed_while_writing", spec, tag, timeout=120, env=targets)
    assert record["status"] == "oom" and "killed by SIGKILL" in record["error"]
    assert record["figure"] == 7  # the figures it saved are kept, its "running" status is not
    assert "stale" not in record and "val" not in json.dumps(record)
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


def test_atomic_writes_and_error_lines(tmp_path):
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": [1, 2]}, indent=1)
    assert json.loads(path.read_text()) == {"a": [1, 2]} and [p.name for p in tmp_path.iterdir()] == ["results.json"]

    class Unwritable:
        def __str__(self):
            raise RuntimeError("stop mid-write")

    with pytest.raises(RuntimeError, match="stop mid-write"):
        write_json_atomic(path, {"a": Unwritable()})
    assert json.loads(path.read_text()) == {"a": [1, 2]}  # the old file, whole; no temporary left
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    assert error_record(MemoryError())["status"] == "oom"
    assert error_record(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))["status"] == "oom"
    assert error_record(ValueError("shape"))["error"] == "ValueError: shape"
    assert last_error_line("a\n  b\r\nValueError: x\n\n") == "ValueError: x" and last_error_line("") == ""
