#!/usr/bin/env python
"""The offline few-shot benchmark: MAML, first-order MAML, transfer learning and a random initialisation on digits.

``memmaml-train --preset digits-5w1s`` (scikit-learn's 8x8 digits; digits 0-4
train, 5-9 test; 5-way 1-shot, 15 query images per class) is run twice, as
the preset says and with ``--first-order``, each evaluated every
``--eval-every`` iterations on the 600 held-out test tasks (the curve that
shows whether it has converged). Then every method adapts to the same 600
test tasks (the command line's own held-out seeds) with SGD for 0 to 30
steps and is scored on their query sets:

* ``maml``, ``fomaml`` -- the meta-learned initialisations, at the preset's
  inner learning rate (the one they were trained for);
* ``transfer`` -- the same network pre-trained to classify digits 0-4 (all
  their images but a tenth, held out to report its accuracy), its last layer
  replaced by zeros (a new head for the task's classes), then fine-tuned:
  every parameter (``transfer``) or the head alone (``transfer-head``);
* ``random`` -- the same network at PyTorch's default initialisation.

The baselines' learning rate is the best of a grid **on the test tasks**
(at 10 steps): an advantage MAML does not get, stated beside the figures.
Every method is also scored on 600 tasks of the training digits (fresh
examples and labellings), which shows how much of its accuracy is specific
to the classes it was trained on.

Writes ``results.json`` (with :func:`memmaml.bench.provenance`), ``results.md``
and ``results.png`` to ``--out`` as each part finishes; a rerun skips the
meta-training runs that finished (their ``summary.json``) and resumes an
interrupted one from its checkpoint.

Run (about 15-25 minutes of one core)::

    OMP_NUM_THREADS=1 nohup nice python benchmarks/few_shot/digits.py > digits.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import memmaml
from memmaml import batched_evaluate, load_checkpoint_file
from memmaml.bench import provenance, write_json_atomic
from memmaml.cli import meta_train
from memmaml.tasks import Digits, accuracy, cross_entropy_loss, draw_seeds

HERE = Path(__file__).resolve().parent
PRESET = "digits-5w1s"
STEPS = [0, 1, 3, 10, 30]
LR_GRID = [0.01, 0.03, 0.1, 0.2, 0.4, 0.8, 1.6]
METHODS = ("maml", "fomaml", "transfer", "transfer-head", "random")


def preset_args(extra: list[str]) -> argparse.Namespace:
    return meta_train.parse_args(["--preset", PRESET, *extra, "--out", "unused"])


def meta_train_run(out: Path, extra: list[str], log: dict[str, Any]) -> None:
    """``memmaml-train --preset digits-5w1s`` into ``out`` (skipped when finished, resumed when interrupted)."""
    argv = ["--preset", PRESET, "--vectorize", "--threads", "1", "--no-progress", *extra, "--out", str(out)]
    iterations = preset_args(extra).iterations
    summary = out / "summary.json"
    if summary.is_file() and json.loads(summary.read_text())["iterations"] == iterations:
        print(f"{out.name}: finished earlier", flush=True)
        return
    resume = ["--resume"] if (out / "checkpoint.pt").is_file() else []
    wall, cpu = time.perf_counter(), time.process_time()
    status = meta_train.main([*argv, *resume])
    if status != 0:
        raise SystemExit(f"memmaml-train {' '.join(argv)} exited with {status}")
    log[out.name] = {
        "command": "memmaml-train " + " ".join(argv),
        "wall_s": time.perf_counter() - wall,
        "cpu_s": time.process_time() - cpu,
    }


def fresh_model(args: argparse.Namespace, source: Digits, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return meta_train.build_model(args, source)


def trained_model(args: argparse.Namespace, source: Digits, run: Path) -> nn.Module:
    model = fresh_model(args, source, 0)
    model.load_state_dict(load_checkpoint_file(run / "checkpoint.pt")["model"])
    return model


def pretrain(model: nn.Module, epochs: int, seed: int) -> dict[str, float]:
    """Train ``model`` to classify digits 0-4 (the training classes); a tenth of their images held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    keep = torch.as_tensor(data.target) < 5
    images = (torch.as_tensor(data.images, dtype=torch.float32) / 16.0).unsqueeze(1)[keep]
    labels = torch.as_tensor(data.target)[keep]
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    cut = len(order) // 10
    held, train = order[:cut], order[cut:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=generator).split(64):
            index = train[batch]
            loss = nn.functional.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        held_accuracy = (model(images[held]).argmax(1) == labels[held]).double().mean().item()
    return {"epochs": epochs, "train_images": len(train), "held_out_images": cut, "held_out_accuracy": held_accuracy}


