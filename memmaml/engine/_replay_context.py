"""What a replayed step must see besides its inputs: RNG, train/eval flags, buffers, autocast.

NOTE [ Replay must be exact ]
    A replay must compute the function whose states the forward pass stored,
    or the meta-gradient silently belongs to another computation. What a step
    computes depends on its inputs and on ambient state, so a replay restores:

    * the state itself: a stored state holds the parameters, the optimizer
      state, a copy of the model's buffers and the RNG state (CPU and the CUDA
      devices in use) as they were before its step;
    * the RNG state, inside ``torch.random.fork_rng`` (the caller's random
      stream is untouched), so dropout draws the same masks;
    * every submodule's ``training`` flag as it was when the inner loop ran;
    * the autocast state (enabled, and the low-precision dtype) of ``cpu`` and
      of every device type the model, the state and the extras live on,
      captured when :func:`~memmaml.unroll` is called. The backward pass
      usually runs outside the user's ``with torch.autocast(...)`` block (and
      on CUDA, in the autograd engine's own thread, where thread-local
      autocast state is not set), so without this the replay computes in
      float32 what the forward computed in bfloat16. The vector-Jacobian
      product through a replayed segment runs in the caller's state, as the
      naive engine's backward pass does;
    * the buffers: the model runs on *copies* of the stored buffers, so
      BatchNorm's running statistics are updated once per inner step, by the
      forward pass, in the model itself, exactly as the naive loop updates
      them, and never again.

    The autocast weight cache changes no value: it keeps a low-precision copy
    of each leaf tensor that requires grad until the outermost autocast block
    exits. Every step the checkpointed engine runs starts from freshly detached
    leaves, so a cache would keep a copy of every step's parameters alive
    (memory growing with ``n``: measured 0.5 MB per step for a 330 kB MLP
    under bf16). The engine's own steps therefore run with the cache off.

    * the cuDNN flags (enabled, benchmark, deterministic, TF32), as the call
      found them: they choose kernels, and a replay running other kernels
      computes another function. The flags matter most for cuDNN's LSTM and GRU
      with dropout, whose masks come from cuDNN's own dropout state, which
      restoring the generator cannot restore: the engine refuses such a model
      on CUDA with cuDNN enabled (:func:`check_cudnn_rnn_dropout`), and a call
      made under ``torch.backends.cudnn.flags(enabled=False)`` is replayed
      without cuDNN too, where the masks come from the generator.

    Left alone, because they are process-wide settings a program does not
    change between a forward and a backward pass, and a change would be
    caught by ``check_replay``: the default dtype, deterministic-algorithm
    flags, float32 matmul precision, the number of threads. Grad mode is
    set by the engine itself for every step. Saved-tensor hooks and anomaly
    mode change where tensors live or what is checked, not what is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

__all__ = ["Ambient", "ReplayContext", "Rng", "check_cudnn_rnn_dropout"]

Rng = tuple[Tensor, list[Tensor]]  # the CPU generator's state and one state per CUDA device in use


class Ambient:
    """The autocast state and cuDNN flags steps compute under, captured at construction."""

    def __init__(self, device_types: Iterable[str]) -> None:
        types = sorted(t for t in set(device_types) | {"cpu"} if torch.amp.is_autocast_available(t))
        self.autocast = tuple((t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in types)
        self.cudnn = _cudnn_flags()

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Autocast and cuDNN flags as captured, with the autocast weight cache off (it changes no value).

        Runs once per replayed segment, so it changes only what differs: a device type whose autocast is off
        now and was off at capture is left alone, and cuDNN flags that already match are not set. The weight
        cache is turned off in every case (a loss function may open an autocast block of its own), and the
        caller's cuDNN flags are back at exit whatever the steps did to them."""
        cache = torch.is_autocast_cache_enabled()
        cudnn = _cudnn_flags()
        torch.set_autocast_cache_enabled(False)
        try:
            with contextlib.ExitStack() as stack:
                if cudnn != self.cudnn:
                    torch.backends.cudnn.set_flags(*self.cudnn)
                for device_type, enabled, dtype in self.autocast:
                    if enabled or torch.is_autocast_enabled(device_type):
                        stack.enter_context(
                            torch.autocast(
                                device_type, dtype=dtype if enabled else None, enabled=enabled, cache_enabled=False
                            )
                        )
                yield
        finally:
            torch.set_autocast_cache_enabled(cache)
            if _cudnn_flags() != cudnn:
                torch.backends.cudnn.set_flags(*cudnn)


