from pathlib import Path

from setuptools import find_packages, setup

setup(
    name="memmaml",
    version="0.1.0",
    description="Memory-efficient MAML in PyTorch: exact meta-gradients through long inner loops",
    long_description=Path(__file__).with_name("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["memmaml", "memmaml.*"]),
    package_data={"memmaml": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "torchvision", "numpy", "tqdm"],
    extras_require={
        "test": ["pytest", "matplotlib", "nbclient", "nbformat", "ipykernel", "scikit-learn", "ruff==0.17.6"],
        "plot": ["matplotlib"],
        "examples": ["scikit-learn", "matplotlib"],
    },
    license="MIT",
)
