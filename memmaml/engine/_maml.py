"""``MAML``: the wrapper over :func:`~memmaml.unroll`, and the names a torch_maml user knows.

One class, configured by its schedule: ``MAML(model, loss_function, optimizer)``
keeps the whole graph (the reference), ``MAML(..., schedule="uniform:10")`` keeps
a few states and replays the steps in the backward pass. ``NaiveMAML`` and
``GradientCheckpointMAML`` are the same class under the predecessor torch_maml's
names and signatures. Results agree to rounding (float64: relative 1e-10 in
the test suite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from ..optim import IngraphGradientDescent, InnerOptimizer
from ..schedules import Choice, Schedule, StepCosts, Uniform, parse_schedule
from ._params import select_parameters
from ._unroll import Result, check_truncate, choose_schedule, measure_step_costs, unroll

__all__ = ["MAML", "GradientCheckpointMAML", "NaiveMAML"]

GetParameters = Callable[[nn.Module], Iterable[Tensor]]


class MAML(nn.Module):
    """Adapts ``model`` with one inner step per batch; meta-gradients flow to its parameters.

    The schedule decides what the unroll keeps in memory:

    * ``None`` (default) -- every step's graph (the naive reference): memory
      grows with the number of steps;
    * a :class:`~memmaml.Schedule` or its text form -- the checkpointed engine
      runs the inner loop without a graph, keeps the states the schedule asks
      for (parameters, optimizer state, buffers, RNG) and replays the steps in
      the backward pass: ``Uniform(k)`` / ``"uniform:k"`` (segments of ``k``
      steps), ``"sqrt"``, ``Binomial(slots)`` / ``"binomial:slots"`` (Revolve:
      the fewest replays for that memory; ``segment=k`` / ``"binomial:slots:k"``
      reverses ``k`` steps at a time), ``Auto(budget)`` / ``"auto:11GiB"``
      (measures one step on the first call and picks the fastest that fits;
      :attr:`last_choice` says which).

    Meta-gradients of every schedule equal the naive ones to rounding, through
    ``loss.backward()`` as well as ``torch.autograd.grad``. BatchNorm running
    statistics are updated once per step, as by a plain loop; replays run on
    copies, with the RNG state, ``train``/``eval`` flags and autocast state of
    the first run.

    Args:
        model: the module to adapt. Its parameters are the meta-parameters; it is
            never copied.
        loss_function: ``loss_function(model, batch, **loss_kwargs)`` returns a
            scalar; ``model`` computes with the adapted parameters.
        optimizer: an in-graph optimizer (default ``IngraphGradientDescent(0.01)``).
        get_parameters: ``get_parameters(model)`` returns the parameters the inner
            loop adapts (default: every parameter that requires grad). The others
            stay fixed in the inner loop and still receive meta-gradients through
            everything it reads.
        schedule: what to keep (see above).
        offload: keep the schedule's stored states in host memory (pinned,
            asynchronous copies on CUDA); device memory then stops growing with
            the number of steps. Needs a schedule.
        preserve_rng_state: replays see the same random numbers as the first run.

    Assumptions not checked (``check_replay=True`` checks them): ``loss_function``
    runs again during the backward pass and must compute the same thing each
    time; tensors it captures in a closure receive no meta-gradient from the
    checkpointed engine (pass them in the batch or ``loss_kwargs`` instead).

    Example:
        >>> import torch, memmaml
        >>> model = torch.nn.Linear(3, 1)
        >>> loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> maml = memmaml.MAML(model, loss, memmaml.SGD(0.1), schedule="binomial:2")
        >>> batch = (torch.randn(8, 3), torch.randn(8, 1))
        >>> result = maml([batch] * 5)
        >>> len(result.loss_history)
        5
        >>> loss(result.model, batch).backward()  # meta-gradient lands in model.weight.grad
        >>> model.weight.grad.shape
        torch.Size([1, 3])
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer | None = None,
        get_parameters: GetParameters | None = None,
        *,
        schedule: Schedule | str | None = None,
        offload: bool = False,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_function):
            raise TypeError(f"loss_function must be callable, got {type(loss_function).__name__}")
        optimizer = IngraphGradientDescent(0.01) if optimizer is None else optimizer
        if not isinstance(optimizer, InnerOptimizer):
            raise TypeError(
                f"optimizer must be a memmaml in-graph optimizer (memmaml.SGD, memmaml.Adam, ...), "
                f"got {type(optimizer).__name__}"
            )
        self.model, self.loss_function, self.optimizer = model, loss_function, optimizer
        self.get_parameters = get_parameters
        self.schedule = None if schedule is None else parse_schedule(schedule)
        if offload and self.schedule is None:
            raise ValueError("offload=True needs a checkpoint schedule: the naive unroll stores no states")
        self.offload = bool(offload)
        self.preserve_rng_state = preserve_rng_state
        #: :class:`~memmaml.StepCosts` measured on the first call, for a schedule that needs them (Auto)
        self.step_costs: StepCosts | None = None
        #: the concrete schedule of the last call and its predictions (``last_choice.describe()``);
        #: ``None`` after a call under ``no_grad``, which stores nothing
        self.last_choice: Choice | None = None

    @property
    def checkpoint_steps(self) -> int | None:
        """Steps per segment of a uniform schedule (``None`` for other schedules)."""
        return getattr(self.schedule, "checkpoint_steps", None)

    def adapted_parameters(self) -> dict[str, Tensor]:
        """The parameters ``get_parameters`` selects, keyed like ``model.named_parameters()``."""
        return select_parameters(self.model, self.get_parameters)

    def forward(
        self,
        inputs: Sequence[Any],
        opt_kwargs: Mapping[str, Any] | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
        optimizer_state: Any = None,
        *,
        max_grad_grad_norm: float | None = None,
        grad_scaler: torch.amp.GradScaler | None = None,
        first_order: bool = False,
        allow_unused: bool = False,
        check_finite: bool = False,
        progress: bool = False,
        check_replay: bool = False,
        truncate: int | None = None,
    ) -> Result:
        """Adapt the model with one inner step per batch in ``inputs``.

        Args:
            inputs: one batch per inner step (a list; batches may differ).
            opt_kwargs: overrides of the optimizer's hyperparameters.
            loss_kwargs: keyword arguments for ``loss_function``.
            optimizer_state: the initial optimizer state (default: fresh).
            max_grad_grad_norm: clip, at every inner step, the cotangent flowing
                back into that step's new parameters to this global L2 norm.
            grad_scaler: the ``torch.amp.GradScaler`` that scales the meta-loss
                (``scaler.scale(loss).backward()``): the clip then applies to
                the unscaled cotangent. Does nothing without ``max_grad_grad_norm``.
            first_order: first-order MAML: inner gradients are constants.
            allow_unused: adapted parameters the loss does not use get zero gradients
                instead of an error.
            check_finite: raise ``FloatingPointError`` naming the first step whose
                loss is not finite (one host sync per step).
            progress: tqdm bars over the inner steps.
            check_replay: compare every replayed step with the forward pass,
                bitwise, and raise :class:`~memmaml.ReplayMismatchError` naming
                the first step and tensor that differ. A no-op for the naive
                engine, which replays nothing.
            truncate: differentiate through the last ``truncate`` steps only;
                the earlier steps' updates count as constants (see
                :func:`~memmaml.unroll`). The schedule applies to those steps.

        Returns:
            :class:`~memmaml.Result` ``(model, loss_history, optimizer_state)``.
        """
        if isinstance(inputs, (Tensor, str, bytes)) or not isinstance(inputs, Iterable):
            raise TypeError(
                f"inputs must be a sequence of batches, one per inner step, got {type(inputs).__name__}; "
                "for n steps on the same batch pass [batch] * n"
            )
        inputs = list(inputs)
        params = self.adapted_parameters()

        def measure() -> StepCosts:
            if self.step_costs is None:
                self.step_costs = measure_step_costs(
                    self.model,
                    self.loss_function,
                    inputs[0],
                    self.optimizer,
                    params=params,
                    opt_kwargs=opt_kwargs,
                    loss_kwargs=loss_kwargs,
                )
            return self.step_costs

        if inputs and torch.is_grad_enabled():
            differentiated = check_truncate(truncate, len(inputs))
            self.last_choice = choose_schedule(self.schedule, differentiated, measure, offload=self.offload)
        else:  # under no_grad nothing is stored: there is nothing to choose
            self.last_choice = None
        return unroll(
            self.model,
            self.loss_function,
            inputs,
            self.optimizer,
            params=params,
            opt_state=optimizer_state,
            opt_kwargs=opt_kwargs,
            loss_kwargs=loss_kwargs,
            schedule=None if self.last_choice is None else self.last_choice.schedule,
            offload=self.last_choice is not None and self.last_choice.offload,
            first_order=first_order,
            max_grad_grad_norm=max_grad_grad_norm,
            grad_scaler=grad_scaler,
            allow_unused=allow_unused,
            check_finite=check_finite,
            preserve_rng_state=self.preserve_rng_state,
            progress=progress,
            check_replay=check_replay,
            truncate=truncate,
        )


