"""The notebooks run top to bottom, and the stored copies hold the outputs of a full run.

Each notebook is executed with nbclient, in a temporary copy, in its quick mode
(``MEMMAML_NOTEBOOK_QUICK=1`` is read in one cell of every notebook and picks
small sizes); any error in any cell fails the test. The stored notebooks are
never written by the tests. Regenerate and re-run them with
``python notebooks/build_notebooks.py --execute``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ["memory_efficient_maml.ipynb", "maml_from_scratch.ipynb", "sine_wave_maml.ipynb"]
CELL_TIMEOUT_S = 300  # per cell; the three notebooks take about a minute together in quick mode


def _outputs_text(cell) -> str:
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output.get("text", ""))
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMMAML_NOTEBOOK_QUICK", "1")  # the kernel inherits this environment
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):  # one thread each: CI machines are small and shared
        monkeypatch.setenv(variable, "1")
    copy = tmp_path / name
    shutil.copyfile(NOTEBOOKS / name, copy)
    nb = nbformat.read(copy, as_version=4)
    for cell in nb.cells:  # run from a clean slate, not on top of the stored outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
    nbformat.write(nb, copy)
    text = "".join(_outputs_text(cell) for cell in nb.cells if cell.cell_type == "code")
    assert "quick mode: True" in text


@pytest.mark.parametrize("name", NAMES)
def test_stored_notebook_holds_a_full_run(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code_cells = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1)), (
        "the stored notebook was not run top to bottom in one session")
    errors = [output for cell in code_cells for output in cell.outputs if output.output_type == "error"]
    assert not errors, errors
    text = "".join(_outputs_text(cell) for cell in code_cells)
    assert "quick mode: False" in text, "the stored outputs must come from a full run, not the quick mode"
    assert any("image/png" in output.get("data", {}) for cell in code_cells for output in cell.outputs), "no plots"
