"""The GPU check (memmaml.cli.gpu_check, scripts/gpu_check.py) and memmaml.bench's GPU parts: the smoke run end to
end (every part, on the CPU), the time planning, the naive search, the report, failures and errors, and the CPU
twins of what only CUDA runs."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import memmaml
from memmaml import StepCosts
from memmaml.bench import (
    GPU_PARTS,
    GPU_SIZES,
    Workload,
    fit_steps,
    plan_gpu_part,
    predict_seconds,
    probe_device,
    run_gpu_part,
    write_gpu_report,
)
from memmaml.bench._device import GPU_CHILD_ENV, start_device, warmup_steps
from memmaml.bench._gpu import _part_naive, _part_offload, _part_overlap
from memmaml.bench._gpu_child import smi_token
from memmaml.cli import gpu_check as gpu_check_cli

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
SMOKE_WORKLOAD = GPU_SIZES[True].workload


@pytest.fixture(scope="module")
def gpu_check():
    return gpu_check_cli


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, json.loads((out / "results.json").read_text()), proc.stdout


def test_smoke_run_records_every_part(smoke, gpu_check):
    out, results, stdout = smoke
    assert list(results["parts"]) == gpu_check.ORDER == list(GPU_PARTS)
    for name, part in results["parts"].items():
        assert part["status"] in ("ok", "skipped"), (name, part.get("error"))
        assert f"[{part['number']} {name}]" in stdout
    assert results["smoke"] and results["cap_bytes"] is None
    assert results["label"] == "smoke run on cpu, toy sizes: not a measurement of the seed"
    provenance = results["provenance"]
    assert provenance["memmaml_version"] and "--smoke" in provenance["command"] and provenance["device"] == "cpu"
    assert results["probe"]["status"] == "ok" and results["environment"]["name"] == "cpu"
    parts = results["parts"]
    assert parts["naive"]["longest_n"] == 8 and parts["naive"]["first_failing_n"] is None  # no cap in a smoke run
    assert set(results["calibration"]["step_costs"]) == {
        "state_bytes",
        "graph_bytes",
        "nograph_seconds",
        "graph_seconds",
        "pinned_state_bytes",  # None on a CPU: no pinned allocator
    }
    assert results["calibration"]["step_costs"]["pinned_state_bytes"] is None
    assert "Binomial" in parts["binomial"]["schedule"]  # Auto chose a binomial schedule, as on the GPU
    assert [r["config"] for r in parts["binomial"]["runs"]] == [
        f"{parts['binomial']['spec']['engine']} n=8 (Auto "
        f"{memmaml.format_bytes(parts['binomial']['spec']['auto_budget'])})"
    ]
    assert parts["binomial"]["spec"]["engine"].startswith("binomial:")
    # one n in the smoke run (two in test_offload_runs_with_and_without_at_each_n)
    assert [r["config"] for r in parts["offload"]["runs"]] == ["binomial:2+offload n=8", "binomial:2 n=8"]
    with_offload, without = parts["offload"]["runs"]
    assert with_offload["host_peak_bytes"] > 0 and without["host_peak_bytes"] is None  # offloaded states, apart
    # the states' bytes (stored at once x the probe's state size) are what the CPU tracker measured, exactly
    stored = memmaml.Binomial(2).stats(8).max_stored
    assert with_offload["host_state_bytes"] == stored * results["calibration"]["step_costs"]["state_bytes"]
    assert with_offload["host_state_bytes"] == with_offload["host_peak_bytes"]
    assert with_offload["peak_allocated_bytes"] < without["peak_allocated_bytes"]
    assert set(parts["offload"]["time_with_over_without"]) == {"8"}
    assert {r["warmup_steps"] for r in parts["offload"]["runs"]} == {1}  # at n only on CUDA (warmup_steps)
    # the same schedule with and without offload, untracked, one repeat in the smoke run
    overlap = parts["overlap"]
    assert [r["config"] for r in overlap["runs"]] == [
        "binomial:2+offload n=8 (untracked)",
        "binomial:2 n=8 (untracked)",
    ]
    assert all(
        r["status"] == "ok" and r["tracked"] is False and r["peak_allocated_bytes"] is None for r in overlap["runs"]
    )
    on, off = (r["seconds"] for r in overlap["runs"])
    assert overlap["time_with_over_without"] == on / off and overlap["ratios"] == [on / off]
    assert all(r["ratio_to_naive"] is None for r in overlap["runs"])  # naive's time is a tracked run's
    for name in ("uniform", "binomial", "offload"):
        for run in parts[name]["runs"]:
            assert run["status"] == "ok" and run["peak_allocated_bytes"] > 0 and run["seconds_per_step"] > 0
            assert run["ratio_to_naive"] > 0
        assert parts[name]["predicted_seconds"] > 0 and parts[name]["wall_seconds"] > 0
        assert parts[name]["processes"] == len(parts[name]["runs"])  # each meta-step in a fresh process
    if importlib.util.find_spec("torch_maml") is None:
        assert parts["torch_maml"]["status"] == "skipped"
        assert parts["torch_maml"]["plan_note"] == "skipped: torch_maml is not installed: pip install torch-maml"
    else:
        assert [r["config"] for r in parts["torch_maml"]["runs"]] == ["uniform:2 n=8", "torch_maml uniform:2 n=8"]
        assert parts["torch_maml"]["relative_difference"] < 1e-5  # the same meta-gradient, float32
    assert not list(out.rglob("*.grad.pt"))  # saved meta-gradients are compared, then removed


def test_smoke_exactness_is_bitwise_on_cpu(smoke):
    """A real check of the engine: float32, dropout and BatchNorm, every schedule and offload equal naive exactly."""
    exactness = smoke[1]["parts"]["exactness"]
    assert "dropout 0.2" in exactness["workload_text"] and exactness["workload_text"].startswith("conv4")
    modes = exactness["modes"]
    assert set(modes) == {"default", "deterministic"}
    for mode in modes.values():
        assert set(mode["methods"]) == {"naive (again)", "uniform:3", "binomial:2", "binomial:2+offload"}
        for name, method in mode["methods"].items():
            assert method["relative_difference"] == 0.0, name
            assert method["bitwise"] and method["buffers_bitwise"], name


def test_smoke_outputs(smoke):
    out, _, _ = smoke
    text = (out / "results.md").read_text()
    assert text.startswith("# memmaml GPU check — smoke run on cpu, toy sizes: not a measurement of the seed")
    assert "| 5. exactness of the meta-gradients | ok |" in text and "| naive n=8 | ok |" in text
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((out / "parts" / "naive").glob("*.log")) and (out / "parts" / "probe" / "probe.log").exists()
    assert (out / "parts" / "exactness" / "exactness.log").exists()
    assert "| binomial:2+offload n=8 | ok |" in text and "Offload's copies against compute" in text
    assert not list(out.rglob(".*.tmp"))  # every file was written whole, then renamed


def test_fit_steps_reduces_raises_or_skips():
    predict = lambda n: 0.1 * n
    assert fit_steps(500, predict, 100.0, 50) == (500, None)
    n, note = fit_steps(500, predict, 20.0, 50)
    assert n == 200 and note.startswith("reduced from 500 to 200")
    n, note = fit_steps(2000, predict, 900.0, 100, grow_to=8000)
    assert n == 8000 and "raised from 2000 to 8000" in note
    n, note = fit_steps(500, predict, 1.0, 50)
    assert n is None and note.startswith("skipped: even n=50")
    assert fit_steps(500, predict, 0.0, 50) == (None, "skipped: no time left in the budget")


def test_plan_part_predicts_from_step_costs():
    costs = StepCosts(state_bytes=45 * 2**20, graph_bytes=700 * 2**20, nograph_seconds=0.01, graph_seconds=0.03)
    size = GPU_SIZES[False]
    spec, predicted, note = plan_gpu_part("uniform", size, costs, 1000.0)
    assert spec == {"engine": "uniform:5", "n": 500} and note is None
    # no-graph evaluations as the plan counts them (about n for uniform segments), plus n steps with a graph
    evaluations = memmaml.check_plan(memmaml.Uniform(5).plan(500)).forward_steps
    assert 490 <= evaluations <= 500 and predicted == pytest.approx(evaluations * 0.01 + 500 * 0.03)
    spec, predicted, _ = plan_gpu_part("offload", size, costs, 1e6)
    assert spec == {"runs": [["binomial:100", 200], ["binomial:100", 2000]]}
    # Binomial(100): about t*n - C(100+t, 101) no-graph evaluations, t = 2 for both n (Griewank); with offload
    # and without, the offloading run twice (on CUDA it warms up at n)
    evaluations = {n: memmaml.check_plan(memmaml.Binomial(100).plan(n)).forward_steps for n in (200, 2000)}
    assert abs(evaluations[200] - 298) <= 1 and abs(evaluations[2000] - 3898) <= 1
    assert predicted == pytest.approx(sum(3 * (evaluations[n] * 0.01 + n * 0.03) for n in (200, 2000)))
    spec, predicted, _ = plan_gpu_part("overlap", size, costs, 1e6)
    assert spec == {"n": 500, "engine": "binomial:100", "repeats": 2}
    assert predicted == pytest.approx(2 * 3 * (memmaml.Binomial(100).stats(500).forward_steps * 0.01 + 500 * 0.03))
    spec, _, note = plan_gpu_part("binomial", size, costs, 30.0, auto_budget=10 * 2**30)
    assert spec["n"] < 2000 and note.startswith("reduced from 2000")
    spec, predicted, note = plan_gpu_part("binomial", size, costs, 1e6, auto_budget=2**30)
    choice = memmaml.Auto(2**30).choose(8000, costs)  # what Auto itself chooses, at the largest n allowed
    assert spec["n"] == 8000 and note == "raised from 2000 to 8000: the time allowed it"
    assert spec["engine"] == f"binomial:{choice.schedule.slots}" and spec["schedule"] == choice.describe()
    assert predicted == pytest.approx(choice.predicted_seconds)
    spec, _, note = plan_gpu_part("uniform", size, None, 1.0)  # the probe gave no costs
    assert spec["n"] == 500 and "no prediction" in note
    spec, _, note = plan_gpu_part("binomial", size, None, 1.0, auto_budget=10 * 2**30)  # Auto measures in the worker
    assert spec["engine"] == f"auto:{10 * 2**30}" and "not recorded" in spec["schedule"]
    assert plan_gpu_part("binomial", GPU_SIZES[True], None, 1.0)[0] is None  # the smoke budget needs costs
    spec, _, note = plan_gpu_part("binomial", size, costs, 1e6, auto_budget=2**20)
    assert spec is None and note.startswith("skipped: memory budget 1.0 MiB is smaller")
    spec, _, note = plan_gpu_part("naive", size, costs, 5.0)
    assert spec == {"n": 16, "max_n": 64, "seconds": 30.0} and note is None  # the search has at least 30 s


def test_predict_seconds_scales_and_resolves_auto():
    costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
    assert predict_seconds("naive", 10, costs, scale=2.0) == 60.0
    assert predict_seconds("auto:10000", 1000, costs) == pytest.approx(
        memmaml.Auto(10_000).choose(1000, costs).predicted_seconds
    )
    assert predict_seconds("uniform:5", 10, None) is None


class _FakePart:
    """Stands in for a part's runner: fits up to ``fits`` steps, an out-of-memory error above; offload halves the
    peak and doubles the time."""

    def __init__(self, fits, record):
        self.fits, self.record = fits, record

    def measure(self, engine, n, **options):
        self.record.setdefault("calls", []).append(options)
        ok, offload = n <= self.fits, engine.endswith("+offload")
        run = {
            "config": f"{engine} n={n}",
            "steps": n,
            "status": "ok" if ok else "oom",
            "error": None if ok else "OutOfMemoryError: CUDA out of memory",
            "seconds_per_step": 0.1 if ok else None,
            "seconds": 0.1 * n * (2 if offload else 1) if ok else None,
            "peak_allocated_bytes": (1000 + 100 * n) // (2 if offload else 1) if ok else None,
        }
        self.record["runs"].append(run)
        return run


@pytest.mark.parametrize(
    "fits, longest, tried",
    [(18, 18, [16, 20, 18, 19]), (13, 13, [16, 8, 12, 14, 13]), (100, 20, [16, 20]), (300, 64, [16, 32, 64])],
)
def test_naive_search_brackets_then_bisects(fits, longest, tried):
    """Doubling up to the first out-of-memory error (or halving down to the first fit), then bisection."""
    record = {"runs": []}
    top = 64 if fits == 300 else 20
    _part_naive(_FakePart(fits, record), {"n": 16, "max_n": top, "seconds": 60.0}, record)
    assert [r["steps"] for r in record["runs"]] == tried and record["longest_n"] == longest
    if fits < top:
        assert record["first_failing_n"] == longest + 1 and "out of memory" in record["first_failing_error"]
        assert "note" not in record
    else:
        assert record["first_failing_n"] is None
        assert record["note"] == f"no out-of-memory up to n={top}: the search limit"
    assert record["bytes_per_step"] == 100  # from the longest and the shortest fitting runs
    assert record["seconds_per_step"] == 0.1
    record = {"runs": []}
    with pytest.raises(RuntimeError, match="does not fit even at n=1"):
        _part_naive(_FakePart(0, record), {"n": 2, "max_n": 4, "seconds": 60.0}, record)
    assert [r["steps"] for r in record["runs"]] == [2, 1]


def test_naive_search_stops_at_its_deadline():
    """Past the first bracket the search runs only while its seconds last, and says where it stopped."""
    record = {"runs": []}
    _part_naive(_FakePart(18, record), {"n": 16, "max_n": 64, "seconds": 0.0}, record)
    assert [r["steps"] for r in record["runs"]] == [16] and record["longest_n"] == 16
    assert record["first_failing_n"] is None and record["note"] == "no out-of-memory up to n=16: time ran out"
    record = {"runs": []}
    _part_naive(_FakePart(13, record), {"n": 16, "max_n": 64, "seconds": 0.0}, record)
    assert [r["steps"] for r in record["runs"]] == [16, 8]  # down to a fit whatever the time, then no bisection
    assert (record["longest_n"], record["first_failing_n"]) == (8, 16)
    assert record["note"] == "time ran out: the longest n is between 8 and 15"


def test_offload_runs_with_and_without_at_each_n():
    record = {"runs": []}
    _part_offload(_FakePart(100, record), {"runs": [["binomial:2", 4], ["binomial:2", 8]]}, record)
    assert [r["config"] for r in record["runs"]] == [
        "binomial:2+offload n=4",
        "binomial:2 n=4",
        "binomial:2+offload n=8",
        "binomial:2 n=8",
    ]
    assert record["device_peak_growth"] == 900 / 700  # the offloaded peaks, n=8 over n=4
    assert record["time_with_over_without"] == {"4": 2.0, "8": 2.0}


def test_overlap_times_the_same_schedule_with_and_without_offload_interleaved():
    record = {"runs": []}
    _part_overlap(_FakePart(100, record), {"engine": "binomial:2", "n": 8, "repeats": 3}, record)
    assert [r["config"] for r in record["runs"]] == [
        "binomial:2+offload n=8",
        "binomial:2 n=8",
        "binomial:2 n=8",
        "binomial:2+offload n=8",
        "binomial:2+offload n=8",
        "binomial:2 n=8",
    ]  # the order alternates between repeats, so drift in the machine's load hits both alike
    assert record["ratios"] == [2.0, 2.0, 2.0] and record["time_with_over_without"] == 2.0
    assert all(call["track"] is False for call in record["calls"])  # timed runs: no tracker overhead


def _fake_cuda_results():
    """The shape of a GPU run's results, with made-up values: a fixture for the report, not a measurement."""

    def run(config, steps, status, per_step=None, allocated=None):
        return {
            "config": config,
            "steps": steps,
            "status": status,
            "seconds_per_step": per_step,
            "peak_allocated_bytes": allocated,
            "peak_reserved_bytes": allocated and allocated + 2**28,
            "host_peak_bytes": None,
            "error": None if status == "ok" else "OutOfMemoryError: out of memory",
        }

    part = lambda number, title, **fields: {
        "number": number,
        "title": title,
        "status": "ok",
        "wall_seconds": 1.0,
        "work_seconds": 0.5,
        "predicted_seconds": 0.4,
        **fields,
    }
    modes = {
        "default": {
            "settings": {"cudnn.deterministic": False},
            "nondeterministic_op_warnings": ["op X does not have a deterministic implementation"],
            "methods": {
                "naive (again)": {"relative_difference": 1e-7, "bitwise": False, "buffers_bitwise": True},
                "uniform:3": {"relative_difference": 2e-7, "bitwise": False, "buffers_bitwise": True},
            },
        }
    }
    return {
        "label": "measured on Fake GPU",
        "smoke": False,
        "device": "cuda:0",
        "cap_bytes": 11 * 2**30,
        "time_budget_seconds": 420.0,
        "total_seconds": 400.0,
        "workload_text": "resnet18, fake",
        "provenance": {
            "memmaml_version": "0.1.0",
            "memmaml_commit": "abc123",
            "memmaml_dirty": True,
            "torch": "2.x",
            "cuda": "12.x",
            "command": "python scripts/gpu_check.py --out x",
        },
        "environment": {
            "name": "Fake GPU",
            "total_bytes": 24 * 2**30,
            "context_bytes": 500 * 2**20,
            "context_method": "nvidia-smi",
            "non_allocator_bytes_after_probe": 700 * 2**20,
        },
        "parts": {
            "naive": part(
                1,
                "naive",
                longest_n=2,
                first_failing_n=3,
                seconds_per_step=0.5,
                first_failing_error="OutOfMemoryError: out of memory",
                runs=[run("naive n=2", 2, "ok", 0.5, 5 * 2**30), run("naive n=3", 3, "oom")],
            ),
            "exactness": part(5, "exactness", modes=modes, workload_text="resnet18, dropout 0.2", spec={"n": 8}),
            "uniform": part(2, "uniform", runs=[run("uniform:5 n=4", 4, "ok", 0.75, 3 * 2**30)]),
            "offload": part(
                4,
                "offload",
                runs=[{**run("binomial:2+offload n=4", 4, "ok", 1.0, 2**30), "host_state_bytes": 3 * 2**20}],
            ),
            "overlap": part(
                7,
                "overlap",
                engine="binomial:2",
                n=4,
                ratios=[1.25, 1.5],
                time_with_over_without=1.375,
                runs=[{**run("binomial:2+offload n=4 (untracked)", 4, "ok", 1.0), "tracked": False}],
            ),
            "torch_maml": part(6, "torch_maml", status="skipped", plan_note="skipped: not installed"),
        },
    }


