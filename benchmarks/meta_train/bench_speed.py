#!/usr/bin/env python
"""Wall time per meta-iteration: first- vs second-order, Python loop over tasks vs vmap over tasks.

One process measures every configuration, interleaved in rounds (each round
runs every configuration for ``--iterations`` meta-iterations, in a shuffled
order), so load from other processes on a shared machine hits all of them
alike; the figure reported is the median over rounds of the mean time per
meta-iteration. A meta-iteration is ``MetaTrainer.step()``: sample the
meta-batch, adapt, meta-gradient, clip, Adam step.

Problem: Finn et al.'s sinusoid (K=10, MLP 1-40-40-1, SGD inner lr 0.01,
meta-batch 25, Adam 1e-3), float32, with 1 and 5 inner steps.

Writes ``speed.json`` and ``speed.md`` next to this file (or to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

import memmaml
from memmaml import MetaTrainer, TrainerConfig, Uniform, models
from memmaml.bench import provenance
from memmaml.tasks import Sinusoid


def build(inner_steps: int, first_order: bool, vectorize: bool, schedule=None) -> MetaTrainer:
    torch.manual_seed(0)
    model = models.mlp([1, 40, 40, 1])
    config = TrainerConfig(
        inner_optimizer=memmaml.SGD(0.01),
        num_inner_steps=inner_steps,
        first_order=first_order,
        vectorize=vectorize,
        schedule=schedule,
        meta_batch_size=25,
        num_eval_tasks=10,
    )
    return MetaTrainer(model, Sinusoid(num_shots=10), config)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iterations", type=int, default=20, help="meta-iterations per configuration per round")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    configs = {}
    for steps in (1, 5):
        for order in ("second", "first"):
            fo = order == "first"
            configs[f"loop/{order}/{steps}"] = build(steps, fo, vectorize=False)
            configs[f"vmap/{order}/{steps}"] = build(steps, fo, vectorize=True)
        configs[f"loop-checkpointed(Uniform(1))/second/{steps}"] = build(steps, False, False, schedule=Uniform(1))
    for trainer in configs.values():  # warm-up
        trainer.step()
    times: dict[str, list[float]] = {name: [] for name in configs}
    order = list(configs)
    rng = random.Random(0)
    for _ in range(args.rounds):
        rng.shuffle(order)
        for name in order:
            trainer = configs[name]
            start = time.perf_counter()
            for _ in range(args.iterations):
                trainer.step()
            times[name].append((time.perf_counter() - start) / args.iterations)

    results = []
    for name, samples in times.items():
        engine, order_name, steps = name.split("/")
        results.append(
            {
                "engine": engine,
                "order": order_name,
                "inner_steps": int(steps),
                "ms_per_iteration_median": 1e3 * statistics.median(samples),
                "ms_per_iteration_rounds": [1e3 * s for s in samples],
            }
        )
    by = {(r["engine"], r["order"], r["inner_steps"]): r["ms_per_iteration_median"] for r in results}
    lines = ["| inner steps | engine | second order (ms/it) | first order (ms/it) | FO / SO |", "|---|---|---|---|---|"]
    for steps in (1, 5):
        for engine in ("loop", "vmap"):
            so, fo = by[(engine, "second", steps)], by[(engine, "first", steps)]
            lines.append(f"| {steps} | {engine} | {so:.2f} | {fo:.2f} | {fo / so:.2f} |")
        ck = by[("loop-checkpointed(Uniform(1))", "second", steps)]
        lines.append(f"| {steps} | loop, checkpointed Uniform(1) | {ck:.2f} | - | - |")
    lines += ["", "| inner steps | order | loop (ms/it) | vmap (ms/it) | vmap speed-up |", "|---|---|---|---|---|"]
    for steps in (1, 5):
        for order_name in ("second", "first"):
            loop, vm = by[("loop", order_name, steps)], by[("vmap", order_name, steps)]
            lines.append(f"| {steps} | {order_name} | {loop:.2f} | {vm:.2f} | {loop / vm:.1f}x |")
    env = {
        **provenance("cpu"),
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "iterations_per_round": args.iterations,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.json").write_text(json.dumps({"environment": env, "results": results}, indent=1) + "\n")
    header = (
        f"Sinusoid, meta-batch 25, K=10, MLP 1-40-40-1, float32, CPU, {env['threads']} thread(s), torch "
        f"{env['torch']}; median over {args.rounds} interleaved rounds of {args.iterations} meta-iterations.\n\n"
    )
    (out / "speed.md").write_text(header + "\n".join(lines) + "\n")
    print(header + "\n".join(lines))


if __name__ == "__main__":
    main()
