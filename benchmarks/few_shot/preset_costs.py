#!/usr/bin/env python
"""Count what one meta-iteration of each ``--preset`` costs, to predict its GPU time (nothing here runs on a GPU).

For every dataset preset of ``memmaml-train`` (Omniglot, miniImageNet) this
builds the command line's own model and trainer from the preset's flags
(``memmaml.cli.meta_train``), feeds it random images of the preset's shapes
(the data files are not needed: the cost of a step does not depend on the
pixels) and runs meta-iterations of 1 and 2 tasks on this CPU under
``torch.utils.flop_counter.FlopCounterMode`` and a dispatch counter. It
records, per meta-iteration, tasks looped over (the command line's default)
and with ``--vectorize``:

* ``flops`` -- floating-point operations of the convolutions and matrix
  products, forward, backward and the second-order terms;
* ``ops`` -- ATen operators dispatched (on a GPU, about one kernel launch each);
* the same for one held-out task at the preset's largest ``--eval-steps``
  (first order, no meta-graph), of which a run evaluates ``--num-eval-tasks``;
* ``sample_s_per_image`` -- the host time the task sources spend per image
  once their images are cached (measured on scikit-learn's digits, the same
  per-example Python path as the image sources), times the images a
  meta-iteration draws.

The GPU prediction (``predict``) turns these into a range; its assumptions
are written into the results: see NOTE [ From counts to a GPU time ].

Run: ``OMP_NUM_THREADS=1 python benchmarks/few_shot/preset_costs.py`` (a few
minutes of one core); writes ``preset_costs.json`` and ``preset_costs.md``
beside this script.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

import memmaml
from memmaml import MetaTrainer, TrainerConfig, batched_evaluate
from memmaml.bench import provenance, write_json_atomic
from memmaml.cli import meta_train
from memmaml.cli.meta_train import PRESETS
from memmaml.tasks import Digits, Task, TaskSource, accuracy, cross_entropy_loss

HERE = Path(__file__).resolve().parent

# NOTE [ From counts to a GPU time ]
#     A small network's meta-iteration on a GPU is bound by one of two things: the
#     arithmetic (flops / the throughput the kernels reach) or launching the kernels
#     (PyTorch's eager dispatch and the launch, about 5-20 microseconds per operator on
#     the host, while the GPU runs the previous ones). The task sources add their host
#     time per image, which does not overlap (no DataLoader workers). The range is
#         low  = max(flops / 20 TFLOP/s, ops x 5 us) + sampling
#         high = flops / 5 TFLOP/s + ops x 20 us + sampling
#     20 TFLOP/s is an A100's float32 peak without TF32 (19.5); 5 TFLOP/s is a quarter
#     of it, what small 3x3 convolutions on few images reach. Evaluation adds
#     num_eval_tasks x the same for one held-out task (at the end of the run; more
#     with --eval-every). Checkpoints and logging are left out (under a second each).
PEAK_FLOPS = 20e12
LOW_FLOPS = 5e12
FAST_OP_S, SLOW_OP_S = 5e-6, 20e-6


class RandomImages(TaskSource):
    """N-way K-shot tasks of random images, shaped like a preset's (only the cost of a step is measured)."""

    loss_function = staticmethod(cross_entropy_loss)
    metrics = {"accuracy": accuracy}

    def __init__(self, num_ways: int, num_shots: int, num_query: int, channels: int, size: int) -> None:
        self.num_ways, self.num_shots, self.num_query = num_ways, num_shots, num_query
        self.shape = (channels, size, size)

    def _sample(self, generator: torch.Generator) -> Task:
        labels = torch.arange(self.num_ways)
        support = torch.rand(self.num_ways * self.num_shots, *self.shape, generator=generator)
        query = torch.rand(self.num_ways * self.num_query, *self.shape, generator=generator)
        return Task(
            (support, labels.repeat_interleave(self.num_shots)), (query, labels.repeat_interleave(self.num_query))
        )

    def config(self) -> dict[str, Any]:
        return {"source": "random_images", "shape": list(self.shape), "num_ways": self.num_ways}


