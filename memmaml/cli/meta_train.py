"""Meta-train a MAML model with memmaml from the command line.

Examples::

    # Finn et al. 2017 sinusoid: K=10, one inner step at 0.01, meta-batch 25, Adam 1e-3, 70k iterations
    python scripts/meta_train.py --task sinusoid --iterations 70000 --vectorize --out runs/sinusoid

    # 5-way 1-shot classification of synthetic clusters, evaluation every 500 iterations
    python scripts/meta_train.py --task synthetic --num-ways 5 --num-shots 1 --inner-lr 0.4 \\
        --iterations 5000 --eval-every 500 --out runs/synthetic

    # Omniglot from a local copy (root/omniglot-py/images_background and images_evaluation)
    python scripts/meta_train.py --task omniglot --data-root ~/data --num-ways 5 --num-shots 1 \\
        --model conv --inner-lr 0.4 --meta-batch-size 32 --vectorize --out runs/omniglot

    # resume after an interruption (same arguments plus --resume)
    python scripts/meta_train.py ... --out runs/sinusoid --resume

    # spread each meta-batch over 2 processes (gloo on CPU, NCCL on GPU)
    torchrun --nproc-per-node 2 scripts/meta_train.py --task sinusoid --meta-batch-size 24 --out runs/dp

Every flag is checked before anything is written: a bad value stops with
one ``error: argument --flag: ...`` line and exit status 2. Writes to
``--out``: ``metrics.jsonl`` (or ``.csv``), ``checkpoint.pt`` (atomically,
every ``--checkpoint-every`` iterations and at the end; ``--iterations 0``
writes the untrained model's), ``config.json`` and, at the end,
``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import memmaml
from memmaml import MetaTrainer, TrainerConfig, models
from memmaml.tasks import ImageFolderTasks, Omniglot, Sinusoid, SyntheticClassification

from . import _types as t

__all__ = ["MAY_CHANGE", "build_parser", "check", "main", "parse_args"]

PROG = "memmaml-train"
SCRIPT = "scripts/meta_train.py"

# arguments that may change between a run and its resumption
MAY_CHANGE = [
    "iterations",
    "eval_every",
    "log_every",
    "checkpoint_every",
    "out",
    "resume",
    "threads",
    "progress",
    "device",
    "vectorize",
    "chunk_size",
    "log_format",
    "data_root",
    "eval_data_root",
    "eval_steps",
    "num_eval_tasks",
    "eval_seed",
]
IMAGE_TASKS = ("imagefolder", "omniglot")
#: TrainerConfig's and the task sources' argument names whose flag is not ``--`` + the name with dashes
FLAGS = {
    "num_inner_steps": "--inner-steps",
    "schedule": "--engine",
    "offload": "--engine",
    "inner_optimizer": "--inner-optimizer",
    "num_iterations": "--iterations",
    "root": "--data-root",
}
#: torch.optim's optimizer classes by their lower-case name
OUTER_OPTIMIZERS = {
    name.lower(): name
    for name in dir(torch.optim)
    if isinstance(getattr(torch.optim, name), type)
    and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
    and name != "Optimizer"
}


def _outer_optimizer(text: str) -> str:
    """A torch.optim optimizer class name, case-insensitive (``adam`` -> ``Adam``)."""
    name = OUTER_OPTIMIZERS.get(text.strip().lower())
    if name is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch.optim optimizer; choose from {', '.join(sorted(OUTER_OPTIMIZERS.values()))}"
        )
    return name


def _checked(check: Any) -> Any:
    """A ``type=`` that checks the text with ``check`` and keeps it as typed (checkpoints compare it on resume)."""

    def as_typed(text: str) -> str:
        check(text)
        return text

    as_typed.__name__ = check.__name__
    return as_typed


def build_parser(prog: str = PROG) -> t.ArgumentParser:
    """The command line; every value is checked here or in :func:`parse_args`, before any work."""
    p = t.ArgumentParser(prog=prog, usage=t.USAGE_WITH_OUT, description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("tasks")
    g.add_argument(
        "--task",
        type=t.lower,
        choices=["sinusoid", "synthetic", *IMAGE_TASKS],
        default="sinusoid",
        help="what each task is: a sine wave to fit, or N-way K-shot classification",
    )
    g.add_argument(
        "--num-shots", type=t.positive_int, default="10", help="support examples (per class for classification)"
    )
    g.add_argument(
        "--num-query",
        type=t.positive_int,
        default=None,
        help="query examples (per class); default: --num-shots for sinusoid, 15 otherwise",
    )
    g.add_argument("--num-ways", type=t.positive_int, default="5", help="classes per task")
    g.add_argument("--num-features", type=t.positive_int, default="16", help="synthetic: input dimension")
    g.add_argument(
        "--data-root",
        type=t.existing_folder,
        default=None,
        help="imagefolder: training class folders; omniglot: the folder holding omniglot-py",
    )
    g.add_argument("--eval-data-root", type=t.existing_folder, default=None, help="imagefolder: held-out class folders")
    g.add_argument("--image-size", type=t.positive_int, default=None, help="default 28 (omniglot) / 84 (imagefolder)")
    g.add_argument("--grayscale", action="store_true", help="imagefolder: one channel")
    g.add_argument("--rotations", action="store_true", help="add 90/180/270-degree rotations as classes")
    g = p.add_argument_group("model")
    g.add_argument("--model", type=t.lower, choices=["mlp", "conv"], default=None, help="default: mlp, conv for images")
    g.add_argument("--hidden", type=_checked(t.positive_int_list), default="40,40", help="mlp hidden sizes")
    g.add_argument("--filters", type=t.positive_int, default="64", help="conv: filters per layer (4 layers)")
    g.add_argument(
        "--dtype", type=t.lower, choices=["float32", "float64"], default="float32", help="the model's and the data's"
    )
    g = p.add_argument_group("inner loop")
    g.add_argument(
        "--inner-optimizer",
        type=t.lower,
        choices=["sgd", "adam", "rmsprop"],
        default="sgd",
        help="the in-graph optimizer that adapts each task",
    )
    g.add_argument("--inner-lr", type=t.positive_float, default="0.01", help="its learning rate")
    g.add_argument("--inner-steps", type=t.positive_int, default="1", help="inner steps per task in training")
    g.add_argument(
        "--engine",
        type=_checked(t.engine),
        default="naive",
        help="the inner loop's engine in memmaml.parse_engine's syntax: naive, uniform:K, sqrt, "
        "binomial:SLOTS, auto:BUDGET, any but naive followed by +offload",
    )
    g.add_argument("--first-order", action="store_true", help="first-order MAML: no second-order terms")
    g.add_argument("--vectorize", action="store_true", help="adapt the meta-batch with torch.func.vmap")
    g.add_argument("--chunk-size", type=t.positive_int, default=None, help="vmap over at most this many tasks at once")
    g = p.add_argument_group("outer loop")
    g.add_argument(
        "--outer-optimizer",
        type=_outer_optimizer,
        default="Adam",
        help="a torch.optim optimizer class, any case (adam, SGD, AdamW)",
    )
    g.add_argument("--outer-lr", type=t.non_negative_float, default="1e-3", help="the outer optimizer's learning rate")
    g.add_argument("--meta-batch-size", type=t.positive_int, default="25", help="tasks per meta-iteration")
    g.add_argument(
        "--max-grad-norm",
        type=t.positive_float,
        default=None,
        help="clip the meta-gradient's global L2 norm (default: no clipping)",
    )
    g.add_argument(
        "--iterations",
        type=t.non_negative_int,
        default="70000",
        help="meta-iterations of the whole run (0: write the untrained model's checkpoint)",
    )
    g.add_argument("--seed", type=t.non_negative_int, default="0", help="seed of the model and the training tasks")
    g = p.add_argument_group("evaluation and output")
    g.add_argument(
        "--eval-every",
        type=t.positive_int,
        default=None,
        help="evaluate every this many iterations (default: at the end)",
    )
    g.add_argument("--num-eval-tasks", type=t.positive_int, default="600", help="held-out tasks per evaluation")
    g.add_argument(
        "--eval-steps",
        type=_checked(t.non_negative_int_list),
        default=None,
        help="inner step counts to evaluate at, separated by commas (default: 0,1,--inner-steps)",
    )
    g.add_argument("--eval-seed", type=t.non_negative_int, default=None, help="default: --seed + 1")
    g.add_argument("--out", type=t.output_folder, required=True, help="output folder (required)")
    g.add_argument(
        "--log-format", type=t.lower, choices=["jsonl", "csv"], default="jsonl", help="the metrics file's format"
    )
    g.add_argument("--log-every", type=t.positive_int, default="100", help="a train row averaging this many iterations")
    g.add_argument(
        "--checkpoint-every", type=t.positive_int, default="1000", help="save a checkpoint every this many iterations"
    )
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument(
        "--device",
        type=t.device,
        default=None,
        help="cpu, cuda or cuda:N (default: cuda where one is available, else cpu; the choice is printed)",
    )
    g.add_argument("--threads", type=t.positive_int, default=None, help="torch.set_num_threads (default: torch's)")
    g.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None, prog: str = PROG) -> argparse.Namespace:
    """The checked arguments (:func:`check`)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    check(parser, args)
    return args


