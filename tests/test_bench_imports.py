"""memmaml.bench and memmaml.cli sit on top of memmaml and use only its public API.

Read from the source with ``ast``, not by importing: every import and every ``memmaml.X`` attribute in the two
packages names a public memmaml name (``memmaml.__all__``), a public namespace (``memmaml.models``,
``memmaml.tasks``, ``memmaml.bench``, ``memmaml.cli``) or a module of the package itself -- never a private
``memmaml._*`` module, which may move. The command lines use memmaml.bench's public names only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import memmaml

ROOT = Path(memmaml.__file__).resolve().parent
NAMESPACES = {"models", "tasks", "bench", "cli"}
PACKAGES = ("bench", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of everything module ``module`` (at ``path``) imports from memmaml, relative
    imports resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "memmaml":
            found.append((node.lineno, f"memmaml.{node.attr}"))
    return [(line, name) for line, name in found if name == "memmaml" or name.startswith("memmaml.")]


def _violation(importer: str, name: str) -> str | None:
    """Why importing ``name`` from module ``importer`` breaks the layering, or ``None``."""
    parts = name.split(".")
    if len(parts) == 1:
        return None
    top = parts[1]
    if top in ("bench", "cli"):
        own = importer.split(".")[1]
        if own == "cli" and top == "bench" and len(parts) > 2 and parts[2].startswith("_"):
            return "the command lines use memmaml.bench's public names only"
        return None
    if top in NAMESPACES:
        return None if len(parts) == 2 or not parts[2].startswith("_") else "a private module of a namespace"
    if top == "__version__":
        return None
    if top.startswith("_"):
        return "a private memmaml module"
    return None if top in memmaml.__all__ else f"{top!r} is not in memmaml.__all__"


def _sources():
    return sorted(path for package in PACKAGES for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("path", _sources(), ids=lambda p: str(p.relative_to(ROOT.parent)))
def test_imports_only_public_memmaml(path):
    importer = _module_name(path)
    problems = [
        f"{path.name}:{line}: {name} ({why})"
        for line, name in _imports(path, importer)
        if (why := _violation(importer, name))
    ]
    assert not problems, "\n".join(problems)


def test_the_check_sees_what_it_must(tmp_path):
    """The rules catch the old bench's imports (relative and absolute) and let the public ones through."""
    bench = "memmaml.bench._sweep"
    assert _violation(bench, "memmaml._auto.Auto") == "a private memmaml module"
    assert _violation(bench, "memmaml._checks.positive_int") == "a private memmaml module"
    assert _violation("memmaml.cli.compare_memory", "memmaml.bench._process.write_json_atomic") is not None
    assert _violation(bench, "memmaml.Auto") is None and _violation(bench, "memmaml.models") is None
    assert _violation(bench, "memmaml.bench._engines.predict") is None
    assert _violation(bench, "memmaml.tasks._omniglot.Omniglot") == "a private module of a namespace"
    assert _violation(bench, "memmaml.no_such_name") == "'no_such_name' is not in memmaml.__all__"
    source = tmp_path / "_sweep.py"
    source.write_text(
        "from .._auto import Auto\nimport memmaml\nmemmaml._units.parse_size\nfrom ._engines import predict\n"
    )
    assert sorted(name for _, name in _imports(source, bench)) == [
        "memmaml",
        "memmaml._auto.Auto",
        "memmaml._units",
        "memmaml.bench._engines.predict",
    ]
