"""Stored states, on the device or offloaded to host memory.

NOTE [ Offloading ]
    ``put`` copies a state's tensors to host memory and ``get`` copies them back,
    each to the device it came from, with its size and strides (a
    ``channels_last`` weight comes back ``channels_last``: a contiguous copy
    would run other kernels in the replay than in the forward pass, and the
    replay would no longer compute what the forward pass computed). On a
    CPU-only run there is no separate device: the copies are made inside
    :func:`memmaml.engine._memory.host_allocations`, so :func:`memmaml.track_memory`
    counts what would stay on an accelerator, and nothing else changes.

NOTE [ Copies that overlap compute ]
    On CUDA the copies run on a side stream per device, so that they overlap
    the steps computed meanwhile, as ``torch.autograd.graph.save_on_cpu`` and
    FSDP's CPU offload arrange theirs. The synchronisation argument:

    * device to host (``put``): the side stream first waits for the compute
      stream, so the copy reads the state after the step that produced it;
      ``record_stream(side)`` tells the caching allocator that the side stream
      uses the state's device memory, so the compute stream cannot reuse it
      before the copy has read it, even once the engine has dropped the state;
    * host memory: the pinned buffers come from the caching host allocator,
      which records an event for every non-blocking copy that touches them and
      frees a buffer only after its copies have finished;
    * host to device (``prefetch`` then ``get``): the copy back runs on the
      same side stream, so stream order puts it after the copy out; the
      executor asks for the next state while the current segment is being
      replayed and reversed, so the copy overlaps that work. ``get`` makes the
      compute stream wait for the copy's event before anything reads the
      state, and ``record_stream(compute)`` keeps the side stream's allocation
      from being reused while the compute stream still reads it;
    * a state stored again under the same index, or dropped, forgets its
      prefetched copy, so nothing stale is ever read;
    * every store of one unroll shares its side streams: a second backward
      pass (``retain_graph=True``) rebuilds the stored states in a new store
      from the input state the first one copied out, and reads it back on the
      stream that copied it.

    Nothing here syncs with the host. Prefetching holds one more state on the
    device (the cost model counts three states with offload).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..schedules import pinned_bytes
from ._memory import host_allocations
from ._replay_context import Rng

__all__ = ["OnHost", "Store", "StoredState", "from_host", "host_bytes", "reusable_pinned_bytes", "to_host"]


class StoredState(NamedTuple):
    """The state before a step: what a replay starts from."""

    leaves: list[Any]  # flattened (params, opt_state), detached; OnHost where offloaded
    buffers: dict[str, Any] | None  # copies of the model's buffers; OnHost where offloaded
    rng: Rng | None  # CPU and CUDA generator states


class OnHost(NamedTuple):
    """An offloaded tensor: its host copy and the device it returns to."""

    tensor: Tensor
    device: torch.device


def host_bytes(tensors: list[Tensor]) -> int:
    """Host bytes that offloading ``tensors`` takes: CUDA tensors as the pinned allocator rounds them (a
    power of two each), others exactly."""
    return sum(
        pinned_bytes(t.numel() * t.element_size()) if t.is_cuda else t.numel() * t.element_size() for t in tensors
    )


def reusable_pinned_bytes() -> int:
    """Pinned host memory this process's CUDA allocator holds but does not use: it stays taken for the system
    (it is not in ``MemAvailable``), yet the next offloaded states reuse it."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return 0
    stats = torch.cuda.host_memory_stats()
    return max(int(stats.get("allocated_bytes.current", 0)) - int(stats.get("active_bytes.current", 0)), 0)


def _empty_like_strided(tensor: Tensor, *, pin_memory: bool) -> Tensor:
    """An empty host tensor with ``tensor``'s size, strides and dtype (contiguous if its layout has gaps or
    overlaps, which a copy could not fill one to one)."""
    if _dense(tensor):
        return torch.empty_strided(
            tensor.size(), tensor.stride(), dtype=tensor.dtype, device="cpu", pin_memory=pin_memory
        )
    return torch.empty(tensor.size(), dtype=tensor.dtype, device="cpu", pin_memory=pin_memory)


