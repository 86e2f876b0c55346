"""Small datasets written in each dataset's real on-disk format, whose images say where they came from.

* Omniglot: ``omniglot-py/images_{background,evaluation}/<alphabet>/<character>/<id>_<drawer>.png``
  with the real counts (964 + 659 characters in 30 + 20 alphabets), two drawings each, 4x4 pixels.
  The top row of each image is ``[character id % 255, character id // 255, drawer, 255]``, the rest
  0: 255 marks the top right corner, a value no other pixel takes, so :func:`decode_omniglot`
  recovers the character, the drawing and the rotation from any image.
* CIFAR-100: ``cifar-100-python/{train,test,meta}``, pickles with the keys of the real files
  (``data`` as ``(N, 3072)`` uint8, ``fine_labels``, ``coarse_labels``, ``filenames``,
  ``batch_label``; ``fine_label_names``, ``coarse_label_names``), all 100 classes, 3 training and 1
  test image each. Pixel 0 of the red channel is the fine label, pixel 1 is 0 (train) or 1 (test),
  pixel 2 the image's index within its class and file.
* miniImageNet: ``train.csv``, ``val.csv``, ``test.csv`` (``filename,label``) with Ravi &
  Larochelle's 64 / 16 / 20 classes and ``images/*.jpg``, 3 per class by default; each image is
  flat, red = 25 * (class number % 10), blue = 25 * (class number // 10), green = 20 * image number
  (JPEG keeps flat colours within a few levels).

The CIFAR-100 class table is typed here from the CIFAR page, independently of the package's
``splits/cifar100.json``, so that a test can compare the two.
"""

from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import numpy as np
import torch

# https://www.cs.toronto.edu/~kriz/cifar.html: superclass -> classes, spelled as in the pickles
CIFAR100_SUPERCLASSES = {
    "aquatic_mammals": ["beaver", "dolphin", "otter", "seal", "whale"],
    "fish": ["aquarium_fish", "flatfish", "ray", "shark", "trout"],
    "flowers": ["orchid", "poppy", "rose", "sunflower", "tulip"],
    "food_containers": ["bottle", "bowl", "can", "cup", "plate"],
    "fruit_and_vegetables": ["apple", "mushroom", "orange", "pear", "sweet_pepper"],
    "household_electrical_devices": ["clock", "keyboard", "lamp", "telephone", "television"],
    "household_furniture": ["bed", "chair", "couch", "table", "wardrobe"],
    "insects": ["bee", "beetle", "butterfly", "caterpillar", "cockroach"],
    "large_carnivores": ["bear", "leopard", "lion", "tiger", "wolf"],
    "large_man-made_outdoor_things": ["bridge", "castle", "house", "road", "skyscraper"],
    "large_natural_outdoor_scenes": ["cloud", "forest", "mountain", "plain", "sea"],
    "large_omnivores_and_herbivores": ["camel", "cattle", "chimpanzee", "elephant", "kangaroo"],
    "medium_mammals": ["fox", "porcupine", "possum", "raccoon", "skunk"],
    "non-insect_invertebrates": ["crab", "lobster", "snail", "spider", "worm"],
    "people": ["baby", "boy", "girl", "man", "woman"],
    "reptiles": ["crocodile", "dinosaur", "lizard", "snake", "turtle"],
    "small_mammals": ["hamster", "mouse", "rabbit", "shrew", "squirrel"],
    "trees": ["maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"],
    "vehicles_1": ["bicycle", "bus", "motorcycle", "pickup_truck", "train"],
    "vehicles_2": ["lawn_mower", "rocket", "streetcar", "tank", "tractor"],
}
# CIFAR-FS's validation and test classes (Bertinetto et al. 2019, cifar100/splits/bertinetto/{val,test}.txt),
# in the order of public copies other than the one the package transcribed
# fmt: off
CIFAR_FS_VAL = [
    "otter", "motorcycle", "television", "lamp", "crocodile", "shark", "butterfly", "beaver", "beetle", "tractor",
    "flatfish", "maple_tree", "camel", "crab", "sea", "cattle",
]
CIFAR_FS_TEST = [
    "baby", "bed", "bicycle", "chimpanzee", "fox", "leopard", "man", "pickup_truck", "plain", "poppy", "rocket",
    "rose", "snail", "sweet_pepper", "table", "telephone", "wardrobe", "whale", "woman", "worm",
]
# fmt: on
# the real meta file lists both in alphabetical order; a label is an index into these lists
FINE_NAMES = sorted(c for classes in CIFAR100_SUPERCLASSES.values() for c in classes)
COARSE_NAMES = sorted(CIFAR100_SUPERCLASSES)
PARENT = {c: s for s, classes in CIFAR100_SUPERCLASSES.items() for c in classes}

OMNIGLOT_SETS = {"images_background": (30, 964), "images_evaluation": (20, 659)}  # alphabets, characters


