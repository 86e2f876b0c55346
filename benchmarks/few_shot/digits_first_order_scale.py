#!/usr/bin/env python
"""Why first-order MAML drifts on the digits preset, and what would stop it: a probe on the training digits.

In ``digits.py`` first-order MAML's initialisation drifts at the preset's
setting (inner lr 0.1, clip 1): its support loss before adaptation grows
without bound while MAML's stays at chance. Its features grow, so one inner
step of SGD, whose size on the head grows with the squared feature norm,
becomes enormous: in this probe's stored run (``digits_first_order_scale/``,
1,500 iterations) the preset's MLP ends with a median feature norm of 76.6
and ``lr * |h|**2`` = 586 under first-order MAML, against 6.85 and 4.69 with
a ``LayerNorm`` (5.91 and 3.49 for second-order MAML with one); the probe has
no second-order run of the plain MLP. The first-order
meta-gradient leaves out the factor ``I - lr * H`` of the inner step; once
``lr * H`` is larger than 1 along a direction, that factor flips the sign of
the true meta-gradient there, first-order MAML moves the wrong way, and (the
likely mechanism, not proven here) moving the wrong way makes ``lr * H`` larger
still. In ``digits_tune.py`` a smaller inner lr only delayed it (0.1 settled on
12 classes over 1,500 iterations, not on 20 over 5,000), and a global clip
hardly changes Adam's step. Something must hold the scale of the features.

This probe meta-trains on the preset's training classes (digits 0-4 with
their rotations; no test digit is read), 5-way 1-shot, inner lr 0.1, clip 1,
meta-batch 32, Adam 1e-3, and changes one thing at a time:

* ``plain``: the preset's MLP (64-64, ReLU), the reference;
* ``layernorm``: a ``LayerNorm`` without affine parameters after each hidden
  layer, which fixes the features' norm;
* ``weight-decay``: the preset's MLP, outer optimizer AdamW with decoupled
  weight decay 0.1.

Each is run with ``--first-order`` and the layer-normalised one also second
order; the training metrics (support loss before, query loss after) are the
evidence, plus the feature norm and ``lr * |h|**2`` at the end. The command
line has no flag for either change (``--hidden`` builds plain ReLU layers,
the outer optimizer takes no weight decay), so this runs the library.

Writes ``results.json`` and ``results.md`` to ``--out``; a rerun skips the
finished runs. Run (about 15 minutes on 2 shared cores)::

    OMP_NUM_THREADS=1 nohup nice python benchmarks/few_shot/digits_first_order_scale.py --jobs 2 > scale.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import torch
from torch import nn

import memmaml
from memmaml import MetaTrainer, TrainerConfig, models
from memmaml.bench import provenance, write_json_atomic
from memmaml.tasks import Digits

HERE = Path(__file__).resolve().parent
INNER_LR, MAX_GRAD_NORM = 0.1, 1.0
RUNS = {  # name: (variant, first order)
    "fomaml-plain": ("plain", True),
    "fomaml-layernorm": ("layernorm", True),
    "maml-layernorm": ("layernorm", False),
    "fomaml-weight-decay": ("weight-decay", True),
}


def network(variant: str) -> nn.Module:
    torch.manual_seed(0)
    norm = (lambda width: nn.LayerNorm(width, elementwise_affine=False)) if variant == "layernorm" else None
    return models.mlp([64, 64, 64, 5], norm=norm)


def features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model[:-1](x)


def run_one(out: Path, name: str, iterations: int) -> dict[str, Any]:
    torch.set_num_threads(1)
    done = out / f"{name}.json"
    if done.is_file():
        return json.loads(done.read_text())
    variant, first_order = RUNS[name]
    source = Digits(5, 1, 15, split="train", rotations=True, flatten=True)
    model = network(variant)
    config = TrainerConfig(
        inner_optimizer=memmaml.SGD(INNER_LR),
        first_order=first_order,
        meta_batch_size=32,
        max_grad_norm=MAX_GRAD_NORM,
        num_eval_tasks=1,
        vectorize=True,
    )
    outer = None
    if variant == "weight-decay":
        outer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    trainer = MetaTrainer(model, source, config, outer_optimizer=outer)
    start = time.perf_counter()
    rows = trainer.train(iterations, log_every=100, progress=False)
    x = torch.cat(source.class_images).to(torch.float32).flatten(1) / 16.0
    with torch.no_grad():
        norms = features(model, x).norm(dim=1)
    result = {
        "name": name,
        "variant": variant,
        "first_order": first_order,
        "iterations": iterations,
        "train": [
            {k: r[k] for k in ("iteration", "loss", "loss_before", "grad_norm")} for r in rows if r["kind"] == "train"
        ],
        "feature_norm_median": norms.median().item(),
        "step_scale_median": (INNER_LR * norms**2).median().item(),
        "wall_s": time.perf_counter() - start,
    }
    write_json_atomic(done, result, indent=1)
    return result


def render(results: dict[str, Any], out: Path) -> None:
    prov = results["provenance"]
    lines = [
        "# First-order MAML on digits: the features' scale",
        "",
        "Meta-trained on the digits presets' training classes (digits 0-4 with their rotations, 20 classes), "
        f"5-way 1-shot, inner lr {INNER_LR:g}, clip {MAX_GRAD_NORM:g}, meta-batch 32, Adam 1e-3 (AdamW for "
        f"weight-decay), {results['iterations']:,} meta-iterations; no test digit is read. Support loss before "
        "adaptation and query loss after one step, means of 100 iterations (chance: ln 5 = 1.61), and the "
        "features' median norm over all training images at the end, with the inner step's scale on the head "
        f"(`lr * |h|^2`). Measured on this CPU ({prov['cpu_count']} cores, torch {prov['torch'].split('+')[0]}).",
        "",
        "| run | support loss before: first / half-way / last 100 | query loss after: first / last 100 | "
        "feature norm | lr * norm^2 |",
        "|---|---|---|---:|---:|",
    ]
    for name in RUNS:
        run = results["runs"].get(name)
        if run is None:
            continue
        train = run["train"]
        before = " / ".join(f"{train[i]['loss_before']:.3g}" for i in (0, len(train) // 2 - 1, -1))
        after = f"{train[0]['loss']:.3g} / {train[-1]['loss']:.3g}"
        lines.append(
            f"| {name} | {before} | {after} | {run['feature_norm_median']:.3g} | {run['step_scale_median']:.3g} |"
        )
    lines += [
        "",
        f"Command: `{prov['command']}`; memmaml {prov['memmaml_commit']} (uncommitted changes: "
        f"{prov['memmaml_dirty']}), torch {prov['torch']}, Python {prov['python']}.",
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=HERE / "digits_first_order_scale")
    parser.add_argument("--iterations", type=int, default=1500)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "provenance": provenance("cpu", [Path(sys.argv[0]).name, *sys.argv[1:]]),
        "iterations": args.iterations,
        "runs": {},
    }
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = {name: pool.submit(run_one, out, name, args.iterations) for name in RUNS}
        for name, future in futures.items():
            results["runs"][name] = future.result()
            write_json_atomic(out / "results.json", results, indent=1)
            render(results, out)
    print((out / "results.md").read_text(), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
