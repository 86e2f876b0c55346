"""The meta-gradient of a whole meta-batch of tasks in one vectorised call (``torch.func.vmap`` over tasks).

For small models, a meta-batch of tasks adapted one after another in a Python
loop spends most of its time in per-operator overhead. Here the inner loop of
one task is written with ``torch.func`` and ``vmap`` runs it for all tasks at
once: every operator is issued once per meta-batch, on tensors with a leading
task dimension.

Per task, step ``i`` is the engine's own inner step
(:func:`memmaml.engine.inner_step`, the one function every engine runs), with
the gradient taken by ``torch.func.grad`` (:func:`memmaml.engine.func_gradient`)::

    grads = torch.func.grad(loss_function)(params, support)      # at model(params)
    updates, opt_state = optimizer.update(grads, opt_state, params, hyperparams)
    params = clip(params + updates)                               # with max_grad_grad_norm

and the meta-loss is ``loss_function(model at adapted params, query)``. The
optimizers' ``init`` and ``update`` are plain tensor arithmetic over dicts, so
they run unchanged under ``vmap``. :func:`batched_meta_gradient` returns the
meta-gradient of the mean query loss (and can accumulate it into ``.grad``
like ``backward()``), equal to that of :class:`memmaml.NaiveMAML` run task by
task (checked in float64 in ``tests/test_batched.py``). Held-out evaluation
under ``vmap`` is :func:`memmaml.batched_evaluate` (:mod:`._evaluation`),
built on this module's per-task inner loop (:class:`Adapter`).

NOTE [ Why not the engine under vmap ]
    The engine computes inner gradients with ``torch.autograd.grad(...,
    create_graph=True)``, which ``vmap`` does not support. ``torch.func.grad``
    is the transform that composes with ``vmap``.

NOTE [ The meta-gradient stays inside torch.func ]
    The tempting design returns the vmapped query losses and lets ordinary
    autograd differentiate them (``losses.mean().backward()``) through the
    inner ``torch.func.grad``. With torch 2.14 that gives *wrong* second-order
    meta-gradients for models with ``BatchNorm`` (batch statistics),
    ``LayerNorm`` or ``InstanceNorm``: relative errors of 0.7% to 4% on small
    float64 examples, while Linear, Conv2d, max-pooling and GroupNorm models
    are exact. The same computation written as ``vmap(grad(task_loss))`` --
    the outer derivative also taken by ``torch.func`` -- matches the per-task
    loop to rounding for all of them. So the meta-gradient here is
    ``vmap(grad(task_query_loss))`` over tasks, averaged; nothing flows through
    ordinary autograd. ``tests/test_batched.py`` checks BatchNorm, LayerNorm
    and InstanceNorm models against the loop.

Costs
    Every task of a chunk keeps its whole inner-loop graph (memory:
    ``chunk_size`` x ``num_steps`` x one step's graph, plus one gradient per
    task), so this path suits small models and short inner loops; use the
    loop with a checkpoint schedule for long ones.

Limits
    * No BatchNorm running statistics in train mode: their in-place update
      cannot be batched over tasks (:func:`check_vmappable` raises). Use
      ``track_running_stats=False`` (batch statistics, as in the original MAML
      code), GroupNorm/LayerNorm, or eval mode.
    * Random operators (dropout) need ``randomness="different"`` (each task
      its own random numbers) or ``"same"``; the default ``"error"`` refuses
      them, as ``vmap`` does.
    * Tensors captured by ``loss_function``'s closure are shared by all tasks
      and receive no meta-gradient.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import grad_and_value, vmap
from torch.utils import _pytree as pytree

from .._checks import int_at_least, positive_number
from ..engine import AdaptedModule, func_gradient, inner_step, select_parameters
from ..optim import InnerOptimizer, at_step, learnable_tensors
from ..tasks import Task

__all__ = ["BatchedMetaGradient", "batched_meta_gradient", "check_vmappable"]

Params = dict[str, Tensor]


class BatchedMetaGradient(NamedTuple):
    """What :func:`batched_meta_gradient` returns.

    Attributes:
        wrt: the tensors differentiated: the model's parameters that require
            grad (in ``named_parameters()`` order), then the inner optimizer's
            tensor hyperparameters that require grad.
        grads: the meta-gradient of the mean query loss over the tasks, one
            tensor per entry of ``wrt`` (what ``query_losses.mean().backward()``
            would accumulate into their ``.grad``).
        query_losses: ``(num_tasks,)`` query loss of each adapted task (detached).
        support_losses: ``(num_tasks, num_steps)`` support loss before each
            inner step (detached).
    """

    wrt: list[Tensor]
    grads: list[Tensor]
    query_losses: Tensor
    support_losses: Tensor


def check_vmappable(model: nn.Module) -> None:
    """Raise ``ValueError`` if ``model`` cannot be adapted under ``vmap``.

    A BatchNorm layer that tracks running statistics and is in train mode
    updates them in place on every forward pass, which ``vmap`` over tasks
    cannot express.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats and module.training:
            raise ValueError(
                f"module {name or type(module).__name__!r} ({type(module).__name__}) updates running statistics "
                "in train mode, which cannot be vectorised over tasks; build it with track_running_stats=False "
                "(batch statistics, as in the original MAML), use GroupNorm/LayerNorm, put it in eval mode, "
                "or adapt tasks one by one (vectorize=False)"
            )


