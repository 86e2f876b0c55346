"""Meta-train a MAML model with memmaml from the command line.

Examples::

    # Finn et al. 2017 sinusoid: K=10, one inner step at 0.01, meta-batch 25, Adam 1e-3, 70k iterations
    python scripts/meta_train.py --task sinusoid --iterations 70000 --vectorize --out runs/sinusoid

    # 5-way 1-shot classification of synthetic clusters, evaluation every 500 iterations
    python scripts/meta_train.py --task synthetic --num-ways 5 --num-shots 1 --inner-lr 0.4 \\
        --iterations 5000 --eval-every 500 --out runs/synthetic

    # Finn et al.'s Omniglot 5-way 1-shot (--preset sets every hyperparameter; see the list below)
    python scripts/meta_train.py --preset omniglot-5w1s --data-root ~/data --download --out runs/omniglot

    # the same with a flag changed: explicit flags override the preset (the override is printed)
    python scripts/meta_train.py --preset omniglot-5w1s --data-root ~/data --first-order --out runs/fo

    # the offline benchmark: scikit-learn's digits, minutes on one CPU core
    python scripts/meta_train.py --preset digits-5w1s --vectorize --threads 1 --out runs/digits

    # resume after an interruption (same arguments plus --resume)
    python scripts/meta_train.py ... --out runs/sinusoid --resume

    # spread each meta-batch over 2 processes (gloo on CPU, NCCL on GPU)
    torchrun --nproc-per-node 2 scripts/meta_train.py --task sinusoid --meta-batch-size 24 --out runs/dp

``--preset NAME`` sets Finn et al.'s (2017) hyperparameters for a benchmark
(:mod:`memmaml.cli._presets`; ``--help`` lists each preset, what it sets and
the accuracy it targets); flags given beside it override its values. The
named datasets train on their ``train`` split and evaluate on ``--eval-split``
(``test`` unless told); a missing dataset stops with one line saying what to
put where (or pass ``--download`` where torchvision can fetch it).

Every flag is checked before anything is written: a bad value stops with
one ``error: argument --flag: ...`` line and exit status 2, and so do a
missing dataset and a ``--resume`` whose settings differ from the
checkpoint's. Writes to
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
import textwrap
import time
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
from torch import nn

import memmaml
from memmaml import IncompatibleCheckpointError, MetaTrainer, TrainerConfig, models
from memmaml.tasks import (
    CIFARFS,
    FC100,
    Digits,
    ImageFolderTasks,
    MiniImageNet,
    Omniglot,
    Sinusoid,
    SyntheticClassification,
)

from . import _types as t
from ._presets import PRESETS, preset_name

__all__ = ["MAY_CHANGE", "PRESETS", "apply_preset", "build_parser", "check", "main", "parse_args"]

PROG = "memmaml-train"
SCRIPT = "scripts/meta_train.py"
MODULE = "memmaml.cli.meta_train"

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
    "eval_split",
    "eval_num_query",
    "download",
    "preset",
]
#: the named datasets read from --data-root, each with train / val / test classes (memmaml.tasks)
DATASETS = {"omniglot": Omniglot, "miniimagenet": MiniImageNet, "cifar-fs": CIFARFS, "fc100": FC100}
#: the ones torchvision can fetch (--download)
DOWNLOADABLE = ("omniglot", "cifar-fs", "fc100")
#: default image sides (None: the files' own size)
IMAGE_SIZES = {"omniglot": 28, "miniimagenet": 84, "imagefolder": 84}
FOLDER_TASKS = ("imagefolder", *DATASETS)
IMAGE_TASKS = (*FOLDER_TASKS, "digits")
SPLIT_TASKS = (*DATASETS, "digits")
ROTATED_TASKS = ("omniglot", "digits", "imagefolder")
#: TrainerConfig's and the task sources' argument names whose flag is not ``--`` + the name with dashes
FLAGS = {
    "num_inner_steps": "--inner-steps",
    "schedule": "--engine",
    "offload": "--engine",
    "inner_optimizer": "--inner-optimizer",
    "num_iterations": "--iterations",
    "root": "--data-root",
}
#: torch.optim's optimizers that cannot take the trainer's plain ``step()`` on a dense model, and why
UNFIT_OUTER_OPTIMIZERS = {
    "LBFGS": "its step needs a closure that re-evaluates the loss, and the trainer steps without one",
    "SparseAdam": "it takes sparse gradients only, and a meta-gradient is dense",
    "Muon": "it takes 2-D parameters only, and every model here has biases",
}
#: torch.optim's optimizer classes the trainer can step, by their lower-case name
OUTER_OPTIMIZERS = {
    name.lower(): name
    for name in dir(torch.optim)
    if isinstance(getattr(torch.optim, name), type)
    and issubclass(getattr(torch.optim, name), torch.optim.Optimizer)
    and name not in ("Optimizer", *UNFIT_OUTER_OPTIMIZERS)
}


def _outer_optimizer(text: str) -> str:
    """A torch.optim optimizer class name the trainer can step, case-insensitive (``adam`` -> ``Adam``)."""
    name = OUTER_OPTIMIZERS.get(text.strip().lower())
    if name is None:
        choices = ", ".join(sorted(OUTER_OPTIMIZERS.values()))
        unfit = {n.lower(): (n, why) for n, why in UNFIT_OUTER_OPTIMIZERS.items()}.get(text.strip().lower())
        if unfit is not None:
            raise argparse.ArgumentTypeError(
                f"{text!r}: {unfit[0]} cannot meta-train here: {unfit[1]}; choose from {choices}"
            )
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch.optim optimizer; choose from {choices}")
    return name


def build_outer_optimizer(
    parser: t.ArgumentParser, args: argparse.Namespace, model: nn.Module
) -> torch.optim.Optimizer:
    """``--outer-optimizer`` over ``model``'s parameters, after one dry step on a copy of the model: an
    optimizer that cannot step it fails here, before anything is written (exit status 2)."""
    build = getattr(torch.optim, args.outer_optimizer)
    try:
        copy = deepcopy(model)
        dry = build(copy.parameters(), lr=args.outer_lr)
        for parameter in copy.parameters():
            parameter.grad = torch.zeros_like(parameter)
        dry.step()
    except Exception as err:  # any failure of the dry step is the flag's
        parser.fail(
            "--outer-optimizer",
            f"{args.outer_optimizer} cannot step this model: {type(err).__name__}: {' '.join(str(err).split())}",
        )
    return build(model.parameters(), lr=args.outer_lr)


def _checked(check: Any) -> Any:
    """A ``type=`` that checks the text with ``check`` and keeps it as typed (checkpoints compare it on resume)."""

    def as_typed(text: str) -> str:
        check(text)
        return text

    as_typed.__name__ = check.__name__
    return as_typed


def _wrap(text: str, width: int, indent: str) -> list[str]:
    """``text`` wrapped at spaces only (a flag is never split at its dashes), later lines two spaces further in."""
    return textwrap.wrap(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent + "  ",
        break_on_hyphens=False,
        break_long_words=False,
    )


def presets_epilog(width: int = 100) -> str:
    """``--help``'s closing list of the presets: each one's benchmark, target and flags."""
    indent = " " * 4
    lines = ["presets (--preset NAME; explicit flags override what a preset sets):"]
    for preset in PRESETS.values():
        lines.append(f"  {preset.name}")
        predicted = f"predicted on one GPU: {preset.predicted_gpu}"
        for text in (preset.title, f"target: {preset.target}", predicted, "sets " + " ".join(preset.argv())):
            lines += _wrap(text, width, indent)
    lines.append(
        "Finn et al.'s values come from their paper and code (github.com/cbfinn/maml); where memmaml differs "
        "(max-pooling on Omniglot, the inner step's size, no element-wise clipping) and what each run is "
        "predicted to take on a GPU: docs/datasets.md."
    )
    return "\n".join(lines[:-1] + _wrap(lines[-1], width, ""))


def build_parser(prog: str = PROG) -> t.ArgumentParser:
    """The command line; every value is checked here or in :func:`parse_args`, before any work."""
    p = t.ArgumentParser(
        prog=prog, usage=t.USAGE_WITH_OUT, description=__doc__.split("\n\n")[0], epilog=presets_epilog()
    )
    g = p.add_argument_group("preset")
    g.add_argument(
        "--preset",
        type=preset_name,
        default=None,
        metavar="NAME",
        help=f"Finn et al.'s (2017) settings for a benchmark: {', '.join(PRESETS)} (listed at the end with the "
        "flags each sets and the accuracy it targets); flags given beside --preset override its values, and "
        "each override is printed",
    )
    g = p.add_argument_group("tasks")
    g.add_argument(
        "--task",
        type=t.lower,
        choices=["sinusoid", "synthetic", *IMAGE_TASKS],
        default="sinusoid",
        help="what each task is: a sine wave to fit, or N-way K-shot classification of synthetic clusters, "
        "image folders, a named dataset (omniglot, miniimagenet, cifar-fs, fc100: Finn et al.'s / Ravi & "
        "Larochelle's / Bertinetto et al.'s / Oreshkin et al.'s class splits) or scikit-learn's digits "
        "(no download)",
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
        "--eval-num-query",
        type=t.positive_int,
        default=None,
        help="query examples (per class) of the held-out tasks; default: --num-query",
    )
    g.add_argument(
        "--data-root",
        type=t.readable_folder,
        default=None,
        help="imagefolder: training class folders; omniglot, cifar-fs, fc100: the folder holding omniglot-py or "
        "cifar-100-python (torchvision's layout); miniimagenet: the folder holding train.csv, val.csv, test.csv "
        "and images/",
    )
    g.add_argument(
        "--download",
        action="store_true",
        help="fetch a missing omniglot or CIFAR-100 (cifar-fs, fc100) into --data-root with torchvision "
        "(needs a network; miniimagenet has no download)",
    )
    g.add_argument(
        "--eval-split",
        type=t.lower,
        choices=["val", "test"],
        default=None,
        help="the named datasets' classes of the held-out evaluation (training uses the train split); "
        "default: test (digits have no val classes)",
    )
    g.add_argument("--eval-data-root", type=t.existing_folder, default=None, help="imagefolder: held-out class folders")
    g.add_argument(
        "--image-size",
        type=t.positive_int,
        default=None,
        help="default 28 (omniglot) / 84 (miniimagenet, imagefolder) / the files' size (cifar-fs, fc100: 32; "
        "digits: 8)",
    )
    g.add_argument("--grayscale", action="store_true", help="imagefolder: one channel")
    g.add_argument(
        "--rotations",
        action="store_true",
        help="omniglot, imagefolder: each class of a task turned by a random multiple of 90 degrees, drawn per "
        "task (Finn et al.); digits: the 90/180/270-degree turns as classes of their own",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", type=t.lower, choices=["mlp", "conv"], default=None, help="default: mlp, conv for images")
    g.add_argument(
        "--hidden",
        type=_checked(t.positive_int_sequence),
        default="40,40",
        help="mlp hidden sizes, one per layer (40,40: two layers of 40)",
    )
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
        "binomial:SLOTS, binomial:SLOTS:SEGMENT, auto:BUDGET, any but naive followed by +offload",
    )
    g.add_argument("--first-order", action="store_true", help="first-order MAML: no second-order terms")
    g.add_argument("--vectorize", action="store_true", help="adapt the meta-batch with torch.func.vmap")
    g.add_argument("--chunk-size", type=t.positive_int, default=None, help="vmap over at most this many tasks at once")
    g = p.add_argument_group("outer loop")
    g.add_argument(
        "--outer-optimizer",
        type=_outer_optimizer,
        default="Adam",
        help="a torch.optim optimizer class, any case (adam, SGD, AdamW); not LBFGS (its step needs a closure), "
        "SparseAdam (sparse gradients only) or Muon (2-D parameters only)",
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
    """The checked arguments, the preset's values filled in (:func:`apply_preset`, :func:`check`)."""
    return _parse(build_parser(prog), argv)[0]


