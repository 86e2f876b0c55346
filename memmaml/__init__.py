"""memmaml: memory-efficient MAML in PyTorch.

Backpropagate through long MAML inner loops with exact meta-gradients while
keeping only a few inner-loop states in memory.

The core API lives here, at the top level (each name has exactly one public
path); the implementation modules are private. Three public namespaces hold
the tools around the core and are not re-exported here: :mod:`memmaml.tasks`
(task sources for meta-training), :mod:`memmaml.models` (the model builders of
the scripts, notebooks and benchmarks) and :mod:`memmaml.bench` (the benchmark
library).

* :class:`MAML` (and the torch_maml names :class:`NaiveMAML`,
  :class:`GradientCheckpointMAML`) over the functional core :func:`unroll`;
* schedules :class:`Uniform`, :class:`SqrtUniform`, :class:`Binomial`,
  :class:`Auto` (and host offload) deciding what the checkpointed engine keeps;
  the plans they produce and the cost model that predicts them;
* in-graph optimizers :class:`SGD`, :class:`RMSProp`, :class:`Adam` (and the
  torch_maml names :class:`IngraphGradientDescent`, :class:`IngraphRMSProp`);
* :func:`implicit_hypergradient` -- the implicit-function approximation of a
  hypergradient from an inner loop's end point (CG or Neumann), to compare
  with the exact one;
* :func:`track_memory` -- peak live-tensor bytes on CPU or CUDA;
* :class:`MetaTrainer` with its :class:`TrainerConfig`, held-out evaluation
  (:func:`batched_evaluate`) and the vmap-over-tasks meta-gradient
  (:func:`batched_meta_gradient`) for meta-training runs.
"""

import importlib as _importlib

from . import models, tasks  # noqa: F401  (public namespaces, not re-exported here)
from ._host import default_host_budget, host_available_bytes
from ._units import format_bytes, parse_size
from .engine import (
    MAML,
    AdaptedModule,
    GradientCheckpointMAML,
    ImplicitResult,
    MemoryTracker,
    NaiveMAML,
    ReplayMismatchError,
    Result,
    choose_schedule,
    implicit_hypergradient,
    measure_step_costs,
    peak_rss_bytes,
    track_memory,
    unroll,
)
from .optim import (
    SGD,
    Adam,
    AdamState,
    IngraphGradientDescent,
    IngraphRMSProp,
    InnerOptimizer,
    PerStep,
    RMSProp,
    RMSPropState,
    SGDState,
    at_step,
)
from .schedules import (
    Advance,
    Auto,
    Binomial,
    Choice,
    Drop,
    EngineSpec,
    Plan,
    PlanStats,
    Reverse,
    Schedule,
    SqrtUniform,
    StepCosts,
    Uniform,
    best_uniform,
    binomial_evaluations,
    binomial_slots,
    check_plan,
    longest_steps,
    parse_engine,
    parse_schedule,
    pinned_bytes,
    predicted_host_bytes,
    predicted_peak_bytes,
    predicted_seconds,
    sqrt_steps,
)
from .training import (
    BatchedMetaGradient,
    IncompatibleCheckpointError,
    MetaTrainer,
    MetricsLog,
    TrainerConfig,
    atomic_save,
    batched_evaluate,
    batched_meta_gradient,
    check_vmappable,
    load_checkpoint_file,
)

__version__ = "0.2.0"

#: public namespaces loaded on first use (PEP 562): the benchmark library sits on top of the
#: package and imports it, so importing it here would be a cycle
_LAZY_NAMESPACES = ("bench",)


def __getattr__(name: str) -> object:
    if name in _LAZY_NAMESPACES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY_NAMESPACES])


__all__ = [
    "Adam",
    "AdamState",
    "AdaptedModule",
    "Advance",
    "Auto",
    "BatchedMetaGradient",
    "Binomial",
    "Choice",
    "Drop",
    "EngineSpec",
    "GradientCheckpointMAML",
    "ImplicitResult",
    "IncompatibleCheckpointError",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "InnerOptimizer",
    "MAML",
    "MemoryTracker",
    "MetaTrainer",
    "MetricsLog",
    "NaiveMAML",
    "PerStep",
    "Plan",
    "PlanStats",
    "RMSProp",
    "RMSPropState",
    "ReplayMismatchError",
    "Result",
    "Reverse",
    "SGD",
    "SGDState",
    "Schedule",
    "SqrtUniform",
    "StepCosts",
    "TrainerConfig",
    "Uniform",
    "at_step",
    "atomic_save",
    "batched_evaluate",
    "batched_meta_gradient",
    "best_uniform",
    "binomial_evaluations",
    "binomial_slots",
    "check_plan",
    "check_vmappable",
    "choose_schedule",
    "default_host_budget",
    "format_bytes",
    "host_available_bytes",
    "implicit_hypergradient",
    "load_checkpoint_file",
    "longest_steps",
    "measure_step_costs",
    "parse_engine",
    "parse_schedule",
    "parse_size",
    "peak_rss_bytes",
    "pinned_bytes",
    "predicted_host_bytes",
    "predicted_peak_bytes",
    "predicted_seconds",
    "sqrt_steps",
    "track_memory",
    "unroll",
]
