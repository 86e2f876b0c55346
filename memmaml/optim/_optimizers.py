"""In-graph (differentiable) optimizers for the MAML inner loop.

An inner optimizer is a pair of pure functions over dicts of tensors keyed like
``model.named_parameters()``::

    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params, hyperparams)
    params = {name: params[name] + updates[name] for name in params}

Nothing is modified in place, so every update stays in the autograd graph: the
meta-gradient flows through the adapted parameters, the optimizer state and the
hyperparameters.

Hyperparameters
    Numbers, tensors (learnable when they require grad) or per-parameter dicts;
    see :mod:`memmaml.optim._inner_optimizer`.

Optimizers
    :class:`SGD` (momentum, Nesterov, weight decay), :class:`RMSProp`
    (momentum, centred), :class:`Adam`; their formulas are those of
    ``torch.optim.SGD``, ``torch.optim.RMSprop`` and ``torch.optim.Adam``, so
    trajectories agree step for step with the stateful PyTorch optimizers.
    :class:`IngraphGradientDescent` and :class:`IngraphRMSProp` keep the names
    and keywords of the predecessor package ``torch_maml``.

NOTE [ Square roots at zero ]
    RMSProp and Adam divide by ``sqrt(v) + eps``. The derivative of ``sqrt`` at
    ``v = 0`` is infinite and, multiplied by a zero gradient, gives NaN in the
    meta-gradient (a parameter whose gradient has been exactly zero so far).
    :func:`memmaml.optim._fused.safe_sqrt` computes the same forward value but
    defines the derivative at zero as zero, which is the limit of the full
    expression because the numerator is zero there too. ``eps_root`` (as in optax) adds a constant
    inside the square root for users who prefer that remedy.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._fused import adam_update, rmsprop_update
from ._inner_optimizer import InnerOptimizer, for_parameter, is_zero

__all__ = [
    "SGD",
    "Adam",
    "AdamState",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "RMSProp",
    "RMSPropState",
    "SGDState",
]

Params = dict[str, Tensor]


def _check_momentum_override(optimizer: InnerOptimizer, hyperparams: Mapping[str, Any]) -> None:
    if not optimizer._has_momentum and not is_zero(hyperparams["momentum"]):
        raise ValueError(
            f"{type(optimizer).__name__} was built without momentum, so its state has no momentum buffers; "
            "build it with momentum=... to override momentum per call"
        )


def _with_weight_decay(grad: Tensor, param: Tensor, weight_decay: Any) -> Tensor:
    return grad if is_zero(weight_decay) else grad + weight_decay * param


# --------------------------------------------------------------------------- SGD
class SGDState(NamedTuple):
    """State of :class:`SGD`: one momentum buffer per parameter (empty without momentum)."""

    momentum_buffer: dict[str, Tensor]


class SGD(InnerOptimizer):
    """Stochastic gradient descent, as ``torch.optim.SGD`` (no dampening).

    ``buf = momentum * buf + g``; ``g = g + momentum * buf`` with Nesterov, else
    ``g = buf``; ``update = -lr * g``. ``g`` includes ``weight_decay * param``.

    Args:
        lr: learning rate (number, tensor or per-parameter dict).
        momentum: momentum factor; a non-zero number or any tensor adds a buffer
            per parameter to the optimizer state.
        nesterov: use Nesterov momentum.
        weight_decay: L2 penalty added to the gradient.

    Example:
        >>> import torch, memmaml
        >>> opt = memmaml.SGD(lr=0.1, momentum=0.9)
        >>> params = {"w": torch.ones(2)}
        >>> state = opt.init(params)
        >>> updates, state = opt.update({"w": torch.ones(2)}, state, params)
        >>> updates["w"]
        tensor([-0.1000, -0.1000])
    """

    _defaults = {"lr": None, "momentum": 0.0, "weight_decay": 0.0}

    def __init__(self, lr: Any, *, momentum: Any = 0.0, nesterov: bool = False, weight_decay: Any = 0.0) -> None:
        if nesterov and is_zero(momentum):
            raise ValueError("SGD: nesterov=True needs a non-zero momentum")
        self.nesterov = bool(nesterov)
        self._has_momentum = not is_zero(momentum)
        super().__init__(lr=lr, momentum=momentum, weight_decay=weight_decay)

    def _validate(self, hyperparams: Mapping[str, Any]) -> None:
        super()._validate(hyperparams)
        _check_momentum_override(self, hyperparams)

    def init(self, params: Params) -> SGDState:
        if not self._has_momentum:
            return SGDState({})
        return SGDState({name: torch.zeros_like(p) for name, p in params.items()})

    def _update(self, grads, opt_state, params, hp):
        updates, buffers = {}, {}
        for name, param in params.items():
            g = _with_weight_decay(grads[name], param, for_parameter(hp["weight_decay"], name))
            if self._has_momentum:
                momentum = for_parameter(hp["momentum"], name)
                buf = momentum * opt_state.momentum_buffer[name] + g
                buffers[name] = buf
                g = g + momentum * buf if self.nesterov else buf
            updates[name] = -for_parameter(hp["lr"], name) * g
        return updates, SGDState(buffers)


# ----------------------------------------------------------------------- RMSProp
class RMSPropState(NamedTuple):
    """State of :class:`RMSProp`."""

    square_avg: dict[str, Tensor]
    grad_avg: dict[str, Tensor]  # empty unless centered
    momentum_buffer: dict[str, Tensor]  # empty without momentum


class RMSProp(InnerOptimizer):
    """RMSProp, as ``torch.optim.RMSprop``.

    ``v = alpha * v + (1 - alpha) * g**2``; ``avg = sqrt(v [- m**2] + eps_root) + eps``;
    with momentum ``buf = momentum * buf + g / avg`` and ``update = -lr * buf``,
    else ``update = -lr * g / avg``.

    Args:
        lr: learning rate.
        alpha: smoothing constant of the squared-gradient average.
        eps: added to the denominator.
        momentum: momentum factor (a buffer per parameter when non-zero).
        centered: subtract the squared running mean of the gradient.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added inside the square root (0 reproduces ``torch.optim``);
            see NOTE [ Square roots at zero ] in this module.
    """

    _defaults = {"lr": None, "alpha": 0.99, "eps": 1e-8, "momentum": 0.0, "weight_decay": 0.0, "eps_root": 0.0}

    def __init__(
        self,
        lr: Any = 0.01,
        *,
        alpha: Any = 0.99,
        eps: Any = 1e-8,
        momentum: Any = 0.0,
        centered: bool = False,
        weight_decay: Any = 0.0,
        eps_root: Any = 0.0,
    ) -> None:
        self._has_momentum = not is_zero(momentum)
        self.centered = bool(centered)
        super().__init__(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, eps_root=eps_root)

    def _validate(self, hyperparams: Mapping[str, Any]) -> None:
        super()._validate(hyperparams)
        _check_momentum_override(self, hyperparams)

    def init(self, params: Params) -> RMSPropState:
        zeros = lambda: {name: torch.zeros_like(p) for name, p in params.items()}
        return RMSPropState(zeros(), zeros() if self.centered else {}, zeros() if self._has_momentum else {})

    def _update(self, grads, opt_state, params, hp):
        updates, square_avg, grad_avg, buffers = {}, {}, {}, {}
        for name, param in params.items():
            g = _with_weight_decay(grads[name], param, for_parameter(hp["weight_decay"], name))
            out = list(
                rmsprop_update(
                    g,
                    opt_state.square_avg[name],
                    opt_state.grad_avg[name] if self.centered else None,
                    opt_state.momentum_buffer[name] if self._has_momentum else None,
                    *(for_parameter(hp[key], name) for key in ("lr", "alpha", "eps", "momentum", "eps_root")),
                )
            )
            updates[name], square_avg[name] = out.pop(0), out.pop(0)
            if self.centered:
                grad_avg[name] = out.pop(0)
            if self._has_momentum:
                buffers[name] = out.pop(0)
        return updates, RMSPropState(square_avg, grad_avg, buffers)


# -------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """State of :class:`Adam`: the step count (a 0-d float32 tensor, as ``torch.optim`` keeps it) and both
    moments (in the parameters' dtype)."""

    count: Tensor
    exp_avg: dict[str, Tensor]
    exp_avg_sq: dict[str, Tensor]


class Adam(InnerOptimizer):
    """Adam, as ``torch.optim.Adam`` (L2 ``weight_decay``, no AMSGrad).

    ``m = beta1 m + (1 - beta1) g``; ``v = beta2 v + (1 - beta2) g**2``;
    ``update = -(lr / (1 - beta1**t)) * m / (sqrt(v + eps_root) / sqrt(1 - beta2**t) + eps)``.

    Args:
        lr: learning rate.
        beta1, beta2: decay rates of the first and second moment.
        eps: added to the denominator.
        weight_decay: L2 penalty added to the gradient.
        eps_root: added inside the square root (0 reproduces ``torch.optim``).
    """

    _defaults = {"lr": None, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0, "eps_root": 0.0}
    _ranges = {"beta1": (0.0, 1.0), "beta2": (0.0, 1.0)}

    def __init__(
        self,
        lr: Any = 1e-3,
        *,
        beta1: Any = 0.9,
        beta2: Any = 0.999,
        eps: Any = 1e-8,
        weight_decay: Any = 0.0,
        eps_root: Any = 0.0,
    ) -> None:
        super().__init__(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, eps_root=eps_root)

    def init(self, params: Params) -> AdamState:
        first = next(iter(params.values()), None)
        # float32 whatever the parameters' dtype, as torch.optim keeps its step: a bfloat16 count stops at 256
        # (256 + 1 rounds to 256) and a float16 one at 2048, freezing the bias correction
        count = torch.zeros((), dtype=torch.float32, device=first.device if first is not None else None)
        return AdamState(
            count,
            {name: torch.zeros_like(p) for name, p in params.items()},
            {name: torch.zeros_like(p) for name, p in params.items()},
        )

    def _update(self, grads, opt_state, params, hp):
        count = opt_state.count + 1
        updates, exp_avg, exp_avg_sq = {}, {}, {}
        for name, param in params.items():
            g = _with_weight_decay(grads[name], param, for_parameter(hp["weight_decay"], name))
            # the bias corrections in at least float32 (torch.optim computes them in Python floats)
            t = count.to(device=g.device, dtype=torch.promote_types(g.dtype, torch.float32))
            updates[name], exp_avg[name], exp_avg_sq[name] = adam_update(
                g,
                opt_state.exp_avg[name],
                opt_state.exp_avg_sq[name],
                t,
                *(for_parameter(hp[key], name) for key in ("lr", "beta1", "beta2", "eps", "eps_root")),
            )
        return updates, AdamState(count, exp_avg, exp_avg_sq)


# ------------------------------------------------------- torch_maml-compatible names
class IngraphGradientDescent(SGD):
    """Plain gradient descent under the predecessor's name: ``IngraphGradientDescent(learning_rate)``.

    ``opt_kwargs`` may use ``learning_rate`` or ``lr``.
    """

    _aliases = {"learning_rate": "lr"}

    def __init__(self, learning_rate: Any = 0.01) -> None:
        super().__init__(lr=learning_rate)


class IngraphRMSProp(RMSProp):
    """RMSProp under the predecessor's names and keywords.

    ``IngraphRMSProp(learning_rate, beta, epsilon, momentum)`` is
    ``RMSProp(lr=learning_rate, alpha=beta, eps=epsilon, momentum=momentum)``;
    ``opt_kwargs`` may use either set of names.
    """

    _aliases = {"learning_rate": "lr", "beta": "alpha", "epsilon": "eps"}

    def __init__(
        self,
        learning_rate: Any = 0.01,
        momentum: Any = 0.0,
        beta: Any = 0.99,
        epsilon: Any = 1e-8,
        *,
        eps_root: Any = 0.0,
    ) -> None:
        super().__init__(lr=learning_rate, alpha=beta, eps=epsilon, momentum=momentum, eps_root=eps_root)
