"""The hypergradients benchmark's command line refuses bad values before any work: argparse's one error line,
exit status 2, and no --out folder made."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "hypergradients" / "measure.py"


@pytest.fixture(scope="module")
def measure():
    spec = importlib.util.spec_from_file_location("hypergradients_measure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        sys.modules.pop("problems", None)
    return module


@pytest.mark.parametrize(
    "args, flag",
    [
        (["long", "--steps", "15"], "--steps"),
        (["long", "--steps", "0"], "--steps"),
        (["long", "--steps", "1e5"], "--steps"),
        (["long", "--reference-steps", "-10"], "--reference-steps"),
        (["long", "--naive-steps", "25"], "--naive-steps"),
        (["long", "--slots", "0"], "--slots"),
        (["long", "--repeats", "x"], "--repeats"),
        (["errors", "--horizons", "10,,100"], "--horizons"),
        (["errors", "--problems", "nope"], "--problems"),
        (["errors", "--naive-max", "-1"], "--naive-max"),
        (["downstream", "--seeds", "0"], "--seeds"),
    ],
)
def test_a_bad_value_is_one_error_line(measure, args, flag, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        measure.main(["--out", str(out), *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("measure.py") or "error:" in line]
    assert len(errors) == 1 and f"argument {flag}" in errors[0], err
    assert "Traceback" not in err
    assert not out.exists()