def test_report_from_a_results_dict(tmp_path):
    results = _fake_cuda_results()
    text = write_gpu_report(results, tmp_path)
    assert (tmp_path / "results.md").read_text() == text
    assert text.startswith("# memmaml GPU check — measured on Fake GPU")
    assert "abc123 (uncommitted changes)" in text and "allocator cap: 11.0 GiB" in text
    assert "CUDA context: 500.0 MiB (nvidia-smi)" in text and "kernels and library handles: 700.0 MiB" in text
    assert "Peaks are the allocator's, absolute" in text
    assert "| uniform:5 n=4 | ok | 3.0 GiB | 3.2 GiB | — | 750.0 ms | 1.50 |" in text  # × naive: 0.75 s / 0.5 s
    assert "| naive n=3 | oom | — | — | — | — | — |" in text
    assert "longest n = 2, first failing n = 3 (OutOfMemoryError: out of memory)" in text
    assert "| 6. torch_maml | skipped | 0.4 | 0.5 | 1.0 | skipped: not installed |" in text
    assert "| uniform:3 | 2e-07 | False | True |" in text and "Ops without a deterministic implementation" in text
    assert "naive (again) is naive run a second time: it is not bitwise equal to the first" in text
    # host use: the stored states' bytes beside the allocator's rounded figure
    run = next(r for r in results["parts"]["offload"]["runs"])
    run["host_peak_bytes"] = 4 * 2**20
    text = write_gpu_report(results, tmp_path, with_plot=False)
    assert "| binomial:2+offload n=4 | ok | 1.0 GiB | 1.2 GiB | 3.0 MiB / 4.0 MiB | 1000.0 ms | 2.00 |" in text
    assert (
        "| binomial:2+offload n=4 (untracked) | ok | — | — | — | 1000.0 ms | — |" in text
    )  # no ratio to a tracked run
    assert "binomial:2 at n = 4 with offload over without, untracked and interleaved, median of 2 repeats: 1.38" in text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["parts"]["uniform"]["runs"][0]["ratio_to_naive"] == 1.5  # recomputed from part 1
    assert saved["parts"]["naive"]["runs"][1]["ratio_to_naive"] is None
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "results.png").unlink()
    write_gpu_report(results, tmp_path, with_plot=False)
    assert not (tmp_path / "results.png").exists()