def _parse(parser: t.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """The checked arguments and the preset values that flags of ``argv`` override."""
    args = parser.parse_args(argv)
    overrides = apply_preset(parser, args, argv)
    check(parser, args)
    return args, overrides


def given_dests(argv: list[str] | None, prog: str = PROG) -> set[str]:
    """The destinations (``inner_lr``) of the flags ``argv`` gives, defaults left out (call after a parse that
    succeeded: this one parses ``argv`` again with every default suppressed)."""
    probe = build_parser(prog)
    for action in probe._actions:
        action.default, action.required = argparse.SUPPRESS, False
    return set(vars(probe.parse_args(argv)))


def _converted(parser: t.ArgumentParser, flag: str, value: str | bool) -> Any:
    """A preset's ``value`` for ``flag`` as argparse would store it (its ``type=`` and ``choices``)."""
    action = parser._option_string_actions[flag]
    if isinstance(value, bool):
        return value
    converted = action.type(value) if action.type is not None else value
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"preset value {value!r} of {flag} is not one of {list(action.choices)}")
    return converted


def apply_preset(parser: t.ArgumentParser, args: argparse.Namespace, argv: list[str] | None) -> list[str]:
    """Fill in ``args.preset``'s values for every flag ``argv`` does not give; the overrides, as text.

    Each override is ``"--inner-lr 0.5 (the preset's 0.4)"``: a flag the preset
    sets that ``argv`` gives with another value. A flag given with the preset's
    own value is no override.
    """
    if args.preset is None:
        return []
    given = given_dests(argv, parser.prog)
    overrides = []
    for flag, setting in PRESETS[args.preset].settings.items():
        dest = parser._option_string_actions[flag].dest
        value = _converted(parser, flag, setting.value)
        if dest not in given:
            setattr(args, dest, value)
        elif getattr(args, dest) != value:
            shown = f"{flag} {getattr(args, dest)}" if not isinstance(value, bool) else flag
            overrides.append(f"{shown} (the preset's {setting.value})")
    return overrides


