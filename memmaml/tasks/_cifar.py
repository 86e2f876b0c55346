"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): few-shot splits of CIFAR-100's classes.

Both use all 600 images of each CIFAR-100 class (its 500 training and 100
test images together) at 32x32, and split the 100 classes three ways:

* CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi 2019, "Meta-learning with
  differentiable closed-form solvers", ICLR): 64 / 16 / 20 classes chosen at
  random, the lists of their ``cifar100/splits/bertinetto/*.txt``.
* FC100 (Oreshkin, Rodriguez & Lacoste 2018, "TADAM: Task dependent adaptive
  metric for improved few-shot learning", NeurIPS): by superclass, 12 / 4 / 4
  of CIFAR-100's 20 superclasses (60 / 20 / 20 classes), so test classes
  share no superclass with training ones.

The class lists ship with the package (``memmaml/tasks/splits/cifar_fs.json``,
``fc100.json`` and ``cifar100.json``, the superclass table), each with its
source.

NOTE [ Reading CIFAR-100 ourselves ]
    ``torchvision.datasets.CIFAR100`` downloads and verifies the archive
    (``download=True`` uses it), but it is not used to read the files: it
    refuses any ``train``/``test``/``meta`` whose md5 differs from the
    published one (so it cannot be tested on small fixtures in the real
    format), and it keeps only the fine labels, while the superclass labels
    are what checks FC100's split against the data. The three pickles are
    read here exactly as torchvision reads them (``pickle.load(f,
    encoding="latin1")``, ``data`` as ``(N, 3072)`` uint8 rows, channel-major
    32x32), and every image's ``coarse_labels`` entry is checked against the
    superclass table.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import one_of
from ._classification import _TensorClassTasks
from ._datasets import SPLITS, DatasetNotFoundError, check_disjoint, read_split_file

__all__ = ["CIFARFS", "FC100"]

_FOLDER = "cifar-100-python"
_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"


def _superclasses() -> dict[str, list[str]]:
    """CIFAR-100's 20 superclasses and their 5 classes each, as the package ships them."""
    return read_split_file("cifar100.json")["superclasses"]


def _read_pickle(path: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DatasetNotFoundError(
            f"{path} is not a CIFAR-100 pickle ({type(exc).__name__}: {exc}): replace it from {_URL}"
        ) from exc
    missing = [k for k in keys if not isinstance(entry, dict) or k not in entry]
    if missing:
        raise DatasetNotFoundError(
            f"{path} is not a CIFAR-100 pickle (no {', '.join(missing)}): replace it from {_URL}"
        )
    return entry


def read_cifar100(root: str | os.PathLike, download: bool = False) -> tuple[Tensor, list[str]]:
    """All 60,000 CIFAR-100 images with their class names: ``(images, names)``.

    ``images`` is ``(N, 3, 32, 32)`` uint8, the ``train`` file's images then
    the ``test`` file's; ``names[i]`` is image ``i``'s fine class name. Every
    image's superclass label is checked against CIFAR-100's superclass table.

    Raises:
        DatasetNotFoundError: ``root/cifar-100-python/{train,test,meta}``
            missing (and not downloaded) or not CIFAR-100 pickles.
        ValueError: the files' class names or superclass labels are not CIFAR-100's.
    """
    root = Path(root)
    folder = root / _FOLDER
    files = ("train", "test", "meta")
    missing = [name for name in files if not (folder / name).is_file()]
    if missing and download:
        from torchvision import datasets

        try:  # downloads cifar-100-python.tar.gz into root, checks its md5 and extracts it
            datasets.CIFAR100(str(root), train=False, download=True)
        except (OSError, RuntimeError) as exc:
            raise DatasetNotFoundError(
                f"CIFAR-100 download into {root} failed ({type(exc).__name__}: {exc}); "
                f"extract cifar-100-python.tar.gz from {_URL} there by hand"
            ) from exc
        missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-100 not found under {folder} (missing: {', '.join(missing)}): pass download=True "
            f"(needs a network) or extract cifar-100-python.tar.gz from {_URL} into {root}"
        )
    meta = _read_pickle(folder / "meta", ("fine_label_names", "coarse_label_names"))
    fine_names, coarse_names = list(meta["fine_label_names"]), list(meta["coarse_label_names"])
    table = _superclasses()
    parent = {fine: coarse for coarse, fines in table.items() for fine in fines}
    if sorted(fine_names) != sorted(parent) or sorted(coarse_names) != sorted(table):
        raise ValueError(
            f"{folder / 'meta'} does not name CIFAR-100's 100 classes and 20 superclasses "
            f"(got {len(fine_names)} and {len(coarse_names)}, e.g. {fine_names[:3]})"
        )
    expected_coarse = torch.tensor([coarse_names.index(parent[name]) for name in fine_names])
    images, labels = [], []
    for name in ("train", "test"):
        entry = _read_pickle(folder / name, ("data", "fine_labels", "coarse_labels"))
        data = np.asarray(entry["data"], dtype=np.uint8)
        fine, coarse = torch.as_tensor(entry["fine_labels"]), torch.as_tensor(entry["coarse_labels"])
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or not len(data) == len(fine) == len(coarse):
            raise DatasetNotFoundError(
                f"{folder / name} is not a CIFAR-100 batch (data {data.shape}, {len(fine)} fine and "
                f"{len(coarse)} coarse labels): replace it from {_URL}"
            )
        wrong = (expected_coarse[fine] != coarse).nonzero().flatten()
        if len(wrong):
            i = int(wrong[0])
            raise ValueError(
                f"{folder / name}: {len(wrong)} images have a superclass label that is not their class's "
                f"(image {i}: class {fine_names[fine[i]]!r}, superclass {coarse_names[coarse[i]]!r}, "
                f"expected {parent[fine_names[fine[i]]]!r})"
            )
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32)))
        labels.append(fine)
    fine = torch.cat(labels)
    return torch.cat(images), [fine_names[i] for i in fine.tolist()]


class _CIFAR100Tasks(_TensorClassTasks):
    """N-way K-shot tasks over a named split of CIFAR-100's classes."""

    _dataset: str
    _source: str

    def __init__(
        self,
        root: str | os.PathLike,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        *,
        split: str = "train",
        download: bool = False,
        image_size: int | None = None,
        transform: Callable[[Tensor], Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        one_of("split", split, SPLITS)
        splits = self.split_classes()
        check_disjoint(self._dataset, splits)
        images, names = read_cifar100(root, download)
        classes = splits[split]
        index = {name: i for i, name in enumerate(classes)}
        owner = torch.tensor([index.get(name, -1) for name in names])
        class_images = [images[owner == i] for i in range(len(classes))]  # copies: the rest is freed
        self.root = Path(root)
        self.split = split
        super().__init__(
            list(classes),
            class_images,
            num_ways,
            num_shots,
            num_query,
            scale=255.0,
            image_size=image_size,
            transform=transform,
            dtype=dtype,
        )

    @classmethod
    def split_classes(cls) -> dict[str, list[str]]:
        """``{"train": [...], "val": [...], "test": [...]}``: the class names of each split, sorted."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"source": self._source, "root": str(self.root), "split": self.split, **self._tensor_config()}


class CIFARFS(_CIFAR100Tasks):
    """N-way K-shot CIFAR-FS (Bertinetto, Henriques, Torr & Vedaldi 2019, ICLR).

    CIFAR-100's 100 classes split 64 / 16 / 20 into train / val / test, as in
    the paper's split files (``cifar100/splits/bertinetto/*.txt`` of
    github.com/bertinetto/r2d2, shipped here as ``splits/cifar_fs.json``;
    see :meth:`split_classes`), 600 images per class (CIFAR-100's training and
    test images together), 32x32 RGB in ``[0, 1]``.

    Reads ``root/cifar-100-python/{train,test,meta}`` (what
    ``torchvision.datasets.CIFAR100`` downloads; ``download=True`` uses it).

    Args:
        root: the folder that holds (or will hold) ``cifar-100-python``.
        num_ways, num_shots, num_query: task shape (N, K, query images per class).
        split: ``"train"``, ``"val"`` or ``"test"``.
        download: fetch CIFAR-100 with ``torchvision.datasets.CIFAR100``
            (needs a network; the archive's md5 is checked).
        image_size: side of the square images (``None``: 32).
        transform: applied to each image tensor ``(3, H, W)`` in ``[0, 1]``.
        dtype: floating dtype of the images.

    Raises:
        DatasetNotFoundError: the CIFAR-100 files are missing; the one-line
            message names the folder and the archive to extract there.
    """

    _dataset, _source = "CIFAR-FS", "cifar_fs"

    @classmethod
    def split_classes(cls) -> dict[str, list[str]]:
        """CIFAR-FS's class lists (64 / 16 / 20), from ``splits/cifar_fs.json``.

        Example:
            >>> {split: len(names) for split, names in CIFARFS.split_classes().items()}
            {'train': 64, 'val': 16, 'test': 20}
        """
        classes = read_split_file("cifar_fs.json")["classes"]
        return {split: list(classes[split]) for split in SPLITS}


class FC100(_CIFAR100Tasks):
    """N-way K-shot FC100, "Fewshot-CIFAR100" (Oreshkin, Rodriguez & Lacoste 2018, TADAM, NeurIPS).

    CIFAR-100 split by superclass: 12 / 4 / 4 of its 20 superclasses (60 /
    20 / 20 classes) for train / val / test, as in the paper's supplementary
    material (shipped as ``splits/fc100.json``; see :meth:`split_superclasses`), so
    the test classes share no superclass with the training ones. 600 images
    per class (CIFAR-100's training and test images together), 32x32 RGB in
    ``[0, 1]``. Arguments and files as :class:`CIFARFS`.

    Example:
        >>> FC100.split_superclasses()["test"]
        ['aquatic_mammals', 'insects', 'medium_mammals', 'people']
    """

    _dataset, _source = "FC100", "fc100"

    @property
    def superclasses(self) -> list[str]:
        """The superclasses of this source's split."""
        return self.split_superclasses()[self.split]

    @staticmethod
    def split_superclasses() -> dict[str, list[str]]:
        """FC100's superclasses per split (12 / 4 / 4), from ``splits/fc100.json``."""
        superclasses = read_split_file("fc100.json")["superclasses"]
        return {split: list(superclasses[split]) for split in SPLITS}

    @classmethod
    def split_classes(cls) -> dict[str, list[str]]:
        """FC100's class lists (60 / 20 / 20): every class of each split's superclasses, sorted."""
        table = _superclasses()
        superclasses = cls.split_superclasses()
        return {split: sorted(c for s in supers for c in table[s]) for split, supers in superclasses.items()}