def check_tasks(tasks: Any) -> Task:
    """``tasks`` if it is a :class:`~memmaml.tasks.Task` whose tensors share one leading (task) dimension."""
    if not isinstance(tasks, Task):
        raise TypeError(f"tasks must be a memmaml.tasks.Task with a leading task dimension, got {type(tasks).__name__}")
    sizes = {t.shape[0] if t.dim() else None for t in (*tasks.support, *tasks.query)}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every tensor of tasks must have the same leading (task) dimension, got sizes {sizes}")
    return tasks


class Adapter:
    """One task's inner loop for ``torch.func``: the engine's :func:`~memmaml.engine.inner_step`, with the
    gradient taken by ``torch.func.grad`` so that it composes with ``vmap``."""

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer,
        hyperparams: Mapping[str, Any],
        first_order: bool,
        static: Params | None = None,
        max_grad_grad_norm: float | None = None,
    ) -> None:
        self.model = model
        self.static = dict(static or {})  # parameters read but not adapted
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.hyperparams = hyperparams
        self.gradient = functools.partial(func_gradient, first_order=first_order)
        self.max_norm = max_grad_grad_norm

    def loss(self, params: Params, batch: Any) -> Tensor:
        loss = self.loss_function(AdaptedModule(self.model, {**self.static, **params}), batch)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise ValueError("loss_function must return a 0-d tensor per task")
        return loss

    def step(self, params: Params, opt_state: Any, batch: Any, index: int = 0) -> tuple[Params, Any, Tensor]:
        """Inner step ``index`` on ``batch``: ``(new params, new opt_state, loss before the step)``."""
        return inner_step(
            lambda adapted: self.loss(adapted, batch),
            params,
            opt_state,
            self.optimizer,
            at_step(self.hyperparams, index),
            gradient=self.gradient,
            max_norm=self.max_norm,
        )


def _substitute(tree: Any, originals: Sequence[Tensor], replacements: Sequence[Tensor]) -> Any:
    index = {id(t): i for i, t in enumerate(originals)}
    leaves, spec = pytree.tree_flatten(tree)
    leaves = [
        replacements[index[id(leaf)]] if isinstance(leaf, Tensor) and id(leaf) in index else leaf for leaf in leaves
    ]
    return pytree.tree_unflatten(leaves, spec)