class CountOps(TorchDispatchMode):
    """Counts the ATen operators dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def counted(run: Any) -> dict[str, int]:
    """``run()`` under the flop and operator counters: ``{"flops": ..., "ops": ...}``."""
    flops, ops = FlopCounterMode(display=False), CountOps()
    with flops, ops:
        run()
    return {"flops": flops.get_total_flops(), "ops": sum(ops.counts.values())}


def step_cost(args: argparse.Namespace, train: RandomImages, meta_batch_size: int, vectorize: bool) -> dict[str, int]:
    """The counts of one meta-iteration of the command line's model and trainer at ``meta_batch_size``."""
    torch.manual_seed(0)
    model = meta_train.build_model(args, train)
    config = TrainerConfig(
        inner_optimizer=memmaml.SGD(args.inner_lr),
        num_inner_steps=args.inner_steps,
        meta_batch_size=meta_batch_size,
        first_order=args.first_order,
        vectorize=vectorize,
        num_eval_tasks=1,
    )
    return counted(MetaTrainer(model, train, config).step)


def measure(name: str) -> dict[str, Any]:
    """A preset's counts per meta-iteration (looping over tasks, and with ``--vectorize``) and per held-out task.

    Both counts grow linearly with the meta-batch (a fixed part, the outer step, plus the same work per task), so
    they are counted at 1 and 2 tasks and extended to the preset's meta-batch: exact, and a fraction of the time.
    """
    args = meta_train.parse_args(["--preset", name, "--data-root", ".", "--out", "unused"])
    channels = 1 if args.task == "omniglot" else 3
    train = RandomImages(args.num_ways, args.num_shots, args.num_query, channels, args.image_size)
    held_out = RandomImages(args.num_ways, args.num_shots, args.eval_num_query, channels, args.image_size)
    row: dict[str, Any] = {"preset": name, "meta_batch_size": args.meta_batch_size}
    for path, vectorize in (("loop", False), ("vectorize", True)):
        one, two = (step_cost(args, train, b, vectorize) for b in (1, 2))
        row[path] = {k: one[k] + (args.meta_batch_size - 1) * (two[k] - one[k]) for k in one}
        row[path]["per_task"] = {k: two[k] - one[k] for k in one}
        print(name, path, row[path], flush=True)
    torch.manual_seed(0)
    model = meta_train.build_model(args, train)
    steps = [int(s) for s in args.eval_steps.split(",")]
    tasks = held_out.sample_batch([0])
    inner = memmaml.SGD(args.inner_lr)
    row["eval_task"] = counted(
        lambda: batched_evaluate(
            model, cross_entropy_loss, tasks, inner, steps=steps, metrics={"accuracy": accuracy}, vectorize=False
        )
    )
    row.update(
        parameters=sum(p.numel() for p in model.parameters()),
        iterations=args.iterations,
        num_eval_tasks=args.num_eval_tasks,
        images_per_iteration=args.meta_batch_size * args.num_ways * (args.num_shots + args.num_query),
        images_per_eval_task=args.num_ways * (args.num_shots + args.eval_num_query),
    )
    return row


def sample_seconds_per_image(repeats: int = 20) -> float:
    """Host seconds per image drawn by a task source whose examples are in memory (digits, 5-way 5-shot)."""
    source = Digits(5, 5, 15, split="train")
    source.sample_batch(range(4))
    start = time.perf_counter()
    source.sample_batch(range(repeats))
    return (time.perf_counter() - start) / (repeats * 5 * 20)


