#!/usr/bin/env python
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

Writes to ``--out``: ``metrics.jsonl`` (or ``.csv``), ``checkpoint.pt``
(atomically, every ``--checkpoint-every`` iterations and at the end),
``config.json`` and, at the end, ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch import nn

import memmaml
from memmaml import MetaTrainer, TrainerConfig, models
from memmaml.tasks import ImageFolderTasks, Omniglot, Sinusoid, SyntheticClassification

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    g = p.add_argument_group("tasks")
    g.add_argument("--task", choices=["sinusoid", "synthetic", "imagefolder", "omniglot"], default="sinusoid")
    g.add_argument("--num-shots", type=int, default=10, help="support examples (per class for classification)")
    g.add_argument(
        "--num-query",
        type=int,
        default=None,
        help="query examples (per class); default: --num-shots for sinusoid, 15 otherwise",
    )
    g.add_argument("--num-ways", type=int, default=5, help="classes per task")
    g.add_argument("--num-features", type=int, default=16, help="synthetic: input dimension")
    g.add_argument(
        "--data-root",
        default=None,
        help="imagefolder: training class folders; omniglot: the folder holding omniglot-py",
    )
    g.add_argument("--eval-data-root", default=None, help="imagefolder: held-out class folders")
    g.add_argument("--image-size", type=int, default=None, help="default 28 (omniglot) / 84 (imagefolder)")
    g.add_argument("--grayscale", action="store_true", help="imagefolder: one channel")
    g.add_argument("--rotations", action="store_true", help="add 90/180/270-degree rotations as classes")
    g = p.add_argument_group("model")
    g.add_argument("--model", choices=["mlp", "conv"], default=None, help="default: mlp, conv for images")
    g.add_argument("--hidden", default="40,40", help="mlp hidden sizes")
    g.add_argument("--filters", type=int, default=64, help="conv: filters per layer (4 layers)")
    g.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    g = p.add_argument_group("inner loop")
    g.add_argument("--inner-optimizer", choices=["sgd", "adam", "rmsprop"], default="sgd")
    g.add_argument("--inner-lr", type=float, default=0.01)
    g.add_argument("--inner-steps", type=int, default=1)
    g.add_argument(
        "--engine",
        default="naive",
        help="the inner loop's engine in memmaml.parse_engine's syntax: naive, uniform:K, sqrt, "
        "binomial:SLOTS, auto:BUDGET, any but naive followed by +offload",
    )
    g.add_argument("--first-order", action="store_true")
    g.add_argument("--vectorize", action="store_true", help="adapt the meta-batch with torch.func.vmap")
    g.add_argument("--chunk-size", type=int, default=None, help="vmap over at most this many tasks at once")
    g = p.add_argument_group("outer loop")
    g.add_argument("--outer-optimizer", default="Adam", help="a torch.optim class name")
    g.add_argument("--outer-lr", type=float, default=1e-3)
    g.add_argument("--meta-batch-size", type=int, default=25)
    g.add_argument("--max-grad-norm", type=float, default=None, help="clip the meta-gradient's global L2 norm")
    g.add_argument("--iterations", type=int, default=70000)
    g.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("evaluation and output")
    g.add_argument("--eval-every", type=int, default=None)
    g.add_argument("--num-eval-tasks", type=int, default=600)
    g.add_argument("--eval-steps", default=None, help="comma-separated inner step counts (default 0,1,inner-steps)")
    g.add_argument("--eval-seed", type=int, default=None)
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--log-format", choices=["jsonl", "csv"], default="jsonl")
    g.add_argument("--log-every", type=int, default=100)
    g.add_argument("--checkpoint-every", type=int, default=1000)
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    g.add_argument("--no-progress", dest="progress", action="store_false")
    return p.parse_args(argv)


def build_sources(args: argparse.Namespace, dtype: torch.dtype):
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
    if args.data_root is None:
        sys.exit(f"--task {args.task} needs --data-root")
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


def build_model(args: argparse.Namespace, source) -> nn.Module:
    kind = args.model or ("conv" if args.task in ("imagefolder", "omniglot") else "mlp")
    sample = source.sample(0).support[0]
    if kind == "mlp":
        out_features = 1 if args.task == "sinusoid" else args.num_ways
        sizes = [sample[0].numel(), *(int(h) for h in args.hidden.split(",") if h), out_features]
        return models.mlp(sizes, flatten=sample.dim() > 2)
    if sample.dim() != 4:
        sys.exit("--model conv needs image tasks")
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
    """The schedule (``None``: naive) and offload flag for TrainerConfig."""
    try:
        return memmaml.parse_engine(args.engine)
    except ValueError as error:
        sys.exit(f"--engine {args.engine!r}: {error}")


def build_inner_optimizer(args: argparse.Namespace) -> memmaml.InnerOptimizer:
    return {"sgd": memmaml.SGD, "adam": memmaml.Adam, "rmsprop": memmaml.RMSProp}[args.inner_optimizer](args.inner_lr)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(local_rank)
    distributed = world_size > 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank = int(os.environ.get("RANK", "0"))
    try:
        dtype = getattr(torch, args.dtype)
        torch.manual_seed(args.seed)
        train_source, eval_source = build_sources(args, dtype)
        model = build_model(args, train_source).to(device=device, dtype=dtype)
        outer_cls = getattr(torch.optim, args.outer_optimizer, None)
        if not (isinstance(outer_cls, type) and issubclass(outer_cls, torch.optim.Optimizer)):
            sys.exit(f"--outer-optimizer {args.outer_optimizer!r} is not a torch.optim optimizer class")
        inner = build_inner_optimizer(args)
        engine = build_engine(args)
        outer = outer_cls(model.parameters(), lr=args.outer_lr)
        eval_steps = None if args.eval_steps is None else [int(s) for s in args.eval_steps.split(",") if s]
        run_config = dict(vars(args).items())
        config = TrainerConfig(
            inner_optimizer=inner,
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
            run_config=run_config,
            resume_may_change=MAY_CHANGE,
        )
        out = Path(args.out)
        checkpoint = out / "checkpoint.pt"
        if args.resume:
            if not checkpoint.is_file():
                sys.exit(f"--resume: no checkpoint at {str(checkpoint)!r}")
            trainer.load_checkpoint(checkpoint)
        elif checkpoint.exists():
            sys.exit(f"{str(checkpoint)!r} exists: pass --resume to continue that run, or choose another --out")
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
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
