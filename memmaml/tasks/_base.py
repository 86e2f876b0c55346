"""Tasks, task sources, seeds, and the losses and metrics the sources name."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checks import integer, positive_int

__all__ = [
    "IMAGE_EXTENSIONS",
    "Task",
    "TaskSource",
    "accuracy",
    "cross_entropy_loss",
    "draw_seeds",
    "generator_for",
    "mse_loss",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm")

_SEED_BOUND = 2**62


class Task(NamedTuple):
    """One task (or a stack of tasks along a new first dimension).

    Attributes:
        support: ``(inputs, targets)`` the inner loop adapts on.
        query: ``(inputs, targets)`` the adapted model is evaluated on.
    """

    support: tuple[Tensor, Tensor]
    query: tuple[Tensor, Tensor]

    def to(self, device: Any = None, dtype: torch.dtype | None = None) -> Task:
        """The task on ``device``, floating tensors cast to ``dtype`` (integer labels keep theirs)."""

        def move(t: Tensor) -> Tensor:
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device) if device is not None else t

        return Task(tuple(move(t) for t in self.support), tuple(move(t) for t in self.query))

    def select(self, index: Any) -> Task:
        """Index every tensor along the task dimension (``batch.select(slice(0, 2))``, ``batch.select(3)``)."""
        return Task(tuple(t[index] for t in self.support), tuple(t[index] for t in self.query))

    @property
    def num_tasks(self) -> int:
        """The size of the leading (task) dimension of a stacked batch."""
        return self.support[0].shape[0]


def draw_seeds(generator: torch.Generator, num_tasks: int) -> list[int]:
    """``num_tasks`` task seeds from ``generator`` (which advances).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> seeds = draw_seeds(g, 3)
        >>> seeds == draw_seeds(torch.Generator().manual_seed(0), 3)
        True
    """
    positive_int("num_tasks", num_tasks)
    return torch.randint(0, _SEED_BOUND, (num_tasks,), generator=generator, dtype=torch.int64).tolist()


def generator_for(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(integer("seed", seed) % _SEED_BOUND)


# ----------------------------------------------------------------------------- base
class TaskSource:
    """Base class: ``sample(seed)`` builds one :class:`Task`, deterministically.

    Subclasses implement ``_sample`` (given a ``torch.Generator`` seeded with
    the task seed) and :meth:`config` (a dict of plain values that identifies
    the distribution, stored in checkpoints). ``loss_function`` and
    ``metrics`` name what fits the source (see :class:`memmaml.MetaTrainer`).
    """

    #: ``loss_function(model, batch)`` that fits the source.
    loss_function: Callable[[nn.Module, Any], Tensor]
    #: query metrics besides the loss, ``{name: fn(model, batch)}``.
    metrics: dict[str, Callable[[nn.Module, Any], Tensor]] = {}

    def sample(self, seed: int) -> Task:
        """The task identified by ``seed`` (an int; the same task on every call)."""
        return self._sample(generator_for(seed))

    def sample_batch(self, seeds: Sequence[int]) -> Task:
        """The tasks identified by ``seeds``, stacked along a new first dimension."""
        seeds = list(seeds)
        if not seeds:
            raise ValueError("seeds must hold at least one task seed, got none")
        tasks = [self.sample(seed) for seed in seeds]
        return Task(
            tuple(torch.stack(parts) for parts in zip(*(t.support for t in tasks))),
            tuple(torch.stack(parts) for parts in zip(*(t.query for t in tasks))),
        )

    def _sample(self, generator: torch.Generator) -> Task:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Plain values (numbers, strings, lists) that identify this task distribution."""
        raise NotImplementedError

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "source")
        return f"{type(self).__name__}({inner})"


# ------------------------------------------------------------------- losses, metrics
def mse_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Mean squared error of ``model(inputs)`` against ``targets``."""
    inputs, targets = batch
    return F.mse_loss(model(inputs), targets)


def cross_entropy_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Cross-entropy of the logits ``model(inputs)`` against integer labels."""
    inputs, labels = batch
    return F.cross_entropy(model(inputs), labels)


def accuracy(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """Fraction of ``inputs`` whose arg-max logit is the label (a 0-d float tensor, not differentiable)."""
    inputs, labels = batch
    logits = model(inputs)
    return (logits.argmax(dim=-1) == labels).to(logits.dtype).mean()
