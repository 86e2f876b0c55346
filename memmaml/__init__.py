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
* :class:`MetaTrainer` with its :class:`TrainerConfig`, task sources
  (:mod:`memmaml.tasks`), held-out evaluation (:func:`batched_evaluate`) and
  the vmap-over-tasks meta-gradient (:func:`batched_meta_gradient`) for
  meta-training runs.
"""

from . import schedules, tasks
from ._batched import BatchedMetaGradient, batched_meta_gradient, check_vmappable
from ._checkpoint_io import IncompatibleCheckpointError, atomic_save, load_checkpoint_file
from ._evaluation import batched_evaluate
from ._metrics_log import MetricsLog
from ._trainer import MetaTrainer
from ._trainer_config import TrainerConfig
from .adapted import AdaptedModule
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

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamState",
    "AdaptedModule",
    "Auto",
    "BatchedMetaGradient",
    "Binomial",
    "GradientCheckpointMAML",
    "IncompatibleCheckpointError",
    "IngraphGradientDescent",
    "IngraphRMSProp",
    "InnerOptimizer",
    "MemoryTracker",
    "MetaTrainer",
    "MetricsLog",
    "NaiveMAML",
    "Plan",
    "RMSProp",
    "RMSPropState",
    "Result",
    "SGD",
    "SGDState",
    "Schedule",
    "TrainerConfig",
    "Uniform",
    "Unrolled",
    "atomic_save",
    "batched_evaluate",
    "batched_meta_gradient",
    "check_vmappable",
    "host_allocations",
    "load_checkpoint_file",
    "measure_step_costs",
    "parse_schedule",
    "peak_rss_bytes",
    "schedules",
    "tasks",
    "track_memory",
    "unroll",
]
