"""Sine-wave regression tasks (Finn, Abbeel & Levine 2017, section 5.1)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import positive_int, range_pair
from ._base import Task, TaskSource, mse_loss

__all__ = ["Sinusoid"]


# ------------------------------------------------------------------------- sinusoid
class Sinusoid(TaskSource):
    """Sinusoid regression (Finn et al. 2017, section 5.1).

    A task is ``y = amplitude * sin(x - phase)`` with amplitude ``U[0.1, 5]``,
    phase ``U[0, pi]``; support and query inputs are drawn independently from
    ``U[-5, 5]``. Inputs and targets have shape ``(num_points, 1)``.

    Args:
        num_shots: support points per task (K).
        num_query: query points per task (default: ``num_shots``, as in the
            reference code ``cbfinn/maml``).
        amplitude_range, phase_range, x_range: the ranges above.
        dtype: floating dtype of the tensors.

    Example:
        >>> source = Sinusoid(num_shots=10)
        >>> task = source.sample(seed=7)
        >>> task.support[0].shape, task.query[1].shape
        (torch.Size([10, 1]), torch.Size([10, 1]))
        >>> torch.equal(task.query[1], source.sample(seed=7).query[1])
        True
    """

    loss_function = staticmethod(mse_loss)
    metrics: dict[str, Callable[[nn.Module, Any], Tensor]] = {}

    def __init__(
        self,
        num_shots: int = 10,
        num_query: int | None = None,
        *,
        amplitude_range: tuple[float, float] = (0.1, 5.0),
        phase_range: tuple[float, float] = (0.0, math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        dtype: torch.dtype = torch.float32,
    ) -> None:
        positive_int("num_shots", num_shots)
        num_query = num_shots if num_query is None else num_query
        positive_int("num_query", num_query)
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.num_shots = num_shots
        self.num_query = num_query
        self.amplitude_range = range_pair("amplitude_range", amplitude_range)
        self.phase_range = range_pair("phase_range", phase_range)
        self.x_range = range_pair("x_range", x_range)
        self.dtype = dtype

    def _uniform(self, generator: torch.Generator, size: tuple[int, ...], bounds: tuple[float, float]) -> Tensor:
        low, high = bounds
        return torch.rand(size, generator=generator, dtype=torch.float64) * (high - low) + low

    def _sample(self, generator: torch.Generator) -> Task:
        amplitude = self._uniform(generator, (), self.amplitude_range)
        phase = self._uniform(generator, (), self.phase_range)
        x = self._uniform(generator, (self.num_shots + self.num_query, 1), self.x_range)
        y = amplitude * torch.sin(x - phase)
        x, y = x.to(self.dtype), y.to(self.dtype)
        k = self.num_shots
        return Task((x[:k], y[:k]), (x[k:], y[k:]))

    def config(self) -> dict[str, Any]:
        return {
            "source": "sinusoid",
            "num_shots": self.num_shots,
            "num_query": self.num_query,
            "amplitude_range": list(self.amplitude_range),
            "phase_range": list(self.phase_range),
            "x_range": list(self.x_range),
            "dtype": str(self.dtype),
        }
