"""scripts/compare_memory.py: bad input, and one end-to-end sweep of every engine on a tiny MLP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg16"], "invalid choice: 'vgg16'"),
        (["--budget", "11 parsecs"], "cannot read '11 parsecs' as a memory size"),
        (["--steps", "1,x"], "expected positive integers separated by commas, got '1,x'"),
        (
            ["--engines", "naive,revolve:3"],
            "unknown engine 'revolve:3'; use one of 'naive', 'uniform:K', 'sqrt', 'binomial:SLOTS', 'auto:BUDGET'",
        ),
        (["--engines", "binomial:auto", "--budget", "0"], "a memory size must be positive, got '0'"),
        (["--peers", "learn2learn"], "unknown peer 'learn2learn'"),
        (["--batch-size", "0"], "batch_size must be a positive integer, got 0"),
    ],
)
def test_bad_input_exits_with_a_message(args, message):
    proc = run_script(*args, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_help_explains_every_flag():
    proc = run_script("--help", timeout=60)
    assert proc.returncode == 0
    for flag in (
        "--model",
        "--image-size",
        "--batch-size",
        "--steps",
        "--engines",
        "--device",
        "--dtype",
        "--out",
        "--budget",
        "--host-budget",
        "--peers",
        "--fresh-batches",
        "--repeats",
        "--optimizer",
        "--render-only",
        "--max-run-seconds",
    ):
        assert flag in proc.stdout
    assert "pip install torch-maml" in proc.stdout


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
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["provenance"]["torch"] and data["provenance"]["command"].startswith("python scripts/compare_memory.py")
    assert "memmaml_commit" in data["provenance"] and data["workload"]["model"] == "mlp"
    assert data["probe"]["status"] == "ok" and data["probe"]["costs"]["graph_bytes"] > 0
    records = {(r["label"], r["steps"]): r for r in data["records"]}
    assert set(records) == {(e, n) for e in ("naive", "uniform:2", "binomial:auto+offload") for n in (2, 8)}
    for r in records.values():
        assert r["status"] == "ok" and r["peak_bytes"] > 0 and r["rss_peak_bytes"] > r["peak_bytes"]
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
    rendered = run_script("--render-only", "--out", str(out), timeout=120)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert (out / "results.md").read_text() == text and (out / "results.png").exists()


def test_a_failing_configuration_is_recorded_and_the_sweep_goes_on(tmp_path):
    # a timeout far shorter than a Python start-up: every run fails, none is dropped, the report is written
    out = tmp_path / "run"
    proc = run_script(
        *TINY,
        "--engines",
        "naive,uniform:1",
        "--steps",
        "1,2",
        "--repeats",
        "0",
        "--timeout",
        "0.01",
        "--out",
        str(out),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "results.json").read_text())
    assert data["probe"]["status"] == "timeout"
    assert [(r["label"], r["steps"], r["status"]) for r in data["records"]] == [
        ("naive", 1, "timeout"),
        ("uniform:1", 1, "timeout"),
        ("naive", 2, "timeout"),
        ("uniform:1", 2, "timeout"),
    ]
    assert (out / "results.md").exists()
