"""Sphinx configuration: MyST pages, the API reference from docstrings, the notebooks with their stored outputs.

Build: ``python -m sphinx -W --keep-going -n -b html docs docs/_build/html`` (CONTRIBUTING.md). ``-n``
makes every reference that does not resolve a warning and ``-W`` every warning an error, so a dead
internal link or cross-reference fails the build; references into torch and the standard library are
left unresolved on purpose (the build runs offline, without intersphinx inventories).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))

import memmaml  # noqa: E402

project = "memmaml"
author = "the memmaml authors"
copyright = "2026, the memmaml authors"
version = release = memmaml.__version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
html_theme = "furo"
html_title = f"memmaml {release}"
html_static_path: list[str] = []

# MyST: heading anchors for links like guide.md#schedules, $math$, ::: fences
myst_heading_anchors = 3
myst_enable_extensions = ["dollarmath", "colon_fence"]
suppress_warnings = ["mystnb.unknown_mime_type"]

# notebooks: rendered from the outputs stored with them, never executed here
nb_execution_mode = "off"

# API reference
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # NamedTuple fields: autodoc documents them already

# -n: references that must resolve are memmaml's own; the rest of the world is not linked
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(torch|typing|collections|numbers|types|os|pathlib|enum|contextlib|argparse|numpy|np|nn)\b.*"),
    (r"py:.*", r"(Tensor|Module|Any|Callable|Iterable|Iterator|Mapping|Sequence|NamedTuple|Path|PathLike)"),
    (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|None|object|type|slice|Ellipsis)"),
    (r"py:.*", r"(optional|callable|iterable|mapping|sequence)"),
    (r"py:class", r"(.*\.)?(T|S|Op|Params|Extras|Rng|Selection|GetParameters|Gradient)$"),
    (r"py:class", r"(BatchNorm.*|Dropout|LSTM|GRU|RNN|Conv2d|Linear|GradScaler|Generator|tuple\[.*)"),
]


def _copy_notebooks(app) -> None:
    """The notebooks live in ``notebooks/``; Sphinx reads only its source folder, so copy them in."""
    target = DOCS / "notebooks"
    target.mkdir(exist_ok=True)
    sources = {notebook.name for notebook in (ROOT / "notebooks").glob("*.ipynb")}
    for stale in target.glob("*.ipynb"):
        if stale.name not in sources:  # a notebook renamed or removed since the last build
            stale.unlink()
    for notebook in (ROOT / "notebooks").glob("*.ipynb"):
        destination = target / notebook.name
        if not destination.exists() or destination.read_bytes() != notebook.read_bytes():
            shutil.copyfile(notebook, destination)


def setup(app) -> None:
    app.connect("builder-inited", _copy_notebooks)