def check(parser: t.ArgumentParser, args: argparse.Namespace) -> None:
    """Every check of the flags together that needs no data and no model; a failure exits with status 2."""
    if args.task in FOLDER_TASKS and args.data_root is None:
        fetch = " (--download fills it)" if args.task in DOWNLOADABLE else ""
        parser.fail("--data-root", f"--task {args.task} reads its images from a folder: give one{fetch}")
    if args.data_root is not None and not args.download and not Path(args.data_root).expanduser().is_dir():
        parser.fail("--data-root", f"the folder {args.data_root!r} does not exist")
    if args.download and args.task not in DOWNLOADABLE:
        what = "digits ship inside scikit-learn" if args.task == "digits" else f"--task {args.task} has no download"
        parser.fail("--download", f"{what}; torchvision fetches {', '.join(DOWNLOADABLE)}")
    if args.eval_split is not None and args.task not in SPLIT_TASKS:
        parser.fail("--eval-split", f"--task {args.task} has no named splits; {', '.join(SPLIT_TASKS)} have")
    if args.eval_split == "val" and args.task == "digits":
        parser.fail("--eval-split", "digits have no val classes (0-4 train, 5-9 test): use test")
    if args.rotations and args.task not in ROTATED_TASKS:
        parser.fail("--rotations", f"only {', '.join(ROTATED_TASKS)} images are rotated, not --task {args.task}'s")
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
    """The training and evaluation task sources (the named datasets: the train split and ``--eval-split``)."""
    if args.task == "sinusoid":
        train = Sinusoid(args.num_shots, args.num_query, dtype=dtype)
        if args.eval_num_query is None:
            return train, train
        return train, Sinusoid(args.num_shots, args.eval_num_query, dtype=dtype)
    num_query = 15 if args.num_query is None else args.num_query
    eval_num_query = num_query if args.eval_num_query is None else args.eval_num_query
    shapes = [
        dict(num_ways=args.num_ways, num_shots=args.num_shots, num_query=q, dtype=dtype)
        for q in (num_query, eval_num_query)
    ]
    train_shape, eval_shape = shapes
    if args.task == "synthetic":
        features = args.num_features
        return (
            SyntheticClassification(num_features=features, split="train", **train_shape),
            SyntheticClassification(num_features=features, split="test", **eval_shape),
        )
    size = args.image_size or IMAGE_SIZES.get(args.task)
    eval_split = args.eval_split or "test"
    if args.task == "digits":
        return (
            Digits(split="train", image_size=size, rotations=args.rotations, **train_shape),
            Digits(split=eval_split, image_size=size, rotations=args.rotations, **eval_shape),
        )
    if args.task in DATASETS:
        source = DATASETS[args.task]
        common: dict[str, Any] = dict(download=args.download, image_size=size)
        if args.task == "omniglot":
            common["rotations"] = args.rotations
        return (
            source(args.data_root, split="train", **common, **train_shape),
            source(args.data_root, split=eval_split, **common, **eval_shape),
        )
    folders = dict(image_size=size, grayscale=args.grayscale, rotations=args.rotations)
    train = ImageFolderTasks(args.data_root, **folders, **train_shape)
    if args.eval_data_root is None:
        print("warning: no --eval-data-root; evaluating on tasks from the training classes", file=sys.stderr)
        if args.eval_num_query is None:
            return train, train
    return train, ImageFolderTasks(args.eval_data_root or args.data_root, **folders, **eval_shape)