def test_a_failing_or_hanging_part_is_recorded(tmp_path):
    record = run_gpu_part("uniform", {"n": 4}, workload=SMOKE_WORKLOAD, workdir=tmp_path, timeout=120)  # no "engine"
    assert record["status"] == "failed" and record["error"] == "KeyError: 'engine'"
    assert "_part_uniform" in record["traceback"]
    record = run_gpu_part(
        "naive", {"n": 4, "max_n": 8, "seconds": 30}, workload=SMOKE_WORKLOAD, workdir=tmp_path, timeout=0.2
    )
    assert record["status"] == "failed" and record["error"].startswith("timed out after 0 s")
    assert record["wall_seconds"] < 10 and record["runs"][0]["status"] == "timeout"
    assert probe_device(SMOKE_WORKLOAD, tmp_path, timeout=0.01)["status"] == "timeout"


def test_a_failing_child_process_is_recorded(tmp_path):
    spec = {"n": 2, "engines": ["revolve:3"], "dropout": 0.2}
    record = run_gpu_part("exactness", spec, workload=SMOKE_WORKLOAD, workdir=tmp_path, timeout=120, threads=1)
    assert record["status"] == "failed" and "unknown engine 'revolve:3'" in record["error"]
    assert "in exactness" in record["traceback"] and record["processes"] == 1
    assert (tmp_path / "exactness.log").exists()


