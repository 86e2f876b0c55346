"""``unroll``: the functional core every wrapper calls, and ``measure_step_costs``.

Both engines run the same inner step (:mod:`memmaml.engine._step`), so they agree to
rounding:

* ``schedule=None`` keeps the whole graph (the naive reference);
* a schedule runs the steps inside :class:`~memmaml.engine._executor.CheckpointedUnroll`,
  which keeps only the states the schedule's plan asks for and replays the
  steps in the backward pass (Chen et al. 2016; Griewank & Walther 2000).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from .._checks import integer, positive_number
from .._host import default_host_budget, host_available_bytes
from .._units import format_bytes
from ..optim import InnerOptimizer
from ..schedules import Choice, Schedule, StepCosts, parse_schedule
from ._adapted import AdaptedModule
from ._executor import CheckpointedUnroll, Executor
from ._measure import measure_costs
from ._replay_context import ReplayContext, check_cudnn_rnn_dropout
from ._step import InnerStep, progress_bar, tensors_in
from ._store import host_bytes, reusable_pinned_bytes

__all__ = ["Result", "check_truncate", "choose_schedule", "measure_step_costs", "unroll"]

Params = dict[str, Tensor]


class Result(NamedTuple):
    """What an unroll returns (``model, loss_history, optimizer_state = result`` unpacks it).

    Attributes:
        model: an :class:`~memmaml.AdaptedModule`; calling it computes with the
            adapted parameters and is differentiable with respect to the
            original model's parameters and the tensor hyperparameters.
        loss_history: the inner loss *before* each step (0-d tensors, one per batch).
            Differentiable in second-order mode; detached with ``first_order=True``.
        optimizer_state: the inner optimizer's state after the last step
            (differentiable); pass it back as ``opt_state`` / ``optimizer_state``
            to continue.
    """

    model: AdaptedModule
    loss_history: list[Tensor]
    optimizer_state: Any

    @property
    def params(self) -> Params:
        """The adapted parameters, keyed like ``model.named_parameters()``."""
        return self.model.params


def choose_schedule(
    schedule: Schedule | str | None, num_steps: int, measure: Callable[[], StepCosts], *, offload: bool = False
) -> Choice:
    """The concrete schedule for an unroll: ``schedule`` itself, or what it chooses from measured costs.

    ``measure`` is called only for a schedule that ``needs_costs`` (:class:`~memmaml.Auto`).
    """
    schedule = _checked_schedule(schedule, offload)
    if schedule is None:
        return Choice.of(None, num_steps)
    costs = measure() if schedule.needs_costs else None
    room = default_host_budget(reusable_pinned_bytes()) if offload and schedule.needs_costs else None
    return schedule.choose(num_steps, costs, offload=offload, host_room=room)


def _checked_schedule(schedule: Schedule | str | None, offload: bool) -> Schedule | None:
    if schedule is None:
        if offload:
            raise ValueError("offload=True needs a checkpoint schedule: the naive unroll stores no states")
        return None
    return parse_schedule(schedule)


class _Setup(NamedTuple):
    step: InnerStep
    context: ReplayContext
    leaves: list[Any]
    spec: Any


def _setup(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    batches: Sequence[Any],
    optimizer: InnerOptimizer,
    params: Params,
    opt_state: Any,
    opt_kwargs: Mapping[str, Any] | None,
    loss_kwargs: Mapping[str, Any] | None,
    *,
    preserve_rng_state: bool = True,
    **options: Any,
) -> _Setup:
    """One unroll's inner step, replay context and flattened state (``options`` go to :class:`InnerStep`)."""
    static = {name: p for name, p in model.named_parameters() if name not in params and p.requires_grad}
    extras = (optimizer.resolve(opt_kwargs), static, list(batches), dict(loss_kwargs or {}))
    if opt_state is None:
        with torch.no_grad():
            opt_state = optimizer.init({name: p.detach() for name, p in params.items()})
    leaves, spec = pytree.tree_flatten((params, opt_state))
    context = ReplayContext(model, tensors_in((leaves, extras)), preserve_rng_state=preserve_rng_state)
    return _Setup(InnerStep(model, loss_function, optimizer, extras, **options), context, leaves, spec)


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
    grad_scaler: torch.amp.GradScaler | None = None,
    allow_unused: bool = False,
    check_finite: bool = False,
    preserve_rng_state: bool = True,
    progress: bool = False,
    check_replay: bool = False,
    truncate: int | None = None,
) -> Result:
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
            It is run again during replays: it must compute the same thing each
            time it sees the same state (README, "What the loss function must
            not do"); ``check_replay`` verifies it.
        batches: one batch per inner step.
        optimizer: an :class:`~memmaml.InnerOptimizer`.
        params: the parameters to adapt, keyed like ``model.named_parameters()``.
        opt_state: the initial optimizer state (default: ``optimizer.init(params)``).
        opt_kwargs: hyperparameter overrides for this unroll.
        loss_kwargs: keyword arguments for ``loss_function``.
        schedule: ``None`` keeps the whole graph (naive); a
            :class:`~memmaml.Schedule` (or its text form, e.g. ``"binomial:20"``,
            see :func:`~memmaml.parse_schedule`) keeps only its stored states and
            replays steps in the backward pass; :class:`~memmaml.Auto` measures
            one step on ``batches[0]`` and runs the schedule it chooses.
        offload: keep the schedule's stored states in host memory (pinned,
            copied asynchronously on CUDA); device memory then no longer grows
            with the number of steps. Needs a schedule.
        first_order: treat each inner gradient as a constant (first-order MAML).
        max_grad_grad_norm: clip the cotangent of each step's new parameters to
            this global L2 norm in the backward pass (norms accumulated in
            float32 at least).
        grad_scaler: the ``torch.amp.GradScaler`` whose ``scale(loss)`` the
            meta-loss goes through: the clip then compares the *unscaled*
            cotangent with ``max_grad_grad_norm``, reading the scaler's current
            scale on the device (no host sync). Without it, a scaled backward
            pass is clipped ``scale`` times too hard. Does nothing when
            ``max_grad_grad_norm`` is ``None``.
        allow_unused: an adapted parameter that does not affect the loss gets a
            zero gradient instead of an error.
        check_finite: raise ``FloatingPointError`` at the first non-finite loss
            (one host sync per step).
        preserve_rng_state: replays see the random numbers of the first run.
        progress: show tqdm bars over inner steps (forward and replay).
        check_replay: compare every replayed step's state (parameters,
            optimizer state, buffers) with the forward pass's, bitwise, and
            raise :class:`~memmaml.ReplayMismatchError` naming the step and the
            first tensor that differs (NOTE [ Checking the replay ]). Costs a
            pass over the state per step and a host sync per replayed step. The
            naive engine replays nothing, so there it does nothing. On CUDA it
            needs deterministic kernels (``torch.use_deterministic_algorithms(True)``),
            or legitimate last-bit differences raise.
        truncate: differentiate through the last ``truncate`` steps only
            (truncated backpropagation, Shaban et al. 2019): the first
            ``n - truncate`` steps run once without a graph and store nothing,
            and their updates count as constants -- the cotangent of the state
            they reach passes to the initial state unchanged. For the initial
            parameters' meta-gradient those steps act as first-order MAML's do
            (identity Jacobians); not for hyperparameters: tensor
            hyperparameters (``opt_kwargs``, a learnable learning rate)
            receive the hypergradient of the last ``truncate`` steps alone,
            none from the first ``n - truncate``, where first-order MAML
            differentiates every step's update with respect to them (so as
            ``truncate`` shrinks a learning rate's hypergradient goes to 0, and
            first-order's does not). ``schedule`` applies to the last steps.
            An integer from 1 to ``n`` (any integer ``operator.index``
            accepts); ``n`` (or ``None``) is exact.

    Autocast: the steps run under the autocast state of the call (captured
    here and restored in every replay), so naive and checkpointed engines run
    the same operations in reduced precision (NOTE [ Replay must be exact ]).

    Under ``torch.no_grad()`` or ``torch.inference_mode()`` every engine runs
    the steps once without a graph (each inner gradient is still computed) and
    stores nothing: the result does not require grad, whatever the schedule.

    Returns:
        :class:`Result` ``(model, loss_history, optimizer_state)``; ``result.params``
        are the adapted parameters.
    """
    batches = list(batches)
    if not batches:
        raise ValueError("inputs must hold at least one batch (one per inner step), got none")
    if max_grad_grad_norm is not None:
        max_grad_grad_norm = positive_number("max_grad_grad_norm", max_grad_grad_norm)
    if not params:
        raise ValueError("there are no parameters to adapt")
    head = len(batches) - check_truncate(truncate, len(batches))

    def setup_for(steps: slice, params: Params, opt_state: Any) -> _Setup:
        return _setup(
            model,
            loss_function,
            batches[steps],
            optimizer,
            params,
            opt_state,
            opt_kwargs,
            loss_kwargs,
            preserve_rng_state=bool(preserve_rng_state),
            first_order=bool(first_order),
            max_grad_grad_norm=max_grad_grad_norm,
            grad_scaler=grad_scaler,
            allow_unused=bool(allow_unused),
            check_finite=bool(check_finite),
            first_step=steps.start or 0,
        )

    if not torch.is_grad_enabled():  # no_grad and inference_mode: no engine keeps anything
        _checked_schedule(schedule, bool(offload))
        return _without_graph(setup_for(slice(0, None), params, opt_state), progress=bool(progress))
    if head:  # truncated: the first steps without a graph, their updates constants
        _checked_schedule(schedule, bool(offload))
        with torch.no_grad():
            first = _without_graph(setup_for(slice(0, head), params, opt_state), progress=bool(progress))
        params = _constant_updates(first.params, params)
        opt_state = first.optimizer_state if opt_state is None else _constant_updates(first.optimizer_state, opt_state)
        rest = _differentiated(
            setup_for(slice(head, None), params, opt_state), schedule, offload, check_replay, progress
        )
        return rest._replace(loss_history=first.loss_history + rest.loss_history)
    return _differentiated(setup_for(slice(0, None), params, opt_state), schedule, offload, check_replay, progress)


def check_truncate(truncate: int | None, num_steps: int) -> int:
    """The number of differentiated steps: ``truncate`` checked, or all.

    ``truncate`` is any integer ``operator.index`` accepts (a NumPy integer too), not a bool: ``TypeError``
    otherwise; from 1 to ``num_steps``: ``ValueError`` otherwise.
    """
    if truncate is None:
        return num_steps
    count = integer("truncate", truncate)
    if not 1 <= count <= num_steps:
        raise ValueError(f"truncate must be an integer from 1 to the number of inner steps ({num_steps}), got {count}")
    return count


class _ConstantUpdates(torch.autograd.Function):
    """``reached`` in the forward pass; the cotangent goes to ``start`` unchanged: the updates that led from
    ``start`` to ``reached`` count as constants (truncation; exact values, no rounding of a sum)."""

    @staticmethod
    def forward(ctx, reached: Tensor, start: Tensor) -> Tensor:
        return reached.view_as(reached)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor]:
        return None, grad


def _constant_updates(reached: Any, start: Any) -> Any:
    """``reached`` (a state tree), each floating-point tensor wired to its counterpart in ``start``."""

    def wire(value: Any, origin: Any) -> Any:
        if isinstance(origin, Tensor) and origin.requires_grad and value.is_floating_point():
            return _ConstantUpdates.apply(value, origin)
        return value

    return pytree.tree_map(wire, reached, start)


def _differentiated(
    setup: _Setup,
    schedule: Schedule | str | None,
    offload: bool,
    check_replay: bool,
    progress: bool,
) -> Result:
    """The steps of ``setup`` with a meta-gradient: naive, or by the plan of the schedule chosen."""
    model, batches = setup.step.model, setup.step.extras[2]
    choice = choose_schedule(schedule, len(batches), lambda: _measure(setup), offload=bool(offload))
    if not any(t.requires_grad for t in tensors_in((setup.leaves, setup.step.extras))):
        return _without_graph(setup, progress=bool(progress))  # nothing to differentiate, whatever the engine
    if choice.schedule is None:
        return _naive(setup, progress=bool(progress))
    check_cudnn_rnn_dropout(model, setup.context.device_types)
    if choice.offload:
        _check_host_room(choice, setup)
    executor = Executor(
        setup.step,
        setup.context,
        setup.leaves,
        setup.spec,
        choice.schedule.plan(len(batches)),
        offload=choice.offload,
        check_replay=bool(check_replay),
        progress=bool(progress),
    )
    state_tensors = [setup.leaves[i] for i in executor.tensor_slots]
    outputs = CheckpointedUnroll.apply(executor, len(state_tensors), *state_tensors, *executor.extra_inputs)
    params, opt_state = pytree.tree_unflatten(executor.state_leaves(list(outputs[:-1])), setup.spec)
    return Result(AdaptedModule(model, params), list(outputs[-1].unbind(0)), opt_state)


def _without_graph(setup: _Setup, *, progress: bool) -> Result:
    """Every step once without a graph, nothing stored: what there is to run when nothing is differentiated.

    Each step still differentiates its loss for the inner gradient. Under ``torch.inference_mode()`` no
    tensor can take part in autograd, so the steps leave it (``inference_mode(False)`` with grad mode off)
    and use ordinary copies of any inference tensor among the inputs.
    """
    with contextlib.ExitStack() as stack:
        leaves = setup.leaves
        if torch.is_inference_mode_enabled():
            stack.enter_context(torch.inference_mode(False))
            stack.enter_context(torch.no_grad())
            leaves = _outside_inference(leaves)
            setup.step.extras = _outside_inference(setup.step.extras)
        executor = Executor(setup.step, setup.context, leaves, setup.spec, None, progress=progress)
        final, losses = executor.run_forward([leaves[i] for i in executor.tensor_slots])
    params, opt_state = pytree.tree_unflatten(executor.state_leaves(final), setup.spec)
    return Result(AdaptedModule(setup.step.model, params), list(losses.unbind(0)), opt_state)


def _outside_inference(tree: Any) -> Any:
    """``tree`` with every inference tensor replaced by an ordinary copy (autograd cannot save the former)."""
    return pytree.tree_map_only(Tensor, lambda t: t.clone() if t.is_inference() else t, tree)


def _check_host_room(choice: Choice, setup: _Setup) -> None:
    """Refuse an offloaded plan whose stored states cannot fit in the host's available memory (pinned blocks
    this process already holds for reuse count as available; CUDA's rounding of pinned blocks counts too)."""
    state = host_bytes(tensors_in(setup.leaves) + setup.context.buffers_of(None))
    pinned = choice.stats.max_stored * state
    available = host_available_bytes()
    if available is not None:
        available += reusable_pinned_bytes()
    if available is not None and pinned > available:
        raise ValueError(
            f"offload=True with {choice.schedule!r} over {choice.num_steps} steps would pin "
            f"{format_bytes(pinned)} of host memory ({choice.stats.max_stored} states of {format_bytes(state)}), "
            f"more than the {format_bytes(available)} the host has available; keep fewer states "
            f"(Binomial(slots)), or let Auto(budget) choose within the host's memory"
        )


