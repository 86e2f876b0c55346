"""One inner step, the same for every engine and for the vectorised path: loss, gradient, update, clipping.

:func:`inner_step` is the step, written once: the loss at the parameters, its
gradient, the optimizer's update, the addition and, when the step's graph is
recorded, the clip of the cotangent. What differs between its callers is only
how the gradient is taken: :func:`autograd_gradient` for the engines
(``torch.autograd.grad``, second order with ``create_graph``), and
:func:`func_gradient` for the vectorised path (``torch.func.grad``, which
composes with ``vmap``; see NOTE [ Why not the engine under vmap ] in
:mod:`memmaml.training._batched`). :class:`InnerStep` binds the step to one
unroll's model, loss, optimizer and batches.

NOTE [ Clipping through the unroll ]
    With ``max_grad_grad_norm`` each step's new parameters pass through
    ``_ClipCotangent``: an identity in the forward pass whose backward scales the
    cotangent of all adapted parameters jointly to at most that global L2 norm
    (scale ``min(1, max_norm / (norm + 1e-6))``, computed on the device, no
    host sync). The naive and the checkpointed engine apply it at the same
    places, so their meta-gradients agree.

    Mixed precision changes the arithmetic, never which function is clipped:

    * the norm is accumulated in float32 at least (per tensor, then over
      tensors, on the first tensor's device), so a float16 cotangent whose
      norm exceeds 65,504 while every entry is small does not become ``inf``
      -- which would make the scale 0 and the meta-gradient exactly zero, and
      finite, so that no GradScaler would notice; the cotangent is multiplied
      by the clip factor in float32 too (a factor below 6e-8 is 0 in float16);
    * with ``grad_scaler`` (a ``torch.amp.GradScaler``) the cotangents arrive
      multiplied by its current scale (``scaler.scale(loss).backward()``); the
      norm is divided by that scale -- the scaler's own tensor, read on the
      device when the backward pass runs, without a host sync -- so the clip
      acts on the unscaled cotangent, as ``scaler.unscale_`` before
      ``clip_grad_norm_`` does in torch's recipe. A power-of-two scale makes
      the scaled run's meta-gradient, once unscaled, equal the unscaled run's.
"""

from __future__ import annotations

import contextlib
import functools
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ..optim import InnerOptimizer, at_step, per_step_length
from ._adapted import AdaptedModule, Places, has_tied_weights, tensor_places

__all__ = [
    "Extras",
    "Gradient",
    "InnerStep",
    "autograd_gradient",
    "check_grad_scaler",
    "clip_cotangents",
    "func_gradient",
    "global_norm",
    "inner_step",
    "loss_scale",
    "progress_bar",
    "tensors_in",
]

Params = dict[str, Tensor]
#: everything a step reads besides its state: (hyperparameters, static parameters, batches, loss_kwargs)
Extras = tuple[dict[str, Any], Params, list[Any], dict[str, Any]]


def global_norm(tensors: Sequence[Tensor]) -> Tensor:
    """The joint L2 norm of ``tensors``, accumulated in float32 at least, on the first tensor's device."""
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors), torch.float32)
    device = tensors[0].device
    norms = [torch.linalg.vector_norm(t, dtype=dtype).to(device) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms))


def loss_scale(grad_scaler: Any, device: torch.device) -> Tensor | None:
    """The current scale of a ``torch.amp.GradScaler`` as a tensor on ``device`` (no host sync), or ``None``
    when it scales nothing (disabled, or ``scale()`` not yet called)."""
    if grad_scaler is None or not grad_scaler.is_enabled():
        return None
    scale = grad_scaler._get_scale_async()  # the scaler's own tensor: get_scale() would sync with the host
    return None if scale is None else scale.to(device, non_blocking=True)


def check_grad_scaler(grad_scaler: Any) -> Any:
    """``grad_scaler`` if it is ``None`` or a ``torch.amp.GradScaler``; ``TypeError`` naming it otherwise."""
    if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
        raise TypeError(
            f"grad_scaler must be a torch.amp.GradScaler (the one whose scale() multiplies the meta-loss), "
            f"got {type(grad_scaler).__name__}"
        )
    return grad_scaler


