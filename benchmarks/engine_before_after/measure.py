#!/usr/bin/env python
"""The engine before and after a change: peak memory and time of the same meta-steps, interleaved.

Each configuration runs in a fresh process with the memmaml of one checkout on
its ``PYTHONPATH``, using only the API both versions share
(``NaiveMAML`` / ``GradientCheckpointMAML(checkpoint_steps=k)``, ``SGD``,
``Adam``, ``track_memory``), plus torch_maml's checkpointed MAML when it is
installed. Memory comes from one tracked run per configuration; time from
untracked runs, every configuration of a repeat back to back, the order
rotated between repeats; ratios are medians of ratios within a repeat.

    git worktree add /tmp/memmaml-before aa022d0
    python benchmarks/engine_before_after/measure.py --before /tmp/memmaml-before --after . \\
        --out benchmarks/engine_before_after
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

WORKER = r"""
import json, sys, time, warnings
import torch, torch.nn.functional as F
spec = json.loads(sys.argv[1])
torch.set_num_threads(1)
torch.manual_seed(0)
if spec["model"] == "resnet18":
    import torchvision
    model = torchvision.models.resnet18(num_classes=10)
    shape, classes = (16, 3, spec["image_size"], spec["image_size"]), 10
else:  # conv4 at the Omniglot shape: 4 x (conv 3x3, BatchNorm, ReLU, max-pool), 64 filters, 5 classes
    layers, c = [], 1
    for _ in range(4):
        layers += [torch.nn.Conv2d(c, 64, 3, padding=1), torch.nn.BatchNorm2d(64)]
        layers += [torch.nn.ReLU(), torch.nn.MaxPool2d(2)]
        c = 64
    model = torch.nn.Sequential(*layers, torch.nn.Flatten(), torch.nn.Linear(64, 5))
    shape, classes = (25, 1, 28, 28), 5
gen = torch.Generator().manual_seed(1)
support = (torch.randn(shape, generator=gen), torch.randint(0, classes, (shape[0],), generator=gen))
query = (torch.randn(shape, generator=gen), torch.randint(0, classes, (shape[0],), generator=gen))
loss = lambda m, b: F.cross_entropy(m(b[0]), b[1])
def make():
    if spec["library"] == "torch_maml":
        import torch_maml
        warnings.filterwarnings("ignore", message=".*use_reentrant.*")
        return torch_maml.GradientCheckpointMAML(model, loss, torch_maml.IngraphGradientDescent(spec["lr"]),
                                                 checkpoint_steps=spec["k"])
    import memmaml
    opt = (memmaml.Adam if spec["optimizer"] == "adam" else memmaml.SGD)(spec["lr"])
    if spec["k"] is None:
        return memmaml.NaiveMAML(model, loss, opt)
    return memmaml.GradientCheckpointMAML(model, loss, opt, checkpoint_steps=spec["k"])
def meta_step(n):
    result = make()([support] * n)
    loss(result.model, query).backward()
meta_step(1)
model.zero_grad(set_to_none=True)
record = {}
if spec["track"]:
    import memmaml
    with memmaml.track_memory("cpu") as mem:
        meta_step(spec["n"])
    record["peak_bytes"] = mem.peak_bytes
else:
    start = time.perf_counter()
    meta_step(spec["n"])
    record["seconds"] = time.perf_counter() - start
