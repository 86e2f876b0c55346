"""scripts/compare_memory.py: argument parsing, the memory model, and one end-to-end run on a tiny MLP."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_memory.py"


@pytest.fixture(scope="module")
def cm():
    spec = importlib.util.spec_from_file_location("compare_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize("text, expected", [
    ("11GiB", 11 * 2**30), ("4gib", 4 * 2**30), ("512MiB", 512 * 2**20), ("1.5GiB", int(1.5 * 2**30)),
    ("8GB", 8 * 10**9), ("100", 100), ("2 KiB", 2048), ("3e3", 3000),
])
def test_parse_size(cm, text, expected):
    assert cm.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GiB", "11GiBs", "4 parsecs", "-1GiB", "0", "1,5GiB"])
def test_parse_size_rejects(cm, text):
    with pytest.raises(argparse.ArgumentTypeError):
        cm.parse_size(text)


def test_parse_steps_and_checkpoint_steps(cm):
    assert cm.parse_steps("4,1,2,2") == [1, 2, 4]
    for bad in ("0,1", "a", "", "1.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cm.parse_steps(bad)
    assert cm.parse_checkpoint_steps("sqrt") == "sqrt"
    assert cm.parse_checkpoint_steps("10") == 10
    assert cm.checkpoint_steps_for("sqrt", 100) == 10
    assert cm.checkpoint_steps_for("sqrt", 101) == 11
    for bad in ("0", "-3", "sqr", "2.5"):
        with pytest.raises(argparse.ArgumentTypeError):
            cm.parse_checkpoint_steps(bad)


def test_parse_peers(cm):
    assert cm.parse_peers("torch_maml,higher") == ["torch_maml:naive", "torch_maml:checkpoint", "higher"]
    assert cm.parse_peers("torch_maml:checkpoint") == ["torch_maml:checkpoint"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown peer 'learn2learn'"):
        cm.parse_peers("learn2learn")


def test_out_of_memory_errors_are_recognised(cm):
    assert cm._oom(MemoryError())
    assert cm._oom(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert cm._oom(RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"))
    assert not cm._oom(ValueError("shape mismatch"))


@pytest.mark.parametrize("args, message", [
    (["--model", "vgg16"], "invalid choice: 'vgg16'"),
    (["--budget", "11 parsecs"], "not a memory size: '11 parsecs'"),
    (["--image-size", "big"], "expected a positive integer, got 'big'"),
    (["--steps", "1,x"], "step counts must be comma-separated positive integers"),
    (["--checkpoint-steps", "0"], "--checkpoint-steps must be a positive integer or 'sqrt'"),
    (["--peers", "learn2learn"], "unknown peer 'learn2learn'"),
    (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
])
def test_bad_input_exits_with_a_message(args, message):
    proc = run_script(*args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_help_explains_every_flag():
    proc = run_script("--help", timeout=60)
    assert proc.returncode == 0
    for flag in ("--model", "--image-size", "--batch-size", "--steps", "--checkpoint-steps", "--device", "--dtype",
                 "--out", "--budget", "--peers", "--fresh-batches", "--repeats", "--schedule"):
        assert flag in proc.stdout
    assert "pip install torch-maml" in proc.stdout


# ----------------------------------------------------------------------------- memory model
def synthetic_records(base_naive, base_ckpt, state, step):
    records = []
    for n in (1, 2, 4, 8):
        records.append({"method": "naive", "library": "memmaml", "status": "ok", "role": "sweep", "steps": n,
                        "checkpoint_steps": None, "stored_states": 0, "graph_steps": n,
                        "peak_bytes": base_naive + n * step})
    for n, k in ((4, 2), (8, 2), (8, 4), (8, 1)):
        stored, graph = -(-n // k), min(k, n)
        records.append({"method": "checkpoint", "library": "memmaml", "status": "ok",
                        "role": "fit-probe" if k == 1 else "sweep", "steps": n, "checkpoint_steps": k,
                        "stored_states": stored, "graph_steps": graph,
                        "peak_bytes": base_ckpt + stored * state + graph * step})
    # runs that must not enter the fit: a peer, a failure, a confirming run
    records.append({"method": "torch_maml:naive", "library": "torch_maml", "status": "ok", "role": "sweep",
                    "steps": 8, "stored_states": 0, "graph_steps": 8, "peak_bytes": 10**12})
    records.append({"method": "naive", "library": "memmaml", "status": "oom", "role": "sweep", "steps": 16,
                    "stored_states": 0, "graph_steps": 16, "peak_bytes": None})
    records.append({"method": "checkpoint", "library": "memmaml", "status": "ok", "role": "confirm", "steps": 99,
                    "stored_states": 9, "graph_steps": 11, "peak_bytes": 1})
    return records


def test_fit_recovers_the_costs_and_predicts_the_longest_unroll(cm):
    base_naive, base_ckpt, state, step = 300e6, 350e6, 43e6, 100e6
    fit = cm.fit_memory(synthetic_records(base_naive, base_ckpt, state, step))
    assert fit["base_bytes"]["naive"] == pytest.approx(base_naive)
    assert fit["base_bytes"]["checkpoint"] == pytest.approx(base_ckpt)
    assert fit["state_bytes"] == pytest.approx(state)
    assert fit["step_bytes"] == pytest.approx(step)
    assert fit["max_abs_relative_residual"] < 1e-9

    budget = 4 * 2**30
    prediction = cm.predict(fit, budget, 10)
    naive_n = prediction["naive"]["steps"]
    assert naive_n == math.floor((budget - base_naive) / step)

    def best_peak(n):  # brute force over every segment length
        return min(base_ckpt + -(-n // k) * state + min(k, n) * step for k in range(1, n + 1))

    best_n = prediction["checkpoint_best_k"]["steps"]
    assert best_peak(best_n) <= budget < best_peak(best_n + 1)
    k = prediction["checkpoint_best_k"]["checkpoint_steps"]
    assert base_ckpt + -(-best_n // k) * state + k * step == pytest.approx(best_peak(best_n))
    fixed_n = prediction["checkpoint_fixed_k"]["steps"]
    assert base_ckpt + -(-fixed_n // 10) * state + 10 * step <= budget
    assert base_ckpt + -(-(fixed_n + 1) // 10) * state + 10 * step > budget
    assert best_n > 20 * naive_n


def test_fit_needs_both_engines(cm):
    records = [r for r in synthetic_records(1e6, 1e6, 1e5, 1e6) if r["method"] != "checkpoint"]
    assert cm.fit_memory(records) is None


# ------------------------------------------------------------------------------ end to end
def test_end_to_end_tiny_mlp(tmp_path):
    out = tmp_path / "run"
    proc = run_script(
        "--model", "mlp", "--image-size", "8", "--channels", "1", "--batch-size", "256", "--width", "16",
        "--steps", "2,8", "--checkpoint-steps", "2", "--repeats", "1", "--time-steps", "8",
        "--budget", "4MiB", "--probe-steps", "0", "--confirm", "none", "--no-progress", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((out / "results.json").read_text())
    required = {"method", "steps", "checkpoint_steps", "peak_bytes", "rss_peak_bytes", "seconds", "grad_rel_diff",
                "device", "model", "image_size", "batch_size", "measured", "status"}
    for record in records:
        assert required <= set(record)
    sweep = {(r["method"], r["steps"]): r for r in records if r["role"] == "sweep"}
    assert set(sweep) == {("naive", 2), ("checkpoint", 2), ("naive", 8), ("checkpoint", 8)}
    for r in sweep.values():
        assert r["status"] == "ok" and r["measured"] is True
        assert r["device"] == "cpu" and r["model"] == "mlp" and r["image_size"] == 8 and r["batch_size"] == 256
        assert r["peak_bytes"] > 0 and r["rss_peak_bytes"] > r["peak_bytes"]
    naive, ckpt = sweep[("naive", 8)], sweep[("checkpoint", 8)]
    assert ckpt["checkpoint_steps"] == 2 and ckpt["stored_states"] == 4 and naive["checkpoint_steps"] is None
    assert ckpt["peak_bytes"] < naive["peak_bytes"]
    assert ckpt["grad_rel_diff"] < 1e-5 and naive["grad_rel_diff"] is None
    assert naive["seconds"] > 0 and ckpt["seconds"] > 0 and sweep[("naive", 2)]["seconds"] is None
    predictions = [r for r in records if r["role"] == "prediction"]
    assert {r["method"] for r in predictions} == {"naive", "checkpoint"}
    assert all(r["measured"] is False and r["predicted_peak_bytes"] <= 4 * 2**20 for r in predictions)
    fit = json.loads((out / "fit.json").read_text())["fit"]
    assert fit["state_bytes"] > 0 and fit["step_bytes"] > fit["state_bytes"]  # activations dominate this MLP
    for name in ("results.csv", "results.md", "fit.json"):
        assert (out / name).stat().st_size > 0
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "results.partial.json").exists()

    (out / "results.md").unlink()
    (out / "results.png").unlink()
    rendered = run_script("--render-only", "--out", str(out), timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "checkpoint / naive: memory" in (out / "results.md").read_text()
    assert (out / "results.png").exists()


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a timeout far shorter than a Python start-up: every configuration fails, none is dropped
    out = tmp_path / "run"
    proc = run_script("--model", "mlp", "--image-size", "4", "--steps", "1,2", "--repeats", "0",
                      "--timeout", "0.01", "--no-progress", "--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["steps"], r["status"]) for r in records] == [
        ("naive", 1, "timeout"), ("checkpoint", 1, "timeout"), ("naive", 2, "timeout"), ("checkpoint", 2, "timeout")]
    assert (out / "results.png").exists()
