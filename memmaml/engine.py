"""The inner-loop engine: naive unrolling and checkpointed replay.

Both paths run the same inner step (:meth:`_Loop.loss_and_grads` followed by
the optimizer's pure ``update``), so they agree to rounding:

* :func:`unroll` with ``schedule=None`` keeps the whole graph (the reference).
* :func:`unroll` with a :class:`~memmaml.schedules.Schedule` runs the steps
  inside :class:`_CheckpointedUnroll`, an autograd Function whose forward keeps
  only the states the schedule asks for and whose backward replays them
  (Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost";
  Griewank & Walther 2000, "Algorithm 799: Revolve").

NOTE [ What crosses the Function ]
    Everything that needs a meta-gradient is an explicit input of the Function:
    the initial parameters and optimizer state, and every tensor that requires
    grad among the hyperparameters, the model parameters that are not adapted
    ("static" parameters), the batches and ``loss_kwargs``. Inside, they are
    replaced by detached leaves, so no graph leaks out of a segment and nothing
    reaches the meta-gradient through a closure. Tensors captured by the loss
    function's closure are *not* inputs: they get no meta-gradient from the
    checkpointed engine (the naive one would give them one).

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
      captured when :func:`unroll` is called. The backward pass usually runs
      outside the user's ``with torch.autocast(...)`` block (and on CUDA, in
      the autograd engine's own thread, where thread-local autocast state is
      not set), so without this the replay computes in float32 what the
      forward computed in bfloat16. The vector-Jacobian product through a
      replayed segment runs in the caller's state, as the naive engine's
      backward pass does;
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

    Left alone, because they are process-wide settings a program does not
    change between a forward and a backward pass, and a change would be
    caught by ``check_replay``: the default dtype, deterministic-algorithm and
    cuDNN flags, float32 matmul precision, the number of threads. Grad mode is
    set by the engine itself for every step. Saved-tensor hooks and anomaly
    mode change where tensors live or what is checked, not what is computed.

NOTE [ Checking the replay ]
    With ``check_replay=True`` the forward pass records a digest of the state
    after every step (for each tensor of the parameters, the optimizer state
    and the buffers: the sum and the sum of squares of its bits read as
    integers, and the sum of its values), and every replayed step, with or
    without its graph, compares its state with that digest. On CPU the
    replay is bitwise identical to the forward pass, so any difference is an
    error: :class:`ReplayMismatchError` names the step and the first tensor
    that differs. It catches a loss function whose result depends on anything
    the engine does not restore (a counter, a random generator outside
    torch's, a ``training`` flag it flips, a branch on mutable state). Cost:
    one pass over the state per evaluated step, one host sync per replayed
    step, and 24 bytes per state tensor per step. The naive engine replays
    nothing; there the option does nothing.

NOTE [ Clipping through the unroll ]
    With ``max_grad_grad_norm`` each step's new parameters pass through
    ``_ClipCotangent``: an identity in the forward pass whose backward scales the
    cotangent of all adapted parameters jointly to at most that global L2 norm
    (scale ``min(1, max_norm / (norm + 1e-6))``, computed on the device, no
    host sync). The naive and the checkpointed engine apply it at the same
    places, so their meta-gradients agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from .adapted import AdaptedModule
from .memory import host_allocations, track_memory
from .optim import InnerOptimizer
from .schedules import Advance, Auto, Drop, Plan, Reverse, Schedule, StepCosts, check_plan, parse_schedule

__all__ = ["ReplayMismatchError", "Unrolled", "measure_step_costs", "unroll"]

Params = dict[str, Tensor]


class Unrolled(NamedTuple):
    """What :func:`unroll` returns.

    Attributes:
        params: the adapted parameters after the last step.
        opt_state: the optimizer state after the last step.
        losses: the loss before each step (a list of 0-d tensors).
    """

    params: Params
    opt_state: Any
    losses: list[Tensor]


class ReplayMismatchError(RuntimeError):
    """A replayed inner step did not reproduce the forward pass (``check_replay=True``).

    The message names the step and the first tensor of the state that differs.
    """


# -------------------------------------------------------------------- ambient state
class _Ambient:
    """The autocast state a step computes under; see NOTE [ Replay must be exact ]."""

    def __init__(self, device_types: set[str]) -> None:
        types = sorted(t for t in device_types | {"cpu"} if torch.amp.is_autocast_available(t))
        self.autocast = tuple((t, torch.is_autocast_enabled(t), torch.get_autocast_dtype(t)) for t in types)

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Autocast as captured, with the weight cache off (it changes no value)."""
        with contextlib.ExitStack() as stack:
            for device_type, enabled, dtype in self.autocast:
                stack.enter_context(torch.autocast(device_type, dtype=dtype if enabled else None,
                                                   enabled=enabled, cache_enabled=False))
            yield


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class _Digest(NamedTuple):
    """Per tensor of a state: its bits summed (exact) and its values summed (for messages)."""

    bits: Tensor  # (num_tensors, 2) int64: sum and sum of squares of the bits read as integers
    values: Tensor  # (num_tensors,) float64: sum of the values


