"""Meta-training: an outer loop over meta-batches of tasks, resumable, optionally spread over processes.

One meta-iteration of :class:`MetaTrainer`::

    seeds   = draw_seeds(task_generator, meta_batch_size)     # the same on every process
    tasks   = this process's share of the seeds, built by the task source
    for each task: adapt with num_inner_steps of the inner optimizer on its support set
    meta-gradient = d/d(meta-parameters) of the mean query loss   (averaged over processes)
    clip the meta-gradient to max_grad_norm (global L2 norm); outer_optimizer.step()

The inner loop is the package's engine (:class:`memmaml.NaiveMAML`, or
:class:`memmaml.GradientCheckpointMAML` with any schedule), one task after
another, each task's backward pass run before the next task is adapted; or,
with ``vectorize=True``, the whole share adapted in one ``torch.func.vmap``
call (:mod:`memmaml.batched`). Both give the same meta-gradient.

Held-out evaluation (:meth:`MetaTrainer.evaluate`) adapts a fixed set of
tasks (fixed seeds) and reports the query loss and metrics after each step
count in ``eval_steps`` (by default 0, 1 and the training number of steps),
with a 95% confidence interval over tasks (``1.96 * std / sqrt(num_tasks)``).

NOTE [ Reproducible and resumable ]
    Tasks are identified by seeds drawn from the trainer's own generator, never
    from the global random stream. A checkpoint (:meth:`MetaTrainer.save_checkpoint`)
    holds the iteration, the model's ``state_dict``, the other meta-parameters,
    the outer optimizer's state, the task generator, every process's CPU (and
    CUDA) RNG state and Python ``random`` state, the partial logging window and
    the configuration. On CPU, a run stopped and resumed from a checkpoint logs
    the same metrics and ends with the same parameters, bit for bit, as a run
    that was never stopped (``tests/test_training.py``). Checkpoints contain
    only tensors and plain Python values and are read with
    ``torch.load(..., weights_only=True)``; they are written to a temporary
    file, flushed to disk, then renamed over the previous one, so a crash
    mid-save leaves the previous checkpoint intact.

NOTE [ Data parallel over processes ]
    Launched with ``torchrun`` (after ``torch.distributed.init_process_group``),
    every process draws the same task seeds and adapts its contiguous share of
    the meta-batch (``meta_batch_size / world_size`` tasks, which must be a
    whole number). The local meta-gradients, averaged over the local tasks,
    are summed with one ``all_reduce`` and divided by the world size: the
    result is the meta-gradient of the mean over the whole meta-batch. Every
    process then clips and steps the same outer optimizer on the same numbers,
    so the meta-parameters stay identical without ever being broadcast again
    (they are broadcast once from rank 0 when the trainer is built). Only rank
    0 logs and writes checkpoints; :meth:`MetaTrainer.save_checkpoint` is still
    called on every rank (it gathers the RNG states). Held-out tasks are
    split between processes and their statistics summed.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import random
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Number
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ._adapted import AdaptedModule
from .batched import batched_evaluate, batched_meta_gradient, check_vmappable
from ._unroll import unroll
from ._maml import GradientCheckpointMAML, NaiveMAML
from ._optim import SGD, InnerOptimizer
from ._schedules import Schedule
from .tasks import Task, TaskSource, draw_seeds

__all__ = [
    "CHECKPOINT_FORMAT",
    "IncompatibleCheckpointError",
    "MetaTrainer",
    "MetricsLog",
    "atomic_save",
    "load_checkpoint_file",
]

CHECKPOINT_FORMAT = "memmaml.training/1"

#: configuration keys (or key prefixes) that may differ between a checkpoint and the run that
#: resumes it: they change speed, rounding or what is evaluated, not the training problem.
RESUME_MAY_CHANGE = frozenset({"vectorize", "chunk_size", "world_size", "eval_task", "eval_optimizer",
                               "num_eval_tasks", "eval_steps", "eval_seed"})

_TIMING_KEYS = ("sec_per_iter", "elapsed_s")


class IncompatibleCheckpointError(ValueError):
    """A checkpoint was written by a run with a different configuration."""


# ---------------------------------------------------------------------------- files
def _umask_mode() -> int:
    """File mode ``open()`` would give a new file (``mkstemp`` makes them private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written file at ``path``.

    Writes to a temporary file in the same folder, flushes and fsyncs it, then
    renames it over ``path`` (atomic on POSIX and Windows).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :meth:`MetaTrainer.save_checkpoint` (``weights_only=True``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IncompatibleCheckpointError: the file is not a memmaml training checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 - re-raised with the file name
        raise IncompatibleCheckpointError(
            f"checkpoint {str(path)!r} could not be read safely (torch.load(weights_only=True)): {error}") from error
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise IncompatibleCheckpointError(
            f"{str(path)!r} is not a memmaml training checkpoint of format {CHECKPOINT_FORMAT!r} (found {found!r})")
    return data


class MetricsLog:
    """Rows of metrics appended to a JSON-lines (``.jsonl``) or CSV (``.csv``) file.

    Every row has ``iteration`` and ``kind`` (``"train"`` or ``"eval"``). A CSV
    file has one header: the ``fieldnames`` given (missing values are empty).

    Args:
        path: the file; its suffix picks the format.
        fieldnames: CSV columns (ignored for JSON lines).
    """

    def __init__(self, path: str | os.PathLike, fieldnames: Sequence[str] = ()) -> None:
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".csv"):
            raise ValueError(f"log path must end in .jsonl or .csv, got {str(self.path)!r}")
        self.format = suffix[1:]
        self.fieldnames = ["iteration", "kind", *(f for f in fieldnames if f not in ("iteration", "kind"))]

    def read(self) -> list[dict[str, Any]]:
        """All rows in the file (numbers parsed back from CSV)."""
        if not self.path.is_file():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                return [json.loads(line) for line in f if line.strip()]
            return [{k: _parse_csv_value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]

    def start(self, iteration: int) -> None:
        """Prepare the file for a run that starts after ``iteration``.

        ``iteration == 0`` starts a new file; otherwise rows past ``iteration``
        (logged after the checkpoint being resumed) are removed, atomically.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [r for r in self.read() if r.get("iteration", 0) <= iteration] if iteration > 0 else []
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.chmod(tmp, _umask_mode())
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                for row in rows:
                    f.write(json.dumps(row) + "\n")
            else:
                writer = csv.DictWriter(f, self.fieldnames, restval="", extrasaction="ignore")
                writer.writeheader()
                writer.writerows(rows)
        os.replace(tmp, self.path)

    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row."""
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            if self.format == "jsonl":
                f.write(json.dumps(dict(row)) + "\n")
            else:
                csv.DictWriter(f, self.fieldnames, restval="", extrasaction="ignore").writerow(dict(row))


def _parse_csv_value(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


# --------------------------------------------------------------------------- helpers
def _plain(value: Any) -> Any:
    """``value`` as JSON-like plain data for the configuration."""
    if isinstance(value, Tensor):
        if value.numel() == 1 and not value.requires_grad:
            return value.item()
        return f"tensor{tuple(value.shape)}{' learnable' if value.requires_grad else ''}"
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _flatten(prefix: str, value: Any, out: dict[str, Any]) -> None:
    if isinstance(value, Mapping) and value:
        for key, item in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), item, out)
    else:
        out[prefix] = value


def _config_diff(saved: Mapping[str, Any], current: Mapping[str, Any], may_change: Iterable[str]) -> list[str]:
    may_change = set(may_change)
    lines = []
    for key in sorted(set(saved) | set(current)):
        if any(key == m or key.startswith(m + ".") for m in may_change):
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if old != new:
            lines.append(f"  {key}: checkpoint={old!r}, this run={new!r}")
    return lines


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _all_trainable(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


# ----------------------------------------------------------------------------- trainer
class MetaTrainer:
    """Meta-trains ``model`` on tasks from ``task_source``; see the module docstring.

    Args:
        model: the meta-learned module (its parameters are the initialisation
            the inner loop adapts). Keep it in train mode as MAML does; it is
            called functionally, never copied.
        task_source: a :class:`~memmaml.tasks.TaskSource` for training tasks.
        loss_function: ``loss_function(model, batch) -> 0-d tensor`` (default:
            ``task_source.loss_function``).
        metrics: query metrics for evaluation, ``{name: fn(model, batch)}``
            (default: ``task_source.metrics``, e.g. accuracy).
        inner_optimizer: the in-graph optimizer of the inner loop (default
            ``memmaml.SGD(0.01)``).
        num_inner_steps: inner steps per task during training.
        get_parameters: which parameters the inner loop adapts (as for
            :class:`memmaml.NaiveMAML`; default all that require grad).
        schedule: ``None`` runs the naive engine; a
            :class:`~memmaml.schedules.Schedule` runs
            :class:`memmaml.GradientCheckpointMAML` with it.
        first_order: first-order MAML (inner gradients are constants).
        max_grad_grad_norm: clip the cotangent through every inner step (the
            engine's option; not supported with ``vectorize``).
        outer_optimizer: a ``torch.optim`` optimizer over the meta-parameters
            (default: ``torch.optim.Adam`` at ``outer_lr`` over the model's
            trainable parameters and the inner optimizer's learnable
            hyperparameters). Every tensor in its parameter groups is a
            meta-parameter: its gradient is averaged over processes and clipped.
        outer_lr: learning rate of the default outer optimizer.
        meta_batch_size: tasks per meta-iteration (over all processes).
        max_grad_norm: clip the meta-gradient to this global L2 norm before each
            outer step (``None``: no clipping; the norm is logged either way).
        eval_source: task source for held-out tasks (default: ``task_source``;
            for classification pass one built on held-out classes).
        num_eval_tasks: number of held-out tasks (fixed seeds from ``eval_seed``).
        eval_steps: inner step counts to evaluate at (default ``0, 1,
            num_inner_steps``).
        eval_optimizer: inner optimizer at evaluation (default: ``inner_optimizer``).
        seed: seed of the training task stream.
        eval_seed: seed of the held-out task seeds (default ``seed + 1``).
        vectorize: adapt a process's tasks in one ``torch.func.vmap`` call
            (:mod:`memmaml.batched`); needs ``schedule=None`` and a model without
            BatchNorm running statistics. Also used for evaluation.
        chunk_size: ``vmap`` over at most this many tasks at a time.
        randomness: ``vmap``'s treatment of random operators (``"error"``,
            ``"different"``, ``"same"``).
        distributed: spread the meta-batch over ``torch.distributed`` processes
            (default: whenever a process group is initialised).
        run_config: extra plain values describing the run (CLI arguments, say),
            stored in checkpoints and compared on resume.
        resume_may_change: keys of ``run_config`` that may differ on resume.

    Example:
        >>> import torch, memmaml
        >>> from memmaml.tasks import Sinusoid
        >>> from memmaml.training import MetaTrainer
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1))
        >>> trainer = MetaTrainer(model, Sinusoid(num_shots=10), inner_optimizer=memmaml.SGD(0.01),
        ...                       meta_batch_size=4, num_eval_tasks=8, vectorize=True)
        >>> row = trainer.step()
        >>> sorted(row)
        ['grad_norm', 'loss', 'loss_before']
        >>> sorted(trainer.evaluate())[:2]
        ['eval_loss@0', 'eval_loss@0_ci95']
    """

    def __init__(
        self,
        model: nn.Module,
        task_source: TaskSource,
        *,
        loss_function: Callable[..., Tensor] | None = None,
        metrics: Mapping[str, Callable[..., Tensor]] | None = None,
        inner_optimizer: InnerOptimizer | None = None,
        num_inner_steps: int = 1,
        get_parameters: Callable[[nn.Module], Iterable[Tensor]] = _all_trainable,
        schedule: Schedule | None = None,
        first_order: bool = False,
        max_grad_grad_norm: float | None = None,
        outer_optimizer: torch.optim.Optimizer | None = None,
        outer_lr: float = 1e-3,
        meta_batch_size: int = 25,
        max_grad_norm: float | None = None,
        eval_source: TaskSource | None = None,
        num_eval_tasks: int = 600,
        eval_steps: Iterable[int] | None = None,
        eval_optimizer: InnerOptimizer | None = None,
        seed: int = 0,
        eval_seed: int | None = None,
        vectorize: bool = False,
        chunk_size: int | None = None,
        randomness: str = "error",
        distributed: bool | None = None,
        run_config: Mapping[str, Any] | None = None,
        resume_may_change: Iterable[str] = (),
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(task_source, TaskSource):
            raise TypeError(f"task_source must be a memmaml.tasks.TaskSource, got {type(task_source).__name__}")
        eval_source = task_source if eval_source is None else eval_source
        if not isinstance(eval_source, TaskSource):
            raise TypeError(f"eval_source must be a memmaml.tasks.TaskSource, got {type(eval_source).__name__}")
        inner_optimizer = SGD(0.01) if inner_optimizer is None else inner_optimizer
        eval_optimizer = inner_optimizer if eval_optimizer is None else eval_optimizer
        for name, opt in (("inner_optimizer", inner_optimizer), ("eval_optimizer", eval_optimizer)):
            if not isinstance(opt, InnerOptimizer):
                raise TypeError(f"{name} must be a memmaml in-graph optimizer (memmaml.SGD, memmaml.Adam, ...), "
                                f"got {type(opt).__name__}")
        _check_positive_int("num_inner_steps", num_inner_steps)
        _check_positive_int("meta_batch_size", meta_batch_size)
        _check_positive_int("num_eval_tasks", num_eval_tasks)
        if schedule is not None and not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a memmaml.schedules.Schedule or None, got {type(schedule).__name__}")
        if max_grad_norm is not None and not (isinstance(max_grad_norm, Number) and max_grad_norm > 0):
            raise ValueError(f"max_grad_norm must be a positive number or None, got {max_grad_norm!r}")
        if randomness not in ("error", "different", "same"):
            raise ValueError(f"randomness must be 'error', 'different' or 'same', got {randomness!r}")
        if vectorize:
            if schedule is not None:
                raise ValueError(f"vectorize=True runs the naive unroll under vmap; schedule must be None, "
                                 f"got {schedule!r} (use vectorize=False to checkpoint)")
            if max_grad_grad_norm is not None:
                raise ValueError(f"vectorize=True does not support max_grad_grad_norm (got {max_grad_grad_norm!r}); "
                                 "use vectorize=False")
            check_vmappable(model)
        if eval_steps is None:
            eval_steps = (0, 1, num_inner_steps)
        eval_steps = sorted(set(eval_steps))
        for s in eval_steps:
            _check_positive_int("each entry of eval_steps", s, minimum=0)
        if not eval_steps:
            raise ValueError("eval_steps must hold at least one step count")

        self.model = model
        self.task_source = task_source
        self.eval_source = eval_source
        self.loss_function = task_source.loss_function if loss_function is None else loss_function
        self.metrics = dict(task_source.metrics if metrics is None else metrics)
        self.inner_optimizer = inner_optimizer
        self.eval_optimizer = eval_optimizer
        self.num_inner_steps = num_inner_steps
        self.get_parameters = get_parameters
        self.schedule = schedule
        self.first_order = bool(first_order)
        self.max_grad_grad_norm = max_grad_grad_norm
        self.meta_batch_size = meta_batch_size
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.num_eval_tasks = num_eval_tasks
        self.eval_steps = eval_steps
        self.seed = int(seed)
        self.eval_seed = self.seed + 1 if eval_seed is None else int(eval_seed)
        self.vectorize = bool(vectorize)
        self.chunk_size = chunk_size
        self.randomness = randomness

        # processes
        import torch.distributed as dist

        if distributed is None:
            distributed = dist.is_available() and dist.is_initialized()
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise ValueError("distributed=True needs torch.distributed.init_process_group() to have been called")
        self.distributed = bool(distributed)
        self.rank = dist.get_rank() if self.distributed else 0
        self.world_size = dist.get_world_size() if self.distributed else 1
        if meta_batch_size % self.world_size:
            raise ValueError(
                f"meta_batch_size={meta_batch_size} is not divisible by the world size {self.world_size}: every "
                "process must adapt the same number of tasks; choose a meta-batch size that is a multiple of the "
                "number of processes")
        self.tasks_per_rank = meta_batch_size // self.world_size

        # engine
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("model has no parameters to meta-train")
        self.device = first.device
        self.dtype = first.dtype
        maml_class = NaiveMAML if schedule is None else GradientCheckpointMAML
        extra = {} if schedule is None else {"schedule": schedule}
        self.maml = maml_class(model, self.loss_function, inner_optimizer, get_parameters=get_parameters, **extra)

        # outer optimizer
        if outer_optimizer is None:
            meta = [p for p in model.parameters() if p.requires_grad]
            meta += [t for t in inner_optimizer.parameters() if all(t is not p for p in meta)]
            outer_optimizer = torch.optim.Adam(meta, lr=outer_lr)
        elif not isinstance(outer_optimizer, torch.optim.Optimizer):
            raise TypeError(f"outer_optimizer must be a torch.optim.Optimizer, got {type(outer_optimizer).__name__}")
        self.outer_optimizer = outer_optimizer
        self.meta_params: list[Tensor] = [p for group in outer_optimizer.param_groups for p in group["params"]]
        model_ids = {id(p) for p in model.parameters()}
        self._extra_meta_params = [p for p in self.meta_params if id(p) not in model_ids]

        # state
        self.iteration = 0
        self.task_generator = torch.Generator().manual_seed(self.seed)
        self._window = self._empty_window()
        self._elapsed = 0.0
        self._eval_tasks: Task | None = None
        self.config = self._build_config(run_config)
        self.resume_may_change = set(RESUME_MAY_CHANGE) | {f"run.{k}" for k in resume_may_change}
        if self.distributed:
            self._broadcast_from_rank0()

    @property
    def elapsed_s(self) -> float:
        """Seconds spent in meta-iterations so far, over all resumptions (evaluation excluded)."""
        return self._elapsed

    # ---------------------------------------------------------------- configuration
    def _build_config(self, run_config: Mapping[str, Any] | None) -> dict[str, Any]:
        model_params = {name: list(p.shape) for name, p in self.model.named_parameters()}
        outer_group = {k: v for k, v in self.outer_optimizer.defaults.items()
                       if k not in ("foreach", "fused", "capturable", "differentiable")}
        nested = {
            "format": CHECKPOINT_FORMAT,
            "task": self.task_source.config(),
            "eval_task": self.eval_source.config(),
            "model": {"class": type(self.model).__name__, "dtype": str(self.dtype), "parameters": model_params},
            "loss_function": getattr(self.loss_function, "__name__", repr(self.loss_function)),
            "inner_optimizer": {"class": type(self.inner_optimizer).__name__,
                                **_plain(self.inner_optimizer.hyperparams)},
            "eval_optimizer": {"class": type(self.eval_optimizer).__name__, **_plain(self.eval_optimizer.hyperparams)},
            "num_inner_steps": self.num_inner_steps,
            "schedule": None if self.schedule is None else repr(self.schedule),
            "first_order": self.first_order,
            "max_grad_grad_norm": self.max_grad_grad_norm,
            "outer_optimizer": {"class": type(self.outer_optimizer).__name__, **_plain(outer_group),
                                "num_meta_params": len(self.meta_params)},
            "meta_batch_size": self.meta_batch_size,
            "max_grad_norm": self.max_grad_norm,
            "num_eval_tasks": self.num_eval_tasks,
            "eval_steps": list(self.eval_steps),
            "seed": self.seed,
            "eval_seed": self.eval_seed,
            "vectorize": self.vectorize,
            "chunk_size": self.chunk_size,
            "world_size": self.world_size,
            "run": _plain(dict(run_config or {})),
        }
        flat: dict[str, Any] = {}
        _flatten("", nested, flat)
        return flat

    def metric_names(self) -> list[str]:
        """Every metric a log row may hold (the CSV header)."""
        names = ["loss", "loss_before", "grad_norm", *_TIMING_KEYS]
        for metric in ["loss", *self.metrics]:
            for s in self.eval_steps:
                names += [f"eval_{metric}@{s}", f"eval_{metric}@{s}_ci95"]
        return names

    # ----------------------------------------------------------------- distributed
    def _broadcast_from_rank0(self) -> None:
        import torch.distributed as dist

        with torch.no_grad():
            for tensor in [*self.meta_params, *self.model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    def _all_reduce_sum(self, tensor: Tensor) -> Tensor:
        if self.distributed:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    # -------------------------------------------------------------------- one step
    def sample_tasks(self) -> Task:
        """This process's share of the next meta-batch (advances the task generator)."""
        seeds = draw_seeds(self.task_generator, self.meta_batch_size)
        start = self.rank * self.tasks_per_rank
        mine = seeds[start:start + self.tasks_per_rank]
        return self.task_source.sample_batch(mine).to(self.device, self.dtype)

    def compute_meta_gradient(self, tasks: Task) -> dict[str, Tensor]:
        """Set ``.grad`` of every meta-parameter to the meta-gradient over ``tasks`` (averaged over processes).

        The meta-gradient is that of the mean query loss over the whole
        meta-batch. Differentiates through the inner loop (second order) unless
        ``first_order``. No clipping and no outer step.

        Returns:
            ``{"loss": mean query loss after adaptation, "loss_before": mean
            support loss before it}``, 0-d tensors averaged over processes.
        """
        n = tasks.num_tasks
        for p in self.meta_params:
            p.grad = None
        if self.vectorize:
            out = batched_meta_gradient(
                self.model, self.loss_function, tasks, self.inner_optimizer, num_steps=self.num_inner_steps,
                params=self.maml.adapted_parameters(), first_order=self.first_order,
                chunk_size=self.chunk_size, randomness=self.randomness)
            by_id = {id(t): g for t, g in zip(out.wrt, out.grads)}
            for p in self.meta_params:
                p.grad = by_id.get(id(p))
            query, before = out.query_losses, out.support_losses[:, 0]
        else:
            query_list, before_list = [], []
            for t in range(n):
                task = tasks.select(t)
                result = self.maml([task.support] * self.num_inner_steps, first_order=self.first_order,
                                   max_grad_grad_norm=self.max_grad_grad_norm)
                loss = self.loss_function(result.model, task.query)
                (loss / n).backward()
                query_list.append(loss.detach())
                before_list.append(result.loss_history[0].detach())
            query, before = torch.stack(query_list), torch.stack(before_list)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.meta_params]
        stats = torch.stack([query.mean(), before.mean()]).to(grads[0].dtype if grads else self.dtype)
        if self.distributed:
            flat = torch.cat([g.reshape(-1) for g in grads] + [stats.to(grads[0].device)])
            self._all_reduce_sum(flat)
            flat /= self.world_size
            offset = 0
            for p, g in zip(self.meta_params, grads):
                p.grad = flat[offset:offset + g.numel()].view_as(g).clone()
                offset += g.numel()
            stats = flat[offset:]
        else:
            for p, g in zip(self.meta_params, grads):
                p.grad = g
        return {"loss": stats[0], "loss_before": stats[1]}

    def step(self) -> dict[str, float]:
        """One meta-iteration: sample, meta-gradient, clip, outer step. Returns this iteration's metrics."""
        tasks = self.sample_tasks()
        stats = self.compute_meta_gradient(tasks)
        norm = torch.nn.utils.clip_grad_norm_(self.meta_params, self.max_grad_norm or math.inf)
        self.outer_optimizer.step()
        self.iteration += 1
        return {"loss": stats["loss"].item(), "loss_before": stats["loss_before"].item(), "grad_norm": norm.item()}

    # ------------------------------------------------------------------ evaluation
    def eval_tasks(self) -> Task:
        """This process's share of the held-out tasks (built once from ``eval_seed``, then cached)."""
        if self._eval_tasks is None:
            seeds = draw_seeds(torch.Generator().manual_seed(self.eval_seed), self.num_eval_tasks)
            per = -(-self.num_eval_tasks // self.world_size)
            mine = seeds[self.rank * per:(self.rank + 1) * per]
            self._eval_tasks = self.eval_source.sample_batch(mine).to(self.device, self.dtype) if mine else None
        return self._eval_tasks

    def _evaluate_local(self, tasks: Task) -> dict[str, Tensor]:
        params = self.maml.adapted_parameters()
        if self.vectorize:
            return batched_evaluate(self.model, self.loss_function, tasks, self.eval_optimizer, steps=self.eval_steps,
                                    metrics=self.metrics, params=params, chunk_size=self.chunk_size,
                                    randomness=self.randomness)
        names = ["loss", *self.metrics]
        columns: dict[str, list[Tensor]] = {name: [] for name in names}
        detached = {k: v.detach() for k, v in params.items()}
        for t in range(tasks.num_tasks):
            task = tasks.select(t)
            current, opt_state, done = detached, None, 0
            rows: dict[str, list[Tensor]] = {name: [] for name in names}
            for target in self.eval_steps:
                if target > done:
                    out = unroll(self.model, self.loss_function, [task.support] * (target - done), self.eval_optimizer,
                                 params=current, opt_state=opt_state, first_order=True)
                    current = {k: v.detach() for k, v in out.params.items()}
                    opt_state = out.opt_state
                    done = target
                with torch.no_grad():
                    view = AdaptedModule(self.model, current)
                    rows["loss"].append(self.loss_function(view, task.query).detach())
                    for name in self.metrics:
                        rows[name].append(self.metrics[name](view, task.query).detach())
            for name in names:
                columns[name].append(torch.stack(rows[name]))
        return {name: torch.stack(columns[name]) for name in names}

    def evaluate(self) -> dict[str, float]:
        """Held-out query loss and metrics after each of ``eval_steps`` inner steps.

        Returns:
            ``{"eval_<metric>@<steps>": mean, "eval_<metric>@<steps>_ci95": half-width}``
            over ``num_eval_tasks`` tasks (all processes).
        """
        tasks = self.eval_tasks()
        names = ["loss", *self.metrics]
        k = len(self.eval_steps)
        sums = torch.zeros(len(names), 3, k, dtype=torch.float64, device=self.device)
        if tasks is not None:
            values = self._evaluate_local(tasks)
            for i, name in enumerate(names):
                v = values[name].to(torch.float64)
                sums[i, 0] = v.shape[0]
                sums[i, 1] = v.sum(0)
                sums[i, 2] = (v * v).sum(0)
        self._all_reduce_sum(sums)
        sums = sums.cpu()
        out: dict[str, float] = {}
        for i, name in enumerate(names):
            for j, s in enumerate(self.eval_steps):
                count, total, squares = (float(x) for x in sums[i, :, j])
                mean = total / count
                var = max(squares - count * mean * mean, 0.0) / (count - 1) if count > 1 else float("nan")
                out[f"eval_{name}@{s}"] = mean
                out[f"eval_{name}@{s}_ci95"] = 1.96 * math.sqrt(var / count) if count > 1 else float("nan")
        return out

    # ----------------------------------------------------------------- checkpoints
    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        random.setstate(_as_random_state(state["python"]))
        if self.device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)

    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (tensors and plain values); collective when distributed."""
        rng = [self._rng_state()]
        if self.distributed:
            import torch.distributed as dist

            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, _to_cpu(rng[0]))
            rng = gathered
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "config": self.config,
            "model": self.model.state_dict(),
            "extra_meta_params": [p.detach() for p in self._extra_meta_params],
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "rng": rng,
            "window": dict(self._window),
            "elapsed_s": self._elapsed,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
        """Restore a :meth:`state_dict`; refuse one from an incompatible configuration.

        Raises:
            IncompatibleCheckpointError: the configurations differ in a key that
                is not in ``resume_may_change``; the message lists every such key.
        """
        diff = _config_diff(state.get("config", {}), self.config, self.resume_may_change)
        if diff:
            raise IncompatibleCheckpointError(
                f"{source} was written by a run with a different configuration; refusing to resume it:\n"
                + "\n".join(diff))
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for p, saved in zip(self._extra_meta_params, state["extra_meta_params"], strict=True):
                p.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.task_generator.set_state(state["task_generator"])
        rng = state["rng"]
        if len(rng) == self.world_size:
            self._set_rng_state(rng[self.rank])
        else:
            warnings.warn(
                f"{source} holds the RNG states of {len(rng)} processes, this run has {self.world_size}: processes "
                "without a saved state start a fresh stream; random operators in the model (dropout) will not "
                "repeat the original run", stacklevel=2)
            if self.rank < len(rng):
                self._set_rng_state(rng[self.rank])
            else:
                torch.manual_seed(self.seed * 1_000_003 + int(state["iteration"]) * 1009 + self.rank)
        self.iteration = int(state["iteration"])
        self._window = dict(state["window"])
        self._elapsed = float(state["elapsed_s"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write a checkpoint to ``path`` atomically (rank 0 writes; call on every rank)."""
        state = self.state_dict()
        if self.rank == 0:
            atomic_save(state, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Resume from a checkpoint file (every rank reads it)."""
        self.load_state_dict(load_checkpoint_file(path, map_location="cpu"), source=f"checkpoint {str(path)!r}")

    # ------------------------------------------------------------------------ loop
    @staticmethod
    def _empty_window() -> dict[str, float]:
        return {"count": 0, "loss": 0.0, "loss_before": 0.0, "grad_norm": 0.0, "time": 0.0}

    def train(
        self,
        num_iterations: int,
        *,
        log_path: str | os.PathLike | None = None,
        log_every: int = 1,
        eval_every: int | None = None,
        checkpoint_path: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        progress: bool = True,
    ) -> list[dict[str, Any]]:
        """Train until ``self.iteration == num_iterations`` (a resumed trainer continues where it stopped).

        Args:
            num_iterations: the total number of meta-iterations of the run.
            log_path: JSONL or CSV file for metrics (rank 0 writes). A fresh run
                starts the file anew; a resumed one drops rows past its checkpoint.
            log_every: write a ``"train"`` row with the averages over the last
                ``log_every`` iterations.
            eval_every: evaluate on the held-out tasks at iteration 0 (fresh
                runs), every ``eval_every`` iterations and at the end; ``None``
                evaluates only at the end.
            checkpoint_path: where to save checkpoints (atomically).
            checkpoint_every: save every this many iterations (and at the end).
            progress: a tqdm bar on rank 0.

        Returns:
            The rows logged by this call (every process gets them).
        """
        _check_positive_int("num_iterations", num_iterations, minimum=0)
        _check_positive_int("log_every", log_every)
        if eval_every is not None:
            _check_positive_int("eval_every", eval_every)
        if checkpoint_every is not None:
            _check_positive_int("checkpoint_every", checkpoint_every)
            if checkpoint_path is None:
                raise ValueError("checkpoint_every needs a checkpoint_path")
        if num_iterations < self.iteration:
            raise ValueError(f"num_iterations={num_iterations} is less than the iterations already run "
                             f"({self.iteration})")
        log = MetricsLog(log_path, self.metric_names()) if (log_path is not None and self.rank == 0) else None
        if log is not None:
            log.start(self.iteration)
        rows: list[dict[str, Any]] = []

        def emit(row: dict[str, Any]) -> None:
            rows.append(row)
            if log is not None:
                log.write(row)

        def run_eval() -> None:
            row = {"iteration": self.iteration, "kind": "eval", **self.evaluate()}
            emit(row)

        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_iterations, initial=self.iteration, desc="meta-train", unit="it", dynamic_ncols=True)
        try:
            if self.iteration == 0 and eval_every is not None and num_iterations > 0:
                run_eval()
            while self.iteration < num_iterations:
                start = time.perf_counter()
                metrics = self.step()
                spent = time.perf_counter() - start
                self._elapsed += spent
                w = self._window
                w["count"] += 1
                for key in ("loss", "loss_before", "grad_norm"):
                    w[key] += metrics[key]
                w["time"] += spent
                if bar is not None:
                    bar.update()
                if self.iteration % log_every == 0 or self.iteration == num_iterations:
                    count = w["count"]
                    emit({"iteration": self.iteration, "kind": "train",
                          "loss": w["loss"] / count, "loss_before": w["loss_before"] / count,
                          "grad_norm": w["grad_norm"] / count, "sec_per_iter": w["time"] / count,
                          "elapsed_s": self._elapsed})
                    if bar is not None:
                        bar.set_postfix(loss=f"{w['loss'] / count:.4g}")
                    self._window = self._empty_window()
                if (eval_every is not None and self.iteration % eval_every == 0) or self.iteration == num_iterations:
                    run_eval()
                if checkpoint_path is not None and (
                        (checkpoint_every is not None and self.iteration % checkpoint_every == 0)
                        or self.iteration == num_iterations):
                    self.save_checkpoint(checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
        return rows


def _as_random_state(value: Any) -> tuple:
    """``random.setstate`` wants tuples; a checkpoint may give lists back."""
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _to_cpu(state: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (v.cpu() if isinstance(v, Tensor) else v) for k, v in state.items()}
