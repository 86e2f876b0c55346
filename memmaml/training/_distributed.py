"""The processes of a data-parallel run: who am I, summing over processes, and every process's RNG state.

NOTE [ Data parallel over processes ]
    Launched with ``torchrun`` (after ``torch.distributed.init_process_group``),
    every process draws the same task seeds and adapts its contiguous share of
    the meta-batch (``meta_batch_size / world_size`` tasks, which must be a
    whole number). The local meta-gradients, averaged over the local tasks,
    are summed with one ``all_reduce`` and divided by the world size: the
    result is the meta-gradient of the mean over the whole meta-batch. Every
    process then clips and steps the same outer optimizer on the same numbers,
    so the meta-parameters stay identical without ever being broadcast again
    (they are broadcast once from rank 0 when the trainer is built). Only rank
    0 logs and writes checkpoints; :meth:`memmaml.MetaTrainer.save_checkpoint`
    is still called on every rank (it gathers the RNG states). Held-out tasks
    are split between processes and their statistics summed
    (:mod:`memmaml.training._evaluation`). The model is not wrapped in
    ``DistributedDataParallel``.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = ["Processes"]

T = TypeVar("T")


@dataclass(frozen=True)
class Processes:
    """This process's place in the run: ``rank`` of ``world_size`` (``0`` of ``1`` when not distributed).

    Every method is a no-op (or the one-process answer) when ``distributed`` is
    false; when it is true, every method that communicates is collective: every
    rank must call it, in the same order.
    """

    distributed: bool = False
    rank: int = 0
    world_size: int = 1

    @classmethod
    def current(cls, distributed: bool | None = None) -> Processes:
        """The processes of ``torch.distributed``'s default group.

        Args:
            distributed: ``None`` spreads over processes whenever a process group
                is initialised; ``True`` requires one; ``False`` runs alone.
        """
        import torch.distributed as dist

        initialised = dist.is_available() and dist.is_initialized()
        if distributed is None:
            distributed = initialised
        if distributed and not initialised:
            raise ValueError("distributed=True needs torch.distributed.init_process_group() to have been called")
        if not distributed:
            return cls()
        return cls(True, dist.get_rank(), dist.get_world_size())

    def contiguous_share(self, items: Sequence[T], per_rank: int) -> Sequence[T]:
        """Items ``rank * per_rank`` up to ``(rank + 1) * per_rank`` (fewer, or none, at the end)."""
        return items[self.rank * per_rank : (self.rank + 1) * per_rank]

    def all_reduce_sum(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over processes, in place; returns it."""
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def average(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """Each tensor's mean over processes (one ``all_reduce`` of their concatenation); alone, the tensors."""
        if not self.distributed:
            return list(tensors)
        flat = self.all_reduce_sum(torch.cat([t.reshape(-1) for t in tensors]))
        flat /= self.world_size
        out, offset = [], 0
        for t in tensors:
            out.append(flat[offset : offset + t.numel()].view_as(t).clone())
            offset += t.numel()
        return out

    def broadcast_from_rank0(self, tensors: Iterable[Tensor]) -> None:
        """Overwrite every tensor with rank 0's values, in place."""
        if self.distributed:
            import torch.distributed as dist

            with torch.no_grad():
                for tensor in tensors:
                    dist.broadcast(tensor.data, src=0)

    def gather_rng_states(self, device: torch.device) -> list[dict[str, Any]]:
        """Every process's RNG states (:func:`rng_state`), in rank order, on every process."""
        state = rng_state(device)
        if not self.distributed:
            return [state]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in state.items()})
        return gathered

    def restore_rng_states(
        self, states: Sequence[Mapping[str, Any]], device: torch.device, *, fallback_seed: int, source: str
    ) -> None:
        """Set this process's RNG states from :meth:`gather_rng_states`' list.

        A list from another number of processes warns: a process without a saved
        state seeds the torch generator with ``fallback_seed + rank`` instead, and
        random operators in the model (dropout) no longer repeat the original run.
        """
        if len(states) != self.world_size:
            warnings.warn(
                f"{source} holds the RNG states of {len(states)} processes, this run has {self.world_size}: "
                "processes without a saved state start a fresh stream; random operators in the model (dropout) "
                "will not repeat the original run",
                stacklevel=3,
            )
        if self.rank < len(states):
            set_rng_state(states[self.rank], device)
        else:
            torch.manual_seed(fallback_seed + self.rank)


def rng_state(device: torch.device) -> dict[str, Any]:
    """The CPU generator's state, Python ``random``'s, and ``device``'s when it is a CUDA device."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned (the CUDA part only on a CUDA ``device``)."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]  # a checkpoint may give lists back; random wants tuples
    random.setstate((version, tuple(internal), gauss))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
