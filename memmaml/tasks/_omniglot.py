"""Omniglot (Lake, Salakhutdinov & Tenenbaum 2015): Lake's two sets, and the MAML split of Finn et al. 2017.

NOTE [ Which Omniglot split ]
    The paper (Finn, Abbeel & Levine 2017, section 5.2) follows Vinyals et al.
    2016: 1,200 characters for training, "irrespective of alphabet", the
    remaining 423 for testing, rotations by multiples of 90 degrees (the
    paper says as new classes; its code turns each character of a task by
    one random multiple, drawn per task, which is what ``rotations=True``
    does here), images at 28x28. Its code (github.com/cbfinn/maml,
    ``data_generator.py``) builds the split so: the characters of
    ``images_background`` and ``images_evaluation``, merged into one folder,
    listed with ``os.listdir`` (alphabets, then the characters of each),
    ``random.seed(1); random.shuffle(...)``, then the first 1,100 for
    meta-training, the next 100 for meta-validation and the last 423 for
    meta-testing (``--test_set=True``); train and validation together are the
    paper's 1,200.

    ``os.listdir`` returns names in an order that depends on the file system,
    so that exact split cannot be rebuilt elsewhere. :func:`finn_split` runs
    the same procedure on a fixed listing: characters sorted by (alphabet,
    character) name, what a listing in sorted order gives, then the
    Fisher-Yates shuffle of Python 2's ``random.shuffle`` (``j = int(random()
    * (i + 1))``, also Python 3's ``random.shuffle(x, random)`` before 3.11)
    driven by ``random.Random(1).random()``, whose sequence Python promises
    not to change. It is the split Finn et al.'s code gives under Python 2
    on a file system that lists folders in sorted order (checked against
    Python 2.7.18's ``random.seed(1); random.shuffle``); it is a convention
    of this package, the same on every machine, not a copy of their split
    (Python 3's default shuffle draws differently, so their code gives yet
    another split there). The sizes, 1,100 / 100 / 423, are theirs.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from .._checks import one_of
from ._classification import _image_files, _ImageClassTasks
from ._datasets import SPLITS, DatasetNotFoundError, check_disjoint

__all__ = ["Omniglot", "finn_split"]

_SETS = {"background": "images_background", "evaluation": "images_evaluation"}
#: characters per set (Lake et al. 2015): 30 alphabets in background, 20 in evaluation.
NUM_CHARACTERS = {"images_background": 964, "images_evaluation": 659}
#: Finn et al.'s meta-train / meta-validation sizes; the rest (423) is the test split.
FINN_SIZES = {"train": 1100, "val": 100}


def finn_split(characters: Iterable[str], seed: int = 1) -> dict[str, list[str]]:
    """The characters of each split of Finn et al.'s Omniglot protocol, as this package fixes it.

    ``characters`` are ``"<alphabet>/<character>"`` names of both sets (1,623
    for Omniglot). They are sorted by (alphabet, character), shuffled as
    NOTE [ Which Omniglot split ] describes and cut into the first 1,100
    (``"train"``), the next 100 (``"val"``) and the rest (``"test"``).
    ``seed`` is the ``random.seed`` of Finn et al.'s code, 1.

    Example:
        >>> names = [f"A{a:02d}/c{c:02d}" for a in range(3) for c in range(500)]
        >>> split = finn_split(names)
        >>> [len(split[s]) for s in ("train", "val", "test")]
        [1100, 100, 300]
        >>> split == finn_split(reversed(names))  # the input order does not matter
        True
    """
    order = sorted(characters, key=lambda name: tuple(name.split("/", 1)))
    draw = random.Random(seed).random
    for i in reversed(range(1, len(order))):
        j = int(draw() * (i + 1))
        order[i], order[j] = order[j], order[i]
    train, val = FINN_SIZES["train"], FINN_SIZES["val"]
    return {"train": order[:train], "val": order[train : train + val], "test": order[train + val :]}


def _characters(folder: Path) -> dict[str, list[Path]]:
    """``{"<alphabet>/<character>": [png files]}`` of one set, in sorted order; characters without images left out."""
    found = {}
    for alphabet in sorted(p for p in folder.iterdir() if p.is_dir()):
        for character in sorted(p for p in alphabet.iterdir() if p.is_dir()):
            images = [p for p in _image_files(character) if p.suffix.lower() == ".png"]
            if images:
                found[f"{alphabet.name}/{character.name}"] = images
    return found


def _extract(base: Path, name: str, download: bool) -> None:
    """Extract ``base/<name>.zip`` into ``base``; a corrupt zip is deleted (``download``, to fetch again) or reported.

    An interrupted download leaves a truncated zip that would fail on every
    later run. Whatever the extraction left of ``base/<name>`` (it did not
    exist before) is removed, so a half-extracted set is never read.
    """
    import shutil
    import zipfile
    import zlib

    from torchvision.datasets.utils import extract_archive

    archive = base / f"{name}.zip"
    try:
        extract_archive(str(archive), str(base))
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:  # the file is not a whole zip
        shutil.rmtree(base / name, ignore_errors=True)
        if download:  # torchvision would replace a zip whose md5 is wrong anyway
            archive.unlink()
            return
        raise DatasetNotFoundError(
            f"Omniglot: {archive} is not a readable zip file ({type(exc).__name__}: {exc}), perhaps an "
            f"interrupted download: delete it and pass download=True, or replace it with {name}.zip from "
            "https://github.com/brendenlake/omniglot (python/)"
        ) from exc
    except OSError as exc:  # the zip may be whole; the folder could not be written
        shutil.rmtree(base / name, ignore_errors=True)
        raise DatasetNotFoundError(
            f"Omniglot: {archive} could not be extracted into {base} ({type(exc).__name__}: {exc}); "
            f"extract it there by hand so that {base / name}/ holds the alphabet folders"
        ) from exc


def _ensure_sets(root: Path, names: list[str], download: bool) -> None:
    """Make ``root/omniglot-py/<name>`` exist for each name: extract torchvision's zip, download, or explain."""
    base = root / "omniglot-py"
    missing = [name for name in names if not (base / name).is_dir()]
    for name in [name for name in missing if (base / f"{name}.zip").is_file()]:
        _extract(base, name, download)
    missing = [name for name in missing if not (base / name).is_dir()]
    if missing and download:
        from torchvision import datasets

        for name in missing:
            try:  # downloads <name>.zip into omniglot-py/, checks its md5 and extracts it
                datasets.Omniglot(str(root), background=name == _SETS["background"], download=True)
            except (OSError, RuntimeError) as exc:
                raise DatasetNotFoundError(
                    f"Omniglot download of {name}.zip into {base} failed ({type(exc).__name__}: {exc}); "
                    f"put {name}/ there by hand, from https://github.com/brendenlake/omniglot (python/{name}.zip)"
                ) from exc
        missing = [name for name in missing if not (base / name).is_dir()]
    if missing:
        raise DatasetNotFoundError(
            f"Omniglot not found under {base}: pass download=True (needs a network) or put "
            f"{' and '.join(f'{name}/' for name in missing)} there (the alphabet folders of "
            f"{', '.join(f'{name}.zip' for name in missing)} from https://github.com/brendenlake/omniglot, python/)"
        )


