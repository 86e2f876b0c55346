"""The hyperparameters of a meta-training run, checked once: :class:`TrainerConfig`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .._checks import int_at_least, integer, number_in, one_of, positive_int, positive_number
from ..optim import SGD, InnerOptimizer
from ..schedules import Schedule, parse_schedule
from ._checkpoint_io import plain

__all__ = ["TrainerConfig"]


def _default_inner_optimizer() -> InnerOptimizer:
    return SGD(0.01)


@dataclass(frozen=True)
class TrainerConfig:
    """The plain settings of a :class:`memmaml.MetaTrainer` run; every field is checked on construction.

    The objects a run works on (model, task sources, loss function, a custom
    outer optimizer) are arguments of :class:`memmaml.MetaTrainer`; what is
    here is compared when a checkpoint is resumed, except the execution and
    evaluation settings, which may change (:meth:`plain` gives the values
    compared). ``dataclasses.replace(config, ...)`` makes a variant (and checks
    it again).

    Attributes:
        inner_optimizer: the in-graph optimizer of the inner loop (default
            ``memmaml.SGD(0.01)``); its learnable tensor hyperparameters are
            meta-parameters of the default outer optimizer.
        num_inner_steps: inner steps per task during training.
        schedule: ``None`` runs the naive engine; a
            :class:`~memmaml.Schedule` or its text form
            (``"uniform:5"``, ``"binomial:4"``, ``"sqrt"``, ``"auto:1GiB"``; see
            :func:`memmaml.parse_schedule`) runs the checkpointed engine with it.
        first_order: first-order MAML (inner gradients are constants).
        max_grad_grad_norm: clip the cotangent through every inner step to this
            global L2 norm (the engine's option; with ``vectorize`` too).
        outer_lr: learning rate of the default outer optimizer (``torch.optim.Adam``).
        meta_batch_size: tasks per meta-iteration (over all processes).
        max_grad_norm: clip the meta-gradient to this global L2 norm before each
            outer step (``None``: no clipping; the norm is logged either way).
        seed: seed of the training task stream.
        num_eval_tasks: number of held-out tasks (fixed seeds from ``eval_seed``).
        eval_steps: inner step counts to evaluate at (default ``0, 1,
            num_inner_steps``); stored sorted, without repeats.
        eval_optimizer: inner optimizer at evaluation (default: ``inner_optimizer``).
        eval_seed: seed of the held-out task seeds (default ``seed + 1``).
        offload: keep the schedule's stored states in host memory (needs a schedule).
        vectorize: adapt a process's tasks in one ``torch.func.vmap`` call, for
            training and evaluation; needs ``schedule=None`` and a model
            without BatchNorm running statistics (checked by the trainer).
        chunk_size: ``vmap`` over at most this many tasks at a time.
        randomness: ``vmap``'s treatment of random operators (``"error"``,
            ``"different"``, ``"same"``).

    Example:
        >>> import memmaml
        >>> config = memmaml.TrainerConfig(num_inner_steps=5, schedule="binomial:2", meta_batch_size=4)
        >>> config.schedule
        'binomial:2'
        >>> memmaml.TrainerConfig(meta_batch_size=0)
        Traceback (most recent call last):
        ...
        ValueError: meta_batch_size must be an integer >= 1, got 0
    """

    # inner loop
    inner_optimizer: InnerOptimizer = field(default_factory=_default_inner_optimizer)
    num_inner_steps: int = 1
    schedule: Schedule | str | None = None
    first_order: bool = False
    max_grad_grad_norm: float | None = None
    # outer loop
    outer_lr: float = 1e-3
    meta_batch_size: int = 25
    max_grad_norm: float | None = None
    seed: int = 0
    # held-out evaluation
    num_eval_tasks: int = 600
    eval_steps: tuple[int, ...] | None = None
    eval_optimizer: InnerOptimizer | None = None
    eval_seed: int | None = None
    # execution: speed and memory, not the training problem
    offload: bool = False
    vectorize: bool = False
    chunk_size: int | None = None
    randomness: str = "error"

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("inner_optimizer", "eval_optimizer"):
            opt = getattr(self, name)
            if not isinstance(opt, InnerOptimizer) and not (name == "eval_optimizer" and opt is None):
                raise TypeError(
                    f"{name} must be a memmaml in-graph optimizer (memmaml.SGD, memmaml.Adam, ...), "
                    f"got {type(opt).__name__}"
                )
        for name in ("num_inner_steps", "meta_batch_size", "num_eval_tasks"):
            put(name, int_at_least(name, getattr(self, name), 1))
        if self.schedule is not None:
            _check_schedule(self.schedule)
        for name in ("first_order", "vectorize", "offload"):
            put(name, bool(getattr(self, name)))
        if self.offload and self.schedule is None:
            raise ValueError("offload=True needs a checkpoint schedule: the naive unroll stores no states")
        for name in ("max_grad_grad_norm", "max_grad_norm"):
            if getattr(self, name) is not None:
                put(name, positive_number(name, getattr(self, name), allow_inf=True))
        put("outer_lr", number_in("outer_lr", self.outer_lr, 0.0))
        put("seed", integer("seed", self.seed))
        if self.eval_seed is not None:
            put("eval_seed", integer("eval_seed", self.eval_seed))
        if self.eval_steps is not None:
            put("eval_steps", _eval_steps(self.eval_steps))
        if self.chunk_size is not None:
            put("chunk_size", positive_int("chunk_size", self.chunk_size))
        one_of("randomness", self.randomness, ("error", "different", "same"))
        if self.vectorize and self.schedule is not None:
            raise ValueError(
                f"vectorize=True runs the naive unroll under vmap; schedule must be None, "
                f"got {self.schedule!r} (use vectorize=False to checkpoint)"
            )

    def resolved(self) -> TrainerConfig:
        """This config with ``schedule`` parsed and the defaults that depend on other fields filled in
        (``eval_optimizer``, ``eval_steps``, ``eval_seed``); what :class:`memmaml.MetaTrainer` runs."""
        return dataclasses.replace(
            self,
            schedule=None if self.schedule is None else parse_schedule(self.schedule),
            eval_optimizer=self.inner_optimizer if self.eval_optimizer is None else self.eval_optimizer,
            eval_steps=(0, 1, self.num_inner_steps) if self.eval_steps is None else self.eval_steps,
            eval_seed=self.seed + 1 if self.eval_seed is None else self.eval_seed,
        )

    def plain(self) -> dict[str, Any]:
        """The resolved settings as plain values, nested (optimizers as ``{"class": ..., **hyperparams}``,
        the schedule as its ``repr``); ``outer_lr`` is left out (a checkpoint records the outer optimizer's own)."""
        config = self.resolved()
        return {
            "inner_optimizer": {
                "class": type(config.inner_optimizer).__name__,
                **plain(config.inner_optimizer.hyperparams),
            },
            "eval_optimizer": {
                "class": type(config.eval_optimizer).__name__,
                **plain(config.eval_optimizer.hyperparams),
            },
            "num_inner_steps": config.num_inner_steps,
            "schedule": None if config.schedule is None else repr(config.schedule),
            "first_order": config.first_order,
            "max_grad_grad_norm": config.max_grad_grad_norm,
            "meta_batch_size": config.meta_batch_size,
            "max_grad_norm": config.max_grad_norm,
            "num_eval_tasks": config.num_eval_tasks,
            "eval_steps": list(config.eval_steps),
            "seed": config.seed,
            "eval_seed": config.eval_seed,
            "vectorize": config.vectorize,
            "offload": config.offload,
            "chunk_size": config.chunk_size,
            "randomness": config.randomness,
        }


def _check_schedule(schedule: Any) -> None:
    if not isinstance(schedule, (Schedule, str)):
        raise TypeError(
            f"schedule must be a memmaml.Schedule, its text form (e.g. 'binomial:4') or "
            f"None, got {type(schedule).__name__}"
        )
    try:
        parse_schedule(schedule)
    except ValueError as error:
        raise ValueError(f"schedule: {error}") from None


def _eval_steps(value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)):
        raise TypeError(f"eval_steps must be a sequence of step counts, got {type(value).__name__}")
    try:
        steps = list(value)
    except TypeError:
        raise TypeError(f"eval_steps must be a sequence of step counts, got {type(value).__name__}") from None
    for s in steps:
        int_at_least("each entry of eval_steps", s, 0)
    if not steps:
        raise ValueError("eval_steps must hold at least one step count")
    return tuple(sorted(set(steps)))
