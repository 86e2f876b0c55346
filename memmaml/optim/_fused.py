"""Adam's and RMSProp's update as single autograd Functions with closed-form vector-Jacobian products.

NOTE [ Lean adaptive updates ]
    Written as a chain of elementwise operations, one Adam or RMSProp step
    keeps intermediates in the autograd graph (squares, square roots,
    quotients, each saved for its own backward): measured with the tracker on
    an MLP, 5.1 weight-sized tensors per step more than SGD. In a MAML unroll
    the graph of every replayed step is alive at once, so for ResNet-18 that is
    ~200 MB per step on top of its activations. The Functions here compute the
    new state and the update in their forward pass without recording anything,
    save only their inputs (the gradient, the moments and the hyperparameters:
    tensors that exist anyway), and recompute the few intermediates their
    backward needs. What a step adds is then the new state and the gradient
    its backward reads: Adam 3.0 weight-sized tensors per step above SGD,
    RMSProp 2.0, plus one each for centring and momentum
    (``tests/test_fused.py``).

    The backward passes are written with differentiable torch operations on
    the saved inputs, so a second derivative through them is exact too
    (``gradgradcheck`` in the tests), and ``generate_vmap_rule`` lets
    ``torch.func.vmap`` batch them (the vectorised meta-training path).
    Gradients reach every floating-point input that requires grad: the
    gradient and moments, and tensor hyperparameters of any broadcastable
    shape (scalar, per parameter, per element), summed to their shapes.
    Forward values are computed in the same order as the textbook formulas
    (``torch.optim``), so trajectories are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["adam_update", "rmsprop_update", "safe_sqrt"]


def safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` for ``x > 0`` and 0 elsewhere, whose derivative is 0 where ``x <= 0`` instead of inf.

    See NOTE [ Square roots at zero ] in :mod:`memmaml.optim._optimizers`.
    """
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _dsqrt(x: Tensor, root: Tensor) -> Tensor:
    """The derivative of :func:`safe_sqrt` at ``x`` given ``root = safe_sqrt(x)``."""
    positive = x > 0
    return torch.where(positive, 0.5 / torch.where(positive, root, torch.ones_like(root)), torch.zeros_like(root))


def _reduce(grad: Tensor | None, like: Any, needed: bool) -> Tensor | None:
    """``grad`` summed to the shape of the input ``like`` (``None`` for a number or an input without grad)."""
    if not needed or grad is None or not isinstance(like, Tensor):
        return None
    return grad.sum_to_size(like.shape) if grad.shape != like.shape else grad


def _save(ctx: Any, inputs: tuple) -> None:
    """Save the tensor inputs for backward and remember where the numbers go."""
    ctx.save_for_backward(*(x if isinstance(x, Tensor) else None for x in inputs))
    ctx.numbers = tuple(None if isinstance(x, Tensor) else x for x in inputs)


def _saved(ctx: Any) -> list[Any]:
    return [t if n is None else n for t, n in zip(ctx.saved_tensors, ctx.numbers)]


# ----------------------------------------------------------------------------- Adam
def _adam_forward(g, m, v, t, lr, beta1, beta2, eps, eps_root):
    m_new = beta1 * m + (1 - beta1) * g
    v_new = beta2 * v + (1 - beta2) * g * g
    bc1 = 1 - beta1**t
    bc2 = 1 - beta2**t
    shifted = v_new + eps_root if _nonzero(eps_root) else v_new
    root = safe_sqrt(shifted)
    denom = root / torch.sqrt(bc2) + eps
    update = -(lr / bc1) * m_new / denom
    return update, m_new, v_new, (bc1, bc2, shifted, root, denom)


class _AdamUpdate(torch.autograd.Function):
    """``(g, m, v, t, lr, beta1, beta2, eps, eps_root) -> (update, m', v')``; see :func:`adam_update`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs: Any) -> tuple[Tensor, Tensor, Tensor]:
        update, m_new, v_new, _ = _adam_forward(*inputs)
        return update, m_new, v_new

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        _save(ctx, inputs)

    @staticmethod
    def backward(ctx: Any, d_update: Tensor, d_m: Tensor, d_v: Tensor) -> tuple[Tensor | None, ...]:
        g, m, v, t, lr, beta1, beta2, _eps, _eps_root = inputs = _saved(ctx)
        need = ctx.needs_input_grad
        _, m_new, _, (bc1, bc2, shifted, root, denom) = _adam_forward(*inputs)
        sqrt_bc2 = torch.sqrt(bc2)
        scale = lr / bc1
        d_denom = d_update * scale * m_new / (denom * denom)
        d_m_new = d_m - d_update * scale / denom
        d_shifted = d_denom / sqrt_bc2 * _dsqrt(shifted, root)
        d_v_new = d_v + d_shifted
        d_scale = -d_update * m_new / denom
        d_bc1 = -d_scale * lr / (bc1 * bc1)
        d_bc2 = -d_denom * root / (sqrt_bc2 * sqrt_bc2) / (2 * sqrt_bc2)
        grads = [
            d_m_new * (1 - beta1) + d_v_new * (2 * (1 - beta2)) * g,  # g
            d_m_new * beta1,  # m
            d_v_new * beta2,  # v
            (d_bc1 * _dpow_exponent(beta1, t) + d_bc2 * _dpow_exponent(beta2, t)) if need[3] else None,  # t
            d_scale / bc1,  # lr
            (-d_bc1 * t * beta1 ** (t - 1) + d_m_new * (m - g)) if need[5] else None,  # beta1
            (-d_bc2 * t * beta2 ** (t - 1) + d_v_new * (v - g * g)) if need[6] else None,  # beta2
            d_denom,  # eps
            d_shifted,  # eps_root
        ]
        return tuple(_reduce(grad, x, n) for grad, x, n in zip(grads, inputs, need))


def adam_update(
    g: Tensor, m: Tensor, v: Tensor, t: Tensor, lr: Any, beta1: Any, beta2: Any, eps: Any, eps_root: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam step for one parameter: ``(update, m', v')``, differentiable in every tensor input.

    ``g`` is the gradient (weight decay included), ``m`` and ``v`` the moments,
    ``t`` the step number (``count + 1``, a 0-d tensor); the hyperparameters are
    numbers or tensors broadcastable to ``g``. ``update = -(lr / (1 - beta1**t))
    * m' / (safe_sqrt(v' + eps_root) / sqrt(1 - beta2**t) + eps)``. See NOTE
    [ Lean adaptive updates ].
    """
    return _AdamUpdate.apply(g, m, v, t, lr, beta1, beta2, eps, eps_root)