def batched_meta_gradient(
    model: nn.Module,
    loss_function: Callable[..., Tensor],
    tasks: Task,
    optimizer: InnerOptimizer,
    *,
    num_steps: int,
    params: Mapping[str, Tensor] | None = None,
    opt_kwargs: Mapping[str, Any] | None = None,
    first_order: bool = False,
    max_grad_grad_norm: float | None = None,
    accumulate: bool = False,
    chunk_size: int | None = None,
    randomness: str = "error",
) -> BatchedMetaGradient:
    """The meta-gradient of the mean query loss over ``tasks``, every task adapted at once under ``vmap``.

    Task ``t`` starts from ``params``, takes ``num_steps`` steps of
    ``optimizer`` on ``tasks.support[.][t]`` (the same support batch at every
    step) and is scored by ``loss_function`` on ``tasks.query[.][t]``. The
    meta-gradient is computed by ``torch.func.grad`` of each task's query loss
    (second order unless ``first_order``), vectorised over tasks, then
    averaged; see NOTE [ The meta-gradient stays inside torch.func ].

    Differentiated with respect to every model parameter that requires grad
    (adapted or not) and every tensor that requires grad in the optimizer's
    hyperparameters or ``opt_kwargs``; not with respect to tensors captured by
    ``loss_function``'s closure. Memory: the graph of every step of every task
    of a chunk (``chunk_size`` tasks at a time; all at once by default), plus
    one gradient per task, all stacked before the average.

    Args:
        model: the module; called functionally, never copied. No BatchNorm
            running statistics in train mode (see :func:`check_vmappable`).
        loss_function: ``loss_function(model, batch) -> 0-d tensor`` for one task's batch.
        tasks: a :class:`~memmaml.tasks.Task` whose tensors have a leading task dimension.
        optimizer: an in-graph optimizer (:class:`memmaml.SGD`, :class:`memmaml.Adam`, ...).
        num_steps: inner steps per task (at least 1).
        params: the parameters to adapt, keyed like ``model.named_parameters()``
            (default: every parameter that requires grad).
        opt_kwargs: hyperparameter overrides.
        first_order: treat the inner gradients as constants (first-order MAML).
        max_grad_grad_norm: clip, at every inner step, the cotangent of that
            step's new parameters to this global L2 norm, each task by its own
            norm -- the engine's clip (NOTE [ Clipping through the unroll ] in
            ``memmaml.engine._step``), so the meta-gradient equals the
            engine's task by task.
        accumulate: also add each gradient to ``.grad`` of its tensor, as
            ``backward()`` would.
        chunk_size: vectorise over at most this many tasks at a time
            (``torch.func.vmap``'s ``chunk_size``).
        randomness: ``torch.func.vmap``'s ``randomness`` (``"error"``,
            ``"different"`` or ``"same"``).

    Returns:
        :class:`BatchedMetaGradient` ``(wrt, grads, query_losses, support_losses)``.

    Example:
        >>> import torch, memmaml
        >>> from memmaml.tasks import Sinusoid, mse_loss
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
        >>> tasks = Sinusoid(num_shots=5).sample_batch([0, 1, 2])
        >>> out = batched_meta_gradient(model, mse_loss, tasks, memmaml.SGD(0.01), num_steps=2, accumulate=True)
        >>> out.query_losses.shape, out.support_losses.shape
        (torch.Size([3]), torch.Size([3, 2]))
        >>> model[0].weight.grad.shape  # the meta-gradient, as after backward()
        torch.Size([8, 1])
    """
    int_at_least("num_steps", num_steps, 1)
    if max_grad_grad_norm is not None:
        max_grad_grad_norm = positive_number("max_grad_grad_norm", max_grad_grad_norm)
    check_vmappable(model)
    tasks = check_tasks(tasks)
    if not isinstance(optimizer, InnerOptimizer):
        raise TypeError(f"optimizer must be a memmaml in-graph optimizer, got {type(optimizer).__name__}")
    adapted_names = list(select_parameters(model, params))
    named = dict(model.named_parameters())
    trainable = {name: p for name, p in named.items() if p.requires_grad or name in adapted_names}
    hyperparams = optimizer.resolve(opt_kwargs)
    learnable = learnable_tensors(hyperparams)

    num_tasks = tasks.num_tasks

    def task_loss(meta: tuple[Params, list[Tensor]], support: Any, query: Any) -> tuple[Tensor, Any]:
        """The task's share of the mean query loss (and, as aux, its query and support losses)."""
        model_params, hyper_leaves = meta
        static = {k: v for k, v in model_params.items() if k not in adapted_names}
        adapter = Adapter(
            model,
            loss_function,
            optimizer,
            _substitute(hyperparams, learnable, hyper_leaves),
            bool(first_order),
            static,
            max_grad_grad_norm,
        )
        current = {k: model_params[k] for k in adapted_names}
        opt_state = optimizer.init({k: v.detach() for k, v in current.items()})
        losses = []
        for index in range(num_steps):
            current, opt_state, loss = adapter.step(current, opt_state, support, index)
            losses.append(loss)
        query_loss = adapter.loss(current, query)
        # differentiate loss / n and sum over tasks, rather than average the gradients of the losses: the same
        # meta-gradient, but the cotangents (which max_grad_grad_norm clips) are those of the loop over tasks
        return query_loss / num_tasks, (query_loss.detach(), torch.stack(losses))

    meta = ({k: v.detach() for k, v in trainable.items()}, [t.detach() for t in learnable])
    per_task = grad_and_value(task_loss, has_aux=True)
    (grads, hyper_grads), (_, (query_losses, support_losses)) = vmap(
        per_task, in_dims=(None, 0, 0), chunk_size=chunk_size, randomness=randomness
    )(meta, tasks.support, tasks.query)
    wrt = [p for name, p in trainable.items() if p.requires_grad] + learnable
    flat = [grads[name].sum(0) for name, p in trainable.items() if p.requires_grad] + [g.sum(0) for g in hyper_grads]
    if accumulate:
        for tensor, g in zip(wrt, flat):
            tensor.grad = g.clone() if tensor.grad is None else tensor.grad + g
    return BatchedMetaGradient(wrt, flat, query_losses.detach(), support_losses.detach())