def new_head(model: nn.Module) -> nn.Module:
    """The last linear layer set to zero: a head for new classes that favours none of them."""
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
    return model


def head_params(model: nn.Module) -> dict[str, torch.Tensor]:
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {n: p for n, p in model.named_parameters() if n.rsplit(".", 1)[0] == names[-1]}


def score(model: nn.Module, tasks: Any, lr: float, params: dict[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Mean query accuracy and 95% interval (1.96 standard errors over tasks) after each of STEPS SGD steps."""
    values = batched_evaluate(
        model,
        cross_entropy_loss,
        tasks,
        memmaml.SGD(lr),
        steps=STEPS,
        metrics={"accuracy": accuracy},
        params=params,
    )["accuracy"].double()
    n = values.shape[0]
    return {
        "lr": lr,
        "accuracy": values.mean(0).tolist(),
        "ci95": (1.96 * values.std(0, unbiased=True) / math.sqrt(n)).tolist(),
    }


def best_of_grid(model: nn.Module, tasks: Any, params: Any = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every learning rate of LR_GRID, and the best at 10 steps."""
    grid = [score(model, tasks, lr, params) for lr in LR_GRID]
    return max(grid, key=lambda r: r["accuracy"][STEPS.index(10)]), grid


def curves(run: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == "eval"]


def convergence(results: dict[str, Any], window: int = 2000) -> str:
    """How much each meta-training curve moved over its last ``window`` iterations (the plot shows them)."""
    parts = []
    for method, evals in results.get("curves", {}).items():
        last = evals[-1]
        before = [r for r in evals if r["iteration"] <= last["iteration"] - window]
        if not before:
            continue
        moves = ", ".join(
            f"{s} step{'s' if s != 1 else ''} "
            f"{100 * (last[f'eval_accuracy@{s}'] - before[-1][f'eval_accuracy@{s}']):+.1f}"
            for s in results["preset_eval_steps"]
            if s
        )
        parts.append(f"{method} {moves}")
    if not parts:
        return ""
    return (
        f"Convergence: the held-out accuracy moved over the last {window:,} meta-iterations by (points) "
        + "; ".join(parts)
        + " (left panel of the plot)."
    )


def render(results: dict[str, Any], out: Path) -> None:
    """results.md and results.png from ``results``."""
    prov, steps = results["provenance"], results["steps"]
    shown = [s for s in steps if s in results["preset_eval_steps"]]
    header = " | ".join(f"{s} step{'s' if s != 1 else ''}" for s in shown)
    lines = [
        "# Few-shot digits: MAML, first-order MAML, transfer learning, random initialisation",
        "",
        f"`memmaml-train --preset {PRESET}`: scikit-learn's 8x8 digits, 5-way 1-shot, 15 query images per class; "
        "meta-trained on digits 0-4, tested on 600 tasks of digits 5-9 (never seen in training). Accuracy on "
        "the query sets after the given number of SGD steps on the support set, mean ± 95% interval (1.96 "
        f"standard errors over the 600 tasks). Measured on this CPU ({prov['cpu_count']} cores, torch "
        f"{prov['torch'].split('+')[0]}).",
        "",
        f"| method | learning rate | {header} |",
        "|---|---:|" + "---:|" * len(shown),
    ]
    for method in METHODS:
        row = results["test"].get(method)
        if row is None:
            continue
        cells = " | ".join(
            f"{100 * row['accuracy'][steps.index(s)]:.1f} ± {100 * row['ci95'][steps.index(s)]:.1f}" for s in shown
        )
        lines.append(f"| {method} | {row['lr']:g} | {cells} |")
    lines += [
        "",
        "The same methods on 600 tasks of the **training** digits 0-4 (fresh examples and labellings), to show "
        "how much of the accuracy belongs to the classes each method was trained on:",
        "",
        f"| method | {header} |",
        "|---|" + "---:|" * len(shown),
    ]
    for method in METHODS:
        row = results["train_classes"].get(method)
        if row is not None:
            cells = " | ".join(f"{100 * row['accuracy'][steps.index(s)]:.1f}" for s in shown)
            lines.append(f"| {method} | {cells} |")
    for note in [*results["notes"], convergence(results)]:
        lines += ["", note]
    lines.append("")
    times = results["times"]
    lines.append(
        "Wall time of the whole measurement: "
        f"{times.get('total_wall_s', float('nan')) / 60:.1f} min ({times.get('total_cpu_s', float('nan')) / 60:.1f} "
        "min of CPU time, one thread; a machine shared with other jobs)."
    )
    lines += [
        "",
        f"Command: `{prov['command']}`; memmaml {prov['memmaml_commit']} (uncommitted changes: "
        f"{prov['memmaml_dirty']}), torch {prov['torch']}, Python {prov['python']}, {prov['device_name']}.",
        "",
        "![held-out accuracy during meta-training and after each number of steps](results.png)",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    for method, style in (("maml", "-"), ("fomaml", "--")):
        evals = results["curves"].get(method, [])
        for color, s in enumerate(results["preset_eval_steps"]):
            key = f"eval_accuracy@{s}"
            if evals and key in evals[0]:
                it = [r["iteration"] for r in evals]
                ax.plot(it, [100 * r[key] for r in evals], style, color=f"C{color}", label=f"{method}, {s} steps")
    ax.set(
        xlabel="meta-iteration", ylabel="test accuracy (%), 600 tasks", title="Held-out accuracy during meta-training"
    )
    ax.legend(fontsize=8, ncol=2)
    ax = axes[1]
    for method in METHODS:
        row = results["test"].get(method)
        if row is not None:
            m = [100 * a for a in row["accuracy"]]
            c = [100 * a for a in row["ci95"]]
            ax.errorbar(steps, m, yerr=c, marker="o", ms=3, capsize=2, label=f"{method} (lr {row['lr']:g})")
    ax.set(xlabel="SGD steps on the support set", ylabel="test accuracy (%)", xscale="symlog", title="After adaptation")
    ax.set_xticks(steps, [str(s) for s in steps])
    if results["test"]:
        ax.legend(fontsize=8)
    fig.suptitle(f"digits 5-way 1-shot, test digits 5-9; measured on this CPU, torch {prov['torch'].split('+')[0]}")
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits")
    parser.add_argument("--eval-every", default="250", help="meta-training's held-out evaluations (the curve)")
    parser.add_argument("--iterations", default=None, help="meta-iterations (default: the preset's); for a smoke run")
    parser.add_argument("--pretrain-epochs", type=int, default=30)
    parser.add_argument("--render-only", action="store_true", help="redraw results.md and results.png")
    args = parser.parse_args()
    out: Path = args.out
    if args.render_only:
        render(json.loads((out / "results.json").read_text()), out)
        return 0
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    start_wall, start_cpu = time.perf_counter(), time.process_time()
    preset = preset_args([])
    results: dict[str, Any] = {
        "provenance": provenance("cpu", [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "preset": PRESET,
        "preset_argv": meta_train.PRESETS[PRESET].argv(),
        "preset_eval_steps": [int(s) for s in preset.eval_steps.split(",")],
        "steps": STEPS,
        "lr_grid": LR_GRID,
        "runs": {},
        "test": {},
        "train_classes": {},
        "grid": {},
        "times": {},
        "notes": [],
    }

    def save() -> None:
        results["times"]["total_wall_s"] = time.perf_counter() - start_wall
        results["times"]["total_cpu_s"] = time.process_time() - start_cpu
        write_json_atomic(out / "results.json", results, indent=1)
        render(results, out)

    for method, extra in (("maml", []), ("fomaml", ["--first-order"])):
        iterations = [] if args.iterations is None else ["--iterations", args.iterations]
        meta_train_run(out / method, ["--eval-every", args.eval_every, *iterations, *extra], results["runs"])
        results["curves"] = {m: curves(out / m) for m in ("maml", "fomaml") if (out / m / "metrics.jsonl").is_file()}
        save()

    test_source = Digits(preset.num_ways, preset.num_shots, preset.num_query, split="test")
    train_source = Digits(preset.num_ways, preset.num_shots, preset.num_query, split="train")
    eval_seed = preset.seed + 1 if preset.eval_seed is None else preset.eval_seed  # the command line's held-out tasks
    test_tasks = test_source.sample_batch(draw_seeds(torch.Generator().manual_seed(eval_seed), 600))
    train_tasks = train_source.sample_batch(draw_seeds(torch.Generator().manual_seed(10_000 + eval_seed), 600))

    started = time.perf_counter()
    models = {m: trained_model(preset, train_source, out / m) for m in ("maml", "fomaml")}
    for method, model in models.items():
        results["test"][method] = score(model, test_tasks, preset.inner_lr)
        results["train_classes"][method] = score(model, train_tasks, preset.inner_lr)
        final = results["curves"][method][-1]
        results["test"][method]["command_line_final_eval"] = {
            s: final[f"eval_accuracy@{s}"] for s in results["preset_eval_steps"]
        }
    pretrained = fresh_model(preset, train_source, preset.seed)
    results["pretraining"] = pretrain(pretrained, args.pretrain_epochs, seed=2)
    torch.save(pretrained.state_dict(), out / "pretrained.pt")
    baselines = {
        "transfer": (lambda: new_head(fresh_pretrained(preset, train_source, out)), False),
        "transfer-head": (lambda: new_head(fresh_pretrained(preset, train_source, out)), True),
        "random": (lambda: fresh_model(preset, train_source, preset.seed), False),
    }
    for method, (build, head_only) in baselines.items():
        model = build()
        params = head_params(model) if head_only else None
        best, grid = best_of_grid(model, test_tasks, params)
        results["test"][method], results["grid"][method] = best, grid
        results["train_classes"][method] = score(model, train_tasks, best["lr"], params)  # adapting leaves it as is
        save()
    results["times"]["evaluation_wall_s"] = time.perf_counter() - started
    results["notes"] = [
        f"maml and fomaml adapt at the preset's inner learning rate ({preset.inner_lr:g}), the one they were "
        "meta-trained for. The baselines' learning rate is the best of "
        f"{', '.join(f'{lr:g}' for lr in LR_GRID)} at 10 steps **on the test tasks themselves**, which favours them.",
        f"transfer: the network pre-trained on digits 0-4 ({results['pretraining']['epochs']} epochs of Adam 1e-3, "
        f"batches of 64; {100 * results['pretraining']['held_out_accuracy']:.1f}% on a held-out tenth of their "
        "images), its last layer set to zero, then every parameter (transfer) or the last layer alone "
        "(transfer-head) fine-tuned. random: PyTorch's default initialisation of the same network, the one "
        "maml and fomaml started from (their iteration-0 point on the curve, at learning rate "
        f"{preset.inner_lr:g}).",
        "The command line's own final evaluation of maml and fomaml (the same 600 tasks) agrees with this "
        "script's: "
        + "; ".join(
            f"{m} {s} steps {100 * results['test'][m]['command_line_final_eval'][s]:.2f}% vs "
            f"{100 * results['test'][m]['accuracy'][STEPS.index(s)]:.2f}%"
            for m in ("maml", "fomaml")
            for s in results["preset_eval_steps"][-1:]
        )
        + ".",
    ]
    start = results["curves"]["maml"][0]  # the untrained model, evaluated by the command line at iteration 0
    same_lr = [row for row in results["grid"]["random"] if row["lr"] == preset.inner_lr]
    if start["iteration"] == 0 and same_lr:
        last = results["preset_eval_steps"][-1]
        results["notes"].append(
            f"random at learning rate {preset.inner_lr:g} is the initialisation maml started from: "
            f"{100 * same_lr[0]['accuracy'][STEPS.index(last)]:.2f}% here after {last} steps, "
            f"{100 * start[f'eval_accuracy@{last}']:.2f}% in the command line's evaluation at iteration 0."
        )
    save()
    print((out / "results.md").read_text(), flush=True)
    return 0


def fresh_pretrained(args: argparse.Namespace, source: Digits, out: Path) -> nn.Module:
    model = fresh_model(args, source, args.seed)
    model.load_state_dict(torch.load(out / "pretrained.pt", weights_only=True))
    return model


if __name__ == "__main__":
    raise SystemExit(main())