# ------------------------------------------------------------------------------- Omniglot
def _png(values: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def omniglot_pattern(character_id: int, drawer: int) -> np.ndarray:
    image = np.zeros((4, 4), dtype=np.uint8)
    image[0] = [character_id % 255, character_id // 255, drawer, 255]  # ids in base 255: only the marker is 255
    return image


def write_omniglot(root: Path, sets=("images_background", "images_evaluation"), drawers=2) -> dict[str, int]:
    """The Omniglot layout under ``root/omniglot-py``; returns ``{"<alphabet>/<character>": id}``."""
    ids, next_id = {}, 0
    for name in sets:
        alphabets, characters = OMNIGLOT_SETS[name]
        tag = name.split("_")[1][0]  # b or e: alphabet names differ between the sets, as in Omniglot
        for a in range(alphabets):
            count = characters // alphabets + (a < characters % alphabets)
            alphabet = f"Alphabet_{tag}{a:02d}"
            for c in range(count):
                folder = root / "omniglot-py" / name / alphabet / f"character{c + 1:02d}"
                folder.mkdir(parents=True)
                for d in range(drawers):
                    (folder / f"{next_id:04d}_{d + 1:02d}.png").write_bytes(_png(omniglot_pattern(next_id, d + 1)))
                ids[f"{alphabet}/character{c + 1:02d}"] = next_id
                next_id += 1
    return ids


def decode_omniglot(image: torch.Tensor) -> tuple[int, int, int]:
    """``(character id, drawer, quarter turns)`` of a fixture image ``(1, 4, 4)`` in ``[0, 1]``."""
    values = (image[0] * 255).round().to(torch.int64)
    for turns in range(4):
        base = torch.rot90(values, -turns, dims=(0, 1))
        if base[0, 3] == 255:
            expected = torch.from_numpy(omniglot_pattern(int(base[0, 0] + 255 * base[0, 1]), int(base[0, 2])))
            assert torch.equal(base, expected.to(torch.int64)), "not a rotated fixture image"
            return int(base[0, 0] + 255 * base[0, 1]), int(base[0, 2]), turns
    raise AssertionError("not a fixture image")


# ------------------------------------------------------------------------------- CIFAR-100
def _cifar_batch(per_class: int, marker: int, batch_label: str) -> dict:
    data, fine, coarse, filenames = [], [], [], []
    for label, name in enumerate(FINE_NAMES):
        for i in range(per_class):
            image = np.zeros(3072, dtype=np.uint8)
            image[:3] = [label, marker, i]
            image[1024:2048] = 128  # some green, so channels are told apart
            data.append(image)
            fine.append(label)
            coarse.append(COARSE_NAMES.index(PARENT[name]))
            filenames.append(f"{name}_s_{i:06d}.png")
    return {
        "filenames": filenames,
        "batch_label": batch_label,
        "fine_labels": fine,
        "coarse_labels": coarse,
        "data": np.stack(data),
    }


def write_cifar100(root: Path, train_per_class=3, test_per_class=1, edit=None) -> Path:
    """``root/cifar-100-python/{train,test,meta}``; ``edit(name, dict)`` may change a file's contents first."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train": _cifar_batch(train_per_class, 0, "training batch 1 of 1"),
        "test": _cifar_batch(test_per_class, 1, "testing batch 1 of 1"),
        "meta": {"fine_label_names": list(FINE_NAMES), "coarse_label_names": list(COARSE_NAMES)},
    }
    for name, contents in files.items():
        if edit is not None:
            edit(name, contents)
        with open(folder / name, "wb") as f:
            pickle.dump(contents, f, protocol=2)
    return root


def decode_cifar(image: torch.Tensor) -> tuple[str, int, int]:
    """``(class name, 0 train / 1 test, index)`` of a fixture image ``(3, 32, 32)`` in ``[0, 1]``."""
    red = (image[0].flatten()[:3] * 255).round().to(torch.int64).tolist()
    return FINE_NAMES[red[0]], red[1], red[2]


# ---------------------------------------------------------------------------- miniImageNet
MINI_SPLITS = {"train": 64, "val": 16, "test": 20}  # classes per split, Ravi & Larochelle's


def mini_label(number: int) -> str:
    return f"n{number:08d}"


def write_mini_imagenet(root: Path, per_class=3, splits=MINI_SPLITS) -> Path:
    """Ravi & Larochelle's layout: ``{train,val,test}.csv`` and ``images/<wnid><index>.jpg``."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    number = 0
    for split, count in splits.items():
        with open(root / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["filename", "label"])
            for _ in range(count):
                label = mini_label(number)
                for i in range(per_class):
                    filename = f"{label}{i + 1:08d}.jpg"
                    colour = (25 * (number % 10), 20 * i, 25 * (number // 10))
                    Image.new("RGB", (12, 10), colour).save(root / "images" / filename)
                    writer.writerow([filename, label])
                number += 1
    return root


def decode_mini(image: torch.Tensor) -> tuple[str, int]:
    """``(label, image number)`` of a flat fixture image ``(3, H, W)`` in ``[0, 1]``."""
    red, green, blue = (image.mean(dim=(1, 2)) * 255).tolist()
    return mini_label(round(red / 25) + 10 * round(blue / 25)), round(green / 20)