def _cudnn_flags() -> tuple:
    """Every cuDNN flag as ``torch.backends.cudnn.set_flags`` returns them (reading changes nothing).

    ``torch.backends.cudnn.flags()`` would also reset the flags it is not given to their defaults."""
    return torch.backends.cudnn.set_flags(None, None, None, None, None, None, None)


def check_cudnn_rnn_dropout(model: nn.Module, device_types: Iterable[str]) -> None:
    """Refuse a model a checkpointed schedule cannot replay exactly: a multi-layer ``nn.LSTM``/``nn.GRU``/
    ``nn.RNN`` with dropout, in train mode, on CUDA with cuDNN enabled.

    cuDNN draws that dropout's masks from its own dropout state, not from the generator the engine restores,
    so a replay would use other masks and the meta-gradient would silently belong to another computation.
    """
    if "cuda" not in set(device_types) or not torch.backends.cudnn.enabled:
        return
    for name, module in model.named_modules():
        if isinstance(module, nn.RNNBase) and module.training and module.dropout > 0 and module.num_layers > 1:
            raise ValueError(
                f"module {name or type(module).__name__!r} ({type(module).__name__}, dropout={module.dropout}) "
                "draws its dropout masks from cuDNN's own state, which a replay cannot restore; run the call "
                "inside `with torch.backends.cudnn.flags(enabled=False):` (memmaml then replays without cuDNN "
                "too, with masks from the generator), use the naive engine (schedule=None), or set dropout=0"
            )


def _set_flags(modules: list[nn.Module], flags: list[bool]) -> None:
    for module, flag in zip(modules, flags):
        if module.training != flag:
            module.training = flag


class ReplayContext:
    """Captures, when the inner loop starts, what its replays must restore; see NOTE [ Replay must be exact ].

    Args:
        model: the module the steps call.
        tensors: every tensor the steps read besides the model (state and extras):
            their device types decide which autocast states and CUDA generators are captured.
        preserve_rng_state: restore the RNG state in replays.
    """

    def __init__(self, model: nn.Module, tensors: Iterable[Tensor], *, preserve_rng_state: bool) -> None:
        tensors = [*tensors, *model.parameters(), *model.buffers()]
        self.model = model
        # the modules as they are now: a module added or removed after the call is not a step's (and is
        # neither set nor reset); the flags pair with this list by position
        self.modules = list(model.modules())
        self.training_flags = [m.training for m in self.modules]
        self.buffer_names = [name for name, _ in model.named_buffers()]
        self.preserve_rng_state = preserve_rng_state
        self.cuda_devices: list[int] = []
        if preserve_rng_state:
            devices = {t.device.index for t in tensors if t.is_cuda}
            self.cuda_devices = sorted(d if d is not None else torch.cuda.current_device() for d in devices)
        self.device_types = {t.device.type for t in tensors}
        self.ambient = Ambient(self.device_types)

    def snapshot_rng(self) -> Rng | None:
        """The RNG state now (``None`` when RNG state is not preserved)."""
        if not self.preserve_rng_state:
            return None
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def restored(self, rng: Rng | None) -> Iterator[None]:
        """Restore the RNG state ``rng``, the inner loop's training flags and its autocast state; undo all three.

        A training flag is assigned only where it differs (``nn.Module.__setattr__`` is slow, and this runs
        once per replayed segment)."""
        saved_flags = [m.training for m in self.modules]
        with contextlib.ExitStack() as stack:
            if rng is not None:
                stack.enter_context(torch.random.fork_rng(devices=self.cuda_devices))
                torch.set_rng_state(rng[0])
                for device, state in zip(self.cuda_devices, rng[1]):
                    torch.cuda.set_rng_state(state, device)
            stack.enter_context(self.ambient.restored())
            _set_flags(self.modules, self.training_flags)
            try:
                yield
            finally:
                _set_flags(self.modules, saved_flags)

    def buffers_snapshot(self, buffers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor] | None:
        """Copies of ``buffers`` (default: the model's own), or ``None`` for a model without buffers."""
        if not self.buffer_names:
            return None
        source = dict(self.model.named_buffers()) if buffers is None else buffers
        return {name: source[name].detach().clone() for name in self.buffer_names}

    def buffers_of(self, buffers: Mapping[str, Tensor] | None) -> list[Tensor]:
        """The tensors of ``buffers`` (default: the model's own) in a fixed order."""
        source = dict(self.model.named_buffers()) if buffers is None else buffers
        return [source[name] for name in self.buffer_names]
