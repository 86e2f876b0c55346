"""One inner step, the same for every engine: loss, gradient, optimizer update, clipping.

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
      finite, so that no GradScaler would notice;
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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from ._adapted import AdaptedModule, has_tied_weights
from ._inner_optimizer import InnerOptimizer, at_step, per_step_length

__all__ = ["Extras", "InnerStep", "check_grad_scaler", "global_norm", "loss_scale", "progress_bar", "tensors_in"]

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
    """Identity forward; backward clips the joint L2 norm of the (unscaled) cotangents."""

    @staticmethod
    def forward(ctx, max_norm: float, grad_scaler: Any, *tensors: Tensor) -> tuple[Tensor, ...]:
        ctx.max_norm = max_norm
        ctx.grad_scaler = grad_scaler
        return tuple(t.view_as(t) for t in tensors)

    @staticmethod
    def backward(ctx, *grads: Tensor) -> tuple[Any, ...]:
        norm = global_norm(grads)
        scale = loss_scale(ctx.grad_scaler, norm.device)
        if scale is not None:
            norm = norm / scale
        factor = torch.clamp(ctx.max_norm / (norm + 1e-6), max=1.0)
        return (None, None, *(g * factor.to(g.device, g.dtype) for g in grads))


def _clip(params: Params, max_norm: float | None, grad_scaler: Any) -> Params:
    if max_norm is None:
        return params
    clipped = _ClipCotangent.apply(max_norm, grad_scaler, *params.values())
    return dict(zip(params, clipped))


def tensors_in(tree: Any) -> list[Tensor]:
    """The tensors among the leaves of ``tree``."""
    return [leaf for leaf in pytree.tree_leaves(tree) if isinstance(leaf, Tensor)]


def progress_bar(enabled: bool, total: int, desc: str):
    """A tqdm bar over ``total`` steps, or a context yielding ``None`` when disabled."""
    if not enabled:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step", leave=False)


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
    ) -> None:
        self.model = model
        self.tie_weights = has_tied_weights(model)  # checked once: functional_call would look on every step
        self.loss_function = loss_function
        self.optimizer = optimizer
        self.extras = extras
        self.num_steps = len(extras[2])
        covered = per_step_length(extras[0])
        if covered is not None and covered < self.num_steps:
            raise ValueError(
                f"a PerStep hyperparameter covers {covered} inner steps, but there are "
                f"{self.num_steps} batches (one per step)"
            )
        self.first_order = first_order
        self.max_norm = max_grad_grad_norm
        self.grad_scaler = check_grad_scaler(grad_scaler)
        self.allow_unused = allow_unused
        self.check_finite = check_finite

    def loss_and_grads(
        self, step: int, params: Params, extras: Extras, buffers: Params | None, create_graph: bool
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
            view = AdaptedModule(self.model, {**static, **params, **(buffers or {})}, tie_weights=self.tie_weights)
            loss = self.loss_function(view, batches[step], **loss_kwargs)
            self._check_loss(step, loss)
            raw = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph, allow_unused=True)
        grads = {}
        for (name, param), grad in zip(params.items(), raw):
            if grad is None:
                if not self.allow_unused:
                    raise ValueError(
                        f"adapted parameter {name!r} does not affect the loss at inner step {step}; "
                        "leave it out of get_parameters, or pass allow_unused=True to treat its gradient as zero"
                    )
                grad = torch.zeros_like(param)
            grads[name] = grad
        if self.check_finite and not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"the loss at inner step {step} is not finite: {loss.item()}")
        return (loss if create_graph else loss.detach()), grads

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
        """One inner step on flattened state ``leaves``; ``mode`` is 'graph' or 'nograph'."""
        params, opt_state = pytree.tree_unflatten(leaves, spec)
        create_graph = mode == "graph" and not self.first_order
        loss, grads = self.loss_and_grads(step, params, extras, buffers, create_graph)
        with torch.enable_grad() if mode == "graph" else torch.no_grad():
            updates, opt_state = self.optimizer.update(grads, opt_state, params, at_step(extras[0], step))
            # one addition per tensor: torch._foreach_add would save a copy of the weights per step in the graph
            params = {name: params[name] + updates[name] for name in params}
            if mode == "graph":
                params = _clip(params, self.max_norm, self.grad_scaler)
        new_leaves, new_spec = pytree.tree_flatten((params, opt_state))
        if new_spec != spec:
            raise TypeError(
                f"optimizer.update changed the structure of the state at inner step {step}: {spec} became {new_spec}"
            )
        return new_leaves, loss
