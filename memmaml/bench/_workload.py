"""The problem a benchmark measures: a model, random batches, a loss and an inner optimizer."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import memmaml
from memmaml import models

__all__ = ["Built", "Workload"]

MODELS = ("resnet18", "conv4", "mlp")
OPTIMIZERS = ("sgd", "adam", "rmsprop")


class Built(NamedTuple):
    """A :class:`Workload` made real: the model, the loss, the inner batches and the query batch."""

    model: Any
    loss_function: Callable[..., Any]
    inputs: Callable[[int], list[Any]]  # n -> the batches of n inner steps
    query: Any
    optimizer: Any  # a memmaml in-graph optimizer
    device: Any


@dataclasses.dataclass(frozen=True)
class Workload:
    """One meta-step's problem, as plain values (it travels to worker processes as JSON).

    The seed demo's workload is the default: ResNet-18 with 10 classes, random
    batches of 16x3x224x224, in-graph SGD at 0.01, the same batch at every step.

    Attributes:
        model: ``"resnet18"``, ``"conv4"`` (few-shot MAML's conv net, ``width``
            filters, BatchNorm with running statistics) or ``"mlp"`` (two hidden
            layers of ``width`` units).
        image_size, batch_size, channels, num_classes: the random data.
        width: conv4's filters or the MLP's hidden units (ignored by ResNet-18).
        optimizer: ``"sgd"``, ``"adam"`` or ``"rmsprop"``, at learning rate ``lr``.
        max_grad_grad_norm: memmaml's clipping through the unroll (``None``: off).
        fresh_batches: a new batch per inner step, generated from its index inside
            the loss (so ``n`` batches are never held at once), not one batch reused.
        dropout: the probability of a ``Dropout`` inserted before the classifier
            (ResNet-18's ``fc`` becomes ``Sequential(Dropout, Linear)``, so its
            parameters are named ``fc.1.*``); ``0.0``: none. The model then draws
            random numbers, which the checkpointed engine must replay exactly.
        dtype, device, seed: as they say.
    """

    model: str = "resnet18"
    image_size: int = 224
    batch_size: int = 16
    channels: int = 3
    num_classes: int = 10
    width: int = 64
    optimizer: str = "sgd"
    lr: float = 0.01
    max_grad_grad_norm: float | None = None
    fresh_batches: bool = False
    dropout: float = 0.0
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0

    def __post_init__(self) -> None:
        for name, known in (("model", MODELS), ("optimizer", OPTIMIZERS), ("dtype", ("float32", "float64"))):
            if getattr(self, name) not in known:
                raise ValueError(f"{name} must be one of {', '.join(map(repr, known))}; got {getattr(self, name)!r}")
        for name in ("image_size", "batch_size", "channels", "num_classes", "width"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("lr", "max_grad_grad_norm"):
            value = getattr(self, name)
            if not (value is None and name == "max_grad_grad_norm") and not _finite_positive(value):
                raise ValueError(f"{name} must be a finite positive number, got {value!r}")
        if not _number(self.dropout) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must satisfy 0.0 <= dropout < 1.0, got {self.dropout!r}")

    def describe(self) -> str:
        """``'resnet18, 16x3x224x224, 10 classes, sgd lr 0.01, float32'`` (and ``', dropout 0.2'`` if any)."""
        width = "" if self.model == "resnet18" else f" (width {self.width})"
        dropout = f", dropout {self.dropout:g}" if self.dropout else ""
        return (
            f"{self.model}{width}, {self.batch_size}x{self.channels}x{self.image_size}x{self.image_size}, "
            f"{self.num_classes} classes, {self.optimizer} lr {self.lr:g}, {self.dtype}{dropout}"
        )

    def build(self) -> Built:
        """The model (seeded), the loss, the batches and the optimizer, on ``device``."""
        import torch
        import torch.nn.functional as F

        device, dtype = torch.device(self.device), getattr(torch, self.dtype)
        torch.manual_seed(self.seed)
        if self.model == "resnet18":
            model = models.resnet18(self.num_classes, in_channels=self.channels)
        elif self.model == "conv4":
            model = models.conv4(self.channels, self.num_classes, image_size=self.image_size, filters=self.width)
        else:
            model = models.mlp(
                [self.channels * self.image_size**2, self.width, self.width, self.num_classes], flatten=True
            )
        if self.dropout and self.model == "resnet18":
            model.fc = torch.nn.Sequential(torch.nn.Dropout(self.dropout), model.fc)
        elif self.dropout:  # conv4 and the MLP are Sequentials ending in their classifier
            model.insert(len(model) - 1, torch.nn.Dropout(self.dropout))
        model = model.to(device=device, dtype=dtype).train()

        def make_batch(index: int) -> tuple[Any, Any]:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + 7919 * (index + 1))
            shape = (self.batch_size, self.channels, self.image_size, self.image_size)
            x = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
            y = torch.randint(0, self.num_classes, (self.batch_size,), generator=generator).to(device)
            return x, y

        support = make_batch(0)

        def loss_function(net: Any, batch: Any) -> Any:
            if isinstance(batch, int):  # fresh_batches: batch i is generated from its index
                batch = make_batch(batch + 1)
            return F.cross_entropy(net(batch[0]), batch[1])

        def inputs(n: int) -> list[Any]:
            return list(range(n)) if self.fresh_batches else [support] * n

        optimizer = {"sgd": memmaml.SGD, "adam": memmaml.Adam, "rmsprop": memmaml.RMSProp}[self.optimizer](self.lr)
        return Built(model, loss_function, inputs, make_batch(-2), optimizer, device)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite_positive(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value > 0
