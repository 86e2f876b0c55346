"""Packaging and docs that must not drift: one version, an index description without relative links, the
console scripts, the README's length, every public name in the API reference."""

import importlib
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

import memmaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_kwargs():
    """What setup.py passes to setuptools.setup (run with setup() replaced, so nothing is built)."""
    with mock.patch("setuptools.setup") as setup:
        runpy.run_path(str(ROOT / "setup.py"), run_name="not_main")
    return setup.call_args.kwargs


def test_the_version_lives_in_one_place(setup_kwargs):
    assert setup_kwargs["version"] == memmaml.__version__
    assert not re.search(r"version\s*=\s*['\"]\d", (ROOT / "setup.py").read_text()), (
        "setup.py reads it, never repeats it"
    )


def test_the_index_description_has_no_relative_links(setup_kwargs):
    description = setup_kwargs["long_description"]
    links = re.findall(r"\]\(([^)]+)\)", description)
    assert all(link.startswith(("http://", "https://", "#")) for link in links), links
    assert "docs/benchmarks.md" in description, "a relative link keeps the file it named, as text"


def test_console_scripts_point_at_mains(setup_kwargs):
    scripts = dict(line.split("=") for line in setup_kwargs["entry_points"]["console_scripts"])
    assert set(scripts) == {"memmaml-compare", "memmaml-train", "memmaml-gpu-check"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))


@pytest.mark.parametrize("script", ["compare_memory", "meta_train", "gpu_check"])
def test_scripts_and_commands_are_the_same_program(script, monkeypatch):
    """scripts/X.py and the console script run one main: their --help texts agree but for the program name.

    Both wrap at 80 columns (argparse reads COLUMNS), whatever the terminal the tests run in."""
    monkeypatch.setenv("COLUMNS", "80")
    module = importlib.import_module(f"memmaml.cli.{script}")
    direct = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / f"{script}.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "80"},
    )
    assert direct.returncode == 0, direct.stderr
    strip = lambda text: re.sub(r"usage: \S+", "usage:", text)
    assert strip(direct.stdout) == strip(module.build_parser().format_help())


def test_extras_keep_the_linter_and_the_docs_out_of_the_tests(setup_kwargs):
    extras = setup_kwargs["extras_require"]
    assert {"test", "lint", "docs", "examples"} <= set(extras)
    assert not any(req.startswith("ruff") for req in extras["test"])
    assert setup_kwargs["python_requires"] == ">=3.11" and "torch>=2.13" in setup_kwargs["install_requires"]


def test_readme_is_a_front_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300


def test_every_public_name_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name in memmaml.__all__ if f"memmaml.{name}\n" not in api]
    assert not missing, f"not in docs/api.md: {missing}"
