"""The main job (memmaml.cli.compare_memory, scripts/compare_memory.py): one end-to-end sweep of every engine on a
tiny MLP, and a sweep that never loses a finished run -- a failing worker or probe is recorded (with its traceback)
and the others go on, Ctrl-C keeps what finished, a rerun resumes and runs again what did not succeed, timing runs
are their own records, earlier results are moved aside and one sweep at a time uses a folder. Bad command lines are
in tests/test_cli.py."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

from memmaml.bench import Runner, Workload, render, run_sweep
from memmaml.cli import compare_memory

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_memory.py"
TINY = [
    "--model",
    "mlp",
    "--image-size",
    "8",
    "--channels",
    "1",
    "--batch-size",
    "64",
    "--width",
    "16",
    "--no-progress",
]


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


def test_end_to_end_every_engine_on_a_tiny_mlp(tmp_path):
    out = tmp_path / "run"
    # uniform:best is resolved the same way as binomial:auto (tests/test_bench.py); three engines keep this short
    proc = run_script(
        *TINY,
        "--engines",
        "naive,uniform:2,binomial:auto+offload",
        "--steps",
        "2,8",
        "--repeats",
        "1",
        "--budget",
        "4MiB",
        "--device",
        "cpu",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device: cpu\n" in proc.stderr
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["torch"] and data["provenance"]["command"].startswith("python scripts/compare_memory.py")
    assert "memmaml_commit" in data["provenance"] and data["workload"]["model"] == "mlp"
    assert data["probe"]["status"] == "ok" and data["probe"]["costs"]["graph_bytes"] > 0
    assert data["complete"] is True and not (out / "runs").exists()  # the scratch folder goes with a complete sweep
    records = {(r["label"], r["steps"]): r for r in data["records"]}
    assert set(records) == {(e, n) for e in ("naive", "uniform:2", "binomial:auto+offload") for n in (2, 8)}
    for r in records.values():
        assert r["status"] == "ok" and r["peak_bytes"] > 0 and r["rss_peak_bytes"] > r["peak_bytes"]
        assert r["grad_path"] is None  # compared, then removed
    naive, uniform = records["naive", 8], records["uniform:2", 8]
    assert uniform["engine"] == "uniform:2" and uniform["stats"]["max_stored"] == 4
    assert uniform["peak_bytes"] < naive["peak_bytes"]
    assert records["binomial:auto+offload", 8]["engine"] == "binomial:7+offload"  # resolved for the budget
    assert records["binomial:auto+offload", 8]["host_peak_bytes"] > 0
    for key in (("uniform:2", 8), ("binomial:auto+offload", 8)):
        assert records[key]["grad_rel_diff"] < 1e-6  # float32; on CPU it is usually 0
    assert len(naive["seconds_runs"]) == 1 and "seconds_runs" not in records["naive", 2]
    assert data["fit"] is not None and data["fit"]["costs"]["graph_bytes"] > 0
    answers = {a["engine"]: a for a in data["answers"]}
    assert answers["naive"]["grows_with_steps"] and answers["naive"]["longest_steps"] > 0
    assert not answers["binomial:auto+offload"]["grows_with_steps"]
    assert all(a["measured"] is False for a in answers.values())
    text = (out / "results.md").read_text()
    assert "Measured on" in text and "predicted from the fit" in text and "does not grow with n" in text
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    (out / "results.md").unlink()
    (out / "results.png").unlink()
    assert compare_memory.main(["--render-only", "--out", str(out)]) == 0
    assert (out / "results.md").read_text() == text and (out / "results.png").exists()


def test_a_failing_worker_is_recorded_and_the_other_engines_go_on(tmp_path, monkeypatch, capsys):
    """uniform:2's worker fails for real (torch refuses -1 threads in the child); naive's succeeds."""
    real_run = Runner.run

    def run(self, method, steps, **options):
        if method.engine != "uniform:2":
            return real_run(self, method, steps, **options)
        threads, self.threads = self.threads, -1
        try:
            return real_run(self, method, steps, **options)
        finally:
            self.threads = threads

    monkeypatch.setattr(Runner, "run", run)
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,uniform:2", "--steps", "2", "--repeats", "0", "--out", str(out)]
    assert compare_memory.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    records = {r["label"]: r for r in data["records"]}
    assert records["naive"]["status"] == "ok" and records["naive"]["peak_bytes"] > 0
    assert records["uniform:2"]["status"] == "failed"
    assert records["uniform:2"]["error"] == "RuntimeError: set_num_threads expects a positive integer"
    # the cause outlives the run's files, which a complete sweep removes
    assert data["complete"] and not (out / "runs").exists()
    assert "set_num_threads" in records["uniform:2"]["traceback"] and "Traceback" in records["uniform:2"]["traceback"]
    assert "| uniform:2 | 2 |" in (out / "results.md").read_text()
    assert "failed: RuntimeError: set_num_threads" in (out / "results.md").read_text()


def test_when_nothing_can_run_one_line_names_the_cause(tmp_path, capsys):
    # a timeout far shorter than a Python start-up: the probe and every run stop; all are recorded
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,uniform:1", "--steps", "1,2", "--repeats", "0", "--timeout", "0.01"]
    assert compare_memory.main([*argv, "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "memmaml-compare: error: no run succeeded: the probe failed: stopped after 0.01 s"
    data = json.loads((out / "results.json").read_text())
    assert data["probe"]["status"] == "timeout" and data["complete"] is True
    assert [(r["label"], r["steps"], r["status"]) for r in data["records"]] == [
        ("naive", 1, "timeout"),
        ("uniform:1", 1, "timeout"),
        ("naive", 2, "timeout"),
        ("uniform:1", 2, "timeout"),
    ]
    assert (out / "results.md").exists()


COSTS = {"state_bytes": 1_000, "graph_bytes": 50_000, "nograph_seconds": 0.01, "graph_seconds": 0.03}


class FakeRuns:
    """Stands in for the worker processes: records as a run would give them, a failing probe on request, and
    Ctrl-C after ``interrupt_after`` runs. ``fail`` engines fail their memory and timing runs, ``fail_time`` engines
    their timing runs only (with ``status`` ``"timeout"``); an untracked run takes ``untracked`` times the tracked
    run's seconds (naive) or twice that (the others): a sweep that recorded the tracked time as the untracked one
    would show it."""

    def __init__(self, *, probe_error=None, fail=(), fail_time=(), interrupt_after=None, untracked=0.5):
        self.calls, self.probe_error, self.fail, self.interrupt_after = [], probe_error, fail, interrupt_after
        self.fail_time, self.untracked = fail_time, untracked

    def __call__(self, runner, method, steps, *, track, save_grads=False, memory_cap_bytes=None, measure_costs=False):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(("probe",) if measure_costs else (method.engine, steps, "memory" if track else "time"))
        record = {"library": method.library, "engine": method.engine, "steps": steps, "tracked": track}
        if measure_costs:
            failed = {"status": "failed", "error": self.probe_error}
            return {**record, **(failed if self.probe_error else {"status": "ok", "costs": COSTS})}
        if method.engine in self.fail:
            failed = {"status": "failed", "error": "RuntimeError: boom", "traceback": "Traceback ...boom"}
            return {**record, **failed, "log_tail": "loading\nRuntimeError: boom\n", "grad_path": None}
        if not track and method.engine in self.fail_time:
            return {**record, "status": "timeout", "error": "stopped after 9 s", "log_tail": "warming up\n"}
        peak = 1_000 + 50_000 * (steps if method.engine == "naive" else 2)
        seconds = 0.1 * steps if track else self.untracked * 0.1 * steps * (1 if method.engine == "naive" else 2)
        return {**record, "status": "ok", "peak_bytes": peak, "seconds": seconds, "grad_path": None}


def use(monkeypatch, fake):
    """Every run of the sweep goes to ``fake`` instead of a worker process."""
    monkeypatch.setattr(Runner, "run", lambda runner, *args, **kwargs: fake(runner, *args, **kwargs))


def test_ctrl_c_keeps_the_finished_runs_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,uniform:2", "--steps", "2,4", "--repeats", "1", "--out", str(out)]
    interrupted = FakeRuns(interrupt_after=2)
    use(monkeypatch, interrupted)
    assert compare_memory.main(argv) == compare_memory.INTERRUPTED
    assert interrupted.calls == [("probe",), ("naive", 2, "memory")]
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is False and data["probe"]["status"] == "ok"
    assert [(r["label"], r["steps"], r["status"]) for r in data["records"]] == [("naive", 2, "ok")]
    assert "interrupted: 1 finished run(s) kept" in capsys.readouterr().err
    assert "**Incomplete:** the sweep was stopped" in (out / "results.md").read_text()  # the reports show what finished

    resumed = FakeRuns()
    use(monkeypatch, resumed)
    assert compare_memory.main(argv) == 0
    assert resumed.calls == [  # neither the probe nor naive n=2 again
        ("uniform:2", 2, "memory"),
        ("naive", 4, "memory"),
        ("uniform:2", 4, "memory"),
        ("naive", 4, "time"),
        ("uniform:2", 4, "time"),
    ]
    err = capsys.readouterr().err
    assert "resuming the sweep in" in err and "kept 2 run(s) already recorded" in err
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True and len(data["records"]) == 4
    assert "Incomplete" not in (out / "results.md").read_text()

    again = FakeRuns()
    use(monkeypatch, again)
    assert compare_memory.main(argv) == 0 and again.calls == []  # a complete sweep only redraws its reports
    assert "kept 7 run(s)" in capsys.readouterr().err

    other = FakeRuns()
    use(monkeypatch, other)
    assert compare_memory.main([*argv, "--lr", "0.02"]) == 0  # another workload: starts afresh, keeps the old files
    assert other.calls[0] == ("probe",) and len(other.calls) == 7
    err = capsys.readouterr().err
    assert "holds a sweep with another workload: moved with its reports to " in err and "; starting afresh" in err
    (previous,) = (out / "previous").iterdir()
    assert json.loads((previous / "results.json").read_text())["workload"]["lr"] == 0.01


def test_a_failing_probe_is_recorded_and_the_engines_that_need_no_costs_run(tmp_path, monkeypatch, capsys):
    runs = FakeRuns(probe_error="RuntimeError: boom")
    use(monkeypatch, runs)
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,uniform:5,uniform:best,binomial:auto", "--steps", "2", "--repeats", "0"]
    assert compare_memory.main([*argv, "--out", str(out)]) == 0
    assert runs.calls == [("probe",), ("naive", 2, "memory"), ("uniform:5", 2, "memory")]
    data = json.loads((out / "results.json").read_text())
    assert data["probe"] == {**data["probe"], "status": "failed", "error": "RuntimeError: boom"}
    records = {r["label"]: r for r in data["records"]}
    assert records["naive"]["status"] == records["uniform:5"]["status"] == "ok"
    for label in ("uniform:best", "binomial:auto"):
        assert records[label]["status"] == "skipped"
        assert records[label]["error"] == (
            f"'{label}' is chosen from measured step costs, and there are none; the probe failed: RuntimeError: boom"
        )
    capsys.readouterr()
    use(monkeypatch, FakeRuns(probe_error="RuntimeError: boom", fail=("naive", "uniform:5")))
    assert compare_memory.main([*argv, "--out", str(tmp_path / "none")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "memmaml-compare: error: no run succeeded: the probe failed: RuntimeError: boom"
    )


def test_a_sweep_of_another_commit_is_not_resumed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    use(monkeypatch, FakeRuns())
    assert compare_memory.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    data["provenance"]["memmaml_commit"] = "0" * 40
    (out / "results.json").write_text(json.dumps(data))
    runs = FakeRuns()
    use(monkeypatch, runs)
    assert compare_memory.main(argv) == 0 and runs.calls == [("probe",), ("naive", 2, "memory")]
    assert "holds a sweep with another commit: moved with its reports to " in capsys.readouterr().err


def test_timing_runs_are_their_own_records(tmp_path, monkeypatch):
    """A timing run's seconds and status are its own, never its configuration's tracked run's."""
    use(monkeypatch, FakeRuns(untracked=0.5, fail_time=("uniform:3",)))
    runner = Runner(Workload(model="mlp", image_size=4, batch_size=2, width=4), tmp_path / "runs")
    sweep = run_sweep(runner, ["naive", "uniform:2", "uniform:3"], [4], repeats=2, host_check=False)
    records = {r["label"]: r for r in sweep["records"]}
    naive, uniform, failing = records["naive"], records["uniform:2"], records["uniform:3"]
    assert naive["seconds"] == uniform["seconds"] == pytest.approx(0.4)  # the tracked runs
    assert naive["seconds_runs"] == [pytest.approx(0.2)] * 2 and naive["seconds_untracked"] == pytest.approx(0.2)
    assert uniform["seconds_runs"] == [pytest.approx(0.4)] * 2  # untracked: twice naive's
    assert failing["status"] == "ok" and failing["seconds_runs"] == [None, None]  # failed timing runs: no seconds
    assert "seconds_untracked" not in failing
    assert failing["time_failures"] == [
        {"repeat": r, "status": "timeout", "error": "stopped after 9 s", "log_tail": "warming up\n"} for r in (1, 2)
    ]
    assert all(r["role"] == "memory" and r["tracked"] is True for r in records.values())
    # the report's time / naive is the ratio of the untracked runs: 2, not the tracked runs' 1
    out = tmp_path / "report"
    out.mkdir()
    data = {
        "provenance": {"device": "cpu", "torch": "2.x", "memmaml_version": "0.2.0", "command": "x"},
        "workload": Workload(model="mlp").__dict__,
        "engines": ["naive", "uniform:2", "uniform:3"],
        **sweep,
    }
    (out / "results.json").write_text(json.dumps(data))
    rows = {line.split(" | ")[0]: line.split(" | ") for line in render(out).splitlines() if line.startswith("| ")}
    assert rows["| uniform:2"][8] == "2.00" and rows["| naive"][8] == "1.00" and rows["| uniform:3"][8] == "–"