def _dense(tensor: Tensor) -> bool:
    """Whether ``tensor``'s elements fill its storage span exactly once (any order of dimensions)."""
    if tensor.numel() == 0:
        return True
    expected = 1
    for size, stride in sorted(zip(tensor.size(), tensor.stride()), key=lambda pair: pair[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True


def to_host(tensor: Tensor, side_stream: Any = None) -> OnHost:
    """A host copy of ``tensor`` with its size and strides, and the device it returns to.

    On CUDA the copy is pinned and runs on ``side_stream`` (NOTE [ Copies that overlap compute ]); on CPU it
    is an ordinary copy, counted as host memory by the tracker.
    """
    tensor = tensor.detach()
    if tensor.device.type == "cuda":
        return _to_pinned(tensor, side_stream)
    with host_allocations():
        host = _empty_like_strided(tensor, pin_memory=False)
        host.copy_(tensor)
    return OnHost(host, tensor.device)


def _to_pinned(tensor: Tensor, side_stream: Any) -> OnHost:
    """The CUDA branch of :func:`to_host` (NOTE [ Copies that overlap compute ])."""
    host = _empty_like_strided(tensor, pin_memory=True)
    side_stream.wait_stream(torch.cuda.current_stream(tensor.device))  # the copy reads the finished state
    with torch.cuda.stream(side_stream):
        host.copy_(tensor, non_blocking=True)
    tensor.record_stream(side_stream)  # its memory is not reused before the copy has read it
    return OnHost(host, tensor.device)


def from_host(stored: OnHost, side_stream: Any = None) -> Tensor:
    """A device tensor with the stored tensor's values, size and strides, on the device it came from.

    On CUDA the copy runs on ``side_stream`` (the caller makes the compute stream wait for it); on CPU it is
    an ordinary copy.
    """
    host, device = stored
    if device.type == "cuda":
        with torch.cuda.stream(side_stream):
            return _like(host, device).copy_(host, non_blocking=True)
    return _like(host, device).copy_(host)


def _like(host: Tensor, device: torch.device) -> Tensor:
    """An empty tensor on ``device`` with ``host``'s size, strides and dtype."""
    return torch.empty_strided(host.size(), host.stride(), dtype=host.dtype, device=device)


class _Fetched(NamedTuple):
    state: StoredState
    events: dict[torch.device, Any]  # per CUDA device, the event that marks the copies done


class Store:
    """Stored states by index; with ``offload`` they live in host memory (NOTE [ Offloading ])."""

    def __init__(self, offload: bool, streams: dict[torch.device, Any] | None = None) -> None:
        self.offload = offload
        self.states: dict[int, StoredState] = {}
        # side streams per device, shared by every store of one unroll: a state copied out by one store
        # (the input, kept for a second backward pass) is read back by another, in the same stream's order
        self.streams: dict[torch.device, Any] = {} if streams is None else streams
        self._prefetched: dict[int, _Fetched] = {}

    def _side_stream(self, device: torch.device) -> Any:
        if device not in self.streams:
            self.streams[device] = torch.cuda.Stream(device)
        return self.streams[device]

    def _map(self, state: StoredState, fn) -> StoredState:
        leaves = [fn(t) if isinstance(t, (Tensor, OnHost)) else t for t in state.leaves]
        buffers = None if state.buffers is None else {k: fn(v) for k, v in state.buffers.items()}
        return StoredState(leaves, buffers, state.rng)

    def put(self, index: int, state: StoredState) -> None:
        self._prefetched.pop(index, None)
        if self.offload:
            state = self._map(state, lambda t: to_host(t, self._stream_for(t.device)))
        self.states[index] = state

    def prefetch(self, index: int) -> None:
        """Start copying stored state ``index`` back to its devices (CUDA only; elsewhere nothing to overlap)."""
        if self.offload and index not in self._prefetched and index in self.states:
            fetched = self._fetch(index)
            if fetched is not None:
                self._prefetched[index] = fetched

    def _fetch(self, index: int) -> _Fetched | None:
        """Copies of state ``index`` on its CUDA devices, started on the side streams (``None`` without CUDA)."""
        devices = {t.device for t in _tensors(self.states[index]) if t.device.type == "cuda"}
        if not devices:
            return None
        state = self._map(self.states[index], lambda t: from_host(t, self._stream_for(t.device)))
        events = {}
        for device in devices:
            events[device] = torch.cuda.Event()
            events[device].record(self._side_stream(device))
        return _Fetched(state, events)

    def get(self, index: int) -> StoredState:
        """Stored state ``index``, on its devices."""
        if not self.offload:
            return self.states[index]
        fetched = self._prefetched.pop(index, None) or self._fetch(index)
        if fetched is None:  # no CUDA tensor: plain copies
            return self._map(self.states[index], from_host)
        for device, event in fetched.events.items():
            torch.cuda.current_stream(device).wait_event(event)
        for tensor in _tensors(fetched.state):
            if tensor.device.type == "cuda":
                tensor.record_stream(torch.cuda.current_stream(tensor.device))
        return fetched.state

    def pop(self, index: int) -> None:
        """Free state ``index``; the state a kept segment starts from was never stored."""
        self._prefetched.pop(index, None)
        self.states.pop(index, None)

    def _stream_for(self, device: torch.device) -> Any:
        return self._side_stream(device) if device.type == "cuda" else None


def _tensors(state: StoredState) -> list[Any]:
    """The tensors (or offloaded tensors) of ``state``."""
    items = [t for t in state.leaves if isinstance(t, (Tensor, OnHost))]
    return items + list((state.buffers or {}).values())
