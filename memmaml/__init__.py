"""memmaml: memory-efficient MAML in PyTorch.

Backpropagate through long MAML inner loops with exact meta-gradients while
keeping only a few inner-loop states in memory:

* :class:`GradientCheckpointMAML` -- the checkpointed engine;
* :class:`NaiveMAML` -- the reference that keeps every step's graph;
* in-graph optimizers :class:`SGD`, :class:`RMSProp`, :class:`Adam` (and the
  torch_maml names :class:`IngraphGradientDescent`, :class:`IngraphRMSProp`);
* :func:`unroll` -- the functional core both wrappers call;
* schedules :class:`Uniform`, :class:`Binomial`, :class:`Auto` (and host
  offload of stored states) deciding what the checkpointed engine keeps;
* :func:`track_memory` -- peak live-tensor bytes on CPU or CUDA;
* :class:`MetaTrainer` (:mod:`memmaml.training`), task sources
  (:mod:`memmaml.tasks`) and the vmap-over-tasks path (:mod:`memmaml.batched`)
  for meta-training runs.
"""

from . import batched, schedules, tasks, training
from .adapted import AdaptedModule
from .batched import batched_evaluate, batched_meta_gradient
from .engine import Unrolled, measure_step_costs, unroll
from .maml import GradientCheckpointMAML, NaiveMAML, Result
from .memory import MemoryTracker, host_allocations, peak_rss_bytes, track_memory
from .optim import (
    SGD,
    Adam,
    AdamState,
    IngraphGradientDescent,
    IngraphRMSProp,
    InnerOptimizer,
    RMSProp,
    RMSPropState,
    SGDState,
)
from .schedules import Auto, Binomial, Plan, Schedule, Uniform, parse_schedule
from .training import MetaTrainer

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamState",
    "AdaptedModule",
    "Auto",
    "Binomial",
    "GradientCheckpointMAML",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "InnerOptimizer",
    "MemoryTracker",
    "MetaTrainer",
    "NaiveMAML",
    "Plan",
    "RMSProp",
    "RMSPropState",
    "Result",
    "SGD",
    "SGDState",
    "Schedule",
    "Uniform",
    "Unrolled",
    "batched",
    "batched_evaluate",
    "batched_meta_gradient",
    "host_allocations",
    "measure_step_costs",
    "parse_schedule",
    "peak_rss_bytes",
    "schedules",
    "tasks",
    "track_memory",
    "training",
    "unroll",
]