def test_a_resumed_sweep_runs_again_what_did_not_succeed(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,uniform:2,uniform:3", "--steps", "2", "--repeats", "1", "--out", str(out)]
    use(monkeypatch, FakeRuns(fail=("uniform:2",), fail_time=("uniform:3",)))
    assert compare_memory.main(argv) == 0
    data = json.loads((out / "results.json").read_text())
    records = {r["label"]: r for r in data["records"]}
    assert records["uniform:2"]["status"] == "failed" and records["uniform:3"]["seconds_runs"] == [None]
    assert records["uniform:2"]["traceback"] == "Traceback ...boom" and "boom" in records["uniform:2"]["log_tail"]
    capsys.readouterr()

    again = FakeRuns()
    use(monkeypatch, again)
    assert compare_memory.main(argv) == 0
    assert again.calls == [("uniform:2", 2, "memory"), ("uniform:2", 2, "time"), ("uniform:3", 2, "time")]
    assert "ran again 2 run(s) of the earlier sweep that had not succeeded" in capsys.readouterr().err
    records = {r["label"]: r for r in json.loads((out / "results.json").read_text())["records"]}
    assert records["uniform:2"]["status"] == "ok" and "traceback" not in records["uniform:2"]
    assert records["uniform:3"]["seconds_runs"] == [pytest.approx(0.2)] and "time_failures" not in records["uniform:3"]


def test_a_failed_run_keeps_its_record_until_its_retry_replaces_it(tmp_path, monkeypatch, capsys):
    """A resumed sweep interrupted before it retries a failed run, one that skips it, or a rerun that does not
    name it, keeps the failed record and its cause; a rerun that runs nothing again says so (the count is of runs
    made again)."""
    out = tmp_path / "run"
    argv = [*TINY, "--steps", "2", "--repeats", "1", "--out", str(out)]
    wide = ["--engines", "naive,uniform:2,uniform:3"]
    use(monkeypatch, FakeRuns(fail=("uniform:2",), fail_time=("uniform:3",)))
    assert compare_memory.main([*argv, *wide]) == 0

    def failed(key):
        data = json.loads((out / "results.json").read_text())
        return [r for r in data[key] if r["status"] == "failed" and r["traceback"] == "Traceback ...boom"]

    assert [r["label"] for r in failed("records")] == ["uniform:2"]
    use(monkeypatch, FakeRuns(interrupt_after=0))  # Ctrl-C at the retry of uniform:2
    assert compare_memory.main([*argv, *wide]) == compare_memory.INTERRUPTED
    assert [r["label"] for r in failed("records")] == ["uniform:2"] and "boom" in failed("records")[0]["log_tail"]
    assert "| uniform:2 | 2 |" in (out / "results.md").read_text()
    capsys.readouterr()
    skipping = FakeRuns()
    use(monkeypatch, skipping)  # a run skipped now (predicted too long) is not run: the failure keeps its cause
    compare_memory.main([*argv, "--engines", "naive,uniform:2", "--repeats", "0", "--max-run-seconds", "1e-9"])
    assert skipping.calls == [] and [r["label"] for r in failed("records")] == ["uniform:2"]
    capsys.readouterr()

    narrow = FakeRuns()
    use(monkeypatch, narrow)
    assert compare_memory.main([*argv, "--engines", "naive", "--repeats", "0"]) == 0 and narrow.calls == []
    assert "ran again" not in capsys.readouterr().err  # neither uniform:2 nor uniform:3's timing run was run
    assert [r["label"] for r in failed("other_records")] == ["uniform:2"]
    others = {r["label"]: r for r in json.loads((out / "results.json").read_text())["other_records"]}
    assert others["uniform:3"]["seconds_runs"] == [None] and others["uniform:3"]["time_failures"]
    again = FakeRuns()
    use(monkeypatch, again)
    assert compare_memory.main([*argv, *wide]) == 0  # named again: retried, and the failures replaced
    assert again.calls == [("uniform:2", 2, "memory"), ("uniform:2", 2, "time"), ("uniform:3", 2, "time")]
    assert "ran again 2 run(s) of the earlier sweep that had not succeeded" in capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "ok" and "time_failures" not in r for r in data["records"])
    assert data["other_records"] == []