def build_model(args: argparse.Namespace, source: Any) -> nn.Module:
    """An MLP or Conv-4 shaped for ``source``'s tasks."""
    kind = args.model or ("conv" if args.task in IMAGE_TASKS else "mlp")
    sample = source.sample(0).support[0]
    if kind == "mlp":
        out_features = 1 if args.task == "sinusoid" else args.num_ways
        sizes = [sample[0].numel(), *t.positive_int_sequence(args.hidden), out_features]
        return models.mlp(sizes, flatten=sample.dim() > 2)
    # batch statistics only (track_running_stats=False), as in Finn et al.'s code; vmap-compatible.
    # Pools round by the image's side: from 64 pixels down, as their 'VALID' max-pool does (miniImageNet
    # 84 -> 42 -> 21 -> 10 -> 5: a head of 5 x 5 x filters inputs); below 64 up, so that Omniglot's 28 pixels
    # give the 2 x 2 map of their strided convolutions (28 -> 14 -> 7 -> 4 -> 2) and 8-pixel digits survive.
    side = min(sample.shape[2:])
    return models.conv4(
        sample.shape[1],
        args.num_ways,
        image_size=tuple(sample.shape[2:]),
        filters=args.filters,
        track_running_stats=False,
        ceil_mode=side < 64,
    )


