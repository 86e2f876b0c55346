"""The benchmark library: the fit recovers known costs, the budget answers match brute force, runs fail softly."""

import math

import pytest

import memmaml
from memmaml import PlanStats, StepCosts, binomial_evaluations
from memmaml.bench import Method, Runner, Workload, answer_budget, concrete_engine, engine_stats, fit_costs, predict
from memmaml.bench._process import is_out_of_memory

S, A, BASE_NAIVE, BASE_CKPT = 43e6, 700e6, 600e6, 650e6
COSTS = StepCosts(int(S), int(A), 0.3, 1.0)


def _record(engine, n, *, library="memmaml", status="ok", seconds=None):
    """A run as memmaml's cost model predicts it at known costs and bases (what the fit must recover)."""
    stats, offload = engine_stats(engine, n)
    plan = None if stats is None else PlanStats(**stats)
    base = BASE_NAIVE if stats is None else BASE_CKPT
    peak = base + memmaml.predicted_peak_bytes(plan, n, COSTS, offload=offload)
    forward = 0 if stats is None else stats["forward_steps"]
    return {
        "library": library,
        "engine": engine,
        "label": engine,
        "steps": n,
        "status": status,
        "stats": stats,
        "offload": offload,
        "peak_bytes": peak,
        "seconds_untracked": seconds or (2 + 0.3 * forward + 1.0 * n),
    }


def _synthetic():
    records = [_record("naive", n) for n in (1, 2, 4)]
    records += [_record(e, n) for e in ("uniform:2", "uniform:1", "binomial:2+offload") for n in (2, 4, 8)]
    # runs that must not enter the fit: a peer, a failure
    records.append({**_record("naive", 8), "library": "torch_maml", "peak_bytes": 10**15})
    records.append({**_record("naive", 16), "status": "oom", "peak_bytes": None})
    return records


def test_fit_recovers_the_costs_of_the_cost_model():
    fit = fit_costs(_synthetic())
    assert fit.base_naive == pytest.approx(BASE_NAIVE) and fit.base_checkpoint == pytest.approx(BASE_CKPT)
    assert fit.costs.state_bytes == pytest.approx(S, abs=1) and fit.costs.graph_bytes == pytest.approx(A, abs=1)
    assert fit.max_relative_residual < 1e-9 and fit.memory_points == 12
    assert fit.time_from == "fit"
    assert fit.costs.nograph_seconds == pytest.approx(0.3) and fit.costs.graph_seconds == pytest.approx(1.0)
    assert fit.base_seconds == pytest.approx(2.0)


def test_fit_needs_both_families():
    assert fit_costs([r for r in _synthetic() if r["engine"] == "naive"]) is None


