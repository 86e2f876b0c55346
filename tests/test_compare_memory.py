"""The main job (memmaml.cli.compare_memory, scripts/compare_memory.py): one end-to-end sweep of every engine on a
tiny MLP, and a sweep that never loses a finished run -- a failing worker or probe is recorded and the others go
on, Ctrl-C keeps what finished, and a rerun resumes. Bad command lines are in tests/test_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from memmaml.bench import Runner
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
    Ctrl-C after ``interrupt_after`` runs."""

    def __init__(self, *, probe_error=None, fail=(), interrupt_after=None):
        self.calls, self.probe_error, self.fail, self.interrupt_after = [], probe_error, fail, interrupt_after

    def __call__(self, runner, method, steps, *, track, save_grads=False, memory_cap_bytes=None, measure_costs=False):
        if self.interrupt_after is not None and len(self.calls) == self.interrupt_after:
            raise KeyboardInterrupt
        self.calls.append(("probe",) if measure_costs else (method.engine, steps, "memory" if track else "time"))
        record = {"library": method.library, "engine": method.engine, "steps": steps, "tracked": track}
        if measure_costs:
            failed = {"status": "failed", "error": self.probe_error}
            return {**record, **(failed if self.probe_error else {"status": "ok", "costs": COSTS})}
        if method.engine in self.fail:
            return {**record, "status": "failed", "error": "RuntimeError: boom", "grad_path": None}
        peak = 1_000 + 50_000 * (steps if method.engine == "naive" else 2)
        return {**record, "status": "ok", "peak_bytes": peak, "seconds": 0.1 * steps, "grad_path": None}


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
    assert compare_memory.main([*argv, "--lr", "0.02"]) == 0  # another workload: starts afresh, keeps the old file
    assert other.calls[0] == ("probe",) and len(other.calls) == 7
    assert (
        "holds a sweep with another workload: moved to results.previous.json; starting afresh"
        in capsys.readouterr().err
    )
    assert json.loads((out / "results.previous.json").read_text())["workload"]["lr"] == 0.01


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
    assert "holds a sweep with another commit: moved to results.previous.json" in capsys.readouterr().err