def _digest(tensors: Sequence[Tensor]) -> _Digest:
    """Equal digests mean equal tensors, but for a collision of two 64-bit checksums."""
    bits, values = [], []
    with torch.no_grad():
        for t in tensors:
            t = t.detach().reshape(-1)
            as_int = t.view(_INT_OF_SIZE.get(t.element_size(), torch.uint8)).to(torch.int64)
            bits.append(torch.stack([as_int.sum(), (as_int * as_int).sum()]))
            values.append(t.sum(dtype=torch.float64) if t.is_floating_point() else as_int.sum().double())
    if not bits:
        return _Digest(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, dtype=torch.float64))
    device = bits[0].device
    return _Digest(torch.stack([b.to(device) for b in bits]), torch.stack([v.to(device) for v in values]))


# ----------------------------------------------------------------------------- clipping
class _ClipCotangent(torch.autograd.Function):
    """Identity forward; backward clips the joint L2 norm of the cotangents."""

    @staticmethod
    def forward(ctx, max_norm: float, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.max_norm = max_norm
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Any, ...]:
        dtype = grads[0].dtype
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g).to(dtype) for g in grads]))
        scale = torch.clamp(ctx.max_norm / (norm + 1e-6), max=1.0)
        return (None, *(g * scale.to(g.device) for g in grads))


def _clip(params: Params, max_norm: float | None) -> Params:
    if max_norm is None:
        return params
    clipped = _ClipCotangent.apply(max_norm, *params.values())
    return dict(zip(params, clipped))


# -------------------------------------------------------------------------- inner loop
class _StoredState(NamedTuple):
    leaves: list[Any]  # flattened (params, opt_state), detached
    buffers: Params | None  # copies of the model's buffers
    rng: tuple[Tensor, list[Tensor]] | None  # CPU and CUDA generator states
    devices: list[torch.device | None] | None = None  # where each leaf lives when offloaded


