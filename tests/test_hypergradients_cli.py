"""The hypergradients benchmark's command line refuses bad values before any work: argparse's usage line and
one error line naming the flag, exit status 2, and no --out folder made."""

import copy
import importlib.util
import itertools
import json
import math
import statistics
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hypergradients" / "measure.py"
RUNNERS = ("run_errors", "run_downstream", "run_long", "run_segments", "run_same", "render", "_warm_up")


def _load(filename: str):
    """One of the benchmark's scripts as a module, leaving sys.path and sys.modules as they were (the scripts import
    their neighbour ``problems``)."""
    spec = importlib.util.spec_from_file_location(f"hypergradients_{Path(filename).stem}", SCRIPT.with_name(filename))
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        sys.path.insert(0, str(SCRIPT.parent))
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        sys.modules.pop("problems", None)
    return module


@pytest.fixture
def measure(monkeypatch):
    module = _load(SCRIPT.name)
    started = []
    for name in RUNNERS:  # a value that gets past the checks must not start a benchmark
        monkeypatch.setattr(module, name, lambda *args, _name=name: started.append(_name))
    monkeypatch.setattr(module.torch, "set_num_threads", lambda n: None)  # main's setting is the process's
    module.started = started
    return module


@pytest.mark.parametrize(
    "args, flag",
    [
        (["long", "--steps", "15"], "--steps"),
        (["long", "--steps", "0"], "--steps"),
        (["long", "--steps", "1e5"], "--steps"),
        (["long", "--reference-steps", "-10"], "--reference-steps"),
        (["long", "--naive-steps", "25"], "--naive-steps"),
        (["long", "--naive-steps", "-10"], "--naive-steps"),
        (["long", "--slots", "0"], "--slots"),
        (["segments", "--steps", "25"], "--steps"),
        (["segments", "--rounds", "0"], "--rounds"),
        (["segments", "--segment", "-1"], "--segment"),
        (["segments", "--segment", "1"], "--segment"),
        (["same", "--steps", "25"], "--steps"),
        (["same", "--rounds", "0"], "--rounds"),
        (["same", "--slots", "-2"], "--slots"),
        (["same", "--segment", "0"], "--segment"),
        (["long", "--segment", "0"], "--segment"),
        (["long", "--segment", "2.5"], "--segment"),
        (["long", "--repeats", "x"], "--repeats"),
        (["long", "--long-repeats", "0"], "--long-repeats"),
        (["long", "--naive-seconds", "-1"], "--naive-seconds"),
        (["long", "--naive-seconds", "1.5"], "--naive-seconds"),
        (["errors", "--horizons", "10,,100"], "--horizons"),
        (["errors", "--horizons", "10,15"], "--horizons"),
        (["errors", "--problems", "nope"], "--problems"),
        (["errors", "--naive-max", "-1"], "--naive-max"),
        (["errors", "--repeats", "0"], "--repeats"),
        (["downstream", "--seeds", "0"], "--seeds"),
        (["downstream", "--outer-steps", "-3"], "--outer-steps"),
        (["downstream", "--steps", "25"], "--steps"),
    ],
)
def test_a_bad_value_is_one_error_line(measure, args, flag, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        measure.main(["--out", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert len(errors) == 1 and f"argument {flag}" in errors[0], err
    assert err.startswith("usage:") and "Traceback" not in err
    assert not out.exists() and not measure.started


def test_an_out_that_is_a_file_is_refused(measure, tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("kept")
    with pytest.raises(SystemExit) as exit_info:
        measure.main(["--out", str(out), "render"])
    assert exit_info.value.code == 2 and "argument --out" in capsys.readouterr().err
    assert out.read_text() == "kept" and not measure.started


@pytest.mark.parametrize(
    "args, runner",
    [
        (["long", "--naive-steps", "0", "--steps", "20"], "run_long"),
        (["downstream", "--problems", "sinusoid-maml", "--steps", "15"], "run_downstream"),
        (["errors", "--horizons", "10,20"], "run_errors"),
        (["segments", "--steps", "20", "--slots", "3", "--rounds", "2"], "run_segments"),
        (["same", "--steps", "20", "--slots", "3", "--rounds", "2"], "run_same"),
        (["render"], "render"),
    ],
)
def test_good_values_reach_the_runner(measure, args, runner, tmp_path):
    measure.main(["--out", str(tmp_path / "out"), *args])
    assert measure.started == [runner]


class _Stop(Exception):
    pass


_CLOCK = itertools.count()  # "times" that only grow, across calls: they show the order things ran in


def _timed(measure, partial, repeats, *, naive=True, stop_after_keeps=None):
    """Run ``time_paired`` with a clock for timings; stop (as a killed process would) after that many saves."""
    clock = _CLOCK
    keeps = []

    def keep():
        keeps.append(1)
        if stop_after_keeps is not None and len(keeps) >= stop_after_keeps:
            raise _Stop

    try:
        measure.time_paired(
            partial,
            repeats,
            (lambda: {"short": float(next(clock)), "long": float(next(clock))}) if naive else None,
            lambda: {"time_s": float(next(clock))},
            keep,
        )
    except _Stop:
        return False
    return True


@pytest.mark.parametrize("stop", [1, 2, 3, 4, 5])
def test_long_runs_resume_with_a_naive_run_around_each(measure, stop):
    partial = {"runs": []}
    assert not _timed(measure, partial, 2, stop_after_keeps=stop)  # stopped at one save point of five
    assert _timed(measure, partial, 2)  # the rerun goes on from what was saved
    assert len(partial["runs"]) == 2 and len(partial["short"]) == len(partial["long"]) == partial["brackets"] == 3
    # a resumed pair keeps the order naive, run, naive, run, naive, each naive timing at both T
    short, long, runs = partial["short"], partial["long"], [r["time_s"] for r in partial["runs"]]
    assert short[0] < long[0] < runs[0] < short[1] < long[1] < runs[1] < short[2] < long[2]


def test_long_runs_without_naive_and_more_repeats(measure, capsys):
    partial = {"runs": []}
    assert _timed(measure, partial, 2, naive=False)
    assert len(partial["runs"]) == 2 and "short" not in partial and "brackets" not in partial
    partial = {"runs": []}
    assert _timed(measure, partial, 1)
    assert _timed(measure, partial, 3)  # raised --long-repeats: the closing naive run is the next one's before
    assert len(partial["runs"]) == 3 and len(partial["short"]) == len(partial["long"]) == 4


def test_the_report_shows_reference_passes_that_were_timed_again():
    """A reference pass timed again keeps the earlier one beside it in the report, with its own ratio."""
    report = _load("report.py")
    data = json.loads(SCRIPT.with_name("long_run.json").read_text())
    config, records = data["config"], data["records"]
    schedule = f"binomial:{config['slots']}" + (f":{config['segment']}" if config.get("segment", 1) > 1 else "")
    records["reference_first_pass"] = {"steps": 1000, **copy.deepcopy(records["reference"])}
    records["reference_first_pass"]["naive"]["time_s"] = 2.0
    records["reference_first_pass"][schedule]["time_s"] = 5.0
    records["reference_long_first_pass"] = {**copy.deepcopy(records["reference_long"]), "steps": 10_000}
    records["reference_long_first_pass"]["naive"]["time_s"] = 12.0
    records["reference_long_first_pass"][schedule]["time_s"] = 30.0
    (line,) = [line for line in report.long_lines(data) if line.startswith("* Earlier passes")]
    assert f"T = 1,000: naive 2.00 ms/step, `{schedule}` 5.00 ms/step (2.50×); " in line
    assert f"T = 10,000: naive 1.20 ms/step, `{schedule}` 3.00 ms/step (2.50×)." in line
    del records["reference_first_pass"], records["reference_long_first_pass"]
    assert not [line for line in report.long_lines(data) if line.startswith("* Earlier passes")]


RUNS = [300.0, 330.0, 270.0]  # three runs at T = 100,000: 3.0, 3.3 and 2.7 ms/step


@pytest.mark.parametrize(
    ("runs", "reference_bracket", "long_bracket", "verdict"),
    [
        # naive around the runs at T = 1,000 and at 10,000: each run's paired ratios, then the medians
        (RUNS, [1.6, 1.5, 1.7, 1.6], [16.0, 15.0, 17.0, 16.0], "met"),  # 1.94, 2.06, 1.64: median 1.94 at both
        (RUNS, [1.3, 1.3, 1.5, 1.5], [16.0, 16.0, 16.0, 16.0], "not met"),  # T = 1,000: 2.31, 2.36, 1.80 (2.31)
        (RUNS, [1.6, 1.6, 1.6, 1.6], [13.0, 13.0, 15.0, 15.0], "not met"),  # T = 10,000 alone fails (2.31)
        ([200.0, 200.0, 200.0], [1.0, 1.0, 1.0, 1.0], [10.0, 10.0, 10.0, 10.0], "met"),  # exactly 2: met
    ],
)
def test_the_report_pairs_each_long_run_with_naive_around_it(runs, reference_bracket, long_bracket, verdict):
    report = _load("report.py")
    data = json.loads(SCRIPT.with_name("long_run.json").read_text())
    long_time = data["records"]["long_time"]
    long_time.update(
        time_s=min(runs),
        all_times_s=runs,
        naive_steps=10_000,
        naive_times_s=long_bracket,
        reference_naive_times_s=reference_bracket,
    )
    lines = report.long_lines(data)
    medians = []
    for steps, bracket in ((1000, reference_bracket), (10_000, long_bracket)):
        (line,) = [line for line in lines if line.startswith(f"* Against naive at T = {steps:,},")]
        pairs = [(run / 100_000) / ((a + b) / 2 / steps) for run, (a, b) in zip(runs, itertools.pairwise(bracket))]
        medians.append(sorted(pairs)[1])  # the median of three, computed here without the report's code
        assert f"**{', '.join(f'{r:.2f}×' for r in pairs)}** (median **{medians[-1]:.2f}×**)" in line
        fastest = (min(runs) / 100_000) / (min(bracket) / steps)
        assert f"fastest against fastest, **{fastest:.2f}×**" in line
    (target,) = [line for line in lines if line.startswith("* Time target")]
    assert f"**{verdict}** (T = 1,000: {medians[0]:.2f}×; T = 10,000: {medians[1]:.2f}×)" in target
    assert (verdict == "met") == (max(medians) <= 2)  # the cases mean what their comments say


def test_the_report_pools_the_naive_runs_of_the_timings_around_each_long_run():
    """With several naive runs a timing (``--naive-seconds``), each long run is paired with the mean of all the naive
    runs just before and after it, not with the mean of two timings' means; records of one run a timing read as
    before."""
    report = _load("report.py")
    data = json.loads(SCRIPT.with_name("long_run.json").read_text())
    long_time = data["records"]["long_time"]
    reference = [[1.0, 2.0, 3.0], [1.5], [2.0, 2.0]]  # T = 1,000: 2.0 ms/step, then 1.5, then 2.0
    longer = [[20.0], [10.0, 14.0, 12.0], [16.0]]  # T = 10,000
    long_time.update(
        time_s=300.0,
        all_times_s=[300.0, 400.0],
        naive_steps=10_000,
        naive_times_s=longer,
        reference_naive_times_s=reference,
    )
    lines = report.long_lines(data)
    # by hand: run 1 (3.0 ms/step) against (1 + 2 + 3 + 1.5) / 4 = 1.875 ms -> 1.60; run 2 (4.0 ms/step) against
    # (1.5 + 2 + 2) / 3 ms -> 2.18; median 1.89
    (line,) = [line for line in lines if line.startswith("* Against naive at T = 1,000,")]
    assert "**1.60×, 2.18×** (median **1.89×**)" in line
    assert "each timing's mean, runs: 2.00 ms/step (3), 1.50 ms/step (1), 2.00 ms/step (2); the fastest 1.50" in line
    assert "fastest against fastest, **2.00×**" in line  # 3.0 ms against the fastest timing's 1.5 ms
    # T = 10,000: run 1 against (20 + 10 + 14 + 12) / 4 s -> 2.14; run 2 against (10 + 14 + 12 + 16) / 4 -> 3.08
    (line,) = [line for line in lines if line.startswith("* Against naive at T = 10,000,")]
    assert "**2.14×, 3.08×** (median **2.61×**)" in line
    (target,) = [line for line in lines if line.startswith("* Time target")]
    assert "**not met** (T = 1,000: 1.89×; T = 10,000: 2.61×)" in target
    assert report.naive_runs(1.5) == [1.5] and report.naive_runs([1.0, 2.0]) == [1.0, 2.0]


def test_naive_timings_are_a_count_of_runs_fixed_from_the_seconds_asked_for(monkeypatch):
    measure = _load(SCRIPT.name)
    assert measure.naive_count(0, 1.5) == 1  # 0: one run
    assert measure.naive_count(60, 15.0) == 4 and measure.naive_count(60, 16.0) == 4  # 60 s of runs of 15-16 s
    assert measure.naive_count(60, 1.5) == 40 and measure.naive_count(60, 100.0) == 1  # at least one
    times = iter([9.0, 1.0, 1.0, 1.0])
    calls = []

    def fake(steps, engine, track):
        calls.append((steps, engine, track))
        return {"time_s": next(times)}

    monkeypatch.setattr(measure, "hypergradient_with", fake)
    assert measure.naive_for(1000, 3) == [9.0, 1.0, 1.0]  # a fixed count, whatever the times add up to
    assert set(calls) == {(1000, None, False)}  # naive, untracked


def test_the_long_part_times_naive_runs_for_the_seconds_asked_for(monkeypatch, tmp_path):
    """``--naive-seconds`` end to end: each timing around the long runs is as many runs as the fastest interleaved
    naive run at that T makes that many seconds; the option and the counts are recorded; a stopped run resumes
    with the counts it started with; another value times the long runs again."""
    measure = _load(SCRIPT.name)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(measure, "render", lambda out: None)
    out = tmp_path / "out"
    args = ["--out", str(out), "long", "--steps", "20", "--slots", "3", "--reference-steps", "10"]
    args += ["--naive-steps", "0", "--repeats", "1", "--long-repeats", "1"]
    path = out / "long_run.json"

    def records():
        return json.loads(path.read_text())["records"]

    measure.main([*args, "--naive-seconds", "1"])
    long_time = records()["long_time"]
    count = math.ceil(1 / records()["reference"]["naive"]["time_s"])  # runs of milliseconds: many
    assert count > 1 and long_time["naive_seconds"] == 1
    assert long_time["naive_counts"] == {"reference_naive_times_s": count}
    assert [len(runs) for runs in long_time["reference_naive_times_s"]] == [count, count]
    # stopped after the first naive timing: resumed with its count (2), not one made from the records again
    data = json.loads(path.read_text())
    del data["records"]["long_time"]
    partial = {
        "naive_steps": 0,
        "naive_seconds": 1,
        "naive_counts": {"reference_naive_times_s": 2},
        "commit": data["provenance"]["memmaml_commit"],
        "runs": [],
        "brackets": 1,
        "reference_naive_times_s": [[123.0, 124.0]],
    }
    data["records"]["long_time_partial"] = partial
    path.write_text(json.dumps(data))
    measure.main([*args, "--naive-seconds", "1"])
    assert records()["long_time"]["reference_naive_times_s"][0] == [123.0, 124.0]
    assert [len(runs) for runs in records()["long_time"]["reference_naive_times_s"]] == [2, 2]
    # the same partial with another --naive-seconds: started afresh
    data = json.loads(path.read_text())
    del data["records"]["long_time"]
    data["records"]["long_time_partial"] = partial
    path.write_text(json.dumps(data))
    measure.main([*args, "--naive-seconds", "0"])
    long_time = records()["long_time"]
    assert long_time["naive_seconds"] == 0 and long_time["reference_naive_times_s"][0] != [123.0, 124.0]
    assert [len(runs) for runs in long_time["reference_naive_times_s"]] == [1, 1]
    # a finished record of another --naive-seconds: timed again
    measure.main([*args, "--naive-seconds", "1"])
    assert [len(runs) for runs in records()["long_time"]["reference_naive_times_s"]] == [count, count]


def test_each_t_gets_its_count_from_its_fastest_interleaved_naive_run(monkeypatch, tmp_path):
    """Naive at --naive-steps too: each T's count comes from the fastest of that T's interleaved naive runs (not
    another T's, not the last or the mean); a finished record from before --naive-seconds is kept with 0."""
    measure = _load(SCRIPT.name)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(measure, "render", lambda out: None)
    # fake times: naive at T = 10 takes 0.1, 0.3, 0.2 s in the interleaved passes, at T = 20 0.6, 0.4, 0.5 s,
    # every other run 1 s (the fastest: 0.1 and 0.4 s; 2 s of naive makes 20 and 5 runs)
    interleaved = {10: iter([0.1, 0.3, 0.2]), 20: iter([0.6, 0.4, 0.5])}
    state = {"long": False}

    def fake(steps, engine, track):
        seconds = next(interleaved[steps]) if engine is None and not track and not state["long"] else 1.0
        return {"time_s": seconds, "wall_s": seconds, "peak_bytes": 1 if track else None, "lr": [0.0], "wd": 0.0}

    real_time_paired = measure.time_paired

    def time_paired(*args, **kwargs):
        state["long"] = True  # the interleaved passes are over
        return real_time_paired(*args, **kwargs)

    monkeypatch.setattr(measure, "hypergradient_with", fake)
    monkeypatch.setattr(measure, "time_paired", time_paired)
    out = tmp_path / "out"
    args = ["--out", str(out), "long", "--steps", "40", "--slots", "3", "--reference-steps", "10"]
    args += ["--naive-steps", "20", "--repeats", "3", "--long-repeats", "1", "--naive-seconds", "2"]
    measure.main(args)
    path = out / "long_run.json"
    long_time = json.loads(path.read_text())["records"]["long_time"]
    assert long_time["naive_counts"] == {"reference_naive_times_s": 20, "naive_times_s": 5}
    assert [len(t) for t in long_time["reference_naive_times_s"]] == [20, 20]
    assert [len(t) for t in long_time["naive_times_s"]] == [5, 5]
    # a finished record from before the option (one number a timing, no naive_seconds): kept with --naive-seconds 0
    data = json.loads(path.read_text())
    old = data["records"]["long_time"]
    old.update(naive_times_s=[16.0, 15.0], reference_naive_times_s=[1.6, 1.5])
    del old["naive_seconds"], old["naive_counts"]
    path.write_text(json.dumps(data))
    measure.main([*args[:-1], "0"])
    assert json.loads(path.read_text())["records"]["long_time"] == old


def test_the_report_reads_records_from_before_the_pairing():
    """Records without naive at T = 1,000 around the long runs, or without any naive runs around them, compare with
    the separate timings at both T and give no verdict."""
    report = _load("report.py")
    data = json.loads(SCRIPT.with_name("long_run.json").read_text())
    records = data["records"]
    long_time = records["long_time"]
    step = long_time["time_s"] / 100_000
    del long_time["reference_naive_times_s"]
    lines = report.long_lines(data)
    separate = step / (records["reference"]["naive"]["time_s"] / 1000)
    assert f"* Against naive at T = 1,000 (timed separately, above): **{separate:.2f}×**" in "\n".join(lines)
    assert [line for line in lines if line.startswith("* Against naive at T = 10,000, timed before")]
    assert not [line for line in lines if line.startswith("* Time target")]
    del long_time["naive_times_s"], long_time["naive_steps"]
    lines = report.long_lines(data)
    longer = records["reference_long"]
    separate = step / (longer["naive"]["time_s"] / longer["steps"])
    assert f"* Against naive at T = 10,000 (timed separately, above): **{separate:.2f}×**" in "\n".join(lines)
    assert not [line for line in lines if line.startswith("* Time target")]


def test_the_long_part_resumes_and_redoes_only_what_is_stale(monkeypatch, tmp_path):
    """A tiny run of ``measure.py long`` without naive at a longer T: a run stopped after its first naive timing
    goes on from it; records from before naive at T = 1,000 was timed around the runs are redone; finished ones
    are not."""
    measure = _load(SCRIPT.name)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)  # main's setting is the process's
    monkeypatch.setattr(measure, "render", lambda out: None)  # results.md: tested above
    out = tmp_path / "out"
    args = ["--out", str(out), "long", "--steps", "20", "--slots", "3", "--reference-steps", "10"]
    args += ["--naive-seconds", "0", "--naive-steps", "0", "--repeats", "1", "--long-repeats", "2"]
    path = out / "long_run.json"

    def long_time():
        return json.loads(path.read_text())["records"]["long_time"]

    measure.main(args)
    first = long_time()
    assert len(first["all_times_s"]) == 2 and len(first["reference_naive_times_s"]) == 3
    # the default --segment 2: its plan, with the one-step plan of the same slots timed beside it at T = 10
    records = json.loads(path.read_text())["records"]
    assert set(records["reference"]) == {"naive", "binomial:3:2", "binomial:3", "max_relative_difference"}
    assert records["plan"]["schedule"] == "binomial:3:2" and records["plan"]["stats"]["max_segment"] == 2
    # Griewank's fewest evaluations, t * m - C(s + t, s + 1) with t the least such that C(s + t, s) >= m: 10
    # two-step segments and 3 slots give t = 2 and 2 * 10 - C(5, 4) = 15 segments; 20 single steps, t = 3 and
    # 3 * 20 - C(6, 4) = 45 steps
    assert records["plan"]["segment_optimum_evaluations"] == records["plan"]["stats"]["forward_steps"] == 2 * 15
    assert records["plan"]["revolve_optimum_evaluations"] == 45
    assert first["naive_steps"] == 0 and first["naive_times_s"] == []
    measure.main(args)  # finished: nothing is timed again
    assert long_time() == first
    # stopped after the first naive timing, before any long run finished
    data = json.loads(path.read_text())
    del data["records"]["long_time"]
    data["records"]["long_time_partial"] = {
        "naive_steps": 0,
        "naive_seconds": 0,
        "commit": data["provenance"]["memmaml_commit"],
        "runs": [],
        "brackets": 1,
        "reference_naive_times_s": [123.0],
    }
    path.write_text(json.dumps(data))
    measure.main(args)
    resumed = long_time()
    assert resumed["reference_naive_times_s"][0] == 123.0 and len(resumed["reference_naive_times_s"]) == 3
    assert "long_time_partial" not in json.loads(path.read_text())["records"]
    # records from before the pairing at T = 1,000: redone
    data = json.loads(path.read_text())
    del data["records"]["long_time"]["reference_naive_times_s"]
    path.write_text(json.dumps(data))
    measure.main(args)
    assert len(long_time()["reference_naive_times_s"]) == 3 and long_time()["reference_naive_times_s"][0] != 123.0
    # a partial from before naive at T = 1,000 was timed around the runs: started afresh
    data = json.loads(path.read_text())
    del data["records"]["long_time"]
    commit = data["provenance"]["memmaml_commit"]
    data["records"]["long_time_partial"] = {"naive_steps": 0, "commit": commit, "runs": [], "naive_times_s": [1.0]}
    path.write_text(json.dumps(data))
    measure.main(args)
    assert len(long_time()["reference_naive_times_s"]) == 3 and long_time()["naive_times_s"] == []
    # --long-repeats raised: the long runs are timed again, all of them
    measure.main([*args[:-1], "3"])
    assert len(long_time()["all_times_s"]) == 3 and len(long_time()["reference_naive_times_s"]) == 4
    # a partial of another commit, or with more runs than --long-repeats asks for: started afresh
    for partial_commit, runs in (("x", 1), (commit, 4)):
        data = json.loads(path.read_text())
        del data["records"]["long_time"]
        fake_runs = [{"time_s": 1.0, "wall_s": 1.0, "lr": [0.0], "wd": 0.0}] * runs
        data["records"]["long_time_partial"] = {
            "naive_steps": 0,
            "commit": partial_commit,
            "runs": fake_runs,
            "brackets": runs + 1,
            "reference_naive_times_s": [123.0] * (runs + 1),
        }
        path.write_text(json.dumps(data))
        measure.main(args)
        assert 123.0 not in long_time()["reference_naive_times_s"] and len(long_time()["all_times_s"]) == 2
    # naive at a longer T asked for: timed around the runs too
    measure.main([*args[:-5], "20", *args[-4:]])
    assert long_time()["naive_steps"] == 20 and len(long_time()["naive_times_s"]) == 3


def test_the_report_shows_a_segmented_plan_beside_the_one_step_plan():
    """With ``--segment 2`` the report names ``binomial:447:2``, gives the one-step plan's time from the same
    interleaved runs, and compares the evaluations with the fewest for two-step segments and with Revolve's."""
    report = _load("report.py")
    data = json.loads(SCRIPT.with_name("long_run.json").read_text())
    data["config"]["segment"] = 2
    records = data["records"]
    for key, steps in (("reference", 1000), ("reference_long", 10_000)):
        records[key]["binomial:447:2"] = {**records[key]["binomial:447"], "time_s": 2.2e-3 * steps}
        records[key]["binomial:447"]["time_s"] = 2.5e-3 * steps
        records[key]["naive"]["time_s"] = 1.25e-3 * steps
    records["plan"].update(schedule="binomial:447:2", segment_optimum_evaluations=199_102)
    records["plan"]["stats"].update(max_segment=2, forward_steps=199_102)
    lines = report.long_lines(data)
    text = "\n".join(lines)
    assert lines[0].startswith("Problem (a) through 100,000 SGD steps, `binomial:447:2`")
    assert "`binomial:447:2` 2.20 ms/step (1.76×)" in text
    assert (
        "* The same slots reversing one step at a time, in the same interleaved runs: `binomial:447` 2.50 ms/step "
        "(2.00×)" in text
    )
    assert "`binomial:447:2` took 0.88× its time per step." in text
    reference = records["reference"]
    single, naive = (reference[key]["lr"] + [reference[key]["wd"]] for key in ("binomial:447", "naive"))
    agreement = max(abs(a - b) for a, b in zip(single, naive)) / max(abs(b) for b in naive)
    assert f"hypergradients agree with naive's to {agreement:.1e}; `binomial:447:2` took" in text
    longer = records["reference_long"]
    single, naive = (longer[key]["lr"] + [longer[key]["wd"]] for key in ("binomial:447", "naive"))
    agreement = max(abs(a - b) for a, b in zip(single, naive)) / max(abs(b) for b in naive)
    assert f"(`binomial:447`'s to {agreement:.1e})." in text
    assert (
        "T = 10,000 (best of 3 runs interleaved with the plans): naive 1.25 ms/step, `binomial:447:2` 2.20 ms/step "
        "(1.76×), `binomial:447` 2.50 ms/step (2.00×)" in text
    )
    assert "at most 448 stored states and 2 steps' graph; 199,102 steps evaluated" in text
    assert (
        "against the fewest for 447 slots reversing 2 steps at a time, 199,102 (reversing one step at a time, "
        "Revolve's optimum is 199,551)" in text
    )


@pytest.fixture
def rendering_measure(monkeypatch):
    """measure.py that runs for real and renders results.md with report.py (without editing sys.path)."""
    measure = _load(SCRIPT.name)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)  # main's setting is the process's
    monkeypatch.setattr(measure, "render", lambda out: _load("report.py").write_report(out))
    return measure


def test_the_segments_part_swaps_the_order_every_round_and_resumes(rendering_measure, tmp_path):
    measure = rendering_measure
    out = tmp_path / "out"
    args = ["--out", str(out), "segments", "--steps", "20", "--slots", "3", "--rounds", "3"]
    measure.main(args)
    data = json.loads((out / "segments.json").read_text())
    rounds = data["records"]["rounds"]
    assert [r["order"] for r in rounds] == [["binomial:3", "binomial:3:2"], ["binomial:3:2", "binomial:3"]] + [
        ["binomial:3", "binomial:3:2"]
    ]
    for r in rounds:  # the same hypergradient from either plan, to rounding
        one, two = r["binomial:3"], r["binomial:3:2"]
        assert abs(one["wd"] - two["wd"]) <= 1e-12 * abs(one["wd"]) and one["time_s"] > 0 < two["time_s"]
    text = (out / "results.md").read_text()
    assert "## Reversing 2 steps at a time" in text and "3 rounds of one run each" in text
    ratios = [r["binomial:3:2"]["time_s"] / r["binomial:3"]["time_s"] for r in rounds]
    assert f"median **{sorted(ratios)[1]:.3f}**" in text
    measure.main([*args[:-1], "4"])  # one more round: the three kept, the fourth in the swapped order
    again = json.loads((out / "segments.json").read_text())["records"]["rounds"]
    assert again[:3] == rounds and again[3]["order"] == ["binomial:3:2", "binomial:3"]


def test_a_configuration_from_before_an_option_reads_as_its_default(tmp_path):
    measure = _load(SCRIPT.name)
    path = tmp_path / "long_run.json"
    path.write_text(json.dumps({"config": {"steps": 20, "slots": 3}, "records": {"kept": 1}}))
    kept = measure._load(path, {"steps": 20, "slots": 3, "segment": 1}, {"segment": 1})
    assert kept["records"] == {"kept": 1} and kept["config"]["segment"] == 1
    assert measure._load(path, {"steps": 20, "slots": 3, "segment": 2}, {"segment": 1})["records"] == {}
    assert measure._load(path, {"steps": 20, "slots": 3, "segment": 1})["records"] == {}  # no default: another one


def test_the_interleaved_timings_rotate_the_order_every_pass(monkeypatch, tmp_path):
    measure = _load(SCRIPT.name)
    calls = []

    def fake(steps, engine, track):
        calls.append((steps, engine, track))
        return {"time_s": 1.0, "wall_s": 1.0, "peak_bytes": 1 if track else None, "lr": [1.0], "wd": 1.0}

    for name, value in (("hypergradient_with", fake), ("_warm_up", lambda: None), ("render", lambda out: None)):
        monkeypatch.setattr(measure, name, value)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)
    args = ["--out", str(tmp_path), "long", "--steps", "20", "--slots", "3", "--reference-steps", "10"]
    measure.main([*args, "--naive-steps", "0", "--repeats", "3", "--long-repeats", "1"])
    timed = [engine for steps, engine, track in calls[:9]]
    assert timed == [None, "binomial:3:2", "binomial:3", "binomial:3:2", "binomial:3", None, "binomial:3", None] + [
        "binomial:3:2"
    ]
    assert all(steps == 10 and not track for steps, _, track in calls[:9])
    # a file from before --segment, with one-step plans: kept by --segment 1 (nothing timed again), not by 2
    data = json.loads((tmp_path / "long_run.json").read_text())
    del data["config"]["segment"]
    (tmp_path / "long_run.json").write_text(json.dumps(data))
    calls.clear()
    measure.main([*args, "--naive-steps", "0", "--repeats", "3", "--long-repeats", "1", "--segment", "1"])
    assert calls == []
    measure.main([*args, "--naive-steps", "0", "--repeats", "3", "--long-repeats", "1"])
    assert len(calls) > 9


def test_the_same_part_pairs_naive_and_the_plan_through_one_t_and_resumes(rendering_measure, monkeypatch, tmp_path):
    measure = rendering_measure
    out = tmp_path / "out"
    args = ["--out", str(out), "same", "--steps", "20", "--slots", "3", "--rounds", "3"]
    measure.main(args)
    records = json.loads((out / "same_steps.json").read_text())["records"]
    rounds = records["rounds"]
    assert [r["order"] for r in rounds] == [["naive", "binomial:3:2"], ["binomial:3:2", "naive"]] + [
        ["naive", "binomial:3:2"]
    ]
    for r in rounds:  # the same hypergradient from naive and the plan, to rounding
        naive, plan = r["naive"], r["binomial:3:2"]
        assert abs(naive["wd"] - plan["wd"]) <= 1e-12 * abs(naive["wd"]) and naive["time_s"] > 0 < plan["time_s"]
        assert naive["peak_bytes"] is None is plan["peak_bytes"]  # timed runs are not tracked
    assert records["naive_memory"]["peak_bytes"] > 0
    text = (out / "results.md").read_text()
    ratios = sorted(r["binomial:3:2"]["time_s"] / r["naive"]["time_s"] for r in rounds)
    assert "## Naive through the same 20 steps" in text and f"median **{ratios[1]:.2f}×**" in text
    assert "long_run.json" not in text  # no long run of this plan: no ratio of the peaks
    calls = []

    def fake(*call):
        calls.append(call)
        return {**rounds[0]["naive"], "peak_bytes": 1 if call[2] else None}

    monkeypatch.setattr(measure, "hypergradient_with", fake)
    measure.main(args)  # all done: nothing runs, not even the check of the memory
    assert calls == []
    measure.main([*args[:-1], "4"])  # one more round, after the memory check and a warm-up: the fourth swapped
    again = json.loads((out / "same_steps.json").read_text())["records"]
    assert again["rounds"][:3] == rounds and again["rounds"][3]["order"] == ["binomial:3:2", "naive"]
    assert calls[0] == (20, None, True) and [c[1:] for c in calls[1:]] == [(None, False)] + [
        ("binomial:3:2", False),
        (None, False),
    ]
    assert len(records["naive_warm_up_s"]) == 1 and len(again["naive_warm_up_s"]) == 2  # one per process
    assert "one naive warm-up run at T = 20, timed but not paired" in (out / "results.md").read_text()


def test_the_same_part_refuses_a_t_whose_naive_run_would_not_fit(monkeypatch, tmp_path, capsys):
    measure = _load(SCRIPT.name)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)
    calls = []

    def fake(steps, engine, track):
        calls.append((steps, engine, track))
        return {"time_s": 1.0, "wall_s": 1.0, "peak_bytes": 1000 * steps if track else None, "lr": [1.0], "wd": 1.0}

    monkeypatch.setattr(measure, "hypergradient_with", fake)
    # 100,000 steps at 1,000 bytes a step: 100 MB of tensors, 180 MB resident predicted
    monkeypatch.setattr(measure, "available_bytes", lambda: 179_000_000)
    with pytest.raises(SystemExit) as exit_info:
        measure.main(["--out", str(tmp_path), "same"])
    message = str(exit_info.value)
    assert "naive at T = 100,000" in message and "95.4 MiB of tensors" in message and "--steps" in message
    assert calls == [(1000, None, True)] and not (tmp_path / "same_steps.json").exists()
    monkeypatch.setattr(measure, "available_bytes", lambda: 181_000_000)
    monkeypatch.setattr(measure, "render", lambda out: None)
    monkeypatch.setattr(measure, "_warm_up", lambda: None)
    measure.main(["--out", str(tmp_path), "same", "--rounds", "1"])
    assert calls[1:] == [(1000, None, True), (100_000, None, False), (100_000, None, False)] + [
        (100_000, "binomial:447:2", False),
        (100_000, None, True),
    ]  # the memory check's probe, the untimed warm-up, the round, naive's peak


