"""Peak memory of live tensors, on CPU or CUDA.

``with track_memory(device) as mem: ...`` then ``mem.peak_bytes``.

* CUDA: the caching allocator's own count (``torch.cuda.max_memory_allocated``
  after ``reset_peak_memory_stats``), minus what was allocated on entry. The
  allocator has one peak per device, so a tracker entered inside another (an
  ``Auto`` choice measuring a step inside the user's tracker, say) would erase
  the outer one's peak when it resets it: before any reset, the peak so far is
  folded into every enclosing tracker on that device.
* CPU: a ``TorchDispatchMode`` sees every tensor produced by an operator
  inside the block, registers each new storage with its size (an output that
  shares storage with one of the operator's inputs -- a view, ``detach``, an
  in-place op -- allocated nothing and is skipped), and attaches a
  weakref finaliser to the storage that subtracts the size when the storage is
  freed. The count is the bytes of storages created inside the block that are
  still alive: the figure a GPU's allocator would hold, minus kernel
  workspaces and allocator rounding. Tensors created before the block are not
  counted. The mode adds Python overhead to every operator, so time the code
  in a separate run.

Host memory. Stored states that the engine offloads (``offload=True``) are
copied to host memory. On CUDA the allocator's count excludes them by nature;
on CPU, where host and "device" are the same memory, the engine makes those
copies inside ``host_allocations`` and the tracker tallies them apart, in
``host_peak_bytes``, so ``peak_bytes`` is what would stay on an accelerator.

The process's peak resident set size is reported beside it
(:func:`peak_rss_bytes`); it is a high-water mark for the whole process, so
measure each configuration in a fresh process.
"""

from __future__ import annotations

import contextlib
import resource
import sys
import threading
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["MemoryTracker", "host_allocations", "peak_rss_bytes", "track_memory"]

_HOST = threading.local()


@contextlib.contextmanager
def host_allocations() -> Iterator[None]:
    """CPU tensors created inside count as host memory, not device memory, for :class:`MemoryTracker`."""
    previous = getattr(_HOST, "active", False)
    _HOST.active = True
    try:
        yield
    finally:
        _HOST.active = previous


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far, in bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024


class _StorageCounter(TorchDispatchMode):
    def __init__(self, tracker: MemoryTracker) -> None:
        super().__init__()
        self.tracker = tracker

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # an output that shares storage with an input (a view, detach, an in-place or out= op)
        # allocated nothing: counting it would count a tensor made before the block
        inputs = {
            leaf.untyped_storage()._cdata
            for leaf in pytree.tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor) and leaf.device.type == "cpu"
        }
        out = func(*args, **kwargs)
        for leaf in pytree.tree_leaves(out):
            if (
                isinstance(leaf, torch.Tensor)
                and leaf.device.type == "cpu"
                and (leaf.untyped_storage()._cdata not in inputs)
            ):
                self.tracker._register(leaf)
        return out


class _CudaStats:
    """The CUDA caching allocator's counters for one device (a fake stands in for them in the tests)."""

    @staticmethod
    def synchronize(device: torch.device) -> None:
        torch.cuda.synchronize(device)

    @staticmethod
    def reset_peak(device: torch.device) -> None:
        torch.cuda.reset_peak_memory_stats(device)

    @staticmethod
    def allocated(device: torch.device) -> int:
        return torch.cuda.memory_allocated(device)

    @staticmethod
    def peak(device: torch.device) -> int:
        return torch.cuda.max_memory_allocated(device)


_cuda_stats = _CudaStats()
_ACTIVE_CUDA: list[MemoryTracker] = []  # CUDA trackers inside whose block we are, outermost first


class MemoryTracker:
    """Counts live tensor bytes allocated inside a ``with`` block; see the module docstring.

    Attributes:
        device: the device measured.
        peak_bytes: the most bytes alive at once inside the block (after exit).
        current_bytes: bytes allocated inside the block and alive now.
        host_peak_bytes: (CPU) the most bytes alive at once among tensors made
            inside ``host_allocations`` (offloaded states); not in ``peak_bytes``.
    """

    def __init__(self, device: Any = "cpu") -> None:
        self.device = torch.device(device)
        if self.device.type not in ("cpu", "cuda"):
            raise ValueError(f"track_memory supports cpu and cuda devices, got {self.device}")
        if self.device.type == "cuda" and self.device.index is None and torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())  # one name per device
        self.peak_bytes = 0
        self.host_peak_bytes = 0
        self._current = 0
        self._host_current = 0
        self._start = 0
        self._live: dict[int, tuple[int, bool]] = {}
        self._lock = threading.Lock()
        self._mode: _StorageCounter | None = None
        self._active = False

    # -- CPU bookkeeping -------------------------------------------------------------
    def _register(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        host = getattr(_HOST, "active", False)
        with self._lock:
            if key in self._live:
                return
            nbytes = storage.nbytes()
            self._live[key] = (nbytes, host)
            if host:
                self._host_current += nbytes
                self.host_peak_bytes = max(self.host_peak_bytes, self._host_current)
            else:
                self._current += nbytes
                self.peak_bytes = max(self.peak_bytes, self._current)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        with self._lock:
            nbytes, host = self._live.pop(key, (0, False))
            if host:
                self._host_current -= nbytes
            else:
                self._current -= nbytes

    # -- context ---------------------------------------------------------------------
    @property
    def current_bytes(self) -> int:
        if self.device.type == "cuda" and self._active:
            return _cuda_stats.allocated(self.device) - self._start
        return self._current

    def _fold_cuda_peak(self) -> None:
        """Keep the device's peak so far, before another tracker resets it."""
        self.peak_bytes = max(self.peak_bytes, _cuda_stats.peak(self.device) - self._start)

    def __enter__(self) -> MemoryTracker:
        self.peak_bytes = 0
        self.host_peak_bytes = 0
        if self.device.type == "cuda":
            _cuda_stats.synchronize(self.device)
            for outer in _ACTIVE_CUDA:
                if outer.device == self.device:
                    outer._fold_cuda_peak()
            _cuda_stats.reset_peak(self.device)
            self._start = _cuda_stats.allocated(self.device)
            _ACTIVE_CUDA.append(self)
        else:
            self._mode = _StorageCounter(self)
            self._mode.__enter__()
        self._active = True
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            _cuda_stats.synchronize(self.device)
            self._fold_cuda_peak()
            _ACTIVE_CUDA.remove(self)
        else:
            assert self._mode is not None
            self._mode.__exit__(*exc)
            self._mode = None
        self._active = False


def track_memory(device: Any = "cpu") -> MemoryTracker:
    """A context manager that measures the peak bytes of live tensors on ``device``.

    Example:
        >>> import torch
        >>> with track_memory("cpu") as mem:
        ...     x = torch.zeros(1000, dtype=torch.float64)
        ...     del x
        ...     y = torch.zeros(10, dtype=torch.float64)
        >>> mem.peak_bytes
        8000
    """
    return MemoryTracker(device)