def check(parser: t.ArgumentParser, args: argparse.Namespace) -> None:
    """Every check of the flags together that needs no data and no model; a failure exits with status 2."""
    if args.task in IMAGE_TASKS and args.data_root is None:
        parser.fail("--data-root", f"--task {args.task} reads its images from a folder: give one")
    if args.model == "conv" and args.task not in IMAGE_TASKS:
        parser.fail("--model", f"conv needs image tasks (--task {' or '.join(IMAGE_TASKS)}), not {args.task}")
    spec = memmaml.parse_engine(args.engine, budget=1)
    if spec.schedule is not None and spec.schedule.needs_costs and spec.schedule.among == ("binomial",):
        parser.fail("--engine", f"{args.engine!r} chooses its slots for a memory budget: use auto:BUDGET instead")
    if args.vectorize and spec.schedule is not None:
        parser.fail("--vectorize", f"vmap runs the naive unroll: use --engine naive, not {args.engine!r}")
    checkpoint = Path(args.out) / "checkpoint.pt"
    if args.resume and not checkpoint.is_file():
        parser.fail("--resume", f"no checkpoint at {str(checkpoint)!r}")
    if not args.resume and checkpoint.exists():
        parser.fail("--out", f"{str(checkpoint)!r} exists: pass --resume to continue that run, or choose another --out")


