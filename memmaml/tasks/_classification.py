"""N-way K-shot classification tasks: the class-pool base, synthetic clusters, image files, in-memory images."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .._checks import positive_int
from ._base import IMAGE_EXTENSIONS, Task, TaskSource, accuracy, cross_entropy_loss, generator_for
from ._datasets import DatasetNotFoundError

__all__ = ["ImageFolderTasks", "SyntheticClassification"]


# ------------------------------------------------------------- classification base
class _ClassPoolTasks(TaskSource):
    """N-way K-shot tasks over a pool of classes, each a list of examples.

    NOTE [ Rotations are drawn per task ]
        A source with rotations (``num_rotations=4``) holds every base class
        ``b`` of its ``B`` once per quarter turn ``t``, as class ``t * B + b``.
        A task draws ``num_ways`` **distinct base classes** and gives each one
        rotation drawn uniformly from the four, afresh for every task, so a
        task never holds two rotations of one base class and ``num_ways`` may
        not exceed ``B``. That is what Finn et al.'s code does
        (github.com/cbfinn/maml, ``data_generator.py``: ``random.sample`` of
        the characters, then ``tf.multinomial`` of a quarter turn per class
        of the task). Drawing ``num_ways`` of the ``4B`` classes instead would
        often put two rotations of one character in a task (a 20-way task of
        Omniglot's 423 test characters with probability 0.29). Without
        rotations (``num_rotations=1``) a task draws ``num_ways`` distinct
        classes of the pool. Either way the order of the draw is the
        labelling, so labels are a random permutation per task.

        :class:`Omniglot` and :class:`ImageFolderTasks` with
        ``rotations=True`` sample this way. :class:`Digits` does not: it holds
        its rotations as classes of their own (Santoro et al. 2016's
        convention), which reach the sampler as one pool (``num_rotations=1``,
        through ``_TensorClassTasks``), so a task draws ``num_ways`` of its
        ``4B`` classes and may hold two rotations of one digit (NOTE [ Rotated
        digits are new classes ] in ``_digits.py`` says why).
    """

    loss_function = staticmethod(cross_entropy_loss)
    metrics = {"accuracy": accuracy}

    def __init__(
        self,
        num_ways: int,
        num_shots: int,
        num_query: int,
        num_classes: int,
        examples_per_class: Sequence[int],
        *,
        num_rotations: int = 1,
    ) -> None:
        positive_int("num_ways", num_ways)
        positive_int("num_shots", num_shots)
        positive_int("num_query", num_query)
        if num_rotations not in (1, 4) or num_classes % num_rotations:
            raise ValueError(f"num_rotations must be 1 or 4 and divide num_classes={num_classes}, got {num_rotations}")
        num_base = num_classes // num_rotations
        if num_ways > num_base and num_rotations > 1:
            raise ValueError(
                f"num_ways={num_ways} is more than the {num_base} classes available before rotation: with rotations "
                f"a task holds {num_ways} distinct classes, each in one random rotation, never two rotations of one "
                "class"
            )
        if num_ways > num_classes:
            raise ValueError(f"num_ways={num_ways} is more than the {num_classes} classes available")
        needed = num_shots + num_query
        short = [(i, n) for i, n in enumerate(examples_per_class) if n < needed]
        if short:
            index, count = short[0]
            raise ValueError(
                f"class {self._class_name(index)!r} has {count} examples, fewer than "
                f"num_shots + num_query = {needed} ({len(short)} classes are that small)"
            )
        self.num_ways = num_ways
        self.num_shots = num_shots
        self.num_query = num_query
        self.num_classes = num_classes
        self._num_rotations = num_rotations
        self._examples_per_class = list(examples_per_class)

    def _class_name(self, index: int) -> str:
        return str(index)

    def _example(self, class_index: int, example_index: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def _classes(self, generator: torch.Generator) -> list[int]:
        """A task's class indices, label ``i`` for the ``i``-th (NOTE [ Rotations are drawn per task ])."""
        num_base = self.num_classes // self._num_rotations
        bases = torch.randperm(num_base, generator=generator)[: self.num_ways]
        if self._num_rotations == 1:
            return bases.tolist()
        turns = torch.randint(self._num_rotations, (self.num_ways,), generator=generator)
        return (turns * num_base + bases).tolist()

    def _sample(self, generator: torch.Generator) -> Task:
        classes = self._classes(generator)
        k, q = self.num_shots, self.num_query
        support_x, query_x = [], []
        for class_index in classes:
            order = torch.randperm(self._examples_per_class[class_index], generator=generator)[: k + q].tolist()
            examples = [self._example(class_index, i, generator) for i in order]
            support_x.extend(examples[:k])
            query_x.extend(examples[k:])
        labels = torch.arange(self.num_ways)
        support = (torch.stack(support_x), labels.repeat_interleave(k))
        query = (torch.stack(query_x), labels.repeat_interleave(q))
        return Task(support, query)


# ----------------------------------------------------------- synthetic classification
class SyntheticClassification(_ClassPoolTasks):
    """N-way K-shot classification of Gaussian clusters (no data files).

    A pool of ``num_classes`` class centres is drawn once from ``pool_seed``
    (standard normal in ``num_features`` dimensions, scaled by
    ``class_separation``). ``split`` picks which classes tasks use: ``"train"``
    the first ``round(num_classes * train_fraction)``, ``"test"`` the rest, so
    held-out tasks use unseen classes. An example of class ``c`` is its centre
    plus ``noise`` times standard normal noise.

    Args:
        num_ways: classes per task (N).
        num_shots: support examples per class (K).
        num_query: query examples per class.
        num_features: input dimension.
        num_classes: size of the class pool.
        split: ``"train"``, ``"test"`` or ``"all"``.
        train_fraction: share of the pool in the training split.
        class_separation: scale of the class centres.
        noise: standard deviation of the examples around their centre.
        pool_seed: seed of the class pool.
        dtype: floating dtype of the inputs (labels are int64).

    Example:
        >>> source = SyntheticClassification(num_ways=5, num_shots=1, num_query=3, num_features=8)
        >>> task = source.sample(seed=0)
        >>> task.support[0].shape, task.support[1].tolist()
        (torch.Size([5, 8]), [0, 1, 2, 3, 4])
        >>> task.query[1].shape
        torch.Size([15])
    """

    def __init__(
        self,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        num_features: int = 16,
        *,
        num_classes: int = 100,
        split: str = "train",
        train_fraction: float = 0.8,
        class_separation: float = 1.0,
        noise: float = 0.5,
        pool_seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        positive_int("num_features", num_features)
        positive_int("num_classes", num_classes)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        if not 0.0 < train_fraction < 1.0:
            raise ValueError(f"train_fraction must lie in (0, 1), got {train_fraction!r}")
        if not noise >= 0:
            raise ValueError(f"noise must be non-negative, got {noise!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        num_train = round(num_classes * train_fraction)
        if not 0 < num_train < num_classes:
            raise ValueError(f"num_classes={num_classes} with train_fraction={train_fraction} leaves an empty split")
        pool = torch.randn(num_classes, num_features, generator=generator_for(pool_seed), dtype=torch.float64)
        chosen = {"train": slice(0, num_train), "test": slice(num_train, None), "all": slice(None)}[split]
        self.centres = pool[chosen] * class_separation
        self.num_features = num_features
        self.pool_size = num_classes
        self.split = split
        self.train_fraction = train_fraction
        self.class_separation = class_separation
        self.noise = noise
        self.pool_seed = pool_seed
        self.dtype = dtype
        count = self.centres.shape[0]
        super().__init__(num_ways, num_shots, num_query, count, [num_shots + num_query] * count)

    def _sample(self, generator: torch.Generator) -> Task:
        # every class has exactly num_shots + num_query fresh examples, so draw them in one go
        classes = torch.randperm(self.num_classes, generator=generator)[: self.num_ways]
        k, q = self.num_shots, self.num_query
        noise = torch.randn(self.num_ways, k + q, self.num_features, generator=generator, dtype=torch.float64)
        x = (self.centres[classes].unsqueeze(1) + self.noise * noise).to(self.dtype)
        labels = torch.arange(self.num_ways)
        support = (x[:, :k].reshape(-1, self.num_features), labels.repeat_interleave(k))
        query = (x[:, k:].reshape(-1, self.num_features), labels.repeat_interleave(q))
        return Task(support, query)

    def config(self) -> dict[str, Any]:
        return {
            "source": "synthetic",
            "num_ways": self.num_ways,
            "num_shots": self.num_shots,
            "num_query": self.num_query,
            "num_features": self.num_features,
            "num_classes": self.pool_size,
            "split": self.split,
            "train_fraction": self.train_fraction,
            "class_separation": self.class_separation,
            "noise": self.noise,
            "pool_seed": self.pool_seed,
            "dtype": str(self.dtype),
        }


# ----------------------------------------------------------------------- image files
def _load_image(path: Path, image_size: int | None, grayscale: bool) -> Tensor:
    """An image file as a float tensor ``(C, H, W)`` in ``[0, 1]``.

    Raises:
        DatasetNotFoundError: the file cannot be opened (gone, no permission)
            or decoded (truncated, not an image); the one-line message names
            it.
    """
    from PIL import Image, UnidentifiedImageError
    from torchvision.transforms import functional as TF

    try:
        with Image.open(path) as image:
            image = image.convert("L" if grayscale else "RGB")
            tensor = TF.pil_to_tensor(image)
    except (FileNotFoundError, PermissionError) as exc:  # the file went away or cannot be opened: not its content
        raise DatasetNotFoundError(
            f"cannot open the image {path} ({type(exc).__name__}): it was listed when the source was built; "
            "restore it or check its permissions"
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:  # PIL's errors for truncated or foreign files
        raise DatasetNotFoundError(
            f"cannot read the image {path} ({type(exc).__name__}: {exc}): the file is truncated or not an "
            "image; replace it with a whole copy or delete it"
        ) from exc
    tensor = tensor.to(torch.float32) / 255.0
    if image_size is not None:
        tensor = TF.resize(tensor, [image_size, image_size], antialias=True)
    return tensor


def _check_image_options(image_size: int | None, dtype: torch.dtype) -> None:
    """The options every image source shares: a positive size (or ``None``) and a floating dtype."""
    if image_size is not None:
        positive_int("image_size", image_size)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")


class _ImageClassTasks(_ClassPoolTasks):
    """Classification tasks over classes given as lists of image files."""

    def __init__(
        self,
        class_names: list[str],
        class_files: list[list[Path]],
        num_ways: int,
        num_shots: int,
        num_query: int,
        *,
        image_size: int | None,
        grayscale: bool,
        rotations: bool,
        cache: bool,
        transform: Callable[[Tensor], Tensor] | None,
        dtype: torch.dtype,
    ) -> None:
        _check_image_options(image_size, dtype)
        self.class_names = class_names
        self.class_files = class_files
        self.image_size = image_size
        self.grayscale = grayscale
        self.rotations = rotations
        self.cache = cache
        self.transform = transform
        self.dtype = dtype
        self._cache: dict[Path, Tensor] = {}
        turns = 4 if rotations else 1
        counts = [len(files) for files in class_files] * turns
        super().__init__(num_ways, num_shots, num_query, len(class_files) * turns, counts, num_rotations=turns)

    def _class_name(self, index: int) -> str:
        base = self.class_names[index % len(self.class_names)]
        turns = index // len(self.class_names)
        return base if turns == 0 else f"{base} rotated by {90 * turns} degrees"

    def _example(self, class_index: int, example_index: int, generator: torch.Generator) -> Tensor:
        base = class_index % len(self.class_files)
        turns = class_index // len(self.class_files)
        path = self.class_files[base][example_index]
        image = self._cache.get(path)
        if image is None:
            image = _load_image(path, self.image_size, self.grayscale)
            if self.cache:
                self._cache[path] = image
        if turns:
            image = torch.rot90(image, turns, dims=(-2, -1))
        if self.transform is not None:
            image = self.transform(image)
        return image.to(self.dtype)

    def _image_config(self) -> dict[str, Any]:
        return {
            "num_ways": self.num_ways,
            "num_shots": self.num_shots,
            "num_query": self.num_query,
            "num_classes": len(self.class_files),
            "image_size": self.image_size,
            "grayscale": self.grayscale,
            "rotations": self.rotations,
            # tasks drawn as NOTE [ Rotations are drawn per task ] says: a checkpoint made when rotations were
            # drawn as classes of their own (no such key) does not resume under the other task distribution
            **({"rotation_sampling": "per_task"} if self.rotations else {}),
            "transform": None if self.transform is None else repr(self.transform),
            "dtype": str(self.dtype),
        }


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


class ImageFolderTasks(_ImageClassTasks):
    """N-way K-shot image classification from ``root/<class name>/<image files>``.

    Every subfolder of ``root`` is a class; its image files (by extension,
    ``IMAGE_EXTENSIONS``) are its examples. Keep training and held-out
    classes in separate roots (``data/train``, ``data/test``) or choose them
    with ``classes``. Images are decoded with PIL when a task first needs
    them, converted to float ``[0, 1]`` tensors ``(C, H, W)`` and resized to
    ``image_size`` squares; every image must have the same size after that.
    A file PIL cannot decode (truncated, not an image) raises
    :class:`DatasetNotFoundError` naming it, when a task draws it.

    Args:
        root: the folder of class subfolders.
        num_ways: classes per task (N).
        num_shots: support images per class (K).
        num_query: query images per class.
        image_size: side of the square images (``None`` keeps the file's size).
        grayscale: one channel instead of three.
        classes: class folder names to use (default: all subfolders).
        rotations: hold each class also rotated by 90, 180 and 270 degrees
            (``num_classes`` is then 4 x the classes), and give each class of
            a task one of the four rotations, drawn uniformly per task; a task
            never holds two rotations of one class, so ``num_ways`` is at most
            the number of class folders (the Omniglot augmentation of Finn et
            al. 2017 as their code draws it; NOTE [ Rotations are drawn per
            task ] in this module).
        cache: keep decoded images in memory.
        transform: applied to each image tensor after loading (and rotation).
        dtype: floating dtype of the images (labels are int64).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        num_ways: int = 5,
        num_shots: int = 1,
        num_query: int = 15,
        *,
        image_size: int | None = 84,
        grayscale: bool = False,
        classes: Sequence[str] | None = None,
        rotations: bool = False,
        cache: bool = True,
        transform: Callable[[Tensor], Tensor] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(
                f"root={str(root)!r} is not a folder; it must hold one subfolder of images per class"
            )
        available = sorted(p.name for p in root.iterdir() if p.is_dir())
        if classes is None:
            names = available
        else:
            names = list(classes)
            missing = sorted(set(names) - set(available))
            if missing:
                raise ValueError(f"classes names folders that are not in root={str(root)!r}: {missing[:5]}")
        files = [_image_files(root / name) for name in names]
        names_files = [(n, f) for n, f in zip(names, files) if f]
        if not names_files:
            raise ValueError(
                f"root={str(root)!r} has no class subfolders with image files "
                f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
            )
        self.root = root
        super().__init__(
            [n for n, _ in names_files],
            [f for _, f in names_files],
            num_ways,
            num_shots,
            num_query,
            image_size=image_size,
            grayscale=grayscale,
            rotations=rotations,
            cache=cache,
            transform=transform,
            dtype=dtype,
        )

    def config(self) -> dict[str, Any]:
        return {"source": "imagefolder", "root": str(self.root), **self._image_config()}


# -------------------------------------------------------------------- in-memory images
class _TensorClassTasks(_ClassPoolTasks):
    """Classification tasks over images held in memory, one tensor ``(n, C, H, W)`` per class.

    Images are stored as read (``uint8`` for CIFAR-100) and converted per
    example: divided by ``scale`` (to ``[0, 1]``), resized to ``image_size``,
    passed through ``transform`` and cast to ``dtype``. A task draws
    ``num_ways`` of the classes given, whatever they hold (:class:`Digits`
    gives its rotations as classes of their own).
    """

    def __init__(
        self,
        class_names: list[str],
        class_images: list[Tensor],
        num_ways: int,
        num_shots: int,
        num_query: int,
        *,
        scale: float,
        image_size: int | None,
        transform: Callable[[Tensor], Tensor] | None,
        dtype: torch.dtype,
    ) -> None:
        _check_image_options(image_size, dtype)
        self.class_names = class_names
        self.class_images = class_images
        self.image_size = image_size
        self.transform = transform
        self.dtype = dtype
        self._scale = scale
        counts = [len(x) for x in class_images]
        super().__init__(num_ways, num_shots, num_query, len(class_images), counts, num_rotations=1)

    def _class_name(self, index: int) -> str:
        return self.class_names[index]

    def _example(self, class_index: int, example_index: int, generator: torch.Generator) -> Tensor:
        image = self.class_images[class_index][example_index].to(torch.float32) / self._scale
        if self.image_size is not None and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            from torchvision.transforms import functional as TF

            image = TF.resize(image, [self.image_size, self.image_size], antialias=True)
        if self.transform is not None:
            image = self.transform(image)
        return image.to(self.dtype)

    def _tensor_config(self) -> dict[str, Any]:
        return {
            "num_ways": self.num_ways,
            "num_shots": self.num_shots,
            "num_query": self.num_query,
            "image_size": self.image_size,
            "transform": None if self.transform is None else repr(self.transform),
            "dtype": str(self.dtype),
        }
