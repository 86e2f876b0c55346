"""scripts/gpu_check.py: the smoke run end to end (every part, on the CPU), its time planning, its errors."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memmaml

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def test_smoke_run_records_every_part(smoke, gpu_check):
    out, results, stdout = smoke
    assert list(results["parts"]) == gpu_check.ORDER
    for name, part in results["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part.get("error"))
        assert f"[{part['number']} {name}]" in stdout
    assert results["smoke"] and results["cap_bytes"] is None
    assert results["label"] == "smoke run on cpu, toy sizes: not a measurement of the seed"
    assert results["memmaml"]["version"] and "--smoke" in results["command"]
    parts = results["parts"]
    assert parts["naive"]["longest_n"] == 8 and parts["naive"]["first_failing_n"] is None  # no cap in a smoke run
    assert set(results["calibration"]["step_costs"]) == {"state_bytes", "graph_bytes", "nograph_seconds",
                                                        "graph_seconds"}
    assert "Binomial" in parts["binomial"]["schedule"]  # Auto chose a binomial schedule, as on the GPU
    assert [r["config"] for r in parts["offload"]["runs"] if r["config"] != "warm-up"] == [
        "Binomial(slots=2) + offload n=4", "Binomial(slots=2) n=4",
        "Binomial(slots=2) + offload n=8", "Binomial(slots=2) n=8"]
    for name in ("uniform", "binomial", "offload"):
        for run in parts[name]["runs"]:
            assert run["status"] == "ok" and run["peak_allocated_bytes"] > 0 and run["seconds_per_step"] > 0
            if run["config"] != "warm-up":
                assert run["ratio_to_naive"] > 0
        assert parts[name]["predicted_seconds"] > 0 and parts[name]["actual_seconds"] > 0
    if importlib.util.find_spec("torch_maml") is None:
        assert parts["torch_maml"]["status"] == "skipped"
        assert parts["torch_maml"]["plan_note"] == "skipped: pip install torch-maml"


def test_smoke_exactness_is_bitwise_on_cpu(smoke):
    """A real check of the engine: float32, dropout and BatchNorm, every schedule and offload equal naive exactly."""
    modes = smoke[1]["parts"]["exactness"]["modes"]
    assert set(modes) == {"default", "deterministic"}
    for mode in modes.values():
        assert set(mode["methods"]) == {"naive (again)", "uniform k=3", "binomial slots=2",
                                        "binomial slots=2 + offload"}
        for name, method in mode["methods"].items():
            assert method["relative_difference"] == 0.0, name
            assert method["bitwise"] and method["buffers_bitwise"], name


def test_smoke_outputs(smoke):
    out, results, _ = smoke
    text = (out / "results.md").read_text()
    assert text.startswith("# memmaml GPU check — smoke run on cpu, toy sizes: not a measurement of the seed")
    assert "| 5. exactness of the meta-gradients | ok |" in text and "| naive n=8 | ok |" in text
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "parts" / "naive.log").exists()


def test_fit_steps_reduces_raises_or_skips(gpu_check):
    predict = lambda n: 0.1 * n  # noqa: E731
    assert gpu_check.fit_steps(500, predict, 100.0, 50) == (500, None)
    n, note = gpu_check.fit_steps(500, predict, 20.0, 50)
    assert n == 200 and note.startswith("reduced from 500 to 200")
    n, note = gpu_check.fit_steps(2000, predict, 900.0, 100, grow_to=8000)
    assert n == 8000 and "raised from 2000 to 8000" in note
    n, note = gpu_check.fit_steps(500, predict, 1.0, 50)
    assert n is None and note.startswith("skipped: even n=50")


def test_plan_part_predicts_from_step_costs(gpu_check):
    costs = {"state_bytes": 45 * 2**20, "graph_bytes": 700 * 2**20, "nograph_seconds": 0.01, "graph_seconds": 0.03}
    size = gpu_check.SIZES[False]
    spec, predicted, note = gpu_check.plan_part("uniform", size, None, costs, 1.0, 1000.0)
    assert spec == {"k": 5, "n": 500} and note is None
    # no-graph evaluations as the plan counts them (about n for uniform segments), plus n steps with a graph
    evaluations = gpu_check.check_plan(memmaml.Uniform(5).plan(500)).forward_steps
    assert 490 <= evaluations <= 500 and predicted == pytest.approx(evaluations * 0.01 + 500 * 0.03)
    spec, predicted, _ = gpu_check.plan_part("offload", size, None, costs, 1.0, 1e6)
    assert spec["ns"] == [200, 2000]
    # Binomial(100): about t*n - C(100+t, 101) no-graph evaluations, t = 2 for both n (Griewank)
    evaluations = {n: gpu_check.check_plan(memmaml.Binomial(100).plan(n)).forward_steps for n in (200, 2000)}
    assert abs(evaluations[200] - 298) <= 1 and abs(evaluations[2000] - 3898) <= 1
    assert predicted == pytest.approx(sum(2 * (evaluations[n] * 0.01 + n * 0.03) for n in (200, 2000)))
    spec, _, note = gpu_check.plan_part("binomial", size, 10 * 2**30, costs, 1.0, 30.0)
    assert spec["n"] < 2000 and note.startswith("reduced from 2000")
    spec, _, note = gpu_check.plan_part("uniform", size, None, None, 1.0, 1.0)  # part 1 gave no costs
    assert spec["n"] == 500 and "no prediction" in note


def test_a_failing_or_hanging_part_is_recorded(gpu_check, tmp_path):
    (tmp_path / "parts").mkdir()
    spec = {"smoke": True, "device": "cpu", "cap_bytes": None, "n": 4}  # no "k": part 2 raises
    record, _ = gpu_check.run_part("uniform", spec, tmp_path, timeout=120)
    assert record["status"] == "failed" and record["error"] == "KeyError: 'k'" and "part_uniform" in record["traceback"]
    record, wall = gpu_check.run_part("naive", {**spec, "max_n": 8, "seconds": 30}, tmp_path, timeout=0.2)
    assert record["status"] == "failed" and record["error"].startswith("timed out after 0 s") and wall < 10


def test_without_cuda_a_real_run_is_refused(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "run on a machine with a GPU, or pass --smoke" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--smoke"])  # --out is required
    assert "--out is required" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the default device would run")
def test_default_device_without_cuda_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "pass --smoke" in proc.stderr
    assert not (tmp_path / "results.json").exists()
