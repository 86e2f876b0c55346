"""The checkpointed engine: executes a :class:`~memmaml.Plan` inside one autograd Function.

NOTE [ What crosses the Function ]
    Everything that needs a meta-gradient is an explicit input of
    :class:`CheckpointedUnroll`: the initial parameters and optimizer state,
    and every tensor that requires grad among the hyperparameters, the model
    parameters that are not adapted ("static" parameters), the batches and
    ``loss_kwargs``. Inside, they are replaced by detached leaves, so no graph
    leaks out of a segment and nothing reaches the meta-gradient through a
    closure. Tensors captured by the loss function's closure are *not* inputs:
    they get no meta-gradient from the checkpointed engine (the naive one
    would give them one).

The forward pass runs the steps without a graph and stores the states the plan
asks for, except the last segment, whose graph it keeps (NOTE [ The last
segment is not replayed ]); the backward pass executes the plan's operations
(see :mod:`memmaml.schedules._plans`): ``Advance`` replays steps without a graph to store
a state, ``Reverse`` replays a segment with its graph (or takes the kept one)
and pulls the cotangent through it, ``Drop`` frees a state. Replays restore what
:class:`~memmaml.engine._replay_context.ReplayContext` captured (NOTE [ Replay must be
exact ]); with ``check_replay`` every replayed step is compared with the
forward pass (NOTE [ Checking the replay ]).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils import _pytree as pytree

from ..schedules import Advance, Drop, Plan, Reverse, check_plan, kept_graph_start
from ._replay_check import Digest, check_digest, digest
from ._replay_context import ReplayContext
from ._step import Extras, InnerStep, progress_bar
from ._store import Store, StoredState

__all__ = ["CheckpointedUnroll", "Executor"]


class _Segment(NamedTuple):
    """A segment run with its graph: its input leaves, its outputs and losses, and the extras it read."""

    inputs: list[Tensor]
    leaves: list[Any]
    losses: list[Tensor]
    extra_leaves: list[Tensor]


class Executor:
    """Runs one unroll's forward pass and, later, its plan's backward operations.

    Args:
        step: the inner step.
        context: what replays restore.
        leaves, spec: the flattened initial state ``(params, opt_state)``.
        plan: the plan; ``None`` to run the steps once and keep nothing.
        offload: keep stored states in host memory.
        check_replay: compare every replayed step with the forward pass.
        progress: tqdm bars.
    """

    def __init__(
        self,
        step: InnerStep,
        context: ReplayContext,
        leaves: list[Any],
        spec: Any,
        plan: Plan | None,
        *,
        offload: bool = False,
        check_replay: bool = False,
        progress: bool = False,
    ) -> None:
        self.step = step
        self.context = context
        self.spec = spec
        self.plan = Plan(step.num_steps, (), ()) if plan is None else plan
        self.stats = None if plan is None else check_plan(plan)
        self.check_replay = check_replay
        self.progress = progress
        self.tensor_slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
        self.constant_leaves = [None if isinstance(leaf, Tensor) else leaf for leaf in leaves]
        self.float_outputs = [leaves[i].is_floating_point() for i in self.tensor_slots]
        # tensors among the extras that require grad are inputs of the Function (deduplicated)
        self.extra_inputs: list[Tensor] = []
        self.extra_slots: list[tuple[int, int]] = []  # (leaf position in extras, index into extra_inputs)
        index_of: dict[int, int] = {}
        self._extras_flat = pytree.tree_flatten(step.extras)  # flattened once: the batches may be many
        for position, leaf in enumerate(self._extras_flat[0]):
            if isinstance(leaf, Tensor) and leaf.requires_grad:
                if id(leaf) not in index_of:
                    index_of[id(leaf)] = len(self.extra_inputs)
                    self.extra_inputs.append(leaf)
                self.extra_slots.append((position, index_of[id(leaf)]))
        self.store = Store(offload)
        self.consumed = False
        self.kept: _Segment | None = None  # the last segment, run with its graph by the forward pass
        self.digests: dict[int, Digest] = {}  # state index -> digest of the forward pass's state

    # -- layout ----------------------------------------------------------------------
    def extras_with(self, substitutes: Sequence[Tensor]) -> Extras:
        """The extras with ``substitutes`` in place of the tensors that require grad."""
        if not self.extra_slots:
            return self.step.extras
        leaves, spec = list(self._extras_flat[0]), self._extras_flat[1]
        for position, index in self.extra_slots:
            leaves[position] = substitutes[index]
        return pytree.tree_unflatten(leaves, spec)

    def state_leaves(self, tensors: Sequence[Tensor]) -> list[Any]:
        """The flattened state with ``tensors`` in its tensor slots."""
        leaves = list(self.constant_leaves)
        for slot, tensor in zip(self.tensor_slots, tensors):
            leaves[slot] = tensor
        return leaves

    # -- replay check ----------------------------------------------------------------
    def _digest(self, leaves: list[Any], buffers: dict[str, Tensor] | None) -> Digest:
        return digest([leaves[slot] for slot in self.tensor_slots] + self.context.buffers_of(buffers))

    def _check(self, index: int, leaves: list[Any], buffers: dict[str, Tensor] | None) -> None:
        if self.check_replay:
            check_digest(index - 1, self.digests[index], self._digest(leaves, buffers), self._tensor_names())

    def _tensor_names(self) -> list[str]:
        tree = pytree.tree_unflatten(list(range(len(self.constant_leaves))), self.spec)
        by_leaf = {
            leaf: ("params" if path[0].idx == 0 else "opt_state") + pytree.keystr(path[1:])
            for path, leaf in pytree.tree_flatten_with_path(tree)[0]
        }
        return [by_leaf[slot] for slot in self.tensor_slots] + [f"buffer {n!r}" for n in self.context.buffer_names]

    # -- forward ---------------------------------------------------------------------
    def run_forward(self, state_tensors: Sequence[Tensor]) -> tuple[list[Tensor], Tensor]:
        """The steps, storing the plan's states; the final state tensors and the losses (detached).

        Steps before the kept segment run without a graph; the kept segment runs
        with it (NOTE [ The last segment is not replayed ]).
        """
        context, step, n = self.context, self.step, self.step.num_steps
        kept_start = n if self.stats is None else kept_graph_start(self.plan)
        extras = self.extras_with([t.detach() for t in self.extra_inputs])
        leaves = self.state_leaves([t.detach() for t in state_tensors])
        saves = set(self.plan.forward_saves)
        losses = []
        with progress_bar(self.progress, n, "memmaml forward") as bar, context.ambient.restored():
            for i in range(kept_start):
                if i in saves:
                    self.store.put(i, StoredState(leaves, context.buffers_snapshot(), context.snapshot_rng()))
                leaves, loss = step(i, leaves, self.spec, extras, None, "nograph")
                self._record(i + 1, leaves)
                losses.append(loss)
                if bar is not None:
                    bar.update()
            if kept_start < n:
                if kept_start == 0:  # the input state, kept for a second backward pass (its leaves are not copies)
                    self.store.put(0, StoredState(leaves, context.buffers_snapshot(), context.snapshot_rng()))
                self.kept = self._forward_segment(kept_start, leaves, bar)
                leaves = [t.detach() if isinstance(t, Tensor) else t for t in self.kept.leaves]
                losses += [loss.detach() for loss in self.kept.losses]
        self.initial_state = self.store.states.get(0)
        return [leaves[slot] for slot in self.tensor_slots], torch.stack(losses)

    def _record(self, index: int, leaves: list[Any]) -> None:
        if self.check_replay:
            self.digests[index] = self._digest(leaves, None)

    def _forward_segment(self, start: int, leaves: list[Any], bar) -> _Segment:
        """Steps ``start .. n-1`` with their graph, on the model's own buffers, as the naive loop runs them."""
        extra_leaves = [t.detach().requires_grad_(True) for t in self.extra_inputs]
        extras = self.extras_with(extra_leaves)
        inputs = [leaves[slot].detach().requires_grad_(leaves[slot].is_floating_point()) for slot in self.tensor_slots]
        leaves, losses = self.state_leaves(inputs), []
        with torch.enable_grad():
            for i in range(start, self.step.num_steps):
                leaves, loss = self.step(i, leaves, self.spec, extras, None, "graph")
                self._record(i + 1, leaves)
                losses.append(loss)
                if bar is not None:
                    bar.update()
        return _Segment(inputs, leaves, losses, extra_leaves)

    # -- backward --------------------------------------------------------------------
    def run_backward(
        self, state_cotangents: Sequence[Tensor | None], loss_cotangents: Tensor | None
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """Execute the plan's backward operations: cotangents of the initial state and of the extras."""
        # states are freed as the plan drops them, so the backward pass holds what the schedule says;
        # the input state is kept aside, and a second backward pass (retain_graph=True) first
        # rebuilds the forward pass's stored states from it
        self.step.forget_places()  # the user may have changed the model since the forward pass
        store = self._forward_store() if self.consumed else self.store
        self.store, self.consumed = Store(store.offload, store.streams), True
        kept, self.kept = self.kept, None  # a second backward pass replays the last segment too
        extra_leaves = [t.detach().requires_grad_(True) for t in self.extra_inputs]
        extras = self.extras_with(extra_leaves)
        extra_grads: list[Tensor | None] = [None] * len(extra_leaves)
        cot = list(state_cotangents)
        work = self.stats.replayed_steps + self.stats.reversed_steps - (0 if kept is None else len(kept.losses))
        ops = self.plan.backward
        with progress_bar(self.progress, work, "memmaml replay") as bar:
            position = 0
            while position < len(ops):
                op = ops[position]
                if isinstance(op, Drop):
                    store.pop(op.index)
                elif isinstance(op, Advance):
                    chain = _chain(ops, position)
                    self._advance(store.get(op.start), chain, extras, bar, store, ops, position)
                    position += len(chain) - 1
                elif isinstance(op, Reverse):
                    if kept is not None:  # the first Reverse: the forward pass kept its graph
                        segment, kept = kept, None
                        _prefetch_next(store, ops, position)
                    else:
                        state = store.get(op.start)
                        _prefetch_next(store, ops, position)
                        segment = self._replay(state, op, extras, extra_leaves, bar)
                    cot, grads = self._pull(segment, op, cot, loss_cotangents)
                    for index, grad in enumerate(grads):
                        if grad is not None:
                            extra_grads[index] = grad if extra_grads[index] is None else extra_grads[index] + grad
                position += 1
        return cot, extra_grads

    def _forward_store(self) -> Store:
        """The forward pass's stored states again, recomputed from the kept input state."""
        store = Store(self.store.offload, self.store.streams)
        store.states[0] = self.initial_state
        extras = self.extras_with([t.detach() for t in self.extra_inputs])
        saves = sorted(self.plan.forward_saves)
        if len(saves) > 1:
            chain = [Advance(start, stop) for start, stop in itertools.pairwise(saves)]
            self._advance(store.get(saves[0]), chain, extras, None, store)
        return store

    def _advance(
        self,
        state: StoredState,
        chain: Sequence[Advance],
        extras: Extras,
        bar,
        store: Store,
        ops: Sequence[Any] = (),
        position: int = 0,
    ) -> None:
        """Run ``chain``, ``Advance`` operations each starting where the one before stopped, from ``state``
        without a graph, and put the state each one stops at in ``store``. ``chain`` is ``ops[position:...]``
        when given (for the prefetch).

        NOTE [ One replay context for consecutive advances ]
            A binomial plan's replays are mostly runs of one-step advances, each storing its state for the
            reversal that follows. Running such a run in one replay context, continuing from the state just
            stored rather than restoring it, computes the same: the generator continues from the state the
            next advance would restore, the training flags and autocast state stay as restored, and the
            working buffers go on from the values stored (the stored state keeps a copy, since the next steps
            update the working ones in place). That copy is needed with offload too: on CUDA ``put`` copies
            to the host asynchronously on a side stream, and the next steps' in-place buffer updates on the
            compute stream would race with it. Entering the context once per step cost a few percent of a
            small model's step (60 us on a CPU), and with offload each stored state was copied back.
        """
        context = self.context
        buffers = context.buffers_snapshot(state.buffers)
        leaves = state.leaves
        with context.restored(state.rng):
            for offset, op in enumerate(chain):
                if ops:
                    _prefetch_next(store, ops, position + offset)
                for i in range(op.start, op.stop):
                    leaves, _ = self.step(i, leaves, self.spec, extras, buffers, "nograph")
                    self._check(i + 1, leaves, buffers)
                    if bar is not None:
                        bar.update()
                last = offset == len(chain) - 1
                kept_buffers = buffers if last else context.buffers_snapshot(buffers)  # None without buffers
                store.put(op.stop, StoredState(leaves, kept_buffers, context.snapshot_rng()))

    def _replay(self, state: StoredState, op: Reverse, extras: Extras, extra_leaves: list[Tensor], bar) -> _Segment:
        """Steps ``op.start .. op.stop-1`` again, with their graph, from stored ``state``."""
        buffers = self.context.buffers_snapshot(state.buffers)
        inputs = [
            state.leaves[slot].detach().requires_grad_(state.leaves[slot].is_floating_point())
            for slot in self.tensor_slots
        ]
        leaves = self.state_leaves(inputs)
        losses = []
        with self.context.restored(state.rng), torch.enable_grad():
            for i in range(op.start, op.stop):
                leaves, loss = self.step(i, leaves, self.spec, extras, buffers, "graph")
                self._check(i + 1, leaves, buffers)
                losses.append(loss)
                if bar is not None:
                    bar.update()
        return _Segment(inputs, leaves, losses, extra_leaves)

    def _pull(
        self, segment: _Segment, op: Reverse, cot: list[Tensor | None], loss_cotangents: Tensor | None
    ) -> tuple[list[Tensor | None], list[Tensor | None]]:
        """Pull the cotangent of state ``op.stop`` (and of the segment's losses) back through its graph:
        the cotangent of state ``op.start`` and the segment's contribution to the extras' gradients."""
        outputs, grad_outputs = [], []
        for output, grad in zip((segment.leaves[slot] for slot in self.tensor_slots), cot):
            if grad is not None and output.requires_grad:
                outputs.append(output)
                grad_outputs.append(grad)
        if loss_cotangents is not None:
            for i, loss in zip(range(op.start, op.stop), segment.losses):
                if loss.requires_grad:
                    outputs.append(loss)
                    grad_outputs.append(loss_cotangents[i])
        wrt = [t for t in segment.inputs if t.requires_grad] + segment.extra_leaves
        grads = (
            list(torch.autograd.grad(outputs, wrt, grad_outputs, allow_unused=True)) if outputs else ([None] * len(wrt))
        )
        new_cot = [grads.pop(0) if t.requires_grad else None for t in segment.inputs]
        return new_cot, grads


def _chain(ops: Sequence[Any], position: int) -> list[Advance]:
    """The ``Advance`` at ``ops[position]`` and those directly after it that each start where the one before
    stopped (NOTE [ One replay context for consecutive advances ])."""
    chain = [ops[position]]
    for following in range(position + 1, len(ops)):
        op = ops[following]
        if not isinstance(op, Advance) or op.start != chain[-1].stop:
            break
        chain.append(op)
    return chain


def _prefetch_next(store: Store, ops: Sequence[Any], position: int) -> None:
    """Ask ``store`` for the state the next replaying operation after ``ops[position]`` reads, if it is stored
    already: with offload on CUDA its copy back overlaps the current operation (NOTE [ Copies that overlap
    compute ] in :mod:`memmaml.engine._store`). Looks only as far as that operation (a ``Drop`` or two away):
    constant work per operation, where copying the rest of the plan would be quadratic in its length."""
    if not store.offload:
        return
    for next_position in range(position + 1, len(ops)):
        op = ops[next_position]
        if isinstance(op, (Advance, Reverse)):
            if op.start in store.states:
                store.prefetch(op.start)
            return


class CheckpointedUnroll(torch.autograd.Function):
    """Runs the inner loop without a graph and replays it in the backward pass.

    Inputs: the :class:`Executor`, the number of state tensors, the state tensors,
    then the extras that require grad. Outputs: the final state tensors and the
    losses stacked into one tensor.
    """

    @staticmethod
    def forward(ctx, executor: Executor, num_state: int, *inputs: Tensor) -> tuple[Tensor, ...]:
        final, losses = executor.run_forward(inputs[:num_state])
        ctx.executor = executor
        ctx.num_state = num_state
        # outputs the caller did not use get None, not zeros: backpropagating zeros through every step's
        # loss (when the loss history is unused) would cost a first-order backward pass per step
        ctx.set_materialize_grads(False)
        outputs = (*final, losses)
        ctx.mark_non_differentiable(*(t for t in outputs if not t.is_floating_point()))
        return outputs

    @staticmethod
    @once_differentiable
    def backward(ctx, *grads: Tensor) -> tuple[Any, ...]:
        executor: Executor = ctx.executor
        state_cot = [g if is_float else None for g, is_float in zip(grads[: ctx.num_state], executor.float_outputs)]
        state_grads, extra_grads = executor.run_backward(state_cot, grads[ctx.num_state])
        return (None, None, *state_grads, *extra_grads)