def test_a_change_of_budget_keeps_the_runs_of_the_engine_chosen_before(tmp_path, monkeypatch, capsys):
    """binomial:auto is chosen anew for another --budget; the run of the engine chosen before is kept apart, not
    overwritten, and comes back when that budget is given again."""
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive,binomial:auto", "--steps", "8", "--repeats", "1", "--out", str(out)]
    use(monkeypatch, FakeRuns())
    assert compare_memory.main([*argv, "--budget", "1MiB"]) == 0
    (first,) = [r for r in json.loads((out / "results.json").read_text())["records"] if r["label"] != "naive"]
    tight = FakeRuns()
    use(monkeypatch, tight)
    assert compare_memory.main([*argv, "--budget", "54000"]) == 0
    data = json.loads((out / "results.json").read_text())
    (second,) = [r for r in data["records"] if r["label"] != "naive"]
    assert second["engine"] != first["engine"] and data["other_records"] == [first]
    assert tight.calls == [(second["engine"], 8, "memory"), (second["engine"], 8, "time")]
    assert (
        "1 run(s) this command does not make (other engines or n, or another engine chosen for a budget) kept apart"
        in capsys.readouterr().err
    )
    back = FakeRuns()
    use(monkeypatch, back)
    assert compare_memory.main([*argv, "--budget", "1MiB"]) == 0 and back.calls == []
    data = json.loads((out / "results.json").read_text())
    assert [r for r in data["records"] if r["label"] != "naive"] == [first] and data["other_records"] == [second]