def test_naive_through_the_same_t_alone_judges_the_time_target():
    """With rounds of naive through the long run's own T and plan, their median alone is the verdict, like for like
    (the medians at shorter T are shown, not counted), either way it falls; without them, every T counts; rounds of
    another plan or T are shown in their own section but not counted."""
    report = _load("report.py")
    long_run = json.loads(SCRIPT.with_name("long_run.json").read_text())
    long_time = long_run["records"]["long_time"]
    long_time.update(
        time_s=200.0,
        all_times_s=[200.0, 200.0, 200.0],
        naive_steps=10_000,
        naive_times_s=[10.0] * 4,
        reference_naive_times_s=[1.0] * 4,
    )  # exactly 2.00x against naive at T = 1,000 and at 10,000
    schedule = "binomial:447:2"
    same = {
        "config": {**{k: long_run["config"][k] for k in ("steps", "slots", "dtype")}, "segment": 2},
        "records": {
            "rounds": [
                {"order": ["naive", schedule], "naive": {"time_s": t, "lr": [1.0], "wd": 1.0}}
                | {schedule: {"time_s": 300.0, "lr": [1.0], "wd": 1.0}}
                for t in (100.0, 200.0, 120.0)  # 3.00x, 1.50x, 2.50x: median 2.50x
            ],
            "naive_memory": {"peak_bytes": 10 * 2**30},
        },
    }
    assert report._same_plan(same, long_run)
    lines = report.long_lines(long_run, report.same_ratios(same))
    (line,) = [line for line in lines if line.startswith("* Against naive through the same T = 100,000")]
    assert "**3.00×, 1.50×, 2.50×** (median **2.50×**)" in line
    (target,) = [line for line in lines if line.startswith("* Time target")]
    assert "like for like" in target and target.endswith("**not met** (2.50×).")  # though 2.00x at shorter T
    alone = next(line for line in report.long_lines(long_run) if line.startswith("* Time target"))
    assert "every T" in alone and "**met** (T = 1,000: 2.00×; T = 10,000: 2.00×)" in alone
    faster = [1.9, 2.1, 1.95]  # median 1.95x: met like for like, though 2.50x against naive at T = 1,000
    long_time["reference_naive_times_s"] = [0.8] * 4
    (target,) = [line for line in report.long_lines(long_run, faster) if line.startswith("* Time target")]
    assert target.endswith("**met** (1.95×).") and "2.50×" not in target
    (target,) = [line for line in report.long_lines(long_run) if line.startswith("* Time target")]
    assert "**not met** (T = 1,000: 2.50×; T = 10,000: 2.00×)" in target
    # an unpaired T (no naive runs around the long runs there) leaves no verdict without the rounds; with them, the
    # rounds alone judge
    del long_time["naive_times_s"]
    assert not [line for line in report.long_lines(long_run) if line.startswith("* Time target")]
    (target,) = [line for line in report.long_lines(long_run, faster) if line.startswith("* Time target")]
    assert target.endswith("**met** (1.95×).")
    peak = long_run["records"]["long_memory"]["peak_bytes"]
    text = "\n".join(report.same_lines(same, long_run))
    assert f"**10.0 GiB**, {10 * 2**30 / peak:,.0f}× the plan's" in text and "median **2.50×**" in text
    other = copy.deepcopy(same)
    other["config"]["steps"] = 10_000
    assert not report._same_plan(other, long_run) and "the plan's" not in "\n".join(report.same_lines(other, long_run))


