"""miniImageNet (Vinyals et al. 2016) with the class split of Ravi & Larochelle 2017.

100 ImageNet classes, 600 images each, split 64 / 16 / 20 into train / val /
test by the files ``train.csv``, ``val.csv`` and ``test.csv`` of Ravi &
Larochelle ("Optimization as a model for few-shot learning", ICLR 2017;
github.com/twitter/meta-learning-lstm, ``data/miniImagenet/``), the split
Finn et al. 2017 and most later work report on. Each file has a header
``filename,label`` and one row per image (``n0153282900000005.jpg,n01532829``):
the image's file name in ``images/`` and its class (a WordNet id).

Nothing is downloaded: the images are not on a public server with a stable
address and a checksum. The user puts the three CSV files and the folder
``images/`` under ``root``; Finn et al.'s ``data/miniImagenet/proc_images.py``
resizes the images to 84x84 in place (LANCZOS) and moves them into
per-split class folders (read those with :class:`ImageFolderTasks`); this
class reads the files as the CSVs name them and resizes on load.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._checks import one_of
from ._classification import _ImageClassTasks
from ._datasets import SPLITS, DatasetNotFoundError, check_disjoint

__all__ = ["MiniImageNet"]

_SPLITS_URL = "https://github.com/twitter/meta-learning-lstm/tree/master/data/miniImagenet"
#: classes per split in Ravi & Larochelle's CSV files.
RAVI_SIZES = {"train": 64, "val": 16, "test": 20}


def read_split_csv(path: Path) -> dict[str, list[str]]:
    """``{label: [file names]}`` from one of Ravi & Larochelle's CSV files, labels in file order."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise ValueError(f"{path} must start with the header 'filename,label' (Ravi & Larochelle's format)")
    classes: dict[str, list[str]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != 2:
            raise ValueError(f"{path}, line {line}: expected 'filename,label', got {','.join(row)!r}")
        filename, label = (c.strip() for c in row)
        classes.setdefault(label, []).append(filename)
    return classes


class MiniImageNet(_ImageClassTasks):
    """N-way K-shot miniImageNet, Ravi & Larochelle's 64 / 16 / 20 class split.

    Reads ``root/train.csv``, ``root/val.csv``, ``root/test.csv`` (header
    ``filename,label``) and the JPEG files they name in ``root/images/``.
    All three CSVs must be there: they must name 64, 16 and 20 classes and
    their classes are checked to be disjoint.
    Images are decoded with PIL as RGB, resized to ``image_size`` (84 in Finn
    et al. 2017) and scaled to ``[0, 1]``.

    Args:
        root: the folder with the three CSV files and ``images/``.
        num_ways, num_shots, num_query: task shape (N, K, query images per class).
        split: ``"train"``, ``"val"`` or ``"test"``.
        download: accepted for a uniform interface; miniImageNet has no
            download, so a missing dataset raises whatever its value.
        image_size: side of the square images (``None`` keeps the files' size).
        cache: keep decoded images in memory (about 85 kB per image at 84x84 in float32).
        transform: applied to each image tensor ``(3, H, W)`` after resizing.
        dtype: floating dtype of the images.

    Raises:
        DatasetNotFoundError: a CSV file, ``images/`` or an image the split
            names is missing; the one-line message says what to fetch and
            where to put it.
        ValueError: a CSV file is not in Ravi & Larochelle's format, two
            splits share a class, or the splits do not hold 64 / 16 / 20
            classes.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        *,
        split: str = "train",
        download: bool = False,
        image_size: int | None = 84,
        cache: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        one_of("split", split, SPLITS)
        root = Path(root)
        images = root / "images"
        missing = [f"{s}.csv" for s in SPLITS if not (root / f"{s}.csv").is_file()]
        missing += [] if images.is_dir() else ["images/"]
        if missing:
            raise DatasetNotFoundError(
                f"miniImageNet not found under {root} (missing: {', '.join(missing)}): it has no automatic "
                f"download{' (download=True cannot fetch it)' if download else ''}; put Ravi & Larochelle's "
                f"train.csv, val.csv and test.csv (from {_SPLITS_URL}) in {root} and the 60,000 .jpg images "
                f"they name in {images}/"
            )
        splits = {s: read_split_csv(root / f"{s}.csv") for s in SPLITS}
        check_disjoint("miniImageNet", {s: list(classes) for s, classes in splits.items()})
        wrong = [f"{s}.csv has {len(splits[s])}" for s in SPLITS if len(splits[s]) != RAVI_SIZES[s]]
        if wrong:
            raise ValueError(
                f"miniImageNet under {root}: Ravi & Larochelle's train.csv, val.csv and test.csv name 64, 16 and "
                f"20 classes, but {' and '.join(wrong)} (get the files from {_SPLITS_URL}; for another split, "
                "use ImageFolderTasks)"
            )
        classes = splits[split]
        present = set(os.listdir(images))
        absent = [name for files in classes.values() for name in files if name not in present]
        if absent:
            total = sum(len(files) for files in classes.values())
            raise DatasetNotFoundError(
                f"miniImageNet: {len(absent)} of the {total} images {split}.csv names are missing from "
                f"{images}/ (e.g. {absent[0]}): put all 60,000 .jpg images of miniImageNet there"
            )
        self.root = root
        self.split = split
        super().__init__(
            list(classes),
            [[images / name for name in files] for files in classes.values()],
            num_ways,
            num_shots,
            num_query,
            image_size=image_size,
            grayscale=False,
            rotations=False,
            cache=cache,
            transform=transform,
            dtype=dtype,
        )

    def config(self) -> dict[str, Any]:
        config = self._image_config()
        for key in ("grayscale", "rotations"):
            del config[key]
        return {"source": "mini_imagenet", "root": str(self.root), "split": self.split, **config}