class NaiveMAML(MAML):
    """:class:`MAML` that keeps the graph of every inner step: torch_maml's name and signature.

    ``NaiveMAML(model, loss_function, optimizer, get_parameters)`` is
    ``MAML(model, loss_function, optimizer, get_parameters)``. Memory grows with
    the number of steps; use it as the reference and for short unrolls.

    Example:
        >>> import torch, memmaml
        >>> model = torch.nn.Linear(3, 1)
        >>> loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> result = memmaml.NaiveMAML(model, loss, memmaml.IngraphGradientDescent(0.1))([(torch.randn(8, 3),
        ...                                                                                 torch.randn(8, 1))] * 5)
        >>> len(result.loss_history)
        5
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer | None = None,
        get_parameters: GetParameters | None = None,
        *,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__(model, loss_function, optimizer, get_parameters, preserve_rng_state=preserve_rng_state)


class _Unset:
    def __repr__(self) -> str:
        return "1"


_UNSET: Any = _Unset()


class GradientCheckpointMAML(MAML):
    """:class:`MAML` with a checkpoint schedule: torch_maml's name and signature.

    ``GradientCheckpointMAML(model, loss_function, optimizer, checkpoint_steps=k)``
    is ``MAML(..., schedule=Uniform(k))``: segments of ``k`` steps (default 1),
    memory about ``ceil(n / k)`` states plus ``k`` steps' graphs, every step
    evaluated twice. ``schedule=`` takes any other schedule instead; giving both
    is an error.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer | None = None,
        checkpoint_steps: int = _UNSET,
        get_parameters: GetParameters | None = None,
        *,
        schedule: Schedule | str | None = None,
        offload: bool = False,
        preserve_rng_state: bool = True,
    ) -> None:
        if schedule is not None and checkpoint_steps is not _UNSET:
            raise ValueError(
                f"pass checkpoint_steps or schedule, not both (got checkpoint_steps={checkpoint_steps!r} "
                f"and schedule={schedule!r}); checkpoint_steps=k is schedule=Uniform(k)"
            )
        if schedule is None:
            schedule = Uniform(1 if checkpoint_steps is _UNSET else checkpoint_steps)
        super().__init__(
            model,
            loss_function,
            optimizer,
            get_parameters,
            schedule=schedule,
            offload=offload,
            preserve_rng_state=preserve_rng_state,
        )