def _naive(setup: _Setup, *, progress: bool) -> Result:
    step, leaves = setup.step, list(setup.leaves)
    # leaves that cannot carry a graph still need gradients inside the step
    params, opt_state = pytree.tree_unflatten(leaves, setup.spec)
    params = {name: p if p.requires_grad else p.detach().requires_grad_(True) for name, p in params.items()}
    leaves = pytree.tree_flatten((params, opt_state))[0]
    losses = []
    with progress_bar(progress, step.num_steps, "memmaml naive") as bar:
        for i in range(step.num_steps):
            leaves, loss = step(i, leaves, setup.spec, step.extras, None, "graph")
            losses.append(loss)
            if bar is not None:
                bar.update()
    params, opt_state = pytree.tree_unflatten(leaves, setup.spec)
    return Result(AdaptedModule(step.model, params), losses, opt_state)


def _measure(setup: _Setup) -> StepCosts:
    executor = Executor(setup.step, setup.context, setup.leaves, setup.spec, None)
    return measure_costs(executor, [setup.leaves[i] for i in executor.tensor_slots])


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
    """Measure one inner step on ``batch``: what :class:`~memmaml.Auto` plans with.

    Returns :class:`~memmaml.StepCosts`: the bytes of one stored state (adapted
    parameters, optimizer state, buffers), the peak bytes one step adds while
    its graph is alive (measured with :func:`memmaml.track_memory` on the
    parameters' device), and the seconds of one step without and with its graph
    (the latter including its backward pass). It runs under the current
    autocast state. The model's buffers and the RNG state are left as they were.

    Args:
        params: the parameters to adapt (default: every parameter that requires grad).
    """
    if params is None:
        params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    return _measure(
        _setup(
            model,
            loss_function,
            [batch],
            optimizer,
            params,
            None,
            opt_kwargs,
            loss_kwargs,
            first_order=False,
            max_grad_grad_norm=None,
            allow_unused=True,
            check_finite=False,
        )
    )
