"""Few-shot tasks on scikit-learn's digits: an image benchmark that needs no download.

``sklearn.datasets.load_digits`` ships 1,797 handwritten digits (8x8, values
0..16, 174 to 183 per class; the test set of the UCI "Optical Recognition of
Handwritten Digits" data, Alpaydin & Kaynak 1998) inside the scikit-learn
wheel, so these tasks run offline, on any machine, in seconds.

NOTE [ Which digits are test classes ]
    Ten classes cannot fill three splits and still allow the usual 5-way
    tasks on the test split: 5-way test tasks need 5 test classes, leaving
    5 for training and none for validation. The default split is therefore
    digits 0-4 for training and 5-9 for testing, no validation classes
    (``DIGITS_SPLIT``). Every 5-way training task then holds the same five
    digits with their labels in a random order and fresh examples, so
    meta-training learns an initialisation that adapts to any labelling of
    a new set of classes, and testing measures it on five digits it never
    saw. For validation classes, pass ``class_split`` (e.g. ``{"train":
    range(6), "val": (6, 7), "test": (8, 9)}`` for 2-way tasks).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .._checks import one_of
from ._classification import _TensorClassTasks
from ._datasets import SPLITS, check_disjoint

__all__ = ["DIGITS_SPLIT", "Digits"]

#: the default class split: 5 training digits, 5 test digits (5-way test tasks), no validation digits.
DIGITS_SPLIT: dict[str, tuple[int, ...]] = {"train": (0, 1, 2, 3, 4), "val": (), "test": (5, 6, 7, 8, 9)}


def _class_split(class_split: Mapping[str, Iterable[int]] | None) -> dict[str, tuple[int, ...]]:
    if class_split is None:
        return dict(DIGITS_SPLIT)
    if not isinstance(class_split, Mapping):
        raise TypeError(f"class_split must map 'train'/'val'/'test' to digits, got {type(class_split).__name__}")
    unknown = sorted(set(class_split) - set(SPLITS))
    if unknown:
        raise ValueError(f"class_split keys must be 'train', 'val' or 'test', got {unknown}")
    result = {}
    for split in SPLITS:
        digits = tuple(class_split.get(split, ()))
        bad = [d for d in digits if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= 9]
        if bad:
            raise ValueError(f"class_split[{split!r}] must hold digits 0..9, got {bad}")
        result[split] = digits
    return result


class Digits(_TensorClassTasks):
    """N-way K-shot classification of scikit-learn's 8x8 handwritten digits (no download).

    Images are ``(1, 8, 8)`` in ``[0, 1]`` (the 0..16 values divided by 16),
    or 64-vectors with ``flatten=True``. Training and test tasks use disjoint
    digits: by default 0-4 and 5-9 (NOTE [ Which digits are test classes ]).
    Needs scikit-learn.

    Args:
        num_ways, num_shots, num_query: task shape (N, K, query images per
            class; ``num_shots + num_query`` at most 174, the smallest class).
        split: ``"train"``, ``"val"`` or ``"test"``.
        class_split: the digits of each split (default ``DIGITS_SPLIT``);
            must be disjoint.
        image_size: resize to this square side (``None`` keeps 8x8).
        flatten: return 64-vectors (for an MLP) instead of images.
        dtype: floating dtype of the inputs (labels are int64).

    Example:
        >>> train, test = Digits(num_ways=5, num_shots=1, num_query=5), Digits(5, 1, 5, split="test")
        >>> task = test.sample(seed=0)
        >>> task.support[0].shape, task.query[1].shape
        (torch.Size([5, 1, 8, 8]), torch.Size([25]))
        >>> train.class_names, test.class_names
        (['0', '1', '2', '3', '4'], ['5', '6', '7', '8', '9'])
    """

    def __init__(
        self,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        *,
        split: str = "train",
        class_split: Mapping[str, Iterable[int]] | None = None,
        image_size: int | None = None,
        flatten: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        one_of("split", split, SPLITS)
        splits = _class_split(class_split)
        check_disjoint("Digits", splits)
        digits = splits[split]
        if not digits:
            raise ValueError(
                f"Digits has no {split} classes in class_split {splits}: the default holds 0-4 for training "
                "and 5-9 for testing (5-way test tasks need 5 test digits); pass class_split with "
                f"{split} digits to have some"
            )
        try:
            from sklearn.datasets import load_digits
        except ImportError as exc:
            raise ModuleNotFoundError(
                "Digits needs scikit-learn (pip install scikit-learn), whose wheel ships the digits"
            ) from exc
        data = load_digits()
        images = torch.as_tensor(data.images).to(torch.uint8).unsqueeze(1)  # integers 0..16, exact
        targets = torch.as_tensor(data.target)
        self.split = split
        self.class_split = splits
        self.flatten = flatten
        super().__init__(
            [str(d) for d in digits],
            [images[targets == d] for d in digits],
            num_ways,
            num_shots,
            num_query,
            scale=16.0,
            image_size=image_size,
            transform=None,
            dtype=dtype,
        )

    def _example(self, class_index: int, example_index: int, generator: torch.Generator) -> Tensor:
        image = super()._example(class_index, example_index, generator)
        return image.flatten() if self.flatten else image

    def config(self) -> dict[str, Any]:
        config = self._tensor_config()
        del config["transform"]
        return {
            "source": "digits",
            "split": self.split,
            "class_split": {split: list(digits) for split, digits in self.class_split.items()},
            "flatten": self.flatten,
            **config,
        }
