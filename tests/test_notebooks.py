"""The notebooks run top to bottom, hold the cells of their sources, and the stored copies hold a full run.

Each notebook is executed with nbclient, in a temporary copy, in its quick mode
(``MEMMAML_NOTEBOOK_QUICK=1``, read once per notebook by
``memmaml.bench.quick_mode()``, picks small sizes); any error in any cell fails
the test. The stored notebooks must hold exactly the cells that
``notebooks/build.py`` builds from ``notebooks/src/<name>.py``, so the sources and
the notebooks cannot drift apart. The stored notebooks are never written by
the tests. Regenerate and re-run them with ``python notebooks/build.py --execute``.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = [
    "memory_efficient_maml",
    "maml_from_scratch",
    "sine_wave_maml",
    "long_horizon_hypergradients",
    "exact_vs_approximate_hypergradients",
]
CELL_TIMEOUT_S = 300  # per cell; the notebooks take about a minute together in quick mode
# notebooks that need scikit-learn (its digits data set): the "examples" and "test" extras install it
NEEDS_SKLEARN = {"long_horizon_hypergradients", "exact_vs_approximate_hypergradients"}


def _load_build():
    spec = importlib.util.spec_from_file_location("notebooks_build", NOTEBOOKS / "build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = _load_build()


def _outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


def test_every_source_is_a_notebook() -> None:
    assert sorted(NAMES) == build.NAMES
    assert sorted(path.stem for path in NOTEBOOKS.glob("*.ipynb")) == build.NAMES


@pytest.mark.parametrize("name", NAMES)
def test_source_compiles(name: str) -> None:
    path = NOTEBOOKS / "src" / f"{name}.py"
    compile(path.read_text(encoding="utf-8"), str(path), "exec")  # raises SyntaxError, naming the line


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_holds_the_cells_of_its_source(name: str) -> None:
    stored = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    built = build.build(name)
    assert [(cell.cell_type, cell.source) for cell in stored.cells] == [
        (cell.cell_type, cell.source) for cell in built.cells
    ], (
        f"notebooks/{name}.ipynb does not hold the cells of notebooks/src/{name}.py: "
        f"run python notebooks/build.py --execute --only {name}"
    )
    assert stored.metadata["kernelspec"] == built.metadata["kernelspec"]


def test_percent_format_parser() -> None:
    text = "# %% [markdown]\n# # Title\n#\n# text\n\n\n# %%\nx = 1\n\n\ndef f():\n    return x\n\n# %%\nprint(f())\n"
    assert build.parse_cells(text) == [
        ("markdown", "# Title\n\ntext"),
        ("code", "x = 1\n\n\ndef f():\n    return x"),
        ("code", "print(f())"),
    ]
    for bad, message in [
        ("x = 1\n# %%\ny = 2\n", "before the first cell marker"),
        ("# %% [raw]\ntext\n", "unknown cell marker"),
        ("# %% [markdown]\nnot a comment\n", "lines are comments"),
        ("# %%\n\n# %%\nx = 1\n", "empty cell"),
    ]:
        with pytest.raises(ValueError, match=message):
            build.parse_cells(bad)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in NEEDS_SKLEARN:
        pytest.importorskip("sklearn", reason=f"notebook {name} needs scikit-learn: pip install -e '.[examples]'")
    monkeypatch.setenv("MEMMAML_NOTEBOOK_QUICK", "1")  # the kernel inherits this environment
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread each: CI machines are small and shared
        monkeypatch.setenv(variable, "1")
    copy = tmp_path / f"{name}.ipynb"
    shutil.copyfile(NOTEBOOKS / f"{name}.ipynb", copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # run from a clean slate, not on top of the stored outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    nbformat.write(nb, copy)
    text = "".join(_outputs_text(cell) for cell in nb.cells if cell.cell_type == "code")
    assert "quick mode: True" in text


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_holds_a_full_run(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1)), (
        "the stored notebook was not run top to bottom in one session"
    )
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    text = "".join(_outputs_text(cell) for cell in code_cells)
    assert "quick mode: False" in text, "the stored outputs must come from a full run, not the quick mode"
    assert any("image/png" in output.get("data", {}) for cell in code_cells for output in cell.outputs), "no plots"