print(json.dumps(record))
"""

CONFIGS = [
    # name, model, image size, optimizer, lr, n, k (None: naive), library
    ("resnet18-64 adam n=100 k=10", "resnet18", 64, "adam", 1e-3, 100, 10, "memmaml"),
    ("resnet18-64 adam naive n=20", "resnet18", 64, "adam", 1e-3, 20, None, "memmaml"),
    ("conv4 sgd naive n=100", "conv4", 28, "sgd", 0.01, 100, None, "memmaml"),
    ("conv4 sgd n=100 k=10", "conv4", 28, "sgd", 0.01, 100, 10, "memmaml"),
    ("conv4 sgd n=100 k=100", "conv4", 28, "sgd", 0.01, 100, 100, "memmaml"),
    ("conv4 sgd torch_maml n=100 k=10", "conv4", 28, "sgd", 0.01, 100, 10, "torch_maml"),
]


def run(root: str, config: tuple, track: bool) -> dict:
    _name, model, size, optimizer, lr, n, k, library = config
    spec = dict(model=model, image_size=size, optimizer=optimizer, lr=lr, n=n, k=k, library=library, track=track)
    proc = subprocess.run(
        [sys.executable, "-c", WORKER, json.dumps(spec)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin", "HOME": str(Path.home())},
        cwd=root,  # python -c puts the working directory first on sys.path: it must be the checkout measured
        timeout=7200,
    )
    if proc.returncode:
        return {"error": proc.stderr[-800:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def commit(root: str) -> str:
    out = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="a checkout of memmaml before the change")
    p.add_argument("--after", required=True, help="a checkout after it")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="", help="run only the configurations whose name contains this text")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    roots = {"before": str(Path(args.before).resolve()), "after": str(Path(args.after).resolve())}
    results: dict = {
        "commands": " ".join(sys.argv),
        "commits": {v: commit(r) for v, r in roots.items()},
        "torch": __import__("torch").__version__,
        "device": "cpu, 1 thread per run",
        "configs": {},
    }
    configs = [c for c in CONFIGS if args.only in c[0]]
    keys = [(c, v) for c in configs for v in roots if not (c[7] == "torch_maml" and v == "before")]
    for config, version in keys:  # memory: one tracked run each
        results["configs"].setdefault(config[0], {})[version] = {"peak_bytes": run(roots[version], config, True)}
        print(config[0], version, results["configs"][config[0]][version], flush=True)
    started = time.time()
    for repeat in range(args.repeats):  # time: every configuration back to back, order rotated
        shift = repeat % len(keys)
        for config, version in keys[shift:] + keys[:shift]:
            record = run(roots[version], config, False)
            results["configs"][config[0]][version].setdefault("seconds", []).append(record.get("seconds"))
            print(config[0], version, record, flush=True)
    results["timing_wall_seconds"] = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def _ratio(results: dict, a: tuple[str, str], b: tuple[str, str]) -> str:
    if a[0] not in results["configs"] or b[0] not in results["configs"]:
        return "not measured in this run"
    xs = results["configs"][a[0]][a[1]]["seconds"]
    ys = results["configs"][b[0]][b[1]]["seconds"]
    pairs = [x / y for x, y in zip(xs, ys) if x and y]
    return f"{statistics.median(pairs):.3f} (per repeat: {', '.join(f'{p:.2f}' for p in pairs)})" if pairs else "–"


def markdown(results: dict) -> str:
    c = results["commits"]
    lines = [
        f"# Engine before ({c['before']}) and after ({c['after']})",
        "",
        f"Measured on CPU ({results['device']}), torch {results['torch']}. Command: `{results['commands']}`",
        "",
        "| configuration | version | peak live tensors | median seconds |",
        "|---|---|---:|---:|",
    ]
    for name, versions in results["configs"].items():
        for version, r in versions.items():
            peak = r["peak_bytes"].get("peak_bytes")
            secs = [s for s in r.get("seconds", []) if s]
            lines.append(
                f"| {name} | {version} | {peak / 2**20:,.1f} MiB | {statistics.median(secs):.2f} |"
                if peak and secs
                else f"| {name} | {version} | – | – |"
            )
    a = "after"
    adam, naive20 = "resnet18-64 adam n=100 k=10", "resnet18-64 adam naive n=20"
    lines += ["", "Ratios (medians of per-repeat ratios; time per step where n differs):", ""]
    for version in ("before", a):
        per_step = [
            x / 100 / (y / 20)
            for x, y in zip(
                results["configs"][adam][version]["seconds"], results["configs"][naive20][version]["seconds"]
            )
            if x and y
        ]
        if per_step:
            lines.append(
                f"- {version}: ResNet-18 Adam k=10, time per step / naive Adam's (n=20): "
                f"{statistics.median(per_step):.3f}"
            )
    peaks = {v: results["configs"][adam][v]["peak_bytes"].get("peak_bytes") for v in ("before", a)}
    if all(peaks.values()):
        lines.append(f"- ResNet-18 Adam k=10 peak, after / before: {peaks[a] / peaks['before']:.3f}")
    for version in ("before", a):
        lines.append(
            f"- {version}: conv4 k=10 / naive: "
            f"{_ratio(results, ('conv4 sgd n=100 k=10', version), ('conv4 sgd naive n=100', version))}"
        )
        lines.append(
            f"- {version}: conv4 k=100 / naive: "
            f"{_ratio(results, ('conv4 sgd n=100 k=100', version), ('conv4 sgd naive n=100', version))}"
        )
    lines.append(
        f"- after: conv4 k=10 / torch_maml k=10: "
        f"{_ratio(results, ('conv4 sgd n=100 k=10', a), ('conv4 sgd torch_maml n=100 k=10', a))}"
    )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