def build_sources(args: argparse.Namespace, dtype: torch.dtype) -> tuple[Any, Any]:
    """The training and evaluation task sources."""
    if args.task == "sinusoid":
        train = Sinusoid(args.num_shots, args.num_query, dtype=dtype)
        return train, train
    num_query = 15 if args.num_query is None else args.num_query
    shape = dict(num_ways=args.num_ways, num_shots=args.num_shots, num_query=num_query, dtype=dtype)
    if args.task == "synthetic":
        return (
            SyntheticClassification(num_features=args.num_features, split="train", **shape),
            SyntheticClassification(num_features=args.num_features, split="test", **shape),
        )
    if args.task == "omniglot":
        size = args.image_size or 28
        return (
            Omniglot(args.data_root, background=True, image_size=size, rotations=args.rotations, **shape),
            Omniglot(args.data_root, background=False, image_size=size, rotations=args.rotations, **shape),
        )
    size = args.image_size or 84
    common = dict(image_size=size, grayscale=args.grayscale, rotations=args.rotations, **shape)
    train = ImageFolderTasks(args.data_root, **common)
    if args.eval_data_root is None:
        print("warning: no --eval-data-root; evaluating on tasks from the training classes", file=sys.stderr)
        return train, train
    return train, ImageFolderTasks(args.eval_data_root, **common)


def build_model(args: argparse.Namespace, source: Any) -> nn.Module:
    """An MLP or Conv-4 shaped for ``source``'s tasks."""
    kind = args.model or ("conv" if args.task in IMAGE_TASKS else "mlp")
    sample = source.sample(0).support[0]
    if kind == "mlp":
        out_features = 1 if args.task == "sinusoid" else args.num_ways
        sizes = [sample[0].numel(), *t.positive_int_list(args.hidden), out_features]
        return models.mlp(sizes, flatten=sample.dim() > 2)
    # batch statistics only (track_running_stats=False), as in Finn et al.'s code; vmap-compatible
    return models.conv4(
        sample.shape[1],
        args.num_ways,
        image_size=tuple(sample.shape[2:]),
        filters=args.filters,
        track_running_stats=False,
        ceil_mode=True,
    )


def build_engine(args: argparse.Namespace) -> memmaml.EngineSpec:
    """The schedule (``None``: naive) and offload flag for TrainerConfig (the text was checked by the parser)."""
    return memmaml.parse_engine(args.engine)


def build_inner_optimizer(args: argparse.Namespace) -> memmaml.InnerOptimizer:
    return {"sgd": memmaml.SGD, "adam": memmaml.Adam, "rmsprop": memmaml.RMSProp}[args.inner_optimizer](args.inner_lr)