class Omniglot(_ImageClassTasks):
    """N-way K-shot Omniglot (Lake et al. 2015), with Finn et al.'s (MAML) split or Lake's two sets.

    Reads (and with ``download=True`` fetches, through
    ``torchvision.datasets.Omniglot``) the layout torchvision uses:
    ``root/omniglot-py/images_background/<alphabet>/<character>/*.png`` (964
    characters, 30 alphabets) and ``root/omniglot-py/images_evaluation/...``
    (659 characters, 20 alphabets), 20 drawings of each, 105x105. A zip file
    torchvision left unextracted (``omniglot-py/images_background.zip``) is
    extracted in place (a corrupt one is reported, or deleted and fetched
    again with ``download=True``). Each character is a class.

    ``split`` chooses the classes:

    * ``"train"`` / ``"val"`` / ``"test"``: the MAML protocol (Finn, Abbeel &
      Levine 2017, section 5.2 and their code): both sets merged, 1,100 /
      100 / 423 characters (train and val together are the paper's 1,200
      training characters), chosen by :func:`finn_split` as NOTE [ Which
      Omniglot split ] in this module describes. Needs all 1,623
      characters. The three splits are checked to be disjoint.
    * ``"background"`` / ``"evaluation"``: all characters of one of Lake's
      sets (the default, ``"background"``, is what this class read before it
      had ``split``). ``background=True`` / ``False`` are the older spellings
      of these two.

    With ``rotations=True`` each character is also held rotated by 90, 180
    and 270 degrees (Santoro et al. 2016, Finn et al. 2017), so a split of c
    characters has 4c classes (``num_classes``), and a task draws
    ``num_ways`` distinct characters and gives each one of the four
    rotations, drawn uniformly and afresh for every task, as Finn et al.'s
    code does: a task never holds two rotations of one character, and
    ``num_ways`` is at most c (NOTE [ Rotations are drawn per task ] in
    ``_classification.py``). Rotations of a character stay in that
    character's split.

    Args:
        root: the folder that holds (or will hold) ``omniglot-py``.
        num_ways, num_shots, num_query: task shape (N, K, query images per class).
        split: ``"train"``, ``"val"``, ``"test"``, ``"background"`` or
            ``"evaluation"`` (default: ``"background"``, or what
            ``background`` says).
        background: the older way to choose a set: ``True`` is
            ``split="background"``, ``False`` is ``split="evaluation"``.
        download: fetch missing sets with ``torchvision.datasets.Omniglot``
            (needs a network; the zip files' md5 are checked).
        image_size: side of the square images (28 in Finn et al. 2017; ``None``
            keeps the files' 105x105). Resized with antialiasing, not with the
            LANCZOS filter of their preprocessing script, and not inverted
            (their loader uses ``1 - image``).
        rotations: turn each character of a task by a random multiple of 90
            degrees, drawn per task (the classes are then the 4c rotated
            characters).
        cache: keep decoded images in memory (about 3 kB per image at 28x28).
        dtype: floating dtype of the images.

    Raises:
        DatasetNotFoundError: images missing (or, for the MAML split, not all
            1,623 characters there), or a zip file left there is corrupt
            (with ``download=True`` it is deleted and fetched again); the
            one-line message names the folder to fill or the zip to replace,
            and where to get its contents.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        *,
        split: str | None = None,
        background: bool | None = None,
        download: bool = False,
        image_size: int | None = 28,
        rotations: bool = False,
        cache: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if split is None:
            split = "evaluation" if background is False else "background"
        else:
            one_of("split", split, (*SPLITS, *_SETS))
            if background is not None:
                raise ValueError(f"pass split or background, not both (got split={split!r}, background={background!r})")
        root = Path(root)
        names = list(_SETS.values()) if split in SPLITS else [_SETS[split]]
        _ensure_sets(root, names, download)
        characters: dict[str, list[Path]] = {}
        for name in names:
            found = _characters(root / "omniglot-py" / name)
            if not found:
                raise DatasetNotFoundError(
                    f"Omniglot folder {root / 'omniglot-py' / name} holds no <alphabet>/<character>/*.png images: "
                    f"fill it with the contents of {name}.zip (from https://github.com/brendenlake/omniglot, "
                    "python/) or remove it and pass download=True"
                )
            clash = sorted(set(found) & set(characters))
            if clash:  # Lake's sets use different alphabet names; a copy that does not would merge classes
                raise ValueError(f"Omniglot: both sets hold {len(clash)} characters of the same name, e.g. {clash[0]}")
            characters.update(found)
        if split in SPLITS:
            expected = sum(NUM_CHARACTERS.values())
            if len(characters) != expected:
                raise DatasetNotFoundError(
                    f"Omniglot under {root / 'omniglot-py'} has {len(characters)} characters with images, but "
                    f"split={split!r} (Finn et al.'s protocol) needs all {expected:,} "
                    f"(964 in images_background/, 659 in images_evaluation/): complete the folders from "
                    "images_background.zip and images_evaluation.zip (https://github.com/brendenlake/omniglot, "
                    "python/)"
                )
            splits = finn_split(characters)
            check_disjoint("Omniglot", splits)
            chosen = splits[split]
        else:
            chosen = list(characters)
        self.root = root
        self.split = split
        self.background = {"background": True, "evaluation": False}.get(split)
        super().__init__(
            chosen,
            [characters[name] for name in chosen],
            num_ways,
            num_shots,
            num_query,
            image_size=image_size,
            grayscale=True,
            rotations=rotations,
            cache=cache,
            transform=None,
            dtype=dtype,
        )

    def config(self) -> dict[str, Any]:
        if self.background is None:
            return {"source": "omniglot", "root": str(self.root), "split": self.split, **self._image_config()}
        # Lake's sets keep the keys they had before ``split`` existed, so older checkpoints resume
        return {"source": "omniglot", "root": str(self.root), "background": self.background, **self._image_config()}
