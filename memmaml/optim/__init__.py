"""In-graph optimizers: pure ``init``/``update`` functions over dicts of tensors, differentiable throughout.

The protocol and its hyperparameters (numbers, learnable tensors,
per-parameter dicts, :class:`PerStep` schedules) live in
:mod:`._inner_optimizer`; :class:`SGD`, :class:`RMSProp` and :class:`Adam`
(and the torch_maml names) in :mod:`._optimizers`; Adam's and RMSProp's fused
autograd Functions, which keep little in the graph, in :mod:`._fused`.

Imports: torch and the root helpers (``memmaml._checks``); no other wing.
"""

from ._fused import adam_update, rmsprop_update, safe_sqrt
from ._inner_optimizer import (
    InnerOptimizer,
    PerStep,
    at_step,
    for_parameter,
    is_zero,
    learnable_tensors,
    per_step_length,
)
from ._optimizers import (
    SGD,
    Adam,
    AdamState,
    IngraphGradientDescent,
    IngraphRMSProp,
    RMSProp,
    RMSPropState,
    SGDState,
)

__all__ = [
    "SGD",
    "Adam",
    "AdamState",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "InnerOptimizer",
    "PerStep",
    "RMSProp",
    "RMSPropState",
    "SGDState",
    "adam_update",
    "at_step",
    "for_parameter",
    "is_zero",
    "learnable_tensors",
    "per_step_length",
    "rmsprop_update",
    "safe_sqrt",
]
