"""Build the notebooks from their sources in ``notebooks/src``, and optionally run them.

Each notebook's cells are a Python file, ``notebooks/src/<name>.py``, in the
percent format of jupytext: a line ``# %%`` starts a code cell, a line
``# %% [markdown]`` starts a Markdown cell whose lines are comments (``# text``,
or ``#`` alone for an empty line). The sources are plain modules that linters,
``py_compile`` and ``duplicates`` read like any other code; this script turns
them into ``notebooks/<name>.ipynb`` (jupytext is not needed; it reads the same
files, for those who want to pair them with a notebook front end):

    python notebooks/build.py                    # write every notebook, without outputs
    python notebooks/build.py --execute          # write them, run them top to bottom, store the outputs
    python notebooks/build.py --execute --only sine_wave_maml

``--execute`` runs each notebook with nbclient at its full size (the
``MEMMAML_NOTEBOOK_QUICK`` environment variable is removed for the run); the
test suite runs them in quick mode instead (tests/test_notebooks.py), and
checks that the stored notebooks hold exactly the cells built here.

The Colab notebooks (``COLAB``) get one cell that is not in their source:
before the first code cell, a cell that installs memmaml from a copy of its
source uploaded to (or cloned into) the session, when memmaml is missing.
memmaml is not on a package index and has no public repository yet, so the
cell names no URL.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from memmaml.bench import QUICK_MODE_VARIABLE

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "src"
NAMES = sorted(path.stem for path in SOURCES.glob("*.py"))

COLAB = {"memory_efficient_maml"}  # notebooks with the install cell and a GPU runtime

_MARKER = re.compile(r"# %%(.*)")

INSTALL_CELL = """\
# On Colab: upload an archive of the memmaml source (a zip of the repository) to the session's files,
# or clone the repository, and name it here; nothing happens when memmaml is already importable.
MEMMAML_SOURCE = "memmaml.zip"  # an archive or a folder holding setup.py

import importlib.util
import subprocess
import sys
from pathlib import Path

spec = importlib.util.find_spec("memmaml")
if spec is not None and spec.origin is not None:  # a folder named memmaml (a clone) is no installed package
    print("memmaml is already installed; nothing to do")
elif not Path(MEMMAML_SOURCE).exists():
    raise FileNotFoundError(f"upload the memmaml source as {MEMMAML_SOURCE!r} (or set MEMMAML_SOURCE to its path)")
else:  # a path, never a name pip would look up on an index
    source = str(Path(MEMMAML_SOURCE).resolve())
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", source], check=True)"""


def parse_cells(text: str, source: str = "<source>") -> list[tuple[str, str]]:
    """The ``(cell_type, source)`` pairs of a percent-format file.

    Blank lines at the start and end of a cell are dropped (they separate
    cells in the file). Raises ``ValueError``, naming the line, for text before
    the first cell marker, a marker other than ``# %%`` and ``# %% [markdown]``,
    a Markdown line that is not a comment, and an empty cell.
    """
    cells: list[tuple[str, str, int]] = []  # (type, source, line of the marker)
    kind, lines, start = None, [], 0

    def close() -> None:
        if kind is None:
            return
        body = "\n".join(lines).strip("\n")
        if not body.strip():
            raise ValueError(f"{source}:{start}: empty cell")
        cells.append((kind, body, start))

    for number, line in enumerate(text.splitlines(), start=1):
        marker = _MARKER.fullmatch(line)
        if marker:
            close()
            label = marker.group(1).strip()
            if label not in ("", "[markdown]"):
                raise ValueError(f"{source}:{number}: unknown cell marker {line!r}; use '# %%' or '# %% [markdown]'")
            kind, lines, start = ("markdown" if label else "code"), [], number
        elif kind is None:
            if line.strip():
                raise ValueError(f"{source}:{number}: text before the first cell marker ('# %%')")
        elif kind == "markdown":
            if line.strip() and line != "#" and not line.startswith("# "):
                raise ValueError(
                    f"{source}:{number}: a Markdown cell's lines are comments ('# text' or '#'), got {line!r}"
                )
            lines.append(line[2:])
        else:
            lines.append(line)
    close()
    return [(kind, body) for kind, body, _ in cells]


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` as built from ``src/<name>.py``, without outputs."""
    path = SOURCES / f"{name}.py"
    cells = parse_cells(path.read_text(encoding="utf-8"), str(path.relative_to(HERE.parent)))
    colab = name in COLAB
    if colab:
        cells = _with_colab_cells(name, cells)
    nb = new_notebook(
        cells=[
            (new_code_cell if kind == "code" else new_markdown_cell)(body, id=f"cell-{i}")
            for i, (kind, body) in enumerate(cells)
        ]
    )
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    if colab:
        nb.metadata["accelerator"] = "GPU"
        nb.metadata["colab"] = {"provenance": [], "gpuType": "T4"}
    return nb


def _with_colab_cells(name: str, cells: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The install cell before the first code cell."""
    first_code = next(i for i, (kind, _) in enumerate(cells) if kind == "code")
    return [*cells[:first_code], ("code", INSTALL_CELL), *cells[first_code:]]


def execute(nb: nbformat.NotebookNode, path: Path, timeout: int) -> float:
    """Run ``nb`` top to bottom at full size in the folder of ``path``, storing outputs; returns seconds."""
    from nbclient import NotebookClient

    quick = os.environ.pop(QUICK_MODE_VARIABLE, None)  # the stored outputs are full runs
    try:
        client = NotebookClient(
            nb,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            coalesce_streams=True,
            resources={"metadata": {"path": str(path.parent)}},
        )
        start = time.perf_counter()
        client.execute()
        return time.perf_counter() - start
    finally:
        if quick is not None:
            os.environ[QUICK_MODE_VARIABLE] = quick


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--execute", action="store_true", help="run each notebook (full size) and store its outputs")
    parser.add_argument("--only", choices=NAMES, action="append", help="build only this notebook (repeatable)")
    parser.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds for --execute")
    args = parser.parse_args(argv)
    for name in args.only or NAMES:
        nb = build(name)
        path = HERE / f"{name}.ipynb"
        if args.execute:
            seconds = execute(nb, path, args.timeout)
            nb.metadata.pop("widgets", None)
            print(f"{path.name}: executed in {seconds:.0f} s", file=sys.stderr)
        nbformat.validate(nb)
        nbformat.write(nb, path)
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