def _dpow_exponent(base: Any, exponent: Tensor) -> Tensor:
    """``d(1 - base**exponent) / d exponent = -base**exponent * log(base)``, 0 where ``base == 0``."""
    base = torch.as_tensor(base, dtype=exponent.dtype, device=exponent.device)
    positive = base > 0
    log = torch.log(torch.where(positive, base, torch.ones_like(base)))
    return torch.where(positive, -(base**exponent) * log, torch.zeros_like(log))


def _nonzero(value: Any) -> bool:
    return isinstance(value, Tensor) or value != 0


# -------------------------------------------------------------------------- RMSProp
def _rmsprop_forward(g, square_avg, grad_avg, buf, lr, alpha, eps, momentum, eps_root):
    v_new = alpha * square_avg + (1 - alpha) * g * g
    a_new = None if grad_avg is None else alpha * grad_avg + (1 - alpha) * g
    var = v_new if a_new is None else v_new - a_new * a_new
    shifted = var + eps_root if _nonzero(eps_root) else var
    root = safe_sqrt(shifted)
    avg = root + eps
    if buf is None:
        return -lr * g / avg, v_new, a_new, None, (shifted, root, avg)
    b_new = momentum * buf + g / avg
    return -lr * b_new, v_new, a_new, b_new, (shifted, root, avg)


class _RMSPropUpdate(torch.autograd.Function):
    """``(g, square_avg, grad_avg, buf, lr, alpha, eps, momentum, eps_root) -> (update, v', [a'], [b'])``."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*inputs: Any) -> tuple[Tensor, ...]:
        update, v_new, a_new, b_new, _ = _rmsprop_forward(*inputs)
        return tuple(x for x in (update, v_new, a_new, b_new) if x is not None)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: Any) -> None:
        _save(ctx, inputs)

    @staticmethod
    def backward(ctx: Any, d_update: Tensor, d_v: Tensor, *rest: Tensor) -> tuple[Tensor | None, ...]:
        g, square_avg, grad_avg, buf, lr, alpha, _eps, momentum, _eps_root = inputs = _saved(ctx)
        need = ctx.needs_input_grad
        _, _, a_new, b_new, (shifted, root, avg) = _rmsprop_forward(*inputs)
        rest = list(rest)
        d_a = rest.pop(0) if grad_avg is not None else None
        d_b = rest.pop(0) if buf is not None else None
        if buf is None:  # update = -lr * g / avg
            d_g = -d_update * lr / avg
            d_lr = -d_update * g / avg
            d_avg = d_update * lr * g / (avg * avg)
            d_momentum = d_buf = None
        else:  # b' = momentum * buf + g / avg; update = -lr * b'
            d_b_new = d_b - d_update * lr
            d_lr = -d_update * b_new
            d_momentum, d_buf = d_b_new * buf, d_b_new * momentum
            d_g = d_b_new / avg
            d_avg = -d_b_new * g / (avg * avg)
        d_shifted = d_avg * _dsqrt(shifted, root)
        d_v_new = d_v + d_shifted
        d_alpha = d_v_new * (square_avg - g * g)
        d_g = d_g + d_v_new * (2 * (1 - alpha)) * g
        d_grad_avg = None
        if grad_avg is not None:  # var = v' - a'**2
            d_a_new = d_a - 2 * d_shifted * a_new
            d_alpha = d_alpha + d_a_new * (grad_avg - g)
            d_g = d_g + d_a_new * (1 - alpha)
            d_grad_avg = d_a_new * alpha
        grads = [d_g, d_v_new * alpha, d_grad_avg, d_buf, d_lr, d_alpha, d_avg, d_momentum, d_shifted]
        return tuple(_reduce(grad, x, n) for grad, x, n in zip(grads, inputs, need))


def rmsprop_update(
    g: Tensor,
    square_avg: Tensor,
    grad_avg: Tensor | None,
    buf: Tensor | None,
    lr: Any,
    alpha: Any,
    eps: Any,
    momentum: Any,
    eps_root: Any,
) -> tuple[Tensor, ...]:
    """One RMSProp step for one parameter: ``(update, v', [a' if centred], [b' with momentum])``.

    ``grad_avg`` is ``None`` unless centred, ``buf`` ``None`` without momentum.
    ``avg = safe_sqrt(v' [- a'**2] + eps_root) + eps``; ``update = -lr * g / avg``,
    or with momentum ``b' = momentum * buf + g / avg`` and ``update = -lr * b'``.
    See NOTE [ Lean adaptive updates ].
    """
    return _RMSPropUpdate.apply(g, square_avg, grad_avg, buf, lr, alpha, eps, momentum, eps_root)
