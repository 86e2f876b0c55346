"""Stored states, on the device or offloaded to host memory.

NOTE [ Offloading ]
    ``put`` copies a state's tensors to host memory (pinned and asynchronous on
    CUDA: ordered on the current stream, so neither the copy nor the later
    reuse of the device memory races) and ``get`` copies them back to their
    device. On a CPU-only run there is no separate device: the copies are made
    inside :func:`memmaml._memory.host_allocations`, so
    :func:`memmaml.track_memory` counts what would stay on an accelerator.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._memory import host_allocations
from ._replay_context import Rng

__all__ = ["Store", "StoredState"]


class StoredState(NamedTuple):
    """The state before a step: what a replay starts from."""

    leaves: list[Any]  # flattened (params, opt_state), detached
    buffers: dict[str, Tensor] | None  # copies of the model's buffers
    rng: Rng | None  # CPU and CUDA generator states
    devices: list[torch.device | None] | None = None  # where each leaf lives when offloaded


class Store:
    """Stored states by index; with ``offload`` they live in host memory."""

    def __init__(self, offload: bool) -> None:
        self.offload = offload
        self.states: dict[int, StoredState] = {}

    def put(self, index: int, state: StoredState) -> None:
        if self.offload:
            state = StoredState(
                [_to_host(t) if isinstance(t, Tensor) else t for t in state.leaves],
                None if state.buffers is None else {k: _to_host(v) for k, v in state.buffers.items()},
                state.rng,
                [t.device if isinstance(t, Tensor) else None for t in state.leaves],
            )
        self.states[index] = state

    def get(self, index: int) -> StoredState:
        state = self.states[index]
        if not self.offload:
            return state
        devices = state.devices
        leaves = [_from_host(t, d) if isinstance(t, Tensor) else t for t, d in zip(state.leaves, devices)]
        device = next((d for d in devices if d is not None), torch.device("cpu"))
        buffers = None if state.buffers is None else {k: _from_host(v, device) for k, v in state.buffers.items()}
        return StoredState(leaves, buffers, state.rng, devices)

    def pop(self, index: int) -> None:
        """Free state ``index``; the state a kept segment starts from was never stored."""
        self.states.pop(index, None)


def _to_host(tensor: Tensor) -> Tensor:
    if tensor.device.type == "cpu":
        with host_allocations():
            return tensor.detach().clone()
    host = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    host.copy_(tensor.detach(), non_blocking=True)
    return host


def _from_host(tensor: Tensor, device: torch.device | None) -> Tensor:
    if device is None or device.type == "cpu":
        return tensor.clone()
    return tensor.to(device, non_blocking=True)