def test_an_unreadable_earlier_results_file_is_moved_aside_with_its_own_message(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    cases = (
        ("[1, 2]", "is not a sweep's results (a JSON list)"),
        ("{", "is not a readable results file ("),
        ('{"provenance": "x"}', "is not a sweep's results (no workload or provenance)"),  # was an AttributeError
        ('{"workload": {}, "records": [{"label": "naive"}]}', "is not a sweep's results (its 'records' are not"),
    )
    for text, why in cases:
        out.mkdir(exist_ok=True)
        (out / "results.json").write_text(text)
        use(monkeypatch, FakeRuns())
        assert compare_memory.main(argv) == 0
        (line,) = [line for line in capsys.readouterr().err.splitlines() if "moved with its reports" in line]
        assert line.startswith(f"{out / 'results.json'} {why}") and "another" not in line
    assert sorted((p / "results.json").read_text() for p in (out / "previous").iterdir()) == sorted(t for t, _ in cases)


def test_earlier_sweeps_are_moved_aside_every_generation(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    for lr in ("0.01", "0.02", "0.03"):
        use(monkeypatch, FakeRuns())
        assert compare_memory.main([*argv, "--lr", lr]) == 0
    err = capsys.readouterr().err.splitlines()
    moved = [line for line in err if "moved with its reports to" in line]
    assert len(moved) == 2 and all(f"{out / 'previous'}" in line for line in moved)
    generations = sorted((out / "previous").iterdir())
    assert len(generations) == 2
    for folder, lr in zip(generations, (0.01, 0.02)):
        assert json.loads((folder / "results.json").read_text())["workload"]["lr"] == lr
        assert {"results.md", "results.csv", "results.png"} <= {p.name for p in folder.iterdir()}
        assert f"lr {lr:g}" in (folder / "results.md").read_text()  # the reports went with their results
    assert json.loads((out / "results.json").read_text())["workload"]["lr"] == 0.03


def test_runs_of_another_configuration_are_kept_apart_from_the_report(tmp_path, monkeypatch, capsys):
    """A rerun with fewer engines and n (same workload and code) reports only what its command names; the other
    runs wait in results.json, and a rerun that names them again keeps them."""
    out = tmp_path / "run"
    argv = [*TINY, "--repeats", "0", "--out", str(out)]
    wide = ["--engines", "naive,uniform:2", "--steps", "2,4"]
    use(monkeypatch, FakeRuns())
    assert compare_memory.main([*argv, *wide]) == 0
    capsys.readouterr()
    narrow = FakeRuns()
    use(monkeypatch, narrow)
    assert compare_memory.main([*argv, "--engines", "naive", "--steps", "2"]) == 0 and narrow.calls == []
    assert (
        "3 run(s) this command does not make (other engines or n, or another engine chosen for a budget) kept apart"
        in capsys.readouterr().err
    )
    data = json.loads((out / "results.json").read_text())
    assert [(r["label"], r["steps"]) for r in data["records"]] == [("naive", 2)]
    other = {(r["label"], r["steps"]) for r in data["other_records"]}
    assert other == {("uniform:2", 2), ("naive", 4), ("uniform:2", 4)}
    report = (out / "results.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith("| engine")]
    assert rows == [r for r in rows if r.startswith("| naive | 2 |")] and len(rows) == 1
    assert "3 run(s) of an earlier sweep in this folder" in report
    assert [line.split(",")[:3] for line in (out / "results.csv").read_text().splitlines()[1:]] == [
        ["naive", "memmaml", "naive"]
    ]
    again = FakeRuns()
    use(monkeypatch, again)
    assert compare_memory.main([*argv, *wide]) == 0 and again.calls == []  # the kept runs come back
    data = json.loads((out / "results.json").read_text())
    assert len(data["records"]) == 4 and data["other_records"] == []


def test_a_second_sweep_into_the_same_folder_stops(tmp_path, monkeypatch, capsys):
    """While a sweep holds --out's lock, another exits with status 2, names the folder and the sweep, and touches
    nothing."""
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    use(monkeypatch, FakeRuns())
    assert compare_memory.main(argv) == 0
    files = lambda: {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    before = files()
    running = FakeRuns()
    use(monkeypatch, running)
    with open(out / ".lock", "r+") as held:  # the first sweep, still running (flock is per open file)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.truncate()
        held.write("pid 4242: memmaml-compare --steps 2")
        held.flush()
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            compare_memory.main(argv)
        with pytest.raises(SystemExit) as render_exit:  # nor does --render-only rewrite the sweep's results.json
            compare_memory.main(["--render-only", "--out", str(out)])
    assert exit_info.value.code == render_exit.value.code == 2 and running.calls == []
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert errors == 2 * [
        f"memmaml-compare: error: argument --out: {str(out)!r} is in use by another job (pid 4242: memmaml-compare "
        "--steps 2): wait for it to end, or choose another --out"
    ]
    assert files() == before and len(before) == 4
    assert compare_memory.main(argv) == 0 and running.calls == []  # the lock released: resumes (nothing to run)


def test_a_lock_that_cannot_be_taken_is_one_out_error(tmp_path, monkeypatch, capsys):
    """A lock file that cannot be opened (here a folder named .lock) or a filesystem without flock: exit status 2
    and one line naming --out and the cause, no traceback, for the sweep and --render-only alike."""
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    use(monkeypatch, FakeRuns())
    assert compare_memory.main(argv) == 0
    (out / ".lock").unlink()
    (out / ".lock").mkdir()
    capsys.readouterr()
    for command in (argv, ["--render-only", "--out", str(out)]):
        with pytest.raises(SystemExit) as exit_info:
            compare_memory.main(command)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and sum("error:" in line for line in err.splitlines()) == 1
        (line,) = err.strip().splitlines()[-1:]
        assert line.startswith(
            f"memmaml-compare: error: argument --out: cannot open the lock file {str(out / '.lock')!r}: "
        )
        assert line.endswith("; choose another --out")
    (out / ".lock").rmdir()

    def no_flock(*args):
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    with pytest.raises(SystemExit) as exit_info:
        compare_memory.main(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"memmaml-compare: error: argument --out: cannot lock {str(out / '.lock')!r}: Function not implemented; "
        "choose another --out"
    )


def test_the_lock_holds_across_processes(tmp_path):
    """A sweep in another process holds the lock while it runs (here: it sleeps in its probe)."""
    out = tmp_path / "run"
    started = tmp_path / "started"
    code = f"""
import sys, time
from pathlib import Path
from memmaml.bench import Runner
from memmaml.cli import compare_memory
def run(self, *args, **kwargs):
    Path({str(started)!r}).touch()
    time.sleep(600)  # the finally below kills it; a loaded machine cannot outlast this
Runner.run = run
sys.exit(compare_memory.main(sys.argv[1:]))
"""
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    first = subprocess.Popen([sys.executable, "-c", code, *argv], stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(1200):
            if started.exists() or first.poll() is not None:
                break
            __import__("time").sleep(0.05)
        assert started.exists(), first.stderr.read() if first.poll() is not None else "no probe"
        second = subprocess.run([sys.executable, str(SCRIPT), *argv], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"argument --out: {str(out)!r} is in use by another job (pid {first.pid}: " in second.stderr
    finally:
        first.kill()
        first.wait()


def test_render_only_refuses_a_file_it_cannot_read(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    for text, why in (
        ("{}", "no 'provenance' dict"),
        ('{"records": [', "is not JSON"),
        ("[1, 2]", "a JSON list, not an object"),
        ('{"provenance": {}, "workload": {}, "engines": [], "records": []}', "its 'provenance' has no 'device'"),
    ):
        (out / "results.json").write_text(text)
        with pytest.raises(SystemExit) as exit_info:
            compare_memory.main(["--render-only", "--out", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and why in err
        error = err.strip().splitlines()[-1]
        assert error.startswith("memmaml-compare: error: argument --out: --render-only: ") and why in error
        assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # nothing written


def test_the_report_names_a_missing_commit_whole(tmp_path, monkeypatch):
    use(monkeypatch, FakeRuns())
    out = tmp_path / "run"
    assert compare_memory.main([*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]) == 0
    data = json.loads((out / "results.json").read_text())
    data["provenance"].update(memmaml_commit=None, memmaml_dirty=None, memmaml_version="0.2.0")
    (out / "results.json").write_text(json.dumps(data))
    assert ", memmaml 0.2.0 (no git commit recorded), " in render(out)  # an installed package: no "unknown co"
    data["provenance"].update(memmaml_commit="0123456789abcdef", memmaml_dirty=True)
    (out / "results.json").write_text(json.dumps(data))
    assert ", memmaml 0.2.0 at 0123456789 (uncommitted changes), " in render(out)


def test_run_as_a_module_names_itself_so(tmp_path, monkeypatch):
    """``python -m memmaml.cli.compare_memory`` is named as run, in the usage line and in the provenance."""
    proc = subprocess.run(
        [sys.executable, "-m", "memmaml.cli.compare_memory", "--steps", "0"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: python -m memmaml.cli.compare_memory [-h] [options]\n")
    assert "python -m memmaml.cli.compare_memory: error: argument --steps:" in proc.stderr
    # in this process, as python -m would start it
    out = tmp_path / "run"
    argv = [*TINY, "--engines", "naive", "--steps", "2", "--repeats", "0", "--out", str(out)]
    main = types.ModuleType("__main__")
    main.__spec__ = types.SimpleNamespace(name="memmaml.cli.compare_memory")
    monkeypatch.setitem(sys.modules, "__main__", main)
    monkeypatch.setattr(sys, "argv", [compare_memory.__file__, *argv])
    use(monkeypatch, FakeRuns())
    assert compare_memory.main() == 0
    command = json.loads((out / "results.json").read_text())["provenance"]["command"]
    assert command == " ".join(["python -m memmaml.cli.compare_memory", *argv])
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # the console script
    monkeypatch.setattr(sys, "argv", [os.path.join("bin", "memmaml-compare"), *argv])
    assert compare_memory.main() == 0
    assert json.loads((out / "results.json").read_text())["provenance"]["command"].startswith("memmaml-compare --model")