def test_available_memory_is_read_from_meminfo_in_bytes(tmp_path):
    measure = _load(SCRIPT.name)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683724 kB\nMemFree:         1000000 kB\nMemAvailable:   22000000 kB\n")
    assert measure.available_bytes(meminfo) == 22_000_000 * 1024
    meminfo.write_text("MemTotal:       24683724 kB\n")  # an old kernel without the field
    assert measure.available_bytes(meminfo) is None
    assert measure.available_bytes(tmp_path / "absent") is None


def _fake_runs(calls):
    def fake(steps, engine, track):
        calls.append((steps, engine, track))
        return {"time_s": 1.0, "wall_s": 1.0, "peak_bytes": 7 if track else None, "lr": [1.0], "wd": 1.0}

    return fake


def test_the_same_part_resumes_only_what_is_left_and_restarts_for_other_code(monkeypatch, tmp_path, capsys):
    measure = _load(SCRIPT.name)
    calls = []
    for name, value in (("hypergradient_with", _fake_runs(calls)), ("_warm_up", lambda: None), ("render", print)):
        monkeypatch.setattr(measure, name, value)
    monkeypatch.setattr(measure.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(measure, "provenance", lambda: {"memmaml_commit": "a"})
    args = ["--out", str(tmp_path), "same", "--steps", "20", "--slots", "3", "--rounds", "2"]
    measure.main(args)
    path = tmp_path / "same_steps.json"
    data = json.loads(path.read_text())
    assert data["records"]["commit"] == "a" and data["records"]["rounds_asked"] == 2
    # stopped after the rounds, before naive's peak: the rerun checks the memory and measures the peak alone
    del data["records"]["naive_memory"]
    path.write_text(json.dumps(data))
    calls.clear()
    measure.main(args)
    assert calls == [(20, None, True), (20, None, True)]  # the check's probe (min(1000, 20) steps), then the peak
    # the same stop, but rerun at another commit: started afresh, every round again
    data = json.loads(path.read_text())
    del data["records"]["naive_memory"]
    path.write_text(json.dumps(data))
    monkeypatch.setattr(measure, "provenance", lambda: {"memmaml_commit": "b"})
    calls.clear()
    measure.main(args)
    assert "made at another commit, starting afresh" in capsys.readouterr().out
    assert [c[1:] for c in calls] == [(None, True), (None, False), (None, False), ("binomial:3:2", False)] + [
        ("binomial:3:2", False),
        (None, False),
        (None, True),
    ]
    assert json.loads(path.read_text())["records"]["commit"] == "b"
    calls.clear()
    measure.main([*args[:-1], "1"])  # fewer rounds than there are: nothing to do, at any commit
    assert calls == []


def test_the_report_counts_naive_through_the_same_t_only_when_it_is_the_long_runs_own_and_finished(tmp_path):
    report = _load("report.py")
    long_run = json.loads(SCRIPT.with_name("long_run.json").read_text())
    same = json.loads(SCRIPT.with_name("same_steps.json").read_text())
    assert report._same_plan(same, long_run) and report.same_finished(same)

    def verdict(same_data):
        (tmp_path / "long_run.json").write_text(json.dumps(long_run))
        (tmp_path / "same_steps.json").write_text(json.dumps(same_data))
        report.write_report(tmp_path)
        text = (tmp_path / "results.md").read_text()
        (line,) = [line for line in text.splitlines() if line.startswith("* Time target")]
        return line, text

    line, text = verdict(same)
    median = statistics.median(report.same_ratios(same))
    assert line.endswith(f"({median:.2f}×).") and "like for like" in line and "Stopped or still running" not in text
    assert "the plan's 9.9 MiB (long_run.json)" in text
    other = copy.deepcopy(same)
    other["config"]["steps"] = 10_000  # another T: shown in its own section, not counted, no ratio of the peaks
    line, text = verdict(other)
    assert "like for like" not in line and "## Naive through the same 10,000 steps" in text
    assert "× the plan's" not in text.split("## Naive through the same")[1].split("\n## ")[0]
    stopped = copy.deepcopy(same)
    n = len(same["records"]["rounds"])
    stopped["records"]["rounds_asked"] = n + 1  # a stopped (or running) part: not counted
    line, text = verdict(stopped)
    assert "like for like" not in line and f"Stopped or still running: {n} of {n + 1} rounds." in text
    del stopped["records"]["naive_memory"]
    stopped["records"]["rounds_asked"] = n
    line, text = verdict(stopped)
    assert "like for like" not in line and "naive's peak not yet measured" in text
