"""The engine: one inner step, and what runs a whole unroll with it -- naively or by a plan's replays.

* :mod:`._step` -- the inner step every engine and the vectorised path share
  (loss, gradient, optimizer update, addition, clipping);
* :mod:`._executor` -- the checkpointed engine: executes a plan inside one
  autograd Function; :mod:`._store` keeps its states (offloaded or not);
  :mod:`._replay_context` and :mod:`._replay_check` make and prove replays exact;
* :mod:`._unroll` -- :func:`unroll`, the functional core, and
  :func:`measure_step_costs` (:mod:`._measure`); :mod:`._maml` -- the
  :class:`MAML` wrapper and the torch_maml names;
* :mod:`._adapted` (the module at adapted parameters), :mod:`._params`
  (which parameters adapt), :mod:`._memory` (:func:`track_memory`);
* :mod:`._implicit` -- :func:`implicit_hypergradient`, the approximation that
  differentiates only the end point of an inner loop (CG or a Neumann series).

Imports: torch, the root helpers, :mod:`memmaml.schedules` and
:mod:`memmaml.optim` (through their packages); nothing above.
"""

from ._adapted import AdaptedModule, has_tied_weights
from ._implicit import ImplicitResult, implicit_hypergradient
from ._maml import MAML, GradientCheckpointMAML, NaiveMAML
from ._memory import MemoryTracker, peak_rss_bytes, track_memory
from ._params import select_parameters
from ._replay_check import ReplayMismatchError
from ._step import autograd_gradient, clip_cotangents, func_gradient, inner_step
from ._unroll import Result, choose_schedule, measure_step_costs, unroll

__all__ = [
    "MAML",
    "AdaptedModule",
    "GradientCheckpointMAML",
    "ImplicitResult",
    "MemoryTracker",
    "NaiveMAML",
    "ReplayMismatchError",
    "Result",
    "autograd_gradient",
    "choose_schedule",
    "clip_cotangents",
    "func_gradient",
    "has_tied_weights",
    "implicit_hypergradient",
    "inner_step",
    "measure_step_costs",
    "peak_rss_bytes",
    "select_parameters",
    "track_memory",
    "unroll",
]