class _Loop:
    """Everything one unroll needs; the inner step and the replay machinery."""

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer,
        batches: Sequence[Any],
        *,
        hyperparams: Mapping[str, Any],
        static: Params,
        loss_kwargs: Mapping[str, Any],
        first_order: bool,
        max_grad_grad_norm: float | None,
        allow_unused: bool,
        check_finite: bool,
        preserve_rng_state: bool,
        progress: bool,
        check_replay: bool = False,
    ) -> None:
        self.model = model
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.num_steps = len(batches)
        self.first_order = first_order
        self.max_norm = max_grad_grad_norm
        self.allow_unused = allow_unused
        self.check_finite = check_finite
        self.progress = progress
        self.check_replay = check_replay
        # everything the steps read besides the state, as one pytree
        self.extras = (dict(hyperparams), dict(static), list(batches), dict(loss_kwargs))
        self.training_flags = [m.training for m in model.modules()]
        self.buffer_names = [name for name, _ in model.named_buffers()]
        self.preserve_rng_state = preserve_rng_state
        self.ambient = _Ambient({t.device.type for t in [*_tensors(self.extras), *model.parameters(),
                                                          *model.buffers()]})
        self.cuda_devices: list[int] = []
        if preserve_rng_state:
            devices = {t.device.index for t in _tensors(self.extras) if t.is_cuda}
            devices |= {p.device.index for p in model.parameters() if p.is_cuda}
            self.cuda_devices = sorted(d if d is not None else torch.cuda.current_device() for d in devices)

    # -- one inner step --------------------------------------------------------------
    def loss_and_grads(
        self, step: int, params: Params, extras: tuple, buffers: Params | None, create_graph: bool
    ) -> tuple[Tensor, Params]:
        """Loss at ``params`` on batch ``step`` and its gradient with respect to ``params``.

        With ``create_graph`` the gradient is differentiable (second order);
        otherwise it is computed at detached copies and returned detached, as is
        the loss.
        """
        _, static, batches, loss_kwargs = extras
        if not create_graph:
            params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
        with torch.enable_grad():
            view = AdaptedModule(self.model, {**static, **params, **(buffers or {})})
            loss = self.loss_function(view, batches[step], **loss_kwargs)
            if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.is_floating_point():
                got = f"a tensor of shape {tuple(loss.shape)} and dtype {loss.dtype}" if isinstance(loss, Tensor) else (
                    f"a {type(loss).__name__}")
                raise ValueError(f"loss_function must return a floating-point scalar tensor; at inner step {step} "
                                 f"it returned {got}")
            if not loss.requires_grad:
                raise ValueError(
                    f"the loss at inner step {step} does not depend on any adapted parameter; "
                    "loss_function must compute the loss with the model it is given")
            raw = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        grads = {}
        for (name, param), grad in zip(params.items(), raw):
            if grad is None:
                if not self.allow_unused:
                    raise ValueError(
                        f"adapted parameter {name!r} does not affect the loss at inner step {step}; "
                        "leave it out of get_parameters, or pass allow_unused=True to treat its gradient as zero")
                grad = torch.zeros_like(param)
            grads[name] = grad
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the loss at inner step {step} is not finite: {loss.item()}")
        return (loss if create_graph else loss.detach()), grads

    def step(self, step: int, leaves: list[Any], spec: Any, extras: tuple, buffers: Params | None,
             mode: str) -> tuple[list[Any], Tensor]:
        """One inner step on flattened state ``leaves``; ``mode`` is 'graph' or 'nograph'."""
        params, opt_state = pytree.tree_unflatten(leaves, spec)
        hyperparams = extras[0]
        create_graph = mode == "graph" and not self.first_order
        loss, grads = self.loss_and_grads(step, params, extras, buffers, create_graph)
        grad_mode = torch.enable_grad() if mode == "graph" else torch.no_grad()
        with grad_mode:
            updates, opt_state = self.optimizer.update(grads, opt_state, params, hyperparams)
            params = {name: params[name] + updates[name] for name in params}
            if mode == "graph":
                params = _clip(params, self.max_norm)
        new_leaves, new_spec = pytree.tree_flatten((params, opt_state))
        if new_spec != spec:
            raise TypeError(f"optimizer.update changed the structure of the state at inner step {step}: "
                            f"{spec} became {new_spec}")
        return new_leaves, loss

    # -- context for replays ---------------------------------------------------------
    def snapshot_rng(self) -> tuple[Tensor, list[Tensor]] | None:
        if not self.preserve_rng_state:
            return None
        return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    @contextlib.contextmanager
    def replay_context(self, rng: tuple[Tensor, list[Tensor]] | None) -> Iterator[None]:
        """Restore the RNG state ``rng``, the inner loop's training flags and its autocast state; undo all three."""
        modules = list(self.model.modules())
        saved_flags = [m.training for m in modules]
        with torch.random.fork_rng(devices=self.cuda_devices, enabled=rng is not None), self.ambient.restored():
            if rng is not None:
                torch.set_rng_state(rng[0])
                for device, state in zip(self.cuda_devices, rng[1]):
                    torch.cuda.set_rng_state(state, device)
            for module, flag in zip(modules, self.training_flags):
                module.training = flag
            try:
                yield
            finally:
                for module, flag in zip(modules, saved_flags):
                    module.training = flag

    def buffers_snapshot(self, buffers: Mapping[str, Tensor] | None = None) -> Params | None:
        if not self.buffer_names:
            return None
        source = dict(self.model.named_buffers()) if buffers is None else buffers
        return {name: source[name].detach().clone() for name in self.buffer_names}

    def progress_bar(self, total: int, desc: str):
        if not self.progress:
            return contextlib.nullcontext(None)
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit="step", leave=False)


def _tensors(tree: Any) -> list[Tensor]:
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, Tensor)]


# ------------------------------------------------------------------------------ naive
def _naive(loop: _Loop, params: Params, opt_state: Any) -> Unrolled:
    leaves, spec = pytree.tree_flatten((params, opt_state))
    losses = []
    with loop.progress_bar(loop.num_steps, "memmaml naive") as bar:
        for step in range(loop.num_steps):
            leaves, loss = loop.step(step, leaves, spec, loop.extras, None, "graph")
            losses.append(loss)
            if bar is not None:
                bar.update()
    params, opt_state = pytree.tree_unflatten(leaves, spec)
    return Unrolled(params, opt_state, losses)


