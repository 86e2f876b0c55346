"""What the named datasets share: split names, the missing-dataset error, the shipped class lists.

NOTE [ Splits are by class ]
    Every named source (:class:`Omniglot` with ``split="train"/"val"/"test"``,
    :class:`CIFARFS`, :class:`FC100`, :class:`MiniImageNet`, :class:`Digits`)
    splits its classes, never its examples: a task of the test split holds
    only classes that no training task ever sees. Each source checks, when it
    is built, that the class lists of its three splits are disjoint
    (:func:`check_disjoint`) and raises ``ValueError`` naming the shared
    classes otherwise, so a wrong split file or an edited class list fails
    loudly instead of leaking test classes into training.

NOTE [ One line per missing dataset ]
    A missing dataset raises :class:`DatasetNotFoundError` (a
    ``FileNotFoundError``) whose message is one self-contained line: the
    folder to fill, what to put there and where to get it (or
    ``download=True``). A command line catches it and prints the line without
    a traceback.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["SPLITS", "DatasetNotFoundError", "check_disjoint", "read_split_file"]

#: the split names every named source accepts.
SPLITS = ("train", "val", "test")


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing or incomplete; the message (one line) says what to put where."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # one line, whatever the caller's formatting


def check_disjoint(dataset: str, splits: Mapping[str, Iterable[Any]]) -> None:
    """Raise ``ValueError`` if two splits of ``dataset`` share a class (or one lists a class twice)."""
    owner: dict[Any, str] = {}
    for split, classes in splits.items():
        classes = list(classes)
        repeated = sorted(str(c) for c, n in Counter(classes).items() if n > 1)
        if repeated:
            raise ValueError(f"{dataset}: the {split} split lists classes more than once: {repeated[:5]}")
        for other in sorted({owner[c] for c in classes if c in owner}):
            shared = sorted(str(c) for c in classes if owner.get(c) == other)
            raise ValueError(
                f"{dataset}: the {other} and {split} splits share {len(shared)} classes (e.g. {shared[:5]}); "
                "splits must be disjoint by class"
            )
        owner.update(dict.fromkeys(classes, split))


@cache
def read_split_file(name: str) -> dict[str, Any]:
    """The JSON file ``memmaml/tasks/splits/<name>`` shipped with the package (read once)."""
    text = resources.files(__package__).joinpath("splits", name).read_text(encoding="utf-8")
    return json.loads(text)