class _ClipCotangent(torch.autograd.Function):
    """Identity forward; backward clips the joint L2 norm of the (unscaled) cotangents.

    ``generate_vmap_rule``: under ``torch.func.vmap`` over tasks each task's
    cotangent is clipped by its own norm, as the loop over tasks does.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(max_norm: float, grad_scaler: Any, *tensors: Tensor) -> tuple[Tensor, ...]:
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        ctx.max_norm, ctx.grad_scaler = inputs[0], inputs[1]

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Any, ...]:
        norm = global_norm(grads)
        scale = loss_scale(ctx.grad_scaler, norm.device)
        if scale is not None:
            norm = norm / scale
        factor = torch.clamp(ctx.max_norm / (norm + 1e-6), max=1.0)
        # multiply in float32 at least: a factor rounded to float16 first underflows to 0 below 6e-8
        return (None, None, *(_scaled(g, factor) for g in grads))


def _scaled(grad: Tensor, factor: Tensor) -> Tensor:
    """``grad * factor`` computed in ``factor``'s dtype (float32 at least), returned in ``grad``'s."""
    if grad.dtype == factor.dtype:
        return grad * factor.to(grad.device)
    return (grad.to(factor.dtype) * factor.to(grad.device)).to(grad.dtype)


def clip_cotangents(params: Params, max_norm: float | None, grad_scaler: Any = None) -> Params:
    """``params`` unchanged, but their joint cotangent clipped to ``max_norm`` in the backward pass
    (NOTE [ Clipping through the unroll ]); ``params`` itself when ``max_norm`` is ``None``."""
    if max_norm is None:
        return params
    clipped = _ClipCotangent.apply(max_norm, grad_scaler, *params.values())
    return dict(zip(params, clipped))


#: how a step differentiates its loss: ``gradient(loss_at, params) -> (loss, grads)``
Gradient = Callable[[Callable[[Params], Tensor], Params], tuple[Tensor, Params]]


def inner_step(
    loss_at: Callable[[Params], Tensor],
    params: Params,
    opt_state: Any,
    optimizer: InnerOptimizer,
    hyperparams: Mapping[str, Any],
    *,
    gradient: Gradient,
    record: bool = True,
    max_norm: float | None = None,
    grad_scaler: Any = None,
) -> tuple[Params, Any, Tensor]:
    """One inner step: ``(new params, new opt_state, loss before the step)``.

    ``loss_at(params)`` is the inner loss, ``gradient`` how it is
    differentiated (:func:`autograd_gradient` or :func:`func_gradient`), and
    ``optimizer.update`` turns the gradient into an update that is added to
    ``params``. With ``record`` the update is part of the graph (differentiable
    in ``params``, ``opt_state`` and ``hyperparams``) and the new parameters pass
    through :func:`clip_cotangents`; without, it runs under ``no_grad``. The loss
    returned is a copy with a storage of its own (differentiable when ``loss_at``'s
    is and ``record``), so keeping it keeps 0-d worth of memory, never the batch.
    """
    loss, grads = gradient(loss_at, params)
    with torch.enable_grad() if record else torch.no_grad():
        # a storage of its own: a 0-d loss may share a batch-sized storage (F.mse_loss's does), which every
        # engine's loss history, one loss per step, would keep alive (a batch per step; 8 bytes with the copy)
        loss = loss.clone()
        updates, opt_state = optimizer.update(grads, opt_state, params, hyperparams)
        # one addition per tensor: torch._foreach_add would save a copy of the weights per step in the graph
        params = {name: params[name] + updates[name] for name in params}
        if record:
            params = clip_cotangents(params, max_norm, grad_scaler)
    return params, opt_state, loss


def autograd_gradient(
    loss_at: Callable[[Params], Tensor],
    params: Params,
    *,
    create_graph: bool,
    on_unused: Callable[[str], None] | None = None,
) -> tuple[Tensor, Params]:
    """The loss at ``params`` and its gradient by ``torch.autograd.grad`` (the engines' way).

    With ``create_graph`` the gradient is differentiable (second order);
    otherwise it is computed at detached copies and returned detached, as is
    the loss. A parameter the loss does not use gets a zero gradient after
    ``on_unused(name)`` is called (it may raise instead).
    """
    if not create_graph:
        params = {name: p.detach().requires_grad_(True) for name, p in params.items()}
    with torch.enable_grad():
        loss = loss_at(params)
        raw = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
    grads = {}
    for (name, param), grad in zip(params.items(), raw):
        if grad is None:
            if on_unused is not None:
                on_unused(name)
            grad = torch.zeros_like(param)
        grads[name] = grad
    return (loss if create_graph else loss.detach()), grads


def func_gradient(
    loss_at: Callable[[Params], Tensor], params: Params, *, first_order: bool = False
) -> tuple[Tensor, Params]:
    """The loss at ``params`` (detached) and its gradient by ``torch.func.grad`` (composes with ``vmap``).

    With ``first_order`` the gradient is taken at detached parameters, so no
    second-order graph is recorded at all.
    """
    if first_order:
        params = {name: p.detach() for name, p in params.items()}
    grads, loss = torch.func.grad_and_value(loss_at)(params)
    return loss.detach(), grads


def tensors_in(tree: Any) -> list[Tensor]:
    """The tensors among the leaves of ``tree``."""
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, Tensor)]


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar over ``total`` steps, or a context yielding ``None`` when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


def _children(spec: Any) -> list[Any]:
    children = getattr(spec, "children", None)  # torch 2.14; children_specs before (deprecated there)
    return list(children()) if callable(children) else list(spec.children_specs)


def _dict_of_leaves(spec: Any) -> list[str] | None:
    """The keys of a spec that is a plain dict of leaves, else ``None``."""
    if spec.type is not dict or not all(child.is_leaf() for child in _children(spec)):
        return None
    return list(spec.context)


class _StateLayout:
    """Flattens and unflattens a state ``(params, opt_state)`` into the leaves ``torch.utils._pytree`` would give,
    without pytree's walk of the structure on every call (about 40 us a step on a CPU: a twentieth of a small
    MLP's step, and every step runs it twice).

    Only for the states the optimizers here keep: ``params`` a dict and ``opt_state`` a NamedTuple whose fields
    are dicts or single leaves, every leaf a tensor. :meth:`of` returns ``None`` for any other structure, and
    :meth:`flatten` returns ``None`` for a state that does not have this one's structure: the caller then uses
    pytree, which also says what changed.
    """

    def __init__(self, names: list[str], state_type: type, fields: list[list[str] | None]) -> None:
        self.names, self.state_type, self.fields = names, state_type, fields

    @classmethod
    def of(cls, spec: Any) -> _StateLayout | None:
        """The layout of ``spec`` (a ``TreeSpec`` of ``(params, opt_state)``), read from the spec alone (nothing
        of the user's is rebuilt), or ``None`` when it is not of the supported kind."""
        if spec.type is not tuple or len(_children(spec)) != 2:
            return None
        params, state = _children(spec)
        names = _dict_of_leaves(params)
        if names is None or state.type is not namedtuple:
            return None
        fields: list[list[str] | None] = []
        for field in _children(state):
            if field.is_leaf():
                fields.append(None)
                continue
            keys = _dict_of_leaves(field)
            if keys is None:
                return None
            fields.append(keys)
        return cls(names, state.context, fields)

    def unflatten(self, leaves: Sequence[Any]) -> tuple[Params, Any]:
        it = iter(leaves)
        params = {name: next(it) for name in self.names}
        fields = [next(it) if names is None else {name: next(it) for name in names} for names in self.fields]
        return params, self.state_type(*fields)

    def flatten(self, params: Any, state: Any) -> list[Any] | None:
        if type(params) is not dict or type(state) is not self.state_type or list(params) != self.names:
            return None
        leaves = list(params.values())
        for value, names in zip(state, self.fields):
            if names is None:
                leaves.append(value)
            elif type(value) is not dict or list(value) != names:
                return None
            else:
                leaves.extend(value.values())
        if not all(isinstance(leaf, Tensor) and type(leaf) not in pytree.SUPPORTED_NODES for leaf in leaves):
            return None
        return leaves


class InnerStep:
    """``step(i, state) -> (state after step i, loss before it)``, with or without a graph.

    Args:
        model: the module, called functionally at the adapted parameters.
        loss_function: ``loss_function(model, batch, **loss_kwargs) -> 0-d tensor``.
        optimizer: the in-graph optimizer.
        extras: what the steps read besides the state (see :data:`Extras`).
        first_order: inner gradients are constants.
        max_grad_grad_norm: clip the cotangent of each step's new parameters.
        grad_scaler: the ``torch.amp.GradScaler`` that scales the meta-loss, so the
            clip compares the unscaled cotangent (NOTE [ Clipping through the unroll ]).
        allow_unused: an adapted parameter the loss does not use gets a zero gradient.
        check_finite: raise at the first non-finite loss (one host sync per step).
    """

    def __init__(
        self,
        model: nn.Module,
        loss_function: Callable[..., Tensor],
        optimizer: InnerOptimizer,
        extras: Extras,
        *,
        first_order: bool,
        max_grad_grad_norm: float | None,
        allow_unused: bool,
        check_finite: bool,
        grad_scaler: Any = None,
        first_step: int = 0,
    ) -> None:
        self.model = model
        self.first_step = first_step  # the index, in the whole unroll, of this step's batches[0]
        self.tie_weights = has_tied_weights(model)  # checked once: functional_call would look on every step
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.extras = extras
        self.num_steps = len(extras[2])
        covered = per_step_length(extras[0])
        if covered is not None and covered < first_step + self.num_steps:
            raise ValueError(
                f"a PerStep hyperparameter covers {covered} inner steps, but there are "
                f"{first_step + self.num_steps} batches (one per step)"
            )
        self.first_order = first_order
        self.max_norm = max_grad_grad_norm
        self.grad_scaler = check_grad_scaler(grad_scaler)
        self.allow_unused = allow_unused
        self.check_finite = check_finite
        self._spec: Any = None  # the spec _layout was made for
        self._layout: _StateLayout | None = None
        # where the model holds the tensors a step passes, by their names (NOTE [ Swapping tensors in place of
        # functional_call ]); None for tied weights, which go through functional_call
        self._places: dict[tuple[str, ...], Places | None] = {}

    def _places_of(self, names: tuple[str, ...]) -> Places | None:
        if self.tie_weights:
            return None
        if names not in self._places:
            self._places[names] = tensor_places(self.model, names)
        return self._places[names]

    def forget_places(self) -> None:
        """Resolve the places again on the next call: the module may have changed since they were resolved."""
        self._places.clear()

    @staticmethod
    def _check_loss(step: int, loss: Any) -> None:
        if not isinstance(loss, Tensor) or loss.dim() != 0 or not loss.is_floating_point():
            got = (
                f"a tensor of shape {tuple(loss.shape)} and dtype {loss.dtype}"
                if isinstance(loss, Tensor)
                else f"a {type(loss).__name__}"
            )
            raise ValueError(
                f"loss_function must return a floating-point scalar tensor; at inner step {step} it returned {got}"
            )
        if not loss.requires_grad:
            raise ValueError(
                f"the loss at inner step {step} does not depend on any adapted parameter; "
                "loss_function must compute the loss with the model it is given"
            )

    def __call__(
        self, step: int, leaves: list[Any], spec: Any, extras: Extras, buffers: Params | None, mode: str
    ) -> tuple[list[Any], Tensor]:
        """Inner step ``step`` on flattened state ``leaves``; ``mode`` is 'graph' or 'nograph'."""
        if spec is not self._spec:
            self._spec, self._layout = spec, _StateLayout.of(spec)
        layout = self._layout
        params, opt_state = pytree.tree_unflatten(leaves, spec) if layout is None else layout.unflatten(leaves)
        hyperparams, static, batches, loss_kwargs = extras
        batch, step = batches[step], step + self.first_step  # from here on, the step's index in the unroll

        def loss_at(adapted: Params) -> Tensor:
            tensors = {**static, **adapted, **(buffers or {})}
            view = AdaptedModule._at(self.model, tensors, self._places_of(tuple(tensors)), self.tie_weights)
            loss = self.loss_function(view, batch, **loss_kwargs)
            self._check_loss(step, loss)
            return loss

        def on_unused(name: str) -> None:
            if not self.allow_unused:
                raise ValueError(
                    f"adapted parameter {name!r} does not affect the loss at inner step {step}; "
                    "leave it out of get_parameters, or pass allow_unused=True to treat its gradient as zero"
                )

        create_graph = mode == "graph" and not self.first_order
        gradient = functools.partial(autograd_gradient, create_graph=create_graph, on_unused=on_unused)
        params, opt_state, loss = inner_step(
            loss_at,
            params,
            opt_state,
            self.optimizer,
            at_step(hyperparams, step),
            gradient=gradient,
            record=mode == "graph",
            max_norm=self.max_norm,
            grad_scaler=self.grad_scaler,
        )
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the loss at inner step {step} is not finite: {loss.item()}")
        new_leaves = None if layout is None else layout.flatten(params, opt_state)
        if new_leaves is None:
            new_leaves, new_spec = pytree.tree_flatten((params, opt_state))
            if new_spec != spec:
                raise TypeError(
                    f"optimizer.update changed the structure of the state at inner step {step}: "
                    f"{spec} became {new_spec}"
                )
        return new_leaves, loss