def test_budget_answers_match_brute_force():
    fit = fit_costs(_synthetic())
    budget = 11 * 2**30
    naive = answer_budget(fit, "naive", budget)
    assert naive["longest_steps"] == math.floor((budget - BASE_NAIVE) / A)

    def uniform_peak(n, k):
        return BASE_CKPT + (-(-n // k) + 1) * S + min(k, n) * A

    fixed = answer_budget(fit, "uniform:5", budget)["longest_steps"]
    assert uniform_peak(fixed, 5) <= budget < uniform_peak(fixed + 1, 5)
    best = answer_budget(fit, "uniform:best", budget)
    n = best["longest_steps"]
    assert min(uniform_peak(n, k) for k in range(1, 200)) <= budget < min(uniform_peak(n + 1, k) for k in range(1, 200))
    assert best["at"][0]["engine"].startswith("uniform:") and n > 30 * naive["longest_steps"]
    # binomial with slots chosen for the budget: memory does not grow with n; time per step grows slowly
    binomial = answer_budget(fit, "binomial:auto", budget)
    assert binomial["grows_with_steps"] is False and [a["steps"] for a in binomial["at"]] == [1000, 10_000, 100_000]
    slots = (budget - BASE_CKPT - A - 2 * S) // S
    assert binomial["at"][0]["engine"] == f"binomial:{int(slots)}"
    n = 100_000
    expected = (2 + 0.3 * binomial_evaluations(n, int(slots)) + n) / (2 + n)
    assert binomial["at"][-1]["time_ratio_to_naive"] == pytest.approx(expected, rel=1e-3)
    offload = answer_budget(fit, "binomial:auto+offload", budget, host_budget=int(200 * S))
    slots = memmaml.binomial_slots(100_000, fit.costs, budget, offload=True, host_budget=int(200 * S))
    assert offload["grows_with_steps"] is False and offload["at"][-1]["engine"] == f"binomial:{slots}+offload"
    assert 190 <= slots <= 200  # the stored states within the host budget
    tiny = answer_budget(fit, "uniform:best", int(BASE_CKPT))
    assert tiny["longest_steps"] == 0 and tiny["one_step_bytes"] > BASE_CKPT


def test_concrete_engines():
    costs = COSTS
    assert (
        concrete_engine("uniform:best", 1000, costs, None)
        == f"uniform:{memmaml.best_uniform(1000, costs).checkpoint_steps}"
    )
    # the host budget goes to Auto, which keeps the offloaded states within it
    host = int(10 * S)
    engine = concrete_engine("binomial:auto+offload", 50, costs, 2 * 2**30, host_budget=host)
    chosen = memmaml.Auto(2 * 2**30, among=("binomial",), host_budget=host).choose(50, costs, offload=True)
    assert engine == f"binomial:{chosen.schedule.slots}+offload" and chosen.predicted_host_bytes <= host
    assert predict(engine, 50, costs).host_bytes == chosen.predicted_host_bytes
    assert concrete_engine("binomial:auto+offload", 50, costs, 2 * 2**30, host_budget=10**15) == "binomial:49+offload"
    assert concrete_engine("naive", 5, None, None) == "naive"
    assert concrete_engine("auto:1GiB", 5, costs, None) == concrete_engine("auto:1GiB", 5, costs, 2**30)
    # "auto:BUDGET" plans for its own budget, whatever the sweep's --budget; the families take --budget
    small, large = 2 * 2**30, 11 * 2**30
    own = memmaml.Auto(small).choose(100, costs).schedule
    assert isinstance(own, memmaml.Binomial) and isinstance(
        memmaml.Auto(large).choose(100, costs).schedule, memmaml.Uniform
    )
    assert concrete_engine("auto:2GiB", 100, costs, large) == concrete_engine("auto:2GiB", 100, costs, None)
    assert concrete_engine("auto:2GiB", 100, costs, large) == f"binomial:{own.slots}"
    offload = predict("auto:2GiB+offload", 100, costs, budget=large, host_budget=2**40)
    assert offload.engine == predict("auto:2GiB+offload", 100, costs, host_budget=2**40).engine
    assert offload.peak_bytes <= small
    chosen = memmaml.Auto(small, among=("binomial",)).choose(100, costs).schedule
    assert concrete_engine("binomial:auto", 100, costs, small) == f"binomial:{chosen.slots}"
    assert concrete_engine("binomial:auto", 100, costs, large) != f"binomial:{chosen.slots}"
    for text in ("binomial:3", "binomial:3:2+offload", "uniform:4"):  # concrete texts stay as they are
        assert concrete_engine(text, 100, costs, None) == text
    with pytest.raises(ValueError, match="unknown engine 'revolve'"):
        concrete_engine("revolve", 5, costs, None)
    with pytest.raises(ValueError, match="is chosen from measured step costs, and there are none"):
        concrete_engine("uniform:best", 5, None, None)


def test_one_prediction_for_every_caller():
    """The sweep, the fit and the GPU plan all predict through bench.predict, which is memmaml's cost model."""
    stats = memmaml.Binomial(3).stats(20)
    p = predict("binomial:3+offload", 20, COSTS, base=7)
    assert p.engine == "binomial:3+offload" and p.offload and p.stats == stats._asdict()
    assert p.peak_bytes == 7 + memmaml.predicted_peak_bytes(stats, 20, COSTS, offload=True)
    assert p.host_bytes == memmaml.predicted_host_bytes(stats, 20, COSTS, offload=True) > 0
    assert p.seconds == memmaml.predicted_seconds(stats, 20, COSTS)
    naive = predict("naive", 20, COSTS)
    assert naive.stats is None and naive.host_bytes == 0 and naive.peak_bytes == 20 * COSTS.graph_bytes


def test_out_of_memory_errors_are_recognised():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(ValueError("shape mismatch"))


def test_workload_validation():
    with pytest.raises(ValueError, match="model must be one of 'resnet18', 'conv4', 'mlp'; got 'vgg16'"):
        Workload(model="vgg16")
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        Workload(batch_size=0)
    with pytest.raises(ValueError, match="lr must be a finite positive number, got nan"):
        Workload(lr=float("nan"))
    with pytest.raises(ValueError, match="max_grad_grad_norm must be a finite positive number, got -1"):
        Workload(max_grad_grad_norm=-1)
    assert Workload().describe() == "resnet18, 16x3x224x224, 10 classes, sgd lr 0.01, float32"


def test_a_failing_run_is_recorded_not_raised(tmp_path):
    runner = Runner(Workload(model="mlp", image_size=4, batch_size=2, width=4), tmp_path, timeout=0.01)
    record = runner.run(Method("memmaml", "naive"), 2, track=True)
    assert record["status"] == "timeout" and "stopped after 0.01 s" in record["error"]
    with pytest.raises(ValueError, match="unknown library 'learn2learn'"):
        runner.run(Method("learn2learn"), 2, track=True)
    assert Runner(runner.workload, tmp_path).counter == 1  # a new runner numbers on: no earlier file is overwritten


def test_a_peer_that_is_not_installed_is_skipped_with_the_install_line(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "higher" else real(name, *a))
    record = Runner(Workload(model="mlp", image_size=4), tmp_path).run(Method("higher"), 2, track=True)
    assert record["status"] == "unavailable" and record["error"] == "higher is not installed: pip install higher"
