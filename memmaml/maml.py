"""``NaiveMAML`` and ``GradientCheckpointMAML``: the wrappers a torch_maml user knows.

Both are thin shells over :func:`memmaml.engine.unroll`; they differ only in
the schedule: the naive one keeps the whole graph, the checkpointed one keeps
a few states and replays the steps during the backward pass. Their results
agree to rounding (float64: relative 1e-10 in the test suite).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from torch import Tensor, nn

from .adapted import AdaptedModule
from .engine import unroll
from .optim import InnerOptimizer
from .schedules import Schedule, Uniform, parse_schedule

__all__ = ["GradientCheckpointMAML", "NaiveMAML", "Result"]


class Result(NamedTuple):
    """What a MAML wrapper returns.

    Attributes:
        model: an :class:`~memmaml.adapted.AdaptedModule`; calling it computes with
            the adapted parameters and is differentiable with respect to the
            original model's parameters and the tensor hyperparameters.
        loss_history: the inner loss *before* each step (0-d tensors, one per batch).
            Differentiable in second-order mode; detached with ``first_order=True``.
        optimizer_state: the inner optimizer's state after the last step
            (differentiable); pass it back as ``optimizer_state`` to continue.
    """

    model: AdaptedModule
    loss_history: list[Tensor]
    optimizer_state: Any


def _all_trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


class NaiveMAML(nn.Module):
    """MAML that keeps the graph of every inner step (the reference implementation).

    Memory grows with the number of steps: each step holds its forward
    activations and the graph of its gradient. Use it to check
    :class:`GradientCheckpointMAML` and for short unrolls.

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
        preserve_rng_state: (checkpointed engine) replays see the same random
            numbers as the first run.

    Example:
        >>> import torch, memmaml
        >>> model = torch.nn.Linear(3, 1)
        >>> loss = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()
        >>> maml = memmaml.NaiveMAML(model, loss, memmaml.IngraphGradientDescent(0.1))
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
        get_parameters: Callable[[nn.Module], Iterable[Tensor]] = _all_trainable,
        *,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__()
        self.offload = False
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_function):
            raise TypeError(f"loss_function must be callable, got {type(loss_function).__name__}")
        if optimizer is None:
            from .optim import IngraphGradientDescent

            optimizer = IngraphGradientDescent(0.01)
        if not isinstance(optimizer, InnerOptimizer):
            raise TypeError(
                f"optimizer must be a memmaml in-graph optimizer (memmaml.SGD, memmaml.Adam, ...), "
                f"got {type(optimizer).__name__}")
        self.model = model
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.get_parameters = get_parameters
        self.preserve_rng_state = preserve_rng_state

    @property
    def schedule(self) -> Schedule | None:
        """The checkpoint schedule; ``None`` keeps the whole graph."""
        return None

    def adapted_parameters(self) -> dict[str, Tensor]:
        """The parameters ``get_parameters`` selects, keyed like ``model.named_parameters()``."""
        chosen = self.get_parameters(self.model)
        if isinstance(chosen, Tensor):
            raise TypeError("get_parameters must return an iterable of parameters, not a single tensor")
        names = {id(p): name for name, p in self.model.named_parameters()}
        params: dict[str, Tensor] = {}
        for index, tensor in enumerate(chosen):
            if not isinstance(tensor, Tensor):
                raise TypeError(f"get_parameters returned a {type(tensor).__name__} at position {index}, not a tensor")
            name = names.get(id(tensor))
            if name is None:
                raise ValueError(
                    f"get_parameters returned a tensor of shape {tuple(tensor.shape)} at position {index} that is "
                    "not a parameter of the model (it must return the model's own parameters, "
                    "e.g. list(model.head.parameters()))")
            if name in params:
                raise ValueError(f"get_parameters returned parameter {name!r} twice")
            params[name] = tensor
        if not params:
            raise ValueError("get_parameters returned no parameters: there is nothing to adapt")
        return params

    def forward(
        self,
        inputs: Sequence[Any],
        opt_kwargs: Mapping[str, Any] | None = None,
        loss_kwargs: Mapping[str, Any] | None = None,
        optimizer_state: Any = None,
        *,
        max_grad_grad_norm: float | None = None,
        first_order: bool = False,
        allow_unused: bool = False,
        check_finite: bool = False,
        progress: bool = False,
        check_replay: bool = False,
    ) -> Result:
        """Adapt the model with one inner step per batch in ``inputs``.

        Args:
            inputs: one batch per inner step (a list; batches may differ).
            opt_kwargs: overrides of the optimizer's hyperparameters.
            loss_kwargs: keyword arguments for ``loss_function``.
            optimizer_state: the initial optimizer state (default: fresh).
            max_grad_grad_norm: clip, at every inner step, the cotangent flowing
                back into that step's new parameters to this global L2 norm.
            first_order: first-order MAML: inner gradients are constants.
            allow_unused: adapted parameters the loss does not use get zero gradients
                instead of an error.
            check_finite: raise ``FloatingPointError`` naming the first step whose
                loss is not finite (one host sync per step).
            progress: tqdm bars over the inner steps.
            check_replay: (checkpointed engine) compare every replayed step with
                the forward pass, bitwise, and raise
                :class:`~memmaml.engine.ReplayMismatchError` naming the first step
                and tensor that differ. A no-op for the naive engine, which
                replays nothing.

        Returns:
            :class:`Result` ``(model, loss_history, optimizer_state)``.
        """
        if isinstance(inputs, (Tensor, str, bytes)) or not isinstance(inputs, Iterable):
            raise TypeError(
                f"inputs must be a sequence of batches, one per inner step, got {type(inputs).__name__}; "
                "for n steps on the same batch pass [batch] * n")
        params = self.adapted_parameters()
        out = unroll(
            self.model, self.loss_function, list(inputs), self.optimizer,
            params=params, opt_state=optimizer_state, opt_kwargs=opt_kwargs, loss_kwargs=loss_kwargs,
            schedule=self.schedule, offload=self.offload, first_order=first_order,
            max_grad_grad_norm=max_grad_grad_norm,
            allow_unused=allow_unused, check_finite=check_finite,
            preserve_rng_state=self.preserve_rng_state, progress=progress, check_replay=check_replay,
        )
        return Result(AdaptedModule(self.model, out.params), out.losses, out.opt_state)


