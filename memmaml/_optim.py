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
    Every hyperparameter may be

    * a Python number (a constant),
    * a scalar tensor; when it requires grad it receives a meta-gradient
      (a learnable learning rate, say),
    * a dict ``{parameter name: tensor}`` with one entry per adapted parameter,
      each a scalar or a tensor broadcastable to that parameter (Meta-SGD,
      Li et al. 2017: one learning rate per weight).

    ``optimizer.hyperparams`` holds the values given at construction; the
    engine passes ``{**optimizer.hyperparams, **opt_kwargs}`` to ``update`` so
    a call can override them.

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
    ``_safe_sqrt`` computes the same forward value but defines the derivative at
    zero as zero, which is the limit of the full expression because the
    numerator is zero there too. ``eps_root`` (as in optax) adds a constant
    inside the square root for users who prefer that remedy.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from numbers import Number
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ._checks import number_in
from ._params import learnable_tensors

__all__ = [
    "Adam",
    "AdamState",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "InnerOptimizer",
    "RMSProp",
    "RMSPropState",
    "SGD",
    "SGDState",
]

Params = dict[str, Tensor]


def _safe_sqrt(x: Tensor) -> Tensor:
    """``sqrt(x)`` whose derivative at ``x == 0`` is 0 instead of inf.

    See NOTE [ Square roots at zero ]."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _for(value: Any, name: str) -> Any:
    """The hyperparameter ``value`` as it applies to parameter ``name``."""
    if isinstance(value, Mapping):
        try:
            return value[name]
        except KeyError:
            raise ValueError(
                f"per-parameter hyperparameter has no entry for adapted parameter {name!r}; "
                f"it has entries for {sorted(value)}"
            ) from None
    return value


def _is_zero(value: Any) -> bool:
    """True only for a plain number equal to zero (tensors are never assumed zero)."""
    return isinstance(value, Number) and value == 0


def _check_hyperparam(owner: str, name: str, value: Any) -> None:
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"{owner}: per-parameter {name} must be keyed by parameter name, got key {key!r}")
            _check_hyperparam(owner, f"{name}[{key!r}]", item)
        return
    if isinstance(value, bool) or not isinstance(value, (Number, Tensor)):
        raise TypeError(
            f"{owner}: hyperparameter {name} must be a number, a tensor or a dict of tensors "
            f"keyed by parameter name, got {type(value).__name__}"
        )
    if isinstance(value, Tensor) and not value.is_floating_point():
        raise TypeError(f"{owner}: hyperparameter {name} must be a floating-point tensor, got dtype {value.dtype}")


class InnerOptimizer:
    """Base class of the in-graph optimizers.

    Subclasses define ``_defaults`` (hyperparameter names and default values),
    ``init`` and ``_update``. ``_aliases`` maps alternative keyword names (those
    of ``torch_maml``) onto the canonical ones. ``_ranges`` gives the range of
    each hyperparameter as ``torch.optim`` checks it (``(low, high)``, high
    excluded); numbers outside it, NaN included, raise ``ValueError``. Tensors
    are not checked: reading their values would be a host sync.
    """

    _defaults: dict[str, Any] = {}
    _aliases: dict[str, str] = {}
    _ranges: dict[str, tuple[float, float]] = {}

    def __init__(self, **hyperparams: Any) -> None:
        self.hyperparams = self.resolve(hyperparams, base=self._defaults)

    # -- hyperparameters -------------------------------------------------
    def resolve(self, overrides: Mapping[str, Any] | None, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Hyperparameters to use: ``base`` (default: this optimizer's) updated by ``overrides``.

        Alias names are translated; unknown names raise ``TypeError``.
        """
        owner = type(self).__name__
        result = dict(self.hyperparams if base is None else base)
        for key, value in (overrides or {}).items():
            canonical = self._aliases.get(key, key)
            if canonical not in self._defaults:
                known = sorted(set(self._defaults) | set(self._aliases))
                raise TypeError(f"{owner} got an unknown hyperparameter {key!r}; known: {known}")
            _check_hyperparam(owner, key, value)
            result[canonical] = value
        missing = [k for k, v in result.items() if v is None]
        if missing:
            raise TypeError(f"{owner} needs a value for {missing}")
        self._validate(result)
        return result

    def _validate(self, hyperparams: Mapping[str, Any]) -> None:
        for name, value in hyperparams.items():
            low, high = self._ranges.get(name, (0.0, math.inf))
            items = value.items() if isinstance(value, Mapping) else [(None, value)]
            for key, item in items:
                if isinstance(item, Number):
                    label = name if key is None else f"{name}[{key!r}]"
                    try:
                        number_in(label, item, low, high)
                    except ValueError as err:
                        raise ValueError(f"{type(self).__name__}: {err}") from None

    def parameters(self) -> Iterator[Tensor]:
        """The tensor hyperparameters that require grad (learnable ones), for a meta-optimizer."""
        yield from learnable_tensors(self.hyperparams)

    # -- pure functions --------------------------------------------------
    def init(self, params: Params) -> Any:
        """The initial optimizer state for ``params`` (a pytree of tensors)."""
        raise NotImplementedError

    def update(
        self,
        grads: Params,
        opt_state: Any,
        params: Params,
        hyperparams: Mapping[str, Any] | None = None,
    ) -> tuple[Params, Any]:
        """Return ``(updates, new_opt_state)``; ``params + updates`` are the new parameters.

        Differentiable with respect to ``grads``, ``opt_state``, ``params`` and
        every tensor in ``hyperparams`` (default: ``self.hyperparams``).
        Nothing is modified in place.
        """
        hp = self.hyperparams if hyperparams is None else hyperparams
        return self._update(grads, opt_state, params, hp)

    def _update(self, grads: Params, opt_state: Any, params: Params, hp: Mapping[str, Any]) -> tuple[Params, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        def show(value: Any) -> str:
            if isinstance(value, Tensor):
                kind = "learnable tensor" if value.requires_grad else "tensor"
                return f"<{kind} {tuple(value.shape)}>"
            if isinstance(value, Mapping):
                return f"<per-parameter dict of {len(value)}>"
            return repr(value)

        inner = ", ".join(f"{k}={show(v)}" for k, v in self.hyperparams.items())
        return f"{type(self).__name__}({inner})"


def _check_momentum_override(optimizer: InnerOptimizer, hyperparams: Mapping[str, Any]) -> None:
    if not optimizer._has_momentum and not _is_zero(hyperparams["momentum"]):
        raise ValueError(
            f"{type(optimizer).__name__} was built without momentum, so its state has no momentum buffers; "
            "build it with momentum=... to override momentum per call"
        )


def _with_weight_decay(grad: Tensor, param: Tensor, weight_decay: Any) -> Tensor:
    return grad if _is_zero(weight_decay) else grad + weight_decay * param


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
        if nesterov and _is_zero(momentum):
            raise ValueError("SGD: nesterov=True needs a non-zero momentum")
        self.nesterov = bool(nesterov)
        self._has_momentum = not _is_zero(momentum)
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
            g = _with_weight_decay(grads[name], param, _for(hp["weight_decay"], name))
            if self._has_momentum:
                momentum = _for(hp["momentum"], name)
                buf = momentum * opt_state.momentum_buffer[name] + g
                buffers[name] = buf
                g = g + momentum * buf if self.nesterov else buf
            updates[name] = -_for(hp["lr"], name) * g
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
        self._has_momentum = not _is_zero(momentum)
        self.centered = bool(centered)
        super().__init__(lr=lr, alpha=alpha, eps=eps, momentum=momentum, weight_decay=weight_decay, eps_root=eps_root)

    def _validate(self, hyperparams: Mapping[str, Any]) -> None:
        super()._validate(hyperparams)
        _check_momentum_override(self, hyperparams)

    def init(self, params: Params) -> RMSPropState:
        zeros = lambda: {name: torch.zeros_like(p) for name, p in params.items()}  # noqa: E731
        return RMSPropState(zeros(), zeros() if self.centered else {}, zeros() if self._has_momentum else {})

    def _update(self, grads, opt_state, params, hp):
        updates, square_avg, grad_avg, buffers = {}, {}, {}, {}
        for name, param in params.items():
            g = _with_weight_decay(grads[name], param, _for(hp["weight_decay"], name))
            alpha = _for(hp["alpha"], name)
            v = alpha * opt_state.square_avg[name] + (1 - alpha) * g * g
            square_avg[name] = v
            if self.centered:
                m = alpha * opt_state.grad_avg[name] + (1 - alpha) * g
                grad_avg[name] = m
                v = v - m * m
            eps_root = _for(hp["eps_root"], name)
            if not _is_zero(eps_root):
                v = v + eps_root
            avg = _safe_sqrt(v) + _for(hp["eps"], name)
            lr = _for(hp["lr"], name)
            if self._has_momentum:
                buf = _for(hp["momentum"], name) * opt_state.momentum_buffer[name] + g / avg
                buffers[name] = buf
                updates[name] = -lr * buf
            else:
                updates[name] = -lr * g / avg
        return updates, RMSPropState(square_avg, grad_avg, buffers)


# -------------------------------------------------------------------------- Adam
class AdamState(NamedTuple):
    """State of :class:`Adam`: the step count (a 0-d float tensor) and both moments."""

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
        count = torch.zeros((), dtype=first.dtype if first is not None else None,
                            device=first.device if first is not None else None)
        return AdamState(
            count,
            {name: torch.zeros_like(p) for name, p in params.items()},
            {name: torch.zeros_like(p) for name, p in params.items()},
        )

    def _update(self, grads, opt_state, params, hp):
        count = opt_state.count + 1
        updates, exp_avg, exp_avg_sq = {}, {}, {}
        for name, param in params.items():
            g = _with_weight_decay(grads[name], param, _for(hp["weight_decay"], name))
            beta1, beta2 = _for(hp["beta1"], name), _for(hp["beta2"], name)
            m = beta1 * opt_state.exp_avg[name] + (1 - beta1) * g
            v = beta2 * opt_state.exp_avg_sq[name] + (1 - beta2) * g * g
            exp_avg[name], exp_avg_sq[name] = m, v
            bias_correction1 = 1 - beta1**count
            bias_correction2 = 1 - beta2**count
            eps_root = _for(hp["eps_root"], name)
            if not _is_zero(eps_root):
                v = v + eps_root
            denom = _safe_sqrt(v) / torch.sqrt(bias_correction2) + _for(hp["eps"], name)
            updates[name] = -(_for(hp["lr"], name) / bias_correction1) * m / denom
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
