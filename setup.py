"""Packaging. The version lives in memmaml/__init__.py (read here, not imported: that needs torch)."""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
VERSION = re.search(r'^__version__ = "([^"]+)"$', (HERE / "memmaml" / "__init__.py").read_text(), re.M).group(1)


def index_description() -> str:
    """The README for a package index: links into the source tree mean nothing there, so a relative link
    keeps its text (and names the file), and a relative image keeps its caption."""
    text = (HERE / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"!\[([^\]]*)\]\((?!https?://)[^)]*\)", r"*\1*", text)
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)([^)]*)\)", r"\1 (`\2` in the source tree)", text)


setup(
    name="memmaml",
    version=VERSION,
    description="Memory-efficient MAML in PyTorch: exact meta-gradients through long inner loops",
    long_description=index_description(),
    long_description_content_type="text/markdown",
    author="the memmaml authors",
    license="MIT",  # an SPDX expression (the license classifiers are deprecated)
    license_files=["LICENSE"],
    packages=find_packages(include=["memmaml", "memmaml.*"]),
    package_data={"memmaml": ["py.typed"], "memmaml.tasks": ["splits/*.json"]},
    python_requires=">=3.11",
    install_requires=["torch>=2.13", "torchvision>=0.28", "numpy", "tqdm"],
    extras_require={
        "test": [
            "pytest",
            "sybil>=9",
            "matplotlib",
            "nbclient",
            "nbformat",
            "ipykernel",
            "scikit-learn",
        ],
        "lint": ["ruff==0.17.6"],
        "docs": ["sphinx>=8", "myst-nb>=1.1", "furo"],
        "examples": ["scikit-learn", "matplotlib"],
        "plot": ["matplotlib"],
    },
    entry_points={
        "console_scripts": [
            "memmaml-compare=memmaml.cli.compare_memory:main",
            "memmaml-train=memmaml.cli.meta_train:main",
            "memmaml-gpu-check=memmaml.cli.gpu_check:main",
        ]
    },
    classifiers=[
        "Development Status :: 3 - Alpha",
        "Intended Audience :: Science/Research",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.11",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
        "Typing :: Typed",
    ],
    keywords=["maml", "meta-learning", "gradient checkpointing", "hypergradients", "pytorch"],
)
