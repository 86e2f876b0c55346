#!/usr/bin/env python
"""memmaml's implicit hypergradient against torchopt's (``torchopt.diff.implicit.custom_root``), as a cross-check.

torchopt is not a dependency of memmaml: run this in a scratch environment that has it beside memmaml's torch,
e.g. ``python -m venv /tmp/venv-torchopt`` with a ``.pth`` file naming the main environment's site-packages and
``pip install torchopt`` (0.7.3 installs without touching torch 2.14.1), then

    /tmp/venv-torchopt/bin/python benchmarks/hypergradients/torchopt_check.py

On the MAML problems of the benchmark (iMAML's proximal inner objective at the end point of T inner steps), both
libraries solve ``(H + lam I) x = grad`` by conjugate gradients from 0 with the same number of iterations; this
writes the largest relative difference of their hypergradients to ``torchopt_check.json``.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from problems import end_point, implicit, problems

from memmaml.bench import provenance, write_json_atomic


def torchopt_cg(inst, params, iterations):
    import torchopt
    from torchopt.diff.implicit import custom_root

    names = list(params)
    phi = tuple(inst.implicit_hyper[n] for n in names)

    def optimality(theta, phi):  # the gradient of the inner objective, by torch.func (torchopt traces it)
        return torch.func.grad(lambda th: inst.implicit_inner(dict(zip(names, th)), dict(zip(names, phi))))(theta)

    @custom_root(optimality, argnums=1, solve=torchopt.linear_solve.solve_cg(maxiter=iterations, rtol=0.0))
    def solve(theta, phi):
        return tuple(params[n] for n in names)

    theta = solve(tuple(params[n] for n in names), phi)
    loss = inst.implicit_outer(dict(zip(names, theta)), {})
    return dict(zip(names, torch.autograd.grad(loss, phi)))


def main() -> None:
    import torchopt

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", FutureWarning)  # torchopt 0.7.3 calls the deprecated functorch.vjp
    records = {}
    for name in ("digits-maml", "sinusoid-maml"):
        problem = problems()[name]
        for steps in (10, 100):
            inst = problem.instance(steps, 0)
            params = end_point(inst)
            ours, info = implicit(inst, "cg:10", params)
            theirs = torchopt_cg(inst, params, 10)
            a = torch.cat([ours[n].reshape(-1) for n in ours])
            b = torch.cat([theirs[n].reshape(-1) for n in ours])
            records[f"{name}/T={steps}"] = {
                "max_relative_difference": ((a - b).abs().max() / b.abs().max()).item(),
                "memmaml_hvps": info["hvps"],
                "memmaml_residual": info["residual"],
            }
            print(name, steps, records[f"{name}/T={steps}"], flush=True)
    out = Path(__file__).resolve().parent / "torchopt_check.json"
    write_json_atomic(out, {"provenance": provenance(), "torchopt": torchopt.__version__, "records": records}, indent=1)


if __name__ == "__main__":
    main()