def build_engine(args: argparse.Namespace) -> memmaml.EngineSpec:
    """The schedule (``None``: naive) and offload flag for TrainerConfig (the text was checked by the parser)."""
    return memmaml.parse_engine(args.engine)


def build_inner_optimizer(args: argparse.Namespace) -> memmaml.InnerOptimizer:
    return {"sgd": memmaml.SGD, "adam": memmaml.Adam, "rmsprop": memmaml.RMSProp}[args.inner_optimizer](args.inner_lr)


def _flag(parser: t.ArgumentParser, message: str, default: str) -> str:
    """The flag an error message from the library names by its Python name: its first word (``meta_batch_size
    must ...``), else its first name with an underscore (``class '0' has 178 examples, fewer than num_shots + ...``)."""
    words = re.findall(r"\w+", message)
    for name in [*words[:1], *(w for w in words[1:] if "_" in w)]:
        flag = FLAGS.get(name, "--" + name.replace("_", "-"))
        if flag in parser._option_string_actions:
            return flag
    return default


def _one_line(err: IncompatibleCheckpointError) -> str:
    """The checkpoint error's lines (a sentence, then one line per differing key) joined by ``"; "``, with the
    flags that set the keys named from ``run.<dest>``."""
    first, *keys = [line.strip() for line in str(err).splitlines() if line.strip()]
    dests = [line.split(":", 1)[0].removeprefix("run.") for line in keys if line.startswith("run.")]
    flags = [f"--{dest.replace('_', '-')}" for dest in dests]
    hint = f" (the flags: {', '.join(flags)})" if flags else ""
    return f"{first} {'; '.join(keys)}{hint}" if keys else first


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); the exit status (2: a bad command line)."""
    prog, argv = t.command_line(SCRIPT, PROG, argv, MODULE)
    parser = build_parser(prog)
    args, overrides = _parse(parser, argv)
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
        return _train(parser, args, device, distributed, rank, overrides)
    finally:
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()


def _dataset_missing(err: FileNotFoundError) -> str:
    """A task source's missing-dataset message (:class:`~memmaml.tasks.DatasetNotFoundError`) on one line, in
    the command line's words (``--download``, not ``download=True``)."""
    return " ".join(str(err).split()).replace("download=True", "--download")


def _train(
    parser: t.ArgumentParser,
    args: argparse.Namespace,
    device: str,
    distributed: bool,
    rank: int,
    overrides: list[str],
) -> int:
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    engine = build_engine(args)
    eval_steps = None if args.eval_steps is None else t.non_negative_int_list(args.eval_steps)
    try:  # before any data is read (or downloaded)
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
    except (ValueError, TypeError) as err:
        parser.fail(_flag(parser, str(err), "--engine"), str(err))
    try:
        train_source, eval_source = build_sources(args, dtype)
    except FileNotFoundError as err:  # DatasetNotFoundError: one line, the folder to fill and what to put there
        parser.fail("--data-root", _dataset_missing(err))
    except ModuleNotFoundError as err:  # digits without scikit-learn
        parser.fail("--task", str(err))
    except ValueError as err:
        parser.fail(_flag(parser, str(err), "--task"), str(err))
    model = build_model(args, train_source).to(device=device, dtype=dtype)
    outer = build_outer_optimizer(parser, args, model)
    try:
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
        try:
            trainer.load_checkpoint(checkpoint)
        except IncompatibleCheckpointError as err:  # the message lists each differing key, one per line
            parser.fail("--resume", _one_line(err))
        if args.iterations < trainer.iteration:
            parser.fail(
                "--iterations",
                f"{args.iterations} is fewer than the {trainer.iteration} iterations {str(checkpoint)!r} has run "
                "(--iterations counts the whole run)",
            )
    if rank == 0:
        if args.preset is not None:  # after every check: a failure reads as the usage line and one error
            preset = PRESETS[args.preset]
            print(f"preset {preset.name}: {preset.title}; target: {preset.target}", file=sys.stderr)
            for override in overrides:
                print(f"preset {preset.name}: overridden by {override}", file=sys.stderr)
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
