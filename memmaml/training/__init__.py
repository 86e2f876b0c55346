"""Meta-training: the trainer, its configuration, held-out evaluation, checkpoint files, processes.

* :mod:`._trainer` -- :class:`MetaTrainer`, the meta-training loop;
  :mod:`._trainer_config` -- :class:`TrainerConfig`;
* :mod:`._batched` -- the meta-gradient of a meta-batch under ``torch.func.vmap``
  (the engine's inner step, vectorised over tasks); :mod:`._evaluation` --
  held-out evaluation, task by task or vectorised;
* :mod:`._checkpoint_io` (atomic files), :mod:`._metrics_log` (the metrics
  file), :mod:`._distributed` (one process per share of a meta-batch).

Imports: torch, the root helpers, :mod:`memmaml.schedules`,
:mod:`memmaml.optim`, :mod:`memmaml.engine` and :mod:`memmaml.tasks` (through
their packages); nothing above.
"""

from ._batched import BatchedMetaGradient, batched_meta_gradient, check_vmappable
from ._checkpoint_io import IncompatibleCheckpointError, atomic_save, load_checkpoint_file
from ._evaluation import batched_evaluate
from ._metrics_log import MetricsLog
from ._trainer import MetaTrainer
from ._trainer_config import TrainerConfig

__all__ = [
    "BatchedMetaGradient",
    "IncompatibleCheckpointError",
    "MetaTrainer",
    "MetricsLog",
    "TrainerConfig",
    "atomic_save",
    "batched_evaluate",
    "batched_meta_gradient",
    "check_vmappable",
    "load_checkpoint_file",
]
