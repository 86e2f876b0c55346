"""Held-out evaluation: adapt tasks, score their query sets after several step counts, mean and 95% CI.

:func:`batched_evaluate` adapts every task of a stacked batch on its support
set and measures the query loss (and metrics such as accuracy) after each step
count in ``steps`` (``0`` is the unadapted model). It runs either task by task
with the engine (:func:`memmaml.unroll`, first order, no meta-graph) or
all tasks at once under ``torch.func.vmap`` (the per-task inner loop of
:mod:`._batched`); both give the same numbers (float64: to rounding,
``tests/test_evaluation.py``). :class:`memmaml.MetaTrainer` uses it for both
of its paths.

:func:`held_out_share` builds a fixed set of held-out tasks (seeds from their
own generator, so every evaluation sees the same tasks) and hands each process
its share; :func:`summarize` sums the per-task values over processes and
reports, per metric and step count, the mean and the half-width of a 95%
confidence interval over tasks, ``1.96 * std / sqrt(num_tasks)`` (``std`` with
Bessel's correction, from the summed values and squares).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import vmap

from .._checks import int_at_least, one_of
from ..engine import AdaptedModule, select_parameters, unroll
from ..optim import InnerOptimizer
from ..tasks import Task, TaskSource, draw_seeds
from ._batched import Adapter, check_tasks, check_vmappable
from ._distributed import Processes

__all__ = ["batched_evaluate", "held_out_share", "summarize"]

Params = dict[str, Tensor]


def batched_evaluate(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    tasks: Task,
    optimizer: InnerOptimizer,
    *,
    steps: Iterable[int],
    metrics: Mapping[str, Callable[..., Tensor]] | None = None,
    params: Mapping[str, Tensor] | None = None,
    opt_kwargs: Mapping[str, Any] | None = None,
    vectorize: bool = True,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> dict[str, Tensor]:
    """Query loss and metrics of every task after each number of inner steps in ``steps``.

    Runs ``max(steps)`` inner steps per task on its support set (the same
    support batch at every step; inner gradients are constants, no meta-graph
    is kept) and measures the query set after each step count in ``steps``.
    Nothing returned is differentiable.

    Args:
        model: the module; called functionally at the adapted parameters.
        loss_function: ``loss_function(model, batch) -> 0-d tensor``.
        tasks: a :class:`~memmaml.tasks.Task` whose tensors have a leading task dimension.
        optimizer: the in-graph inner optimizer.
        steps: step counts to measure at (non-negative integers).
        metrics: ``{name: fn(model, batch) -> 0-d tensor}`` evaluated on the
            query set beside the loss (accuracy, say).
        params: the parameters to adapt, keyed like ``model.named_parameters()``
            (default: every parameter that requires grad).
        opt_kwargs: hyperparameter overrides.
        vectorize: adapt all tasks at once under ``torch.func.vmap`` (memory:
            every task of a chunk at once; no BatchNorm running statistics in
            train mode, see :func:`memmaml.check_vmappable`); ``False`` adapts
            them one after another with the engine.
        chunk_size: ``vmap`` over at most this many tasks at a time.
        randomness: ``vmap``'s treatment of random operators (``"error"``,
            ``"different"``, ``"same"``).

    Returns:
        ``{"loss": (num_tasks, len(steps)), <metric>: (num_tasks, len(steps))}``,
        columns in the sorted order of ``steps``; detached.

    Example:
        >>> import torch, memmaml
        >>> from memmaml.tasks import Sinusoid, mse_loss
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> tasks = Sinusoid(num_shots=5).sample_batch([0, 1, 2])
        >>> out = batched_evaluate(model, mse_loss, tasks, memmaml.SGD(0.01), steps=[0, 1, 5])
        >>> out["loss"].shape
        torch.Size([3, 3])
    """
    steps = sorted(set(steps))
    if not steps:
        raise ValueError("steps must hold at least one step count, got none")
    for s in steps:
        int_at_least("each entry of steps", s, 0)
    metrics = dict(metrics or {})
    if "loss" in metrics:
        raise ValueError("metrics must not contain the name 'loss'; the loss is always reported")
    one_of("randomness", randomness, ("error", "different", "same"))
    tasks = check_tasks(tasks)
    adapted = {k: v.detach() for k, v in select_parameters(model, params).items()}
    if vectorize:
        check_vmappable(model)
        columns = _vectorized(
            model, loss_function, tasks, optimizer, steps, metrics, adapted, opt_kwargs, chunk_size, randomness
        )
    else:
        columns = _task_by_task(model, loss_function, tasks, optimizer, steps, metrics, adapted, opt_kwargs)
    return {name: column.detach() for name, column in zip(["loss", *metrics], columns)}


def _vectorized(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    tasks: Task,
    optimizer: InnerOptimizer,
    steps: list[int],
    metrics: Mapping[str, Callable[..., Tensor]],
    adapted: Params,
    opt_kwargs: Mapping[str, Any] | None,
    chunk_size: int | None,
    randomness: str,
) -> tuple[Tensor, ...]:
    adapter = Adapter(model, loss_function, optimizer, optimizer.resolve(opt_kwargs), first_order=True)

    def measure(current: Params, query: Any) -> list[Tensor]:
        view = AdaptedModule(model, current)
        return [adapter.loss(current, query)] + [metric(view, query) for metric in metrics.values()]

    def one_task(init: Params, support: Any, query: Any) -> tuple[Tensor, ...]:
        current = init
        opt_state = optimizer.init(init)
        rows = []
        for step in range(steps[-1] + 1):
            if step in steps:
                rows.append(measure(current, query))
            if step < steps[-1]:
                current, opt_state, _ = adapter.step(current, opt_state, support, step)
        return tuple(torch.stack([row[i] for row in rows]) for i in range(1 + len(metrics)))

    with torch.no_grad():
        return vmap(one_task, in_dims=(None, 0, 0), chunk_size=chunk_size, randomness=randomness)(
            adapted, tasks.support, tasks.query
        )


def _task_by_task(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    tasks: Task,
    optimizer: InnerOptimizer,
    steps: list[int],
    metrics: Mapping[str, Callable[..., Tensor]],
    adapted: Params,
    opt_kwargs: Mapping[str, Any] | None,
) -> tuple[Tensor, ...]:
    scorers = [loss_function, *metrics.values()]
    columns: list[list[Tensor]] = [[] for _ in scorers]  # per scorer, one (len(steps),) tensor per task
    for t in range(tasks.num_tasks):
        task = tasks.select(t)
        current, opt_state, done = adapted, None, 0
        rows: list[list[Tensor]] = [[] for _ in scorers]
        for target in steps:
            if target > done:  # continue the unroll from the last step count measured
                out = unroll(
                    model,
                    loss_function,
                    [task.support] * (target - done),
                    optimizer,
                    params=current,
                    opt_state=opt_state,
                    opt_kwargs=opt_kwargs,
                    first_order=True,
                )
                current = {k: v.detach() for k, v in out.params.items()}
                opt_state = out.optimizer_state
                done = target
            with torch.no_grad():
                view = AdaptedModule(model, current)
                for row, scorer in zip(rows, scorers):
                    row.append(scorer(view, task.query).detach())
        for column, row in zip(columns, rows):
            column.append(torch.stack(row))
    return tuple(torch.stack(column) for column in columns)


def held_out_share(
    source: TaskSource,
    num_tasks: int,
    seed: int,
    processes: Processes,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Task | None:
    """This process's share of ``num_tasks`` held-out tasks whose seeds come from ``seed``.

    The tasks are split in contiguous shares of ``ceil(num_tasks / world_size)``;
    a process past the end gets ``None``.
    """
    seeds = draw_seeds(torch.Generator().manual_seed(seed), num_tasks)
    mine = processes.contiguous_share(seeds, -(-num_tasks // processes.world_size))
    return source.sample_batch(mine).to(device, dtype) if mine else None


def summarize(
    values: Mapping[str, Tensor] | None,
    names: Sequence[str],
    steps: Sequence[int],
    processes: Processes = Processes(),  # noqa: B008 (an immutable NamedTuple)
    device: torch.device | None = None,
) -> dict[str, float]:
    """Mean and 95% confidence interval over every process's tasks, per metric and step count.

    Collective when ``processes`` is distributed (one ``all_reduce``).

    Args:
        values: this process's :func:`batched_evaluate` result, or ``None`` if it has no tasks.
        names: the metrics of ``values``, ``"loss"`` first.
        steps: the sorted step counts of the columns.
        processes: the processes whose tasks are summed.
        device: where to sum (the device the process group communicates on).

    Returns:
        ``{"eval_<name>@<steps>": mean, "eval_<name>@<steps>_ci95": 1.96 * std / sqrt(n)}``;
        the interval is NaN for a single task.
    """
    sums = torch.zeros(len(names), 3, len(steps), dtype=torch.float64, device=device)
    if values is not None:
        for i, name in enumerate(names):
            v = values[name].to(torch.float64)
            sums[i, 0] = v.shape[0]
            sums[i, 1] = v.sum(0)
            sums[i, 2] = (v * v).sum(0)
    sums = processes.all_reduce_sum(sums).cpu()
    out: dict[str, float] = {}
    for i, name in enumerate(names):
        for j, s in enumerate(steps):
            count, total, squares = (float(x) for x in sums[i, :, j])
            mean = total / count
            var = max(squares - count * mean * mean, 0.0) / (count - 1) if count > 1 else float("nan")
            out[f"eval_{name}@{s}"] = mean
            out[f"eval_{name}@{s}_ci95"] = 1.96 * math.sqrt(var / count) if count > 1 else float("nan")
    return out
