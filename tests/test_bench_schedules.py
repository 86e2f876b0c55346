"""The schedules benchmark's prediction arithmetic and command line (the measured runs are in benchmarks/)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from memmaml import StepCosts, binomial_evaluations

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_schedules.py"
spec = importlib.util.spec_from_file_location("bench_schedules", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_predictions_follow_the_memory_model():
    costs = StepCosts(state_bytes=10, graph_bytes=100, nograph_seconds=1.0, graph_seconds=3.0)
    p = bench.predict(costs, params_bytes=10, budget=1_000, max_slowdown=2.0, host_bytes=500)
    assert p["naive_max_steps"] == (1_000 - 20) // 100
    n = p["uniform_max_steps"]
    assert bench._uniform_peak(n, 10, 100, 20) <= 1_000 < bench._uniform_peak(n + 1, 10, 100, 20)
    slots = p["binomial_slots"]
    assert slots == (1_000 - 20 - 100 - 20) // 10
    n = p["binomial_max_steps"]
    slowdown = lambda m: (binomial_evaluations(m, slots) / m * 1.0 + 3.0) / 3.0  # noqa: E731
    assert slowdown(n) <= 2.0 < slowdown(n + 1)
    assert p["offload_uniform1_max_steps_host"] == 50


def test_longest_finds_the_boundary():
    assert bench._longest(lambda n: n <= 12345) == 12345
    assert bench._longest(lambda n: False) == 0


def test_bad_arguments_exit_with_a_message():
    proc = subprocess.run([sys.executable, str(SCRIPT), "predict", "--out", "x", "--budget", "lots"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "cannot read 'lots' as a memory size" in proc.stderr
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--out", "x", "--steps", "0,5"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "step counts must be positive integers" in proc.stderr


@pytest.mark.slow
def test_run_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "run", "--out", str(tmp_path), "--image-size", "8",
                           "--batch-size", "2", "--slots", "2", "--steps", "6", "--naive-steps", "3",
                           "--offload", "--threads", "1"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = json.loads((tmp_path / "results.json").read_text())
    assert [r["method"] for r in records] == ["naive", "binomial", "binomial"]
    for r in records:
        assert r["loss_evaluations"] == r["expected_evaluations"]
    assert records[2]["host_peak_bytes"] > 0 and records[1]["host_peak_bytes"] == 0
