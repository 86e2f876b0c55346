"""The package's layers, as a test: every import points down, across wings only through a wing's package.

The layers, bottom up (CONTRIBUTING.md, "Layers"):

* the root helpers ``memmaml._checks``, ``memmaml._units``, ``memmaml._host`` import nothing of memmaml;
* ``schedules`` (pure Python: no torch) and ``optim`` import only the root helpers;
* ``engine`` imports ``schedules`` and ``optim``; ``tasks`` and ``models`` only the root helpers;
* ``training`` imports ``engine``, ``optim``, ``schedules`` and ``tasks``;
* ``bench`` imports only memmaml's public names (``memmaml``, ``memmaml.models``, ``memmaml.tasks``);
* ``cli`` imports the public names and ``bench``;
* ``memmaml/__init__.py`` imports the wings, and loads ``bench`` lazily (PEP 562): no cycle.

A module imports the modules of its own wing directly; another wing only through that wing's package
(``from ..schedules import Auto``, not ``from ..schedules._auto import Auto``), so a wing's ``__init__``
is its whole interface. Every import counts, function-level ones included.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "memmaml"
ROOT_HELPERS = {"memmaml._checks", "memmaml._units", "memmaml._host"}
PUBLIC = {"memmaml", "memmaml.models", "memmaml.tasks"}

#: what each layer may import besides itself (layer names; "public" is PUBLIC, "helpers" ROOT_HELPERS)
ALLOWED = {
    "helpers": set(),
    "schedules": {"helpers"},
    "optim": {"helpers"},
    "engine": {"helpers", "schedules", "optim"},
    "tasks": {"helpers"},
    "models": {"helpers"},
    "training": {"helpers", "schedules", "optim", "engine", "tasks"},
    "bench": {"public"},
    "cli": {"public", "bench"},
    "root": {"helpers", "schedules", "optim", "engine", "training", "tasks", "models"},
}
WINGS = {"schedules", "optim", "engine", "training", "tasks", "bench", "cli"}


def module_name(path: Path, package: Path) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    if module == "memmaml":
        return "root"
    if module in ROOT_HELPERS:
        return "helpers"
    if parts[1] == "models":
        return "models"
    return parts[1]


def imports_of(path: Path, module: str) -> list[tuple[int, str, str]]:
    """``(line, imported module, the import as written)`` for every memmaml import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "memmaml":
                    found.append((node.lineno, alias.name, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "memmaml":
                continue
            written = f"from {'.' * node.level}{node.module or ''} import {', '.join(a.name for a in node.names)}"
            # `from memmaml import models` imports the submodule memmaml.models
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if (PACKAGE.parent / sub.replace(".", "/")).with_suffix(".py").exists() or (
                    PACKAGE.parent / sub.replace(".", "/") / "__init__.py"
                ).exists():
                    found.append((node.lineno, sub, written))
                else:
                    found.append((node.lineno, target, written))
    return found


#: layers that must not import torch (or numpy): they plan, they do not compute
NO_TORCH = {"helpers", "schedules"}


def outside_imports(path: Path) -> list[tuple[int, str]]:
    """``(line, top-level package)`` for every import of something other than memmaml in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return [(line, name) for line, name in found if name != "memmaml"]


def private_attributes(path: Path) -> list[tuple[int, str]]:
    """``(line, dotted name)`` for every ``memmaml.<wing>._private`` reached by attribute access in ``path``."""
    found, inner = [], set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):  # outer attributes come first
        if isinstance(node, ast.Attribute) and id(node) not in inner:
            parts, value = [node.attr], node.value
            while isinstance(value, ast.Attribute):
                inner.add(id(value))
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id == "memmaml":
                dotted = ".".join(["memmaml", *reversed(parts)])
                if any(part.startswith("_") and not part.startswith("__") for part in parts):
                    found.append((node.lineno, dotted))
    return found


def violations(package: Path) -> list[str]:
    """Every import that breaks the layering, as ``file:line: import -- why``."""
    problems = []
    for path in sorted(package.rglob("*.py")):
        module = module_name(path, package)
        layer = layer_of(module)
        if layer in NO_TORCH:
            for line, name in outside_imports(path):
                if name in ("torch", "numpy", "torchvision"):
                    problems.append(
                        f"{path.relative_to(package.parent)}:{line}: import {name} -- {layer} imports no {name}"
                    )
        if layer in {"bench", "cli"}:
            for line, dotted in private_attributes(path):
                where = f"{path.relative_to(package.parent)}:{line}"
                problems.append(f"{where}: {dotted} -- {layer} may use only memmaml's public names")
        for line, target, written in imports_of(path, module):
            where = f"{path.relative_to(package.parent)}:{line}: {written}"
            target_layer = layer_of(target)
            if target_layer == layer and layer != "root":
                continue  # within a wing
            if layer == "root" and target_layer in {"bench", "cli"}:
                problems.append(f"{where} -- memmaml/__init__.py must load {target_layer} lazily (PEP 562)")
                continue
            if layer in {"bench", "cli"}:
                ok = target in PUBLIC or ("bench" in ALLOWED[layer] and target_layer == "bench")
                if not ok:
                    problems.append(f"{where} -- {layer} may import only memmaml's public names ({sorted(PUBLIC)})")
                continue
            if target_layer not in ALLOWED[layer]:
                problems.append(f"{where} -- {layer} may not import {target_layer} (allowed: {sorted(ALLOWED[layer])})")
                continue
            if target_layer in WINGS and target != ".".join(target.split(".")[:2]):
                problems.append(f"{where} -- import {target_layer} through its package, not its private modules")
    return problems


def test_every_import_points_down():
    problems = violations(PACKAGE)
    assert not problems, "imports that break the layers:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "module, planted, why",
    [
        ("schedules/_plans.py", "from ..engine import unroll", "schedules may not import engine"),
        ("optim/_fused.py", "from ..schedules import Auto", "optim may not import schedules"),
        ("engine/_unroll.py", "from ..training import MetaTrainer", "engine may not import training"),
        ("engine/_maml.py", "from ..schedules._auto import Auto", "through its package, not its private modules"),
        ("bench/_sweep.py", "from memmaml.engine import unroll", "bench may import only memmaml's public names"),
        ("__init__.py", "from . import bench", "must load bench lazily"),
        ("tasks/_base.py", "from ..engine import unroll", "tasks may not import engine"),
        ("schedules/_parse.py", "import torch", "schedules imports no torch"),
        ("_units.py", "import numpy as np", "import numpy -- helpers imports no numpy"),
        (
            "bench/_sweep.py",
            "return memmaml.engine._executor.Executor",
            "memmaml.engine._executor.Executor -- bench may use only memmaml's public names",
        ),
    ],
)
def test_a_planted_upward_import_is_reported(tmp_path, module, planted, why):
    copy = tmp_path / "memmaml"
    for path in PACKAGE.rglob("*.py"):
        target = copy / path.relative_to(PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    victim = copy / module
    preamble = "import memmaml  # noqa: F401\n\n\n" if "memmaml." in planted.split("import")[0] else ""
    victim.write_text(victim.read_text() + f"\n\n{preamble}def _planted():\n    {planted}\n")
    problems = violations(copy)
    assert len(problems) == 1 and module in problems[0] and why in problems[0], problems
    assert planted in problems[0] or " -- " in why, problems  # shown as written, or as `why` says


def test_the_planning_layer_imports_without_torch():
    """``memmaml.schedules`` and the root helpers, loaded under an import hook that refuses torch (the package's
    own ``__init__`` imports torch, so a bare package object stands in for it)."""
    code = textwrap.dedent(
        f"""
        import sys, types
        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "numpy"):
                    raise ImportError(f"{{name}} imported by the planning layer")
        sys.meta_path.insert(0, NoTorch())
        package = types.ModuleType("memmaml")
        package.__path__ = [{str(PACKAGE)!r}]
        sys.modules["memmaml"] = package
        import memmaml.schedules as s
        print(s.Auto("1GiB").choose(1000, s.StepCosts(100, 2000, 1.0, 3.0)).describe())
        print(s.Binomial(10).stats(1000))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "torch" not in out.stdout and "Auto(budget=1.0 GiB) chose" in out.stdout
