"""The protocol of an in-graph optimizer and its hyperparameters.

An inner optimizer is a pair of pure functions over dicts of tensors keyed like
``model.named_parameters()``::

    opt_state = optimizer.init(params)
    updates, opt_state = optimizer.update(grads, opt_state, params, hyperparams)

Hyperparameters
    Every hyperparameter may be

    * a Python number (a constant),
    * a scalar tensor; when it requires grad it receives a meta-gradient
      (a learnable learning rate, say),
    * a dict ``{parameter name: tensor}`` with one entry per adapted parameter,
      each a scalar or a tensor broadcastable to that parameter (Meta-SGD,
      Li et al. 2017: one learning rate per weight).

    * a :class:`PerStep` ``(values, every=1)``: a tensor with one entry per
      inner step (or per block of ``every`` steps), for a schedule of the
      hyperparameter over the unroll -- a learned learning-rate schedule, say
      (Maclaurin, Duvenaud & Adams 2015). The engine passes ``update`` the
      entry of the step it runs (:func:`at_step`); the gradient of every entry
      is exact.

    ``optimizer.hyperparams`` holds the values given at construction; the
    engine passes ``{**optimizer.hyperparams, **opt_kwargs}`` to ``update`` so
    a call can override them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from numbers import Number
from typing import Any, NamedTuple

from torch import Tensor
from torch.utils import _pytree as pytree

from .._checks import number_in

__all__ = ["InnerOptimizer", "PerStep", "at_step", "for_parameter", "is_zero", "learnable_tensors", "per_step_length"]

Params = dict[str, Tensor]


class PerStep(NamedTuple):
    """A hyperparameter that changes with the inner step: step ``i`` uses ``values[i // every]``.

    Attributes:
        values: a floating-point tensor whose first dimension runs over the steps
            (or blocks of ``every`` steps); each entry is a scalar or broadcasts
            to the parameters it applies to. Learnable when it requires grad.
        every: steps per entry.

    Example:
        >>> import torch, memmaml
        >>> log_lr = torch.full((4,), -2.0, requires_grad=True)   # one learning rate per 5 steps
        >>> opt = memmaml.SGD(memmaml.PerStep(log_lr.exp(), every=5))
        >>> memmaml.at_step(opt.hyperparams, 12)["lr"]  # step 12 uses entry 2
        tensor(0.1353, grad_fn=<SelectBackward0>)
    """

    values: Tensor
    every: int = 1


def at_step(hyperparams: Any, step: int) -> Any:
    """``hyperparams`` with every :class:`PerStep` replaced by its entry for inner step ``step``."""
    if isinstance(hyperparams, PerStep):
        return hyperparams.values[step // hyperparams.every]
    if isinstance(hyperparams, Mapping):
        return {key: at_step(value, step) for key, value in hyperparams.items()}
    return hyperparams


def per_step_length(hyperparams: Any) -> int | None:
    """The number of steps the shortest :class:`PerStep` in ``hyperparams`` covers (``None`` if there is none)."""
    if isinstance(hyperparams, PerStep):
        return len(hyperparams.values) * hyperparams.every
    if isinstance(hyperparams, Mapping):
        lengths = [n for n in (per_step_length(v) for v in hyperparams.values()) if n is not None]
        return min(lengths, default=None)
    return None


def for_parameter(value: Any, name: str) -> Any:
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


def is_zero(value: Any) -> bool:
    """True only for a plain number equal to zero (tensors are never assumed zero)."""
    return isinstance(value, Number) and value == 0


def _check_hyperparam(owner: str, name: str, value: Any) -> None:
    if isinstance(value, PerStep):
        if not isinstance(value.values, Tensor) or value.values.dim() < 1 or not value.values.is_floating_point():
            raise TypeError(
                f"{owner}: PerStep {name} needs a floating-point tensor with one entry per step "
                f"(at least one dimension), got {value.values!r}"
            )
        if isinstance(value.every, bool) or not isinstance(value.every, int) or value.every < 1:
            raise ValueError(f"{owner}: PerStep {name}: every must be a positive integer, got {value.every!r}")
        return
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


def learnable_tensors(*trees: Any, exclude: Iterable[Tensor] = ()) -> list[Tensor]:
    """The tensors that require grad among the leaves of ``trees``, each once, in order of appearance.

    ``exclude`` lists tensors to leave out (the model's parameters, say). Dicts,
    lists, tuples and NamedTuples are walked; identity, not equality, decides
    what is a duplicate.
    """
    seen = {id(t) for t in exclude}
    found: list[Tensor] = []
    for leaf in pytree.tree_leaves(list(trees)):
        if isinstance(leaf, Tensor) and leaf.requires_grad and id(leaf) not in seen:
            seen.add(id(leaf))
            found.append(leaf)
    return found