def predict(row: dict[str, Any], path: str, per_image_s: float) -> dict[str, float]:
    """A whole run on one GPU, low and high (NOTE [ From counts to a GPU time ]): ms per iteration, hours."""

    def seconds(cost: dict[str, Any], images: int) -> tuple[float, float]:
        sampling = images * per_image_s
        low = max(cost["flops"] / PEAK_FLOPS, cost["ops"] * FAST_OP_S) + sampling
        high = cost["flops"] / LOW_FLOPS + cost["ops"] * SLOW_OP_S + sampling
        return low, high

    step_low, step_high = seconds(row[path], row["images_per_iteration"])
    eval_low, eval_high = seconds(row["eval_task"], row["images_per_eval_task"])
    n, m = row["iterations"], row["num_eval_tasks"]
    return {
        "step_ms_low": 1e3 * step_low,
        "step_ms_high": 1e3 * step_high,
        "hours_low": (n * step_low + m * eval_low) / 3600,
        "hours_high": (n * step_high + m * eval_high) / 3600,
    }


def render(results: dict[str, Any]) -> str:
    prov = results["provenance"]
    lines = [
        "# What one meta-iteration of each preset costs, and a predicted GPU time",
        "",
        f"Counted on this CPU (torch {prov['torch']}) with random images of each preset's shapes, at meta-batches "
        "of 1 and 2 tasks and extended linearly to the preset's. The GPU times are **predicted**, not measured "
        "(NOTE [ From counts to a GPU time ] in `preset_costs.py`): low = max(flops / 20 TFLOP/s, ops x 5 us) "
        "+ sampling, high = flops / 5 TFLOP/s + ops x 20 us + sampling; a whole run is the preset's iterations "
        "plus its 600 held-out tasks. *loop*: the command line's default, tasks one after another; "
        "*vectorize*: with `--vectorize` (the meta-batch in one `torch.func.vmap` call).",
        "",
        "| preset | parameters | GFLOP / iteration | ATen ops / iteration, loop / vectorize | host sampling ms "
        "/ iteration | predicted GPU ms / iteration, loop | vectorize | predicted GPU hours, loop | vectorize |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["presets"]:
        loop, vec = row["predicted"]["loop"], row["predicted"]["vectorize"]
        sampling = row["images_per_iteration"] * results["sample_s_per_image"] * 1e3
        lines.append(
            f"| {row['preset']} | {row['parameters']:,} | {row['loop']['flops'] / 1e9:.1f} | "
            f"{row['loop']['ops']:,} / {row['vectorize']['ops']:,} | {sampling:.0f} | "
            f"{loop['step_ms_low']:.0f}-{loop['step_ms_high']:.0f} | "
            f"{vec['step_ms_low']:.0f}-{vec['step_ms_high']:.0f} | "
            f"{loop['hours_low']:.1f}-{loop['hours_high']:.1f} | {vec['hours_low']:.1f}-{vec['hours_high']:.1f} |"
        )
    lines += [
        "",
        f"Host sampling: {results['sample_s_per_image'] * 1e6:.0f} us per image (scikit-learn's digits in memory, "
        "the same per-example path as the cached image sources; decoding each image file once is left out).",
        "",
        f"Command: `{prov['command']}`; memmaml {prov['memmaml_commit']} (uncommitted changes: "
        f"{prov['memmaml_dirty']}), {prov['device_name']}, {prov['cpu_count']} CPUs.",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", default=",".join(n for n in PRESETS if not n.startswith("digits")))
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    per_image = sample_seconds_per_image()
    results: dict[str, Any] = {
        "provenance": provenance("cpu", [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "assumptions": {
            "peak_flops": PEAK_FLOPS,
            "low_flops": LOW_FLOPS,
            "op_s_low": FAST_OP_S,
            "op_s_high": SLOW_OP_S,
        },
        "sample_s_per_image": per_image,
        "presets": [],
    }
    for name in args.presets.split(","):
        row = measure(name)
        row["predicted"] = {path: predict(row, path, per_image) for path in ("loop", "vectorize")}
        results["presets"].append(row)
        print(json.dumps({"preset": name, "predicted": row["predicted"]}), flush=True)
        write_json_atomic(args.out / "preset_costs.json", results)
    (args.out / "preset_costs.md").write_text(render(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