def _flag(parser: t.ArgumentParser, message: str, default: str) -> str:
    """The flag an error message from the library names by its Python name (``meta_batch_size must ...``)."""
    match = re.match(r"\w+", message)
    name = match.group(0) if match else ""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if flag in parser._option_string_actions else default


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status (2: a bad command line)."""
    prog, argv = t.command_line(SCRIPT, PROG, argv)
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    check(parser, args)
    given_device = args.device is not None
    device = args.device or t.default_device()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    rank = int(os.environ.get("RANK", "0"))
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if rank == 0:
        print(f"device: {device}" + ("" if given_device else " (the default here)"), file=sys.stderr)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        return _train(parser, args, device, distributed, rank)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(parser: t.ArgumentParser, args: argparse.Namespace, device: str, distributed: bool, rank: int) -> int:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    try:
        train_source, eval_source = build_sources(args, dtype)
    except FileNotFoundError as err:  # the dataset is missing: the message names the folder to fill
        parser.fail("--data-root", " ".join(str(err).split()))
    except ValueError as err:
        parser.fail(_flag(parser, str(err), "--task"), str(err))
    model = build_model(args, train_source).to(device=device, dtype=dtype)
    outer = getattr(torch.optim, args.outer_optimizer)(model.parameters(), lr=args.outer_lr)
    engine = build_engine(args)
    eval_steps = None if args.eval_steps is None else t.non_negative_int_list(args.eval_steps)
    try:
        config = TrainerConfig(
            inner_optimizer=build_inner_optimizer(args),
            num_inner_steps=args.inner_steps,
            schedule=engine.schedule,
            offload=engine.offload,
            first_order=args.first_order,
            outer_lr=args.outer_lr,
            meta_batch_size=args.meta_batch_size,
            max_grad_norm=args.max_grad_norm,
            num_eval_tasks=args.num_eval_tasks,
            eval_steps=eval_steps,
            seed=args.seed,
            eval_seed=args.eval_seed,
            vectorize=args.vectorize,
            chunk_size=args.chunk_size,
        )
        trainer = MetaTrainer(
            model,
            train_source,
            config,
            outer_optimizer=outer,
            eval_source=eval_source,
            distributed=distributed,
            run_config=dict(vars(args).items()),
            resume_may_change=MAY_CHANGE,
        )
    except (ValueError, TypeError) as err:
        parser.fail(_flag(parser, str(err), "--engine"), str(err))
    out = Path(args.out)
    checkpoint = out / "checkpoint.pt"
    if args.resume:
        trainer.load_checkpoint(checkpoint)
        if args.iterations < trainer.iteration:
            parser.fail(
                "--iterations",
                f"{args.iterations} is fewer than the {trainer.iteration} iterations {str(checkpoint)!r} has run "
                "(--iterations counts the whole run)",
            )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(trainer.plain_config, indent=1, default=str) + "\n")
        print(
            f"memmaml meta-train: {train_source!r}, {sum(p.numel() for p in model.parameters())} parameters, "
            f"world size {trainer.world_size}, starting at iteration {trainer.iteration}",
            file=sys.stderr,
        )
    start_iteration, start = trainer.iteration, time.perf_counter()
    rows = trainer.train(
        args.iterations,
        log_path=out / f"metrics.{args.log_format}",
        log_every=args.log_every,
        eval_every=args.eval_every,
        checkpoint_path=checkpoint,
        checkpoint_every=args.checkpoint_every,
        progress=args.progress,
    )
    if trainer.iteration == start_iteration and not args.resume:  # --iterations 0: the untrained model's checkpoint
        trainer.save_checkpoint(checkpoint)
    wall = time.perf_counter() - start
    if rank == 0:
        evals = [r for r in rows if r["kind"] == "eval"]
        summary = {
            "iterations": trainer.iteration,
            "iterations_this_call": trainer.iteration - start_iteration,
            "wall_s_this_call": wall,
            "train_s_total": trainer.elapsed_s,
            "final_eval": evals[-1] if evals else None,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": str(device),
            "world_size": trainer.world_size,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        if evals:
            last = evals[-1]
            text = ", ".join(f"{k}={v:.4g}" for k, v in last.items() if k.startswith("eval_") and "ci95" not in k)
            print(f"iteration {trainer.iteration}: {text}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