# ------------------------------------------------------------------------ checkpointed
class _Store:
    """Stored states by index; with ``offload`` they live in host memory.

    NOTE [ Offloading ]
        ``put`` copies a state's tensors to host memory (pinned and asynchronous
        on CUDA: ordered on the current stream, so neither the copy nor the
        later reuse of the device memory races) and ``get`` copies them back to
        their device. On a CPU-only run there is no separate device: the copies
        are made inside :func:`memmaml.memory.host_allocations`, so
        :func:`memmaml.track_memory` counts what would stay on an accelerator.
    """

    def __init__(self, offload: bool) -> None:
        self.offload = offload
        self.states: dict[int, _StoredState] = {}

    def put(self, index: int, state: _StoredState) -> None:
        if self.offload:
            state = _StoredState(
                [_to_host(t) if isinstance(t, Tensor) else t for t in state.leaves],
                None if state.buffers is None else {k: _to_host(v) for k, v in state.buffers.items()},
                state.rng, [t.device if isinstance(t, Tensor) else None for t in state.leaves])
        self.states[index] = state

    def get(self, index: int) -> _StoredState:
        state = self.states[index]
        if not self.offload:
            return state
        devices = state.devices
        leaves = [_from_host(t, d) if isinstance(t, Tensor) else t for t, d in zip(state.leaves, devices)]
        device = next((d for d in devices if d is not None), torch.device("cpu"))
        buffers = None if state.buffers is None else {k: _from_host(v, device) for k, v in state.buffers.items()}
        return _StoredState(leaves, buffers, state.rng, devices)

    def pop(self, index: int) -> None:
        self.states.pop(index)


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


def _cuda_hint(bits: Tensor) -> str:
    if bits.device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        return ""
    return (". On CUDA, non-deterministic kernels (allowed now) also make a replay differ in the last bits: "
            "call torch.use_deterministic_algorithms(True), set CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
            "torch.backends.cudnn.benchmark = False before checking")


