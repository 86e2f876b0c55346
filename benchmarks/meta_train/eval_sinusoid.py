#!/usr/bin/env python
"""Evaluate a sinusoid meta-training checkpoint after 0..10 inner steps and draw the figures.

Reads ``<run>/checkpoint.pt`` (``torch.load(weights_only=True)``) and
``<run>/metrics.jsonl`` written by ``scripts/meta_train.py --task sinusoid``,
evaluates the meta-learned initialisation on the run's held-out tasks (the same
seeds as the run's own evaluation) after 0..10 inner SGD steps, and writes
``eval_steps.json`` and ``sinusoid.png`` into the run folder.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import memmaml
from memmaml import batched_evaluate, load_checkpoint_file, models
from memmaml.tasks import Sinusoid, draw_seeds, mse_loss


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="the --out folder of a sinusoid run")
    p.add_argument("--max-steps", type=int, default=10)
    args = p.parse_args()
    run = Path(args.run)
    ckpt = load_checkpoint_file(run / "checkpoint.pt")
    config = ckpt["config"]
    hidden = [int(h) for h in config["run.hidden"].split(",") if h]
    model = models.mlp([1, *hidden, 1])
    model.load_state_dict(ckpt["model"])
    source = Sinusoid(config["task.num_shots"], config["task.num_query"])
    seeds = draw_seeds(torch.Generator().manual_seed(config["eval_seed"]), config["num_eval_tasks"])
    tasks = source.sample_batch(seeds)
    steps = list(range(args.max_steps + 1))
    inner = memmaml.SGD(config["inner_optimizer.lr"])
    losses = batched_evaluate(model, mse_loss, tasks, inner, steps=steps)["loss"].double()
    n = losses.shape[0]
    mean = losses.mean(0)
    ci95 = 1.96 * losses.std(0, unbiased=True) / n**0.5
    result = {
        "iteration": ckpt["iteration"],
        "num_tasks": n,
        "steps": steps,
        "mse": mean.tolist(),
        "ci95": ci95.tolist(),
        "median": losses.median(0).values.tolist(),
    }
    (run / "eval_steps.json").write_text(json.dumps(result, indent=1) + "\n")
    for s in steps:
        print(f"{s:2d} steps: MSE {mean[s]:.3f} ± {ci95[s]:.3f} (median {result['median'][s]:.3f})")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    ax = axes[0]
    it = [r["iteration"] for r in evals]
    for key, label in (("eval_loss@1", "after 1 step"), ("eval_loss@0", "before adaptation")):
        m = [r[key] for r in evals]
        c = [r[key + "_ci95"] for r in evals]
        ax.plot(it, m, marker="o", ms=3, label=label)
        ax.fill_between(it, [a - b for a, b in zip(m, c)], [a + b for a, b in zip(m, c)], alpha=0.25)
    ax.set(
        xlabel="meta-iteration",
        ylabel=f"held-out MSE ({n} tasks)",
        yscale="log",
        title="Held-out MSE during meta-training",
    )
    ax.legend()
    ax = axes[1]
    ax.errorbar(steps, mean.tolist(), yerr=ci95.tolist(), marker="o", ms=3, capsize=2, label="mean ± 95% CI")
    ax.plot(steps, result["median"], ls="--", label="median")
    ax.set(
        xlabel="inner SGD steps at test",
        ylabel="held-out MSE",
        yscale="log",
        title=f"After {ckpt['iteration']} meta-iterations",
    )
    ax.legend()
    ax = axes[2]
    task = tasks.select(0)
    x = torch.linspace(-5, 5, 200).unsqueeze(1)
    amplitude_phase = torch.linalg.lstsq(
        torch.cat([torch.sin(task.support[0]), torch.cos(task.support[0])], 1), task.support[1]
    ).solution
    truth = torch.cat([torch.sin(x), torch.cos(x)], 1) @ amplitude_phase
    ax.plot(x, truth, "k", lw=2, label="task")
    ax.plot(task.support[0], task.support[1], "k^", label=f"{task.support[0].shape[0]} support points")
    params = {k: v.detach() for k, v in model.named_parameters()}
    for count in (0, 1, args.max_steps):
        adapted = (
            params
            if count == 0
            else memmaml.unroll(model, mse_loss, [task.support] * count, inner, params=params, first_order=True).params
        )
        with torch.no_grad():
            ax.plot(x, memmaml.AdaptedModule(model, adapted)(x), label=f"{count} steps")
    ax.set(xlabel="x", ylabel="y", title="One held-out task")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(run / "sinusoid.png", dpi=110)
    print(f"wrote {run / 'eval_steps.json'} and {run / 'sinusoid.png'}")


if __name__ == "__main__":
    main()
