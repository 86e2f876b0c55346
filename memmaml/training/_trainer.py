"""Meta-training: an outer loop over meta-batches of tasks, resumable, optionally spread over processes.

One meta-iteration of :class:`MetaTrainer` (hyperparameters from its :class:`TrainerConfig`)::

    seeds   = draw_seeds(task_generator, meta_batch_size)     # the same on every process
    tasks   = this process's share of the seeds, built by the task source
    for each task: adapt with num_inner_steps of the inner optimizer on its support set
    meta-gradient = d/d(meta-parameters) of the mean query loss   (averaged over processes)
    clip the meta-gradient to max_grad_norm (global L2 norm); outer_optimizer.step()

The inner loop is the package's engine (:func:`memmaml.unroll`, naive, or
checkpointed with the config's schedule), one task after another, each task's
backward pass run before the next task is adapted; or, with
``vectorize=True``, the whole share adapted in one ``torch.func.vmap`` call
(:func:`memmaml.batched_meta_gradient`). Both give the same meta-gradient.
Held-out evaluation (:meth:`MetaTrainer.evaluate`) is
:func:`memmaml.batched_evaluate` on a fixed set of tasks, on the same path.
Processes: NOTE [ Data parallel over processes ] in :mod:`memmaml.training._distributed`.

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
    mid-save leaves the previous checkpoint intact (:mod:`memmaml.training._checkpoint_io`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import int_at_least
from ..engine import AdaptedModule, choose_schedule, measure_step_costs, select_parameters, unroll
from ..schedules import Choice
from ..tasks import Task, TaskSource, draw_seeds
from ._batched import batched_meta_gradient, check_vmappable
from ._checkpoint_io import (
    CHECKPOINT_FORMAT,
    RESUME_MAY_CHANGE,
    atomic_save,
    check_compatible,
    flatten,
    load_checkpoint_file,
    plain,
)
from ._distributed import Processes
from ._evaluation import batched_evaluate, held_out_share, summarize
from ._metrics_log import MetricsLog, TrainWindow
from ._trainer_config import TrainerConfig

__all__ = ["MetaTrainer"]


class MetaTrainer:
    """Meta-trains ``model`` on tasks from ``task_source``; see the module docstring.

    Args:
        model: the meta-learned module (its parameters are the initialisation
            the inner loop adapts). Keep it in train mode as MAML does; it is
            called functionally, never copied.
        task_source: a :class:`~memmaml.tasks.TaskSource` for training tasks.
        config: the run's hyperparameters (default ``TrainerConfig()``).
        loss_function: ``loss_function(model, batch) -> 0-d tensor`` (default:
            ``task_source.loss_function``).
        metrics: query metrics for evaluation, ``{name: fn(model, batch)}``
            (default: ``task_source.metrics``, e.g. accuracy).
        get_parameters: which parameters the inner loop adapts (as for
            :class:`memmaml.NaiveMAML`; default all that require grad).
        outer_optimizer: a ``torch.optim`` optimizer over the meta-parameters
            (default: ``torch.optim.Adam`` at ``config.outer_lr`` over the model's
            trainable parameters and the inner optimizer's learnable
            hyperparameters). Every tensor in its parameter groups is a
            meta-parameter: its gradient is averaged over processes and clipped.
        eval_source: task source for held-out tasks (default: ``task_source``;
            for classification pass one built on held-out classes).
        distributed: spread the meta-batch over ``torch.distributed`` processes
            (default: whenever a process group is initialised).
        run_config: extra plain values describing the run (CLI arguments, say),
            stored in checkpoints and compared on resume.
        resume_may_change: keys of ``run_config`` that may differ on resume.

    Attributes:
        config: ``config`` with its defaults filled in (:meth:`TrainerConfig.resolved`).
        plain_config: the flat dict of plain values a checkpoint stores and a
            resumed run is compared on (the config, the task sources, the model's
            shapes, the outer optimizer, ``run_config``).

    Example:
        >>> import torch, memmaml
        >>> from memmaml.tasks import Sinusoid
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 1))
        >>> config = memmaml.TrainerConfig(inner_optimizer=memmaml.SGD(0.01), schedule="uniform:1",
        ...                                meta_batch_size=4, num_eval_tasks=8)
        >>> trainer = memmaml.MetaTrainer(model, Sinusoid(num_shots=10), config)
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
        config: TrainerConfig | None = None,
        *,
        loss_function: Callable[..., Tensor] | None = None,
        metrics: Mapping[str, Callable[..., Tensor]] | None = None,
        get_parameters: Callable[[nn.Module], Iterable[Tensor]] | None = None,
        outer_optimizer: torch.optim.Optimizer | None = None,
        eval_source: TaskSource | None = None,
        distributed: bool | None = None,
        run_config: Mapping[str, Any] | None = None,
        resume_may_change: Iterable[str] = (),
    ) -> None:
        config = TrainerConfig() if config is None else config
        eval_source = task_source if eval_source is None else eval_source
        for name, value, kind, called in (
            ("model", model, nn.Module, "torch.nn.Module"),
            ("task_source", task_source, TaskSource, "memmaml.tasks.TaskSource"),
            ("eval_source", eval_source, TaskSource, "memmaml.tasks.TaskSource"),
            ("config", config, TrainerConfig, "memmaml.TrainerConfig"),
        ):
            if not isinstance(value, kind):
                raise TypeError(f"{name} must be a {called}, got {type(value).__name__}")
        if config.vectorize:
            check_vmappable(model)
        self.processes = Processes.current(distributed)
        self.rank, self.world_size = self.processes.rank, self.processes.world_size
        if config.meta_batch_size % self.world_size:
            raise ValueError(
                f"meta_batch_size={config.meta_batch_size} is not divisible by the world size {self.world_size}: "
                "every process must adapt the same number of tasks; choose a meta-batch size that is a multiple "
                "of the number of processes"
            )
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("model has no parameters to meta-train")

        self.model, self.config = model, config.resolved()
        self._choice: Choice | None = None  # the concrete schedule, chosen on the first task
        self.task_source, self.eval_source = task_source, eval_source
        self.loss_function = task_source.loss_function if loss_function is None else loss_function
        if not callable(self.loss_function):
            raise TypeError(f"loss_function must be callable, got {type(self.loss_function).__name__}")
        self.metrics = dict(task_source.metrics if metrics is None else metrics)
        self.get_parameters = get_parameters
        self.device, self.dtype = first.device, first.dtype
        self.tasks_per_rank = config.meta_batch_size // self.world_size

        if outer_optimizer is None:
            meta = [p for p in model.parameters() if p.requires_grad]
            meta += [t for t in config.inner_optimizer.parameters() if all(t is not p for p in meta)]
            outer_optimizer = torch.optim.Adam(meta, lr=config.outer_lr)
        elif not isinstance(outer_optimizer, torch.optim.Optimizer):
            raise TypeError(f"outer_optimizer must be a torch.optim.Optimizer, got {type(outer_optimizer).__name__}")
        self.outer_optimizer = outer_optimizer
        self.meta_params: list[Tensor] = [p for group in outer_optimizer.param_groups for p in group["params"]]
        model_ids = {id(p) for p in model.parameters()}
        self._extra_meta_params = [p for p in self.meta_params if id(p) not in model_ids]

        self.iteration = 0
        self.task_generator = torch.Generator().manual_seed(config.seed)
        self._window = TrainWindow()
        self._elapsed = 0.0
        self._eval_tasks: Task | None = None
        self.plain_config = self._plain_config(run_config)
        self.resume_may_change = set(RESUME_MAY_CHANGE) | {f"run.{k}" for k in resume_may_change}
        self.processes.broadcast_from_rank0([*self.meta_params, *model.buffers()])

    @property
    def elapsed_s(self) -> float:
        """Seconds spent in meta-iterations so far, over all resumptions (evaluation excluded)."""
        return self._elapsed

    def _plain_config(self, run_config: Mapping[str, Any] | None) -> dict[str, Any]:
        outer_group = {
            k: v
            for k, v in self.outer_optimizer.defaults.items()
            if k not in ("foreach", "fused", "capturable", "differentiable")
        }
        return flatten(
            {
                "format": CHECKPOINT_FORMAT,
                "task": self.task_source.config(),
                "eval_task": self.eval_source.config(),
                "model": {
                    "class": type(self.model).__name__,
                    "dtype": str(self.dtype),
                    "parameters": {name: list(p.shape) for name, p in self.model.named_parameters()},
                },
                "loss_function": getattr(self.loss_function, "__name__", repr(self.loss_function)),
                **self.config.plain(),
                "outer_optimizer": {
                    "class": type(self.outer_optimizer).__name__,
                    **plain(outer_group),
                    "num_meta_params": len(self.meta_params),
                },
                "world_size": self.world_size,
                "run": plain(dict(run_config or {})),
            }
        )

    def metric_names(self) -> list[str]:
        """Every metric a log row may hold (the CSV header)."""
        names = ["loss", "loss_before", "grad_norm", "sec_per_iter", "elapsed_s"]
        for metric in ["loss", *self.metrics]:
            for s in self.config.eval_steps:
                names += [f"eval_{metric}@{s}", f"eval_{metric}@{s}_ci95"]
        return names

    def _schedule_choice(self, task: Task) -> Choice:
        """The concrete schedule of the inner loop; an Auto schedule measures one step, once per trainer."""
        if self._choice is None:
            config = self.config
            self._choice = choose_schedule(
                config.schedule,
                config.num_inner_steps,
                lambda: measure_step_costs(
                    self.model,
                    self.loss_function,
                    task.support,
                    config.inner_optimizer,
                    params=self._adapted_parameters(),
                ),
                offload=config.offload,
            )
        return self._choice

    def _adapted_parameters(self) -> dict[str, Tensor]:
        return select_parameters(self.model, self.get_parameters)

    # -------------------------------------------------------------------- one step
    def sample_tasks(self) -> Task:
        """This process's share of the next meta-batch (advances the task generator)."""
        seeds = draw_seeds(self.task_generator, self.config.meta_batch_size)
        mine = self.processes.contiguous_share(seeds, self.tasks_per_rank)
        return self.task_source.sample_batch(mine).to(self.device, self.dtype)

    def compute_meta_gradient(self, tasks: Task) -> dict[str, Tensor]:
        """Set ``.grad`` of every meta-parameter to the meta-gradient over ``tasks`` (averaged over processes).

        The meta-gradient is that of the mean query loss over the whole
        meta-batch. Differentiates through the inner loop (second order) unless
        ``first_order``. No clipping and no outer step.

        Returns:
            ``{"loss": ..., "loss_before": ...}``: the mean query loss after
            adaptation and the mean support loss before it, 0-d tensors averaged
            over processes.
        """
        config = self.config
        for p in self.meta_params:
            p.grad = None
        if config.vectorize:
            out = batched_meta_gradient(
                self.model,
                self.loss_function,
                tasks,
                config.inner_optimizer,
                num_steps=config.num_inner_steps,
                params=self._adapted_parameters(),
                first_order=config.first_order,
                max_grad_grad_norm=config.max_grad_grad_norm,
                chunk_size=config.chunk_size,
                randomness=config.randomness,
            )
            by_id = {id(t): g for t, g in zip(out.wrt, out.grads)}
            for p in self.meta_params:
                p.grad = by_id.get(id(p))
            query, before = out.query_losses, out.support_losses[:, 0]
        else:
            query, before = self._accumulate_task_by_task(tasks)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.meta_params]
        stats = torch.stack([query.mean(), before.mean()]).to(grads[0].dtype if grads else self.dtype)
        *grads, stats = self.processes.average([*grads, stats.to(grads[0].device if grads else self.device)])
        for p, g in zip(self.meta_params, grads):
            p.grad = g
        return {"loss": stats[0], "loss_before": stats[1]}

    def _accumulate_task_by_task(self, tasks: Task) -> tuple[Tensor, Tensor]:
        """Adapt each task with the engine and add ``d(query loss / n)`` to ``.grad`` before the next task."""
        config, n = self.config, tasks.num_tasks
        query, before = [], []
        for t in range(n):
            task = tasks.select(t)
            choice = self._schedule_choice(task)
            out = unroll(
                self.model,
                self.loss_function,
                [task.support] * config.num_inner_steps,
                config.inner_optimizer,
                params=self._adapted_parameters(),
                schedule=choice.schedule,
                offload=choice.offload,
                first_order=config.first_order,
                max_grad_grad_norm=config.max_grad_grad_norm,
            )
            loss = self.loss_function(AdaptedModule(self.model, out.params), task.query)
            (loss / n).backward()
            query.append(loss.detach())
            before.append(out.loss_history[0].detach())
        return torch.stack(query), torch.stack(before)

    def step(self) -> dict[str, float]:
        """One meta-iteration: sample, meta-gradient, clip, outer step. Returns this iteration's metrics."""
        stats = self.compute_meta_gradient(self.sample_tasks())
        norm = torch.nn.utils.clip_grad_norm_(self.meta_params, self.config.max_grad_norm or math.inf)
        self.outer_optimizer.step()
        self.iteration += 1
        return {"loss": stats["loss"].item(), "loss_before": stats["loss_before"].item(), "grad_norm": norm.item()}

    # ------------------------------------------------------------------ evaluation
    def eval_tasks(self) -> Task | None:
        """This process's share of the held-out tasks (built once from ``eval_seed``, then cached)."""
        if self._eval_tasks is None:
            self._eval_tasks = held_out_share(
                self.eval_source,
                self.config.num_eval_tasks,
                self.config.eval_seed,
                self.processes,
                device=self.device,
                dtype=self.dtype,
            )
        return self._eval_tasks

    def evaluate(self) -> dict[str, float]:
        """Held-out query loss and metrics after each of ``eval_steps`` inner steps.

        Returns:
            ``{"eval_<metric>@<steps>": mean, "eval_<metric>@<steps>_ci95": half-width}``
            over ``num_eval_tasks`` tasks (all processes).
        """
        config, tasks = self.config, self.eval_tasks()
        values = (
            None
            if tasks is None
            else batched_evaluate(
                self.model,
                self.loss_function,
                tasks,
                config.eval_optimizer,
                steps=config.eval_steps,
                metrics=self.metrics,
                params=self._adapted_parameters(),
                vectorize=config.vectorize,
                chunk_size=config.chunk_size,
                randomness=config.randomness,
            )
        )
        return summarize(values, ["loss", *self.metrics], config.eval_steps, self.processes, self.device)

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything a checkpoint holds (tensors and plain values); collective when distributed."""
        return {
            "format": CHECKPOINT_FORMAT,
            "iteration": self.iteration,
            "config": self.plain_config,
            "model": self.model.state_dict(),
            "extra_meta_params": [p.detach() for p in self._extra_meta_params],
            "outer_optimizer": self.outer_optimizer.state_dict(),
            "task_generator": self.task_generator.get_state(),
            "rng": self.processes.gather_rng_states(self.device),
            "window": dict(self._window.state),
            "elapsed_s": self._elapsed,
        }

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
        """Restore a :meth:`state_dict`; refuse one from an incompatible configuration.

        Raises:
            IncompatibleCheckpointError: the configurations differ in a key that
                is not in ``resume_may_change``; the message lists every such key.
        """
        check_compatible(state.get("config", {}), self.plain_config, self.resume_may_change, source)
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for p, saved in zip(self._extra_meta_params, state["extra_meta_params"], strict=True):
                p.copy_(saved)
        self.outer_optimizer.load_state_dict(state["outer_optimizer"])
        self.task_generator.set_state(state["task_generator"])
        self.iteration = int(state["iteration"])
        self.processes.restore_rng_states(
            state["rng"], self.device, source=source, fallback_seed=self.config.seed * 1_000_003 + self.iteration * 1009
        )
        self._window = TrainWindow(state["window"])
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
        self._check_train_arguments(num_iterations, log_every, eval_every, checkpoint_path, checkpoint_every)
        log = MetricsLog(log_path, self.metric_names()) if (log_path is not None and self.rank == 0) else None
        if log is not None:
            log.start(self.iteration)
        rows: list[dict[str, Any]] = []

        def emit(row: dict[str, Any]) -> None:
            rows.append(row)
            if log is not None:
                log.write(row)

        bar = None
        if progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_iterations, initial=self.iteration, desc="meta-train", unit="it", dynamic_ncols=True)
        try:
            if self.iteration == 0 and eval_every is not None and num_iterations > 0:
                emit({"iteration": self.iteration, "kind": "eval", **self.evaluate()})
            while self.iteration < num_iterations:
                start = time.perf_counter()
                metrics = self.step()
                spent = time.perf_counter() - start
                self._elapsed += spent
                self._window.add(metrics, spent)
                if bar is not None:
                    bar.update()
                last = self.iteration == num_iterations
                if self.iteration % log_every == 0 or last:
                    emit(self._window.close(self.iteration, self._elapsed))
                    if bar is not None:
                        bar.set_postfix(loss=f"{rows[-1]['loss']:.4g}")
                if (eval_every is not None and self.iteration % eval_every == 0) or last:
                    emit({"iteration": self.iteration, "kind": "eval", **self.evaluate()})
                if checkpoint_path is not None and (
                    (checkpoint_every is not None and self.iteration % checkpoint_every == 0) or last
                ):
                    self.save_checkpoint(checkpoint_path)
        finally:
            if bar is not None:
                bar.close()
        return rows

    def _check_train_arguments(
        self,
        num_iterations: int,
        log_every: int,
        eval_every: int | None,
        checkpoint_path: Any,
        checkpoint_every: int | None,
    ) -> None:
        int_at_least("num_iterations", num_iterations, 0)
        int_at_least("log_every", log_every, 1)
        if eval_every is not None:
            int_at_least("eval_every", eval_every, 1)
        if checkpoint_every is not None:
            int_at_least("checkpoint_every", checkpoint_every, 1)
            if checkpoint_path is None:
                raise ValueError("checkpoint_every needs a checkpoint_path")
        if num_iterations < self.iteration:
            raise ValueError(
                f"num_iterations={num_iterations} is less than the iterations already run ({self.iteration})"
            )
