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

NOTE [ Rotated digits are new classes ]
    Five training classes are too few: every training task holds the same
    five digits, only relabelled, and an initialisation meta-trained on them
    learns those five digits rather than how to learn new ones
    (``benchmarks/few_shot/digits/results.md`` measured it: MAML ends below
    the random initialisation it started from on the test digits).
    ``rotations=True`` follows Santoro et al. 2016's convention for
    Omniglot: every digit of a split also appears rotated by 90, 180 and 270
    degrees as three further classes of their own, so 0-4 give 20 training
    classes and 5-9 give 20 test classes, and a rotation of a digit stays in
    that digit's split. A task draws ``num_ways`` of these classes, as it
    draws any classes (``torch.randperm`` over all of them), so ``num_ways``
    may be up to 4x the digits of the split, and a task may hold two (or
    more) rotations of one digit: a 5-way task of 20 classes does so with
    probability 0.93.

    :class:`Omniglot` and :class:`ImageFolderTasks` draw differently
    (``num_ways`` distinct base classes, each turned once per task, as Finn
    et al.'s code does; NOTE [ Rotations are drawn per task ] in
    ``_classification.py``). Digits keeps the rotations as classes because a
    split has five digits: one turn per digit per task would make every
    5-way task the same five digits again, where rotations as classes give
    20 classes per split, and the stored results in
    ``benchmarks/few_shot/digits/`` were measured so.

    A rotation is a new class by construction, whatever it looks like, as in
    Santoro et al.'s Omniglot. Some rotated digits resemble another class of
    their split (6 turned by 180 degrees resembles 9, 6 by 90 resembles 9 by
    270), and 0, 1 and 8 are nearly unchanged by a half turn, so "1" and "1
    rotated by 180 degrees" (and "1 rotated by 90" and "by 270") are two
    labels for nearly the same images. In these 8x8 drawings the half-turn
    symmetric digits are the real cost: the nearest of the 20 class means puts
    19% of the 1s, 13% of the 8s and 11% of the 0s in their 180-degree
    rotation's class, but only 2% of the 6s in "9 rotated by 180 degrees" (the
    strokes of the two differ). A task that draws such a pair asks for two
    classes a one-shot learner cannot tell apart, which caps every method's
    accuracy below 100% on the same tasks: a property of the split (0 and 1 in
    training, 8 in testing), not of a learner. Accuracies with and without
    ``rotations`` are measured on different tasks and are not comparable.
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
    With ``rotations=True`` each digit of the split also appears rotated by
    90, 180 and 270 degrees (``torch.rot90`` of the 8x8 image, before any
    resizing) as three new classes: 4 x 5 classes per split by default,
    ordered as :class:`Omniglot` orders them (the digits, then each rotated
    by 90 degrees, ...). A task draws ``num_ways`` of these classes, so it
    may hold two rotations of one digit, and some rotated digits resemble
    another class (0, 1 and 8 by 180 degrees; 6 and 9): NOTE [ Rotated
    digits are new classes ].
    A task is a function of its seed. Needs scikit-learn.

    Args:
        num_ways, num_shots, num_query: task shape (N, K, query images per
            class; ``num_shots + num_query`` at most 174, the smallest class).
        split: ``"train"``, ``"val"`` or ``"test"``.
        class_split: the digits of each split (default ``DIGITS_SPLIT``);
            must be disjoint.
        image_size: resize to this square side (``None`` keeps 8x8).
        rotations: add each digit rotated by 90, 180 and 270 degrees as three
            new classes (``num_ways`` up to 4x the split's digits).
        flatten: return 64-vectors (for an MLP) instead of images.
        dtype: floating dtype of the inputs (labels are int64).

    Example:
        >>> train, test = Digits(num_ways=5, num_shots=1, num_query=5), Digits(5, 1, 5, split="test")
        >>> task = test.sample(seed=0)
        >>> task.support[0].shape, task.query[1].shape
        (torch.Size([5, 1, 8, 8]), torch.Size([25]))
        >>> train.class_names, test.class_names
        (['0', '1', '2', '3', '4'], ['5', '6', '7', '8', '9'])
        >>> rotated = Digits(5, 1, 5, split="test", rotations=True)
        >>> rotated.num_classes, rotated.class_names[5], rotated.class_names[-1]
        (20, '5 rotated by 90 degrees', '9 rotated by 270 degrees')
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
        rotations: bool = False,
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
        if not isinstance(rotations, bool):
            raise TypeError(f"rotations must be True or False, got {rotations!r}")
        names, classes = [str(d) for d in digits], [images[targets == d] for d in digits]
        if rotations:  # the rotations as classes of their own, in Omniglot's order (index = turns * digits + digit)
            turns = (1, 2, 3)
            names += [f"{name} rotated by {90 * k} degrees" for k in turns for name in names]
            classes += [torch.rot90(x, k, dims=(-2, -1)).contiguous() for k in turns for x in classes]
        self.split = split
        self.class_split = splits
        self.rotations = rotations
        self.flatten = flatten
        # a task draws num_ways of all these classes, rotations included (NOTE [ Rotated digits are new classes ])
        super().__init__(
            names,
            classes,
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
            "rotations": self.rotations,
            "flatten": self.flatten,
            **config,
        }