def test_workload_dropout():
    workload = dataclasses.replace(SMOKE_WORKLOAD, dropout=0.2)
    assert workload.describe() == "conv4 (width 8), 4x3x16x16, 10 classes, sgd lr 0.01, float32, dropout 0.2"
    assert SMOKE_WORKLOAD.describe() == "conv4 (width 8), 4x3x16x16, 10 classes, sgd lr 0.01, float32"
    model = workload.build().model
    assert isinstance(model[-2], torch.nn.Dropout) and model[-2].p == 0.2
    plain = SMOKE_WORKLOAD.build().model
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), plain.parameters()))  # the same weights
    mlp = Workload(model="mlp", image_size=4, width=4, dropout=0.5).build().model
    assert isinstance(mlp[-2], torch.nn.Dropout) and isinstance(mlp[-1], torch.nn.Linear)
    with pytest.raises(ValueError, match=r"dropout must satisfy 0.0 <= dropout < 1.0, got 1.0"):
        Workload(dropout=1.0)


def test_without_cuda_a_real_run_is_refused(gpu_check, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.parse_args(["--device", "cpu", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "argument --device: no CUDA device (cpu): run on a machine with a GPU, or pass --smoke" in str(
        exit_info.value
    )
    assert "pass --smoke" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_smoke_arguments(gpu_check, tmp_path, capsys):
    args = gpu_check.parse_args(["--smoke", "--device", "CPU", "--out", str(tmp_path), "--parts", "Offload,naive"])
    assert args.device == "cpu" and args.parts == ["naive", "offload"]  # names in any case, in the check's order
    assert capsys.readouterr().err == "device: cpu\n"
    gpu_check.parse_args(["--smoke", "--out", str(tmp_path)])
    assert capsys.readouterr().err.endswith(" (the default here)\n")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the default device would run")
def test_default_device_without_cuda_exits_2(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "pass --smoke" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_cpu_twins_of_the_cuda_only_lines(tmp_path, monkeypatch):
    """What only CUDA runs sits behind small functions; their CPU answers, and the environment every GPU check
    process gets (CUDA numbers devices as nvidia-smi does)."""
    threads = torch.get_num_threads()
    try:
        assert start_device("cpu", threads=1, cap_bytes=2**30) == {}  # no allocator to cap on a CPU
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    assert warmup_steps("binomial:2+offload", 50, "cuda:1") == 50 and warmup_steps("binomial:2+offload", 50, "cpu") == 1
    assert warmup_steps("binomial:2", 50, "cuda") == 1 and warmup_steps("naive", 50, "cuda") == 1
    assert smi_token(2, None) == "2" and smi_token(1, "4,6") == "6" and smi_token(0, " GPU-ab ") == "GPU-ab"
    assert GPU_CHILD_ENV == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    seen = []

    def fake_run_child(target, spec, tag, *, timeout, env=None):
        seen.append((target, env))
        return {"status": "ok"}

    import memmaml.bench._gpu as gpu

    monkeypatch.setattr(gpu, "run_child", fake_run_child)
    probe_device(SMOKE_WORKLOAD, tmp_path, timeout=10)
    run_gpu_part(
        "exactness", {"n": 2, "engines": [], "dropout": 0.0}, workload=SMOKE_WORKLOAD, workdir=tmp_path, timeout=10
    )
    assert seen == [
        ("memmaml.bench._gpu_child:probe", GPU_CHILD_ENV),
        ("memmaml.bench._gpu_child:exactness", {**GPU_CHILD_ENV, "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}),
    ]
    part = gpu._Part(SMOKE_WORKLOAD, tmp_path, {"runs": []}, cap_bytes=None, deadline=0.0, threads=1)
    assert part.runner.env == GPU_CHILD_ENV  # the worker processes too


def test_a_part_cut_short_keeps_its_runs(tmp_path):
    """After every run a part hands its record to ``progress`` (the check writes it), and offloading runs get their
    stored states' bytes from the probe's costs."""
    import memmaml.bench._gpu as gpu

    class Runner:
        def run(self, method, steps, **_):
            return {"status": "ok", "steps": steps, "seconds": 1.0, "peak_bytes": 10, "host_peak_bytes": 4096}

    saved = []
    costs = StepCosts(state_bytes=100, graph_bytes=1000, nograph_seconds=0.1, graph_seconds=0.2)
    part = gpu._Part(
        SMOKE_WORKLOAD,
        tmp_path,
        {"runs": [], "processes": 0, "work_seconds": 0.0},
        cap_bytes=None,
        deadline=float("inf"),
        threads=1,
        costs=costs,
        progress=lambda record: saved.append([run["config"] for run in record["runs"]]),
    )
    part.runner = Runner()
    part.measure("binomial:3+offload", 10)
    part.measure("binomial:3", 10)
    assert saved == [["binomial:3+offload n=10"], ["binomial:3+offload n=10", "binomial:3 n=10"]]
    with_offload, without = part.record["runs"]
    assert with_offload["host_state_bytes"] == memmaml.Binomial(3).stats(10).max_stored * 100
    assert with_offload["host_peak_bytes"] == 4096 and without["host_state_bytes"] is None


def _fake_check(monkeypatch, gpu_check, interrupt_in=None):
    """The check's probe and parts without processes: every part ok at once; Ctrl-C in part ``interrupt_in``."""
    costs = {"state_bytes": 1_000, "graph_bytes": 50_000, "nograph_seconds": 0.01, "graph_seconds": 0.03}
    probe = {
        "status": "ok",
        "wall_seconds": 0.5,
        "step_costs": costs,
        "environment": {"name": "cpu"},
        "provenance": {"memmaml_version": "0.2.0", "command": "x"},
    }
    ran = []

    def run_part(name, spec, **options):
        if name == interrupt_in:
            options["progress"]({"runs": [{"config": "naive n=2", "status": "ok"}], "processes": 1})
            raise KeyboardInterrupt
        ran.append(name)
        return {"status": "ok", "wall_seconds": 1.0, "work_seconds": 0.5, "processes": 1, "runs": []}

    monkeypatch.setattr(gpu_check, "probe_device", lambda *args, **kwargs: dict(probe))
    monkeypatch.setattr(gpu_check, "run_gpu_part", run_part)
    return ran


def test_an_earlier_checks_results_are_moved_aside_and_ctrl_c_keeps_what_finished(gpu_check, tmp_path, capsys):
    out = tmp_path / "check"
    argv = ["--smoke", "--device", "cpu", "--out", str(out), "--parts", "naive,uniform,offload"]
    with pytest.MonkeyPatch.context() as monkeypatch:
        ran = _fake_check(monkeypatch, gpu_check)
        assert gpu_check.main(argv) == 0 and ran == ["naive", "uniform", "offload"]
    first = json.loads((out / "results.json").read_text())
    assert list(first["parts"]) == ["naive", "uniform", "offload"] and "interrupted" not in first
    capsys.readouterr()
    with pytest.MonkeyPatch.context() as monkeypatch:
        ran = _fake_check(monkeypatch, gpu_check, interrupt_in="uniform")
        assert gpu_check.main(argv) == gpu_check.INTERRUPTED
    assert ran == ["naive"]
    err = capsys.readouterr().err
    assert "Traceback" not in err
    (previous,) = (out / "previous").iterdir()
    assert f"{out} held an earlier check's results: moved to {previous}" in err
    assert err.strip().splitlines()[-1] == (
        f"interrupted: the parts that finished are in {out / 'results.json'} and results.md; the rest did not run"
    )
    assert json.loads((previous / "results.json").read_text()) == first  # the finished check, whole
    assert {"results.md", "results.png", "parts"} <= {p.name for p in previous.iterdir()}
    second = json.loads((out / "results.json").read_text())
    assert second["interrupted"] is True and second["parts"]["naive"]["status"] == "ok"
    assert second["parts"]["uniform"]["status"] == "incomplete" and "offload" not in second["parts"]
    assert "**Interrupted:**" in (out / "results.md").read_text()


def test_a_second_check_into_the_same_folder_stops(gpu_check, tmp_path, capsys, monkeypatch):
    import fcntl

    out = tmp_path / "check"
    out.mkdir()
    ran = _fake_check(monkeypatch, gpu_check)
    with open(out / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242: memmaml-gpu-check --smoke")
        held.flush()
        with pytest.raises(SystemExit) as exit_info:
            gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)])
    assert exit_info.value.code == 2 and ran == [] and sorted(p.name for p in out.iterdir()) == [".lock"]
    assert f"{str(out)!r} is in use by another job (pid 4242: memmaml-gpu-check --smoke)" in capsys.readouterr().err


def test_a_lock_file_that_cannot_be_opened_is_one_out_error(gpu_check, tmp_path, capsys, monkeypatch):
    out = tmp_path / "check"
    (out / ".lock").mkdir(parents=True)
    ran = _fake_check(monkeypatch, gpu_check)
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)])
    assert exit_info.value.code == 2 and ran == []
    err = capsys.readouterr().err
    assert f"error: argument --out: cannot open the lock file {str(out / '.lock')!r}: " in err
    assert "Traceback" not in err


def test_a_check_stopped_in_its_probe_names_its_code_and_command(gpu_check, tmp_path, monkeypatch):
    """Ctrl-C in the probe: the report still has the provenance (command, version, commit); a missing commit reads
    as in compare_memory's report."""

    def probe(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpu_check, "probe_device", probe)
    out = tmp_path / "check"
    assert gpu_check.main(["--smoke", "--device", "cpu", "--out", str(out)]) == gpu_check.INTERRUPTED
    data = json.loads((out / "results.json").read_text())
    assert data["interrupted"] is True and data["provenance"]["memmaml_version"] == memmaml.__version__
    text = (out / "results.md").read_text()
    assert f"- command: `{data['provenance']['command']}`" in text and "--smoke --device cpu" in text
    assert f"- memmaml {memmaml.__version__}" in text and "unknown commit" not in text

    ran = _fake_check(monkeypatch, gpu_check)  # its probe records no commit, as an installed package
    assert gpu_check.main(["--smoke", "--device", "cpu", "--out", str(tmp_path / "installed")]) == 0 and ran
    assert "- memmaml 0.2.0 (no git commit recorded); torch" in (tmp_path / "installed" / "results.md").read_text()