class GradientCheckpointMAML(NaiveMAML):
    """MAML that keeps a few states and replays the inner steps in the backward pass.

    The forward pass runs the inner loop without building a graph and stores the
    state (parameters, optimizer state, buffers, RNG) at the start of every
    segment of ``checkpoint_steps`` steps. The backward pass replays one segment
    at a time with its graph and backpropagates through it, so at most one
    segment's graph is alive. Peak memory is about ``ceil(n / k)`` states plus
    ``k`` steps' graphs; every step is evaluated twice (once without a graph).

    Meta-gradients equal :class:`NaiveMAML`'s to rounding, through
    ``loss.backward()`` as well as ``torch.autograd.grad``. BatchNorm running
    statistics are updated once per step, as by the naive loop; replays run on
    copies. Replays use the RNG state and ``train``/``eval`` flags of the first
    run, whatever the model's mode when the backward pass runs.

    Schedules (which states to keep) are objects from :mod:`memmaml.schedules`,
    or their text forms:

    * ``Uniform(k)`` / ``"uniform:k"`` -- the default, with ``k = checkpoint_steps``;
    * ``Binomial(slots)`` / ``"binomial:slots"`` -- at most ``slots`` stored states
      and one step's graph, the fewest replays possible for that memory
      (Revolve); reaches 100,000 steps of ResNet-18 with ~200 slots;
    * ``Auto(budget)`` / ``"auto:11GiB"`` -- measures one step and picks the
      fastest schedule that fits the budget (``maml.schedule.describe()`` says
      which);
    * ``offload=True`` with any of them keeps the stored states in host memory.

    Args:
        model, loss_function, optimizer, get_parameters, preserve_rng_state:
            as for :class:`NaiveMAML`.
        checkpoint_steps: steps per segment (positive integer); ignored when
            ``schedule`` is given.
        schedule: a :class:`~memmaml.schedules.Schedule` or its text form
            (default ``Uniform(checkpoint_steps)``).
        offload: keep stored states in host memory (pinned, asynchronous copies
            on CUDA); device memory then stops growing with the number of steps.

    Assumptions not checked: ``loss_function`` runs again during the backward
    pass and must not change state outside the model's buffers; tensors it
    captures in a closure receive no meta-gradient (pass them in the batch or
    ``loss_kwargs`` instead).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer | None = None,
        checkpoint_steps: int = 1,
        get_parameters: Callable[[nn.Module], Iterable[Tensor]] = _all_trainable,
        *,
        schedule: Schedule | str | None = None,
        offload: bool = False,
        preserve_rng_state: bool = True,
    ) -> None:
        super().__init__(model, loss_function, optimizer, get_parameters, preserve_rng_state=preserve_rng_state)
        self._schedule = Uniform(checkpoint_steps) if schedule is None else parse_schedule(schedule)
        self.offload = bool(offload)

    @property
    def schedule(self) -> Schedule:
        return self._schedule

    @property
    def checkpoint_steps(self) -> int | None:
        """Steps per segment of a uniform schedule (``None`` for other schedules)."""
        return getattr(self._schedule, "checkpoint_steps", None)