class _Replay:
    """Executes a :class:`Plan` for a :class:`_Loop`: the forward pass and the backward operations."""

    def __init__(self, loop: _Loop, leaves: list[Any], spec: Any, offload: bool) -> None:
        self.loop = loop
        self.plan = Plan(loop.num_steps, (), ())  # set_plan() before a differentiable run
        self.stats = None
        self.spec = spec
        self.tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        self.constant_leaves = [None if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        self.float_outputs = [leaves[i].is_floating_point() for i in self.tensor_slots]
        # tensors among the extras that require grad are inputs of the Function (deduplicated)
        self.extra_inputs: list[Tensor] = []
        self.extra_slots: list[tuple[int, int]] = []  # (leaf position in extras, index into extra_inputs)
        index_of: dict[int, int] = {}
        for position, leaf in enumerate(pytree.tree_leaves(loop.extras)):
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                if id(leaf) not in index_of:
                    index_of[id(leaf)] = len(self.extra_inputs)
                    self.extra_inputs.append(leaf)
                self.extra_slots.append((position, index_of[id(leaf)]))
        self.store = _Store(offload)
        self.consumed = False
        self.digests: dict[int, _Digest] = {}  # state index -> digest of the forward pass's state (check_replay)

    def _digest(self, leaves: list[Any], buffers: Params | None) -> _Digest:
        source = dict(self.loop.model.named_buffers()) if buffers is None else buffers
        return _digest([leaves[slot] for slot in self.tensor_slots] + [source[n] for n in self.loop.buffer_names])

    def _check(self, index: int, leaves: list[Any], buffers: Params | None) -> None:
        """Raise :class:`ReplayMismatchError` unless replayed state ``index`` equals the forward pass's."""
        if not self.loop.check_replay:
            return
        expected, got = self.digests[index], self._digest(leaves, buffers)
        if torch.equal(got.bits, expected.bits):
            return
        row = int((got.bits != expected.bits).any(dim=1).nonzero()[0, 0])
        names = self._tensor_names()
        raise ReplayMismatchError(
            f"check_replay: the replay of inner step {index - 1} did not reproduce the forward pass: "
            f"{names[row]} differs (sum of its values {float(expected.values[row]):.12g} in the forward pass, "
            f"{float(got.values[row]):.12g} in the replay). loss_function must compute the same thing each "
            "time it is called on the same state: it must not depend on anything the engine does not "
            "restore (a counter, a random generator other than torch's, a train/eval flag it changes, a "
            "branch on mutable state); see the README, 'What the loss function must not do'" + _cuda_hint(got.bits))

    def _tensor_names(self) -> list[str]:
        tree = pytree.tree_unflatten(list(range(len(self.constant_leaves))), self.spec)
        by_leaf = {leaf: ("params" if path[0].idx == 0 else "opt_state") + pytree.keystr(path[1:])
                   for path, leaf in pytree.tree_flatten_with_path(tree)[0]}
        return [by_leaf[slot] for slot in self.tensor_slots] + [f"buffer {n!r}" for n in self.loop.buffer_names]

    def set_plan(self, plan: Plan) -> None:
        self.plan = plan
        self.stats = check_plan(plan)

    def extras_with(self, substitutes: Sequence[Tensor]) -> tuple:
        leaves, spec = pytree.tree_flatten(self.loop.extras)
        for position, index in self.extra_slots:
            leaves[position] = substitutes[index]
        return pytree.tree_unflatten(leaves, spec)

    def state_leaves(self, tensors: Sequence[Tensor]) -> list[Any]:
        leaves = list(self.constant_leaves)
        for slot, tensor in zip(self.tensor_slots, tensors):
            leaves[slot] = tensor
        return leaves

    def run_forward(self, state_tensors: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        loop = self.loop
        extras = self.extras_with([t.detach() for t in self.extra_inputs])
        leaves = self.state_leaves([t.detach() for t in state_tensors])
        saves = set(self.plan.forward_saves)
        losses = []
        with loop.progress_bar(loop.num_steps, "memmaml forward") as bar, loop.ambient.restored():
            for step in range(loop.num_steps):
                if step in saves:
                    self.store.put(step, _StoredState(leaves, loop.buffers_snapshot(), loop.snapshot_rng()))
                leaves, loss = loop.step(step, leaves, self.spec, extras, None, "nograph")
                if loop.check_replay:
                    self.digests[step + 1] = self._digest(leaves, None)
                losses.append(loss)
                if bar is not None:
                    bar.update()
        self.initial_state = self.store.states.get(0)
        return [leaves[slot] for slot in self.tensor_slots], torch.stack(losses)

    def run_backward(self, state_cotangents: Sequence[Tensor | None], loss_cotangents: Tensor | None
                     ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        loop = self.loop
        # states are freed as the plan drops them, so the backward pass holds what the schedule says;
        # the input state is kept aside, and a second backward pass (retain_graph=True) first
        # rebuilds the forward pass's stored states from it
        store = self._forward_store() if self.consumed else self.store
        self.store, self.consumed = _Store(store.offload), True
        extra_leaves = [t.detach().requires_grad_(True) for t in self.extra_inputs]
        extras = self.extras_with(extra_leaves)
        extra_grads: list[Tensor | None] = [None] * len(extra_leaves)
        cot = list(state_cotangents)
        work = self.stats.replayed_steps + self.stats.reversed_steps
        with loop.progress_bar(work, "memmaml replay") as bar:
            for op in self.plan.backward:
                if isinstance(op, Drop):
                    store.pop(op.index)
                elif isinstance(op, Advance):
                    store.put(op.stop, self._advance(store.get(op.start), op, extras, bar))
                elif isinstance(op, Reverse):
                    cot, grads = self._reverse(store.get(op.start), op, extras, extra_leaves, cot,
                                               loss_cotangents, bar)
                    for index, grad in enumerate(grads):
                        if grad is not None:
                            extra_grads[index] = grad if extra_grads[index] is None else extra_grads[index] + grad
        return cot, extra_grads

    def _forward_store(self) -> _Store:
        """The forward pass's stored states again, recomputed from the kept input state."""
        store = _Store(self.store.offload)
        store.states[0] = self.initial_state
        extras = self.extras_with([t.detach() for t in self.extra_inputs])
        saves = sorted(self.plan.forward_saves)
        for start, stop in zip(saves, saves[1:]):
            store.put(stop, self._advance(store.get(start), Advance(start, stop), extras, None))
        return store

    def _advance(self, state: _StoredState, op: Advance, extras: tuple, bar) -> _StoredState:
        loop = self.loop
        buffers = loop.buffers_snapshot(state.buffers)
        leaves = state.leaves
        with loop.replay_context(state.rng):
            for step in range(op.start, op.stop):
                leaves, _ = loop.step(step, leaves, self.spec, extras, buffers, "nograph")
                self._check(step + 1, leaves, buffers)
                if bar is not None:
                    bar.update()
            rng = loop.snapshot_rng()
        return _StoredState(leaves, buffers, rng)

    def _reverse(self, state: _StoredState, op: Reverse, extras: tuple, extra_leaves: list[Tensor],
                 cot: list[Tensor | None], loss_cotangents: Tensor | None, bar):
        loop = self.loop
        buffers = loop.buffers_snapshot(state.buffers)
        inputs = [state.leaves[slot].detach().requires_grad_(state.leaves[slot].is_floating_point())
                  for slot in self.tensor_slots]
        leaves = self.state_leaves(inputs)
        losses = []
        with loop.replay_context(state.rng), torch.enable_grad():
            for step in range(op.start, op.stop):
                leaves, loss = loop.step(step, leaves, self.spec, extras, buffers, "graph")
                self._check(step + 1, leaves, buffers)
                losses.append(loss)
                if bar is not None:
                    bar.update()
        outputs, grad_outputs = [], []
        for output, grad in zip((leaves[slot] for slot in self.tensor_slots), cot):
            if grad is not None and output.requires_grad:
                outputs.append(output)
                grad_outputs.append(grad)
        if loss_cotangents is not None:
            for step, loss in zip(range(op.start, op.stop), losses):
                if loss.requires_grad:
                    outputs.append(loss)
                    grad_outputs.append(loss_cotangents[step])
        wrt = [t for t in inputs if t.requires_grad] + extra_leaves
        grads = list(torch.autograd.grad(outputs, wrt, grad_outputs, allow_unused=True)) if outputs else (
            [None] * len(wrt))
        new_cot = [grads.pop(0) if t.requires_grad else None for t in inputs]
        return new_cot, grads

    def measure(self, state_tensors: Sequence[Tensor]) -> StepCosts:
        """Bytes of a state and of one step's graph, and the time of a step with and without it (for Auto)."""
        loop = self.loop
        leaves = self.state_leaves([t.detach() for t in state_tensors])
        buffers = loop.buffers_snapshot()
        state_bytes = sum(t.numel() * t.element_size() for t in leaves if isinstance(t, Tensor))
        state_bytes += sum(t.numel() * t.element_size() for t in (buffers or {}).values())
        device = next((t.device for t in state_tensors), torch.device("cpu"))
        extras = self.extras_with([t.detach().requires_grad_(True) for t in self.extra_inputs])

        def graph_step() -> None:
            inputs = [leaves[s].detach().requires_grad_(leaves[s].is_floating_point()) for s in self.tensor_slots]
            with torch.enable_grad():
                out, loss = loop.step(0, self.state_leaves(inputs), self.spec, extras,
                                      loop.buffers_snapshot(buffers), "graph")
                outputs = [o for o in (out[s] for s in self.tensor_slots) if o.requires_grad]
                wrt = [t for t in inputs if t.requires_grad]
                if outputs and wrt:
                    torch.autograd.grad(outputs, wrt, [torch.ones_like(o) for o in outputs], allow_unused=True)

        def timed(fn) -> float:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return time.perf_counter() - start

        with loop.replay_context(loop.snapshot_rng()):
            with track_memory(device) as mem:  # also warms up the graph path before it is timed
                graph_step()
            nograph = timed(lambda: loop.step(0, leaves, self.spec, extras, loop.buffers_snapshot(buffers), "nograph"))
            graph = timed(graph_step)
        return StepCosts(int(state_bytes), int(mem.peak_bytes), nograph, graph)


class _CheckpointedUnroll(torch.autograd.Function):
    """Runs the inner loop without a graph and replays it in the backward pass.

    Inputs: the :class:`_Replay`, the number of state tensors, the state tensors,
    then the extras that require grad. Outputs: the final state tensors and the
    losses stacked into one tensor.
    """

    @staticmethod
    def forward(ctx, replay: _Replay, num_state: int, *inputs: Tensor) -> tuple[Tensor, ...]:
        final, losses = replay.run_forward(inputs[:num_state])
        ctx.replay = replay
        ctx.num_state = num_state
        outputs = (*final, losses)
        ctx.mark_non_differentiable(*(t for t in outputs if not t.is_floating_point()))
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor) -> tuple[Any, ...]:
        replay: _Replay = ctx.replay
        state_cot = [g if is_float else None for g, is_float in zip(grads[: ctx.num_state], replay.float_outputs)]
        state_grads, extra_grads = replay.run_backward(state_cot, grads[ctx.num_state])
        return (None, None, *state_grads, *extra_grads)


def _checkpointed(loop: _Loop, params: Params, opt_state: Any, schedule: Schedule, offload: bool) -> Unrolled:
    leaves, spec = pytree.tree_flatten((params, opt_state))
    replay = _Replay(loop, leaves, spec, offload)
    state_tensors = [leaves[i] for i in replay.tensor_slots]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in state_tensors + replay.extra_inputs)
    if not needs_grad:
        # nothing to differentiate: run once, keep nothing
        final, losses = replay.run_forward(state_tensors)
    else:
        if isinstance(schedule, Auto):
            if schedule.costs is None:
                schedule.costs = replay.measure(state_tensors)
            choice = schedule.choose(loop.num_steps, schedule.costs, offload=offload)
            if choice.schedule is None:
                return _naive(loop, _requiring_grad(params), opt_state)
        replay.set_plan(schedule.plan(loop.num_steps))
        outputs = _CheckpointedUnroll.apply(replay, len(state_tensors), *state_tensors, *replay.extra_inputs)
        final, losses = list(outputs[:-1]), outputs[-1]
    params, opt_state = pytree.tree_unflatten(replay.state_leaves(final), spec)
    return Unrolled(params, opt_state, list(losses.unbind(0)))


def _static_params(model: nn.Module, params: Params) -> Params:
    """The model's parameters that are not adapted but require grad: they get meta-gradients."""
    return {name: p for name, p in model.named_parameters() if name not in params and p.requires_grad}


def _initial_opt_state(optimizer: InnerOptimizer, params: Params) -> Any:
    with torch.no_grad():
        return optimizer.init({name: p.detach() for name, p in params.items()})


def _requiring_grad(params: Params) -> Params:
    """Leaves that cannot carry a graph still need gradients inside the step."""
    return {name: p if p.requires_grad else p.detach().requires_grad_(True) for name, p in params.items()}


# ------------------------------------------------------------------------------- entry
def unroll(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    batches: Sequence[Any],
    optimizer: InnerOptimizer,
    *,
    params: Params,
    opt_state: Any = None,
    opt_kwargs: Mapping[str, Any] | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
    schedule: Schedule | str | None = None,
    offload: bool = False,
    first_order: bool = False,
    max_grad_grad_norm: float | None = None,
    allow_unused: bool = False,
    check_finite: bool = False,
    preserve_rng_state: bool = True,
    progress: bool = False,
    check_replay: bool = False,
) -> Unrolled:
    """Run ``len(batches)`` inner steps of ``optimizer`` on ``params``; differentiable.

    Step ``i`` computes ``loss_function(model at params, batches[i], **loss_kwargs)``,
    its gradient with respect to ``params``, and ``params + update``.

    Differentiable with respect to: ``params`` and ``opt_state`` (whatever their
    history), every model parameter that is not adapted but requires grad, and
    every tensor that requires grad in the hyperparameters, ``opt_kwargs``,
    ``batches`` and ``loss_kwargs``. Not with respect to tensors captured by
    ``loss_function``'s closure when a schedule is given.

    Args:
        model: the module; it is called functionally with ``params``.
        loss_function: ``loss_function(model, batch, **loss_kwargs) -> scalar``.
            It is run again during replays: it must not have side effects other
            than through the model's buffers, which the engine manages.
        batches: one batch per inner step.
        optimizer: an :class:`~memmaml.optim.InnerOptimizer`.
        params: the parameters to adapt, keyed like ``model.named_parameters()``.
        opt_state: the initial optimizer state (default: ``optimizer.init(params)``).
        opt_kwargs: hyperparameter overrides for this unroll.
        loss_kwargs: keyword arguments for ``loss_function``.
        schedule: ``None`` keeps the whole graph (naive); a
            :class:`~memmaml.schedules.Schedule` (or its text form, e.g.
            ``"binomial:20"``, see :func:`~memmaml.schedules.parse_schedule`)
            keeps only its stored states and replays steps in the backward pass.
        offload: keep the schedule's stored states in host memory (pinned,
            copied asynchronously on CUDA); device memory then no longer grows
            with the number of steps. Needs a schedule.
        first_order: treat each inner gradient as a constant (first-order MAML).
        max_grad_grad_norm: clip the cotangent of each step's new parameters to
            this global L2 norm in the backward pass.
        allow_unused: an adapted parameter that does not affect the loss gets a
            zero gradient instead of an error.
        check_finite: raise ``FloatingPointError`` at the first non-finite loss
            (one host sync per step).
        preserve_rng_state: replays see the random numbers of the first run.
        progress: show tqdm bars over inner steps (forward and replay).
        check_replay: compare every replayed step's state (parameters,
            optimizer state, buffers) with the forward pass's, bitwise, and
            raise :class:`ReplayMismatchError` naming the step and the first
            tensor that differs; see NOTE [ Checking the replay ]. Costs a pass
            over the state per step and a host sync per replayed step. The
            naive engine (``schedule=None``, or ``Auto`` choosing it) replays
            nothing, so there it does nothing. On CUDA it needs deterministic
            kernels (``torch.use_deterministic_algorithms(True)``), or
            legitimate last-bit differences raise.

    Autocast: the steps run under the autocast state of the call (captured
    here and restored in every replay), so naive and checkpointed engines run
    the same operations in reduced precision; see NOTE [ Replay must be exact ].

    Returns:
        :class:`Unrolled` ``(params, opt_state, losses)``.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("inputs must hold at least one batch (one per inner step), got none")
    if schedule is not None:
        schedule = parse_schedule(schedule)
    elif offload:
        raise ValueError("offload=True needs a checkpoint schedule: the naive unroll stores no states")
    if max_grad_grad_norm is not None:
        if isinstance(max_grad_grad_norm, bool) or not isinstance(max_grad_grad_norm, (int, float)) or not (
                max_grad_grad_norm > 0):
            raise ValueError(f"max_grad_grad_norm must be a positive number or None, got {max_grad_grad_norm!r}")
        max_grad_grad_norm = float(max_grad_grad_norm)
    if not params:
        raise ValueError("there are no parameters to adapt")
    hyperparams = optimizer.resolve(opt_kwargs)
    static = _static_params(model, params)
    if opt_state is None:
        opt_state = _initial_opt_state(optimizer, params)
    loop = _Loop(
        model, loss_function, optimizer, batches,
        hyperparams=hyperparams, static=static, loss_kwargs=dict(loss_kwargs or {}),
        first_order=bool(first_order), max_grad_grad_norm=max_grad_grad_norm,
        allow_unused=bool(allow_unused), check_finite=bool(check_finite),
        preserve_rng_state=bool(preserve_rng_state), progress=bool(progress), check_replay=bool(check_replay),
    )
    if schedule is None:
        return _naive(loop, _requiring_grad(params), opt_state)
    return _checkpointed(loop, params, opt_state, schedule, bool(offload))


def measure_step_costs(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    batch: Any,
    optimizer: InnerOptimizer,
    *,
    params: Params | None = None,
    opt_kwargs: Mapping[str, Any] | None = None,
    loss_kwargs: Mapping[str, Any] | None = None,
) -> StepCosts:
    """Measure one inner step on ``batch``: what :class:`~memmaml.schedules.Auto` plans with.

    Returns :class:`~memmaml.schedules.StepCosts`: the bytes of one stored state
    (adapted parameters, optimizer state, buffers), the peak bytes one step adds
    while its graph is alive (measured with :func:`memmaml.track_memory` on the
    parameters' device), and the seconds of one step without and with its graph
    (the latter including its backward pass). The model's buffers and the RNG
    state are left as they were.

    Args:
        params: the parameters to adapt (default: every parameter that requires grad).
    """
    if params is None:
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    opt_state = _initial_opt_state(optimizer, params)
    loop = _Loop(model, loss_function, optimizer, [batch], hyperparams=optimizer.resolve(opt_kwargs),
                 static=_static_params(model, params), loss_kwargs=dict(loss_kwargs or {}), first_order=False, max_grad_grad_norm=None,
                 allow_unused=True, check_finite=False, preserve_rng_state=True, progress=False)
    leaves, spec = pytree.tree_flatten((params, opt_state))
    replay = _Replay(loop, leaves, spec, offload=False)
    return replay.measure([leaves[i] for i in replay.tensor_slots])
