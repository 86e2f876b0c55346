"""The problems and the hypergradient methods of the benchmark ``measure.py`` (issue 22).

Three problems, float64 throughout, each an inner loop of ``T`` SGD steps whose end point an outer loss judges:

* ``digits-lr-wd`` (problem a): an MLP 64 -> 32 -> 10 trained on scikit-learn's digits (1,000 training digits,
  mini-batches of 64, one random batch per step) with 10 learning rates (``memmaml.PerStep``, one per block of
  ``T / 10`` steps) and a weight decay; the hypergradient of the validation loss (397 digits) with respect to
  the 10 learning rates and the weight decay.
* ``digits-maml`` (problem b): MAML's meta-gradient with respect to the initialisation of an MLP 64 -> 32 -> 5
  on a 5-way 5-shot task of ``memmaml.tasks.Digits`` (training digits 0-4), ``T`` full-batch SGD steps on the 25
  support digits at learning rate 0.1, the cross-entropy of the 75 query digits.
* ``sinusoid-maml`` (problem b): the same on Finn et al.'s sinusoid (``memmaml.tasks.Sinusoid``, 10 support
  points, 50 query points), an MLP 1 -> 40 -> 40 -> 1, learning rate 0.01, mean squared error.

Methods (``METHODS``), each a function of one :class:`Instance`:

* ``exact``: ``memmaml.MAML`` with ``schedule=SCHEDULE`` (binomial checkpointing); ``naive``: the same with
  ``schedule=None`` (every step's graph kept), the reference it is checked against where it fits;
* ``truncated:K``: ``truncate=K`` (the last K steps differentiated, the earlier updates constants), same schedule;
* ``first-order``: ``first_order=True`` (every inner gradient a constant), same schedule;
* ``cg:N`` / ``neumann:N``: ``memmaml.implicit_hypergradient`` with N Hessian-vector products at the end point of
  the inner loop (run once without a graph). What "implicit" means differs by problem:

  - ``digits-lr-wd``: the inner objective is the *full* training loss plus ``wd / 2 |theta|^2``. The weight decay
    moves its stationary point and gets an implicit hypergradient; the learning rates do not appear in it, so
    theirs is exactly zero (structural, whatever the solver). The Neumann step is the last block's learning rate.
  - MAML: an unregularised inner loss's stationary point does not depend on the initialisation, so the implicit
    form is iMAML's proximal one, ``(I + H / lam)^{-1} grad``, with ``lam = 1 / (T * lr)``: T steps of gradient
    descent at learning rate ``lr`` act like a ridge penalty of that strength (in the eigenbasis of a quadratic,
    ``(1 - lr h)^T`` against ``1 / (1 + T lr h)``: equal to first order in ``h``, both 1 where ``T lr h << 1`` and
    both near 0 where ``T lr h >> 1``). The Neumann step is the inner learning rate.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

import memmaml
from memmaml.models import mlp
from memmaml.tasks import Digits, Sinusoid, cross_entropy_loss, mse_loss

DT = torch.float64
SCHEDULE = "binomial:20"  # the exact engine, and the one every unrolled approximation runs with
METHODS = (
    "exact",
    "naive",
    "truncated:1",
    "truncated:10",
    "truncated:100",
    "first-order",
    "cg:10",
    "cg:100",
    "neumann:10",
    "neumann:100",
)
APPROXIMATIONS = tuple(m for m in METHODS if m not in ("exact", "naive"))


@dataclass
class Instance:
    """One inner loop and everything each method needs to differentiate it.

    ``wrt`` are the tensors the hypergradient is taken with respect to (by name); ``outer`` is the outer loss of
    the adapted model. ``implicit_*`` define the stationary point the implicit methods assume, with
    ``implicit_hyper`` the hyperparameters as that objective sees them (same names as ``wrt``).
    """

    model: nn.Module
    loss_fn: Callable[[nn.Module, Any], Tensor]
    optimizer: memmaml.InnerOptimizer
    batches: list[Any]
    wrt: dict[str, Tensor]
    outer: Callable[[nn.Module], Tensor]
    implicit_inner: Callable[[dict, dict], Tensor]
    implicit_outer: Callable[[dict, dict], Tensor]
    implicit_hyper: dict[str, Tensor]
    alpha: float  # the Neumann series' step
    groups: dict[str, list[str]]  # names of ``wrt`` reported together (cosine, relative error)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- data
_DIGITS: dict[str, tuple[Tensor, Tensor]] = {}


def digits_split() -> dict[str, tuple[Tensor, Tensor]]:
    """1,000 training, 397 validation and 400 test digits (the split of long_horizon_hypergradients)."""
    if not _DIGITS:
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x, y = torch.tensor(x / 16.0, dtype=DT), torch.tensor(y)
        order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        for name, part in (("train", order[:1000]), ("val", order[1000:1397]), ("test", order[1397:])):
            _DIGITS[name] = (x[part], y[part])
    return _DIGITS


def _squared_norm(params: dict[str, Tensor]) -> Tensor:
    return sum((p**2).sum() for p in params.values())


def _call_loss(loss_fn, model, params, batch):
    return loss_fn(lambda inputs: functional_call(model, params, (inputs,)), batch)


def indexed_cross_entropy(model: nn.Module, index: Tensor, *, data: tuple[Tensor, Tensor]) -> Tensor:
    """The cross-entropy of the digits ``data[0][index]`` (the batch is an index tensor)."""
    inputs, labels = data
    return cross_entropy_loss(model, (inputs[index], labels[index]))


# --------------------------------------------------------------------------- problem (a)
class DigitsHyper:
    """Problem (a): per-block learning rates and a weight decay, hypergradient of the validation loss."""

    name = "digits-lr-wd"
    kind = "hyper"
    blocks = 10
    batch = 64

    def __init__(self, lr: float = 0.1, weight_decay: float = 1e-3) -> None:
        self.lr, self.weight_decay = lr, weight_decay

    def minibatches(self, seed: int, steps: int) -> list[Tensor]:
        """One index tensor per step (64 training digits drawn with replacement): 512 bytes a step, so 100,000
        steps hold 51 MB of indices instead of 3.3 GB of images; the loss reads the images through them."""
        generator = torch.Generator().manual_seed(seed)
        return [torch.randint(0, 1000, (self.batch,), generator=generator) for _ in range(steps)]

    def fresh_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return mlp([64, 32, 10]).to(DT)

    def instance(self, steps: int, seed: int, *, lr: Tensor | None = None, wd: Tensor | None = None) -> Instance:
        """``lr`` (one per block) and ``wd`` may be non-leaf tensors (``log_lr.exp()``); defaults: constants."""
        if steps % self.blocks:
            raise ValueError(f"steps must be a multiple of {self.blocks}, got {steps}")
        if lr is None:
            lr = torch.full((self.blocks,), self.lr, dtype=DT, requires_grad=True)
        if wd is None:
            wd = torch.tensor(self.weight_decay, dtype=DT, requires_grad=True)
        model = self.fresh_model(seed)
        optimizer = memmaml.SGD(memmaml.PerStep(lr, every=steps // self.blocks), weight_decay=wd)
        data = digits_split()

        def implicit_inner(params, hyper):
            return _call_loss(cross_entropy_loss, model, params, data["train"]) + 0.5 * hyper["wd"] * _squared_norm(
                params
            )

        def implicit_outer(params, hyper):
            return _call_loss(cross_entropy_loss, model, params, data["val"])

        return Instance(
            model=model,
            loss_fn=indexed_cross_entropy,
            optimizer=optimizer,
            batches=self.minibatches(seed, steps),
            loss_kwargs={"data": data["train"]},
            wrt={"lr": lr, "wd": wd},
            outer=lambda adapted: cross_entropy_loss(adapted, data["val"]),
            implicit_inner=implicit_inner,
            implicit_outer=implicit_outer,
            implicit_hyper={"lr": lr, "wd": wd},
            alpha=lr[-1].item(),
            groups={"lr": ["lr"], "wd": ["wd"]},
        )


# --------------------------------------------------------------------------- problem (b)
class Maml:
    """Problem (b): MAML's meta-gradient with respect to the initialisation, one task."""

    kind = "maml"

    def __init__(self, name, source, sizes, loss_fn, inner_lr):
        self.name, self.source, self.sizes, self.loss_fn, self.inner_lr = name, source, sizes, loss_fn, inner_lr

    def fresh_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        return mlp(self.sizes).to(DT)

    def instance(self, steps: int, seed: int, *, model: nn.Module | None = None) -> Instance:
        """Task ``seed``; the initialisation is ``model`` (meta-training) or a fresh one from ``seed``."""
        task = self.source.sample(seed=seed)
        model = self.fresh_model(seed) if model is None else model
        lam = 1.0 / (steps * self.inner_lr)  # iMAML's proximal strength matched to T steps (module docstring)
        loss_fn = self.loss_fn
        phi = dict(model.named_parameters())

        def implicit_inner(params, hyper):
            proximal = sum(((params[name] - hyper[name]) ** 2).sum() for name in params)
            return _call_loss(loss_fn, model, params, task.support) + 0.5 * lam * proximal

        def implicit_outer(params, hyper):
            return _call_loss(loss_fn, model, params, task.query)

        return Instance(
            model=model,
            loss_fn=loss_fn,
            optimizer=memmaml.SGD(self.inner_lr),
            batches=[task.support] * steps,
            wrt=phi,
            outer=lambda adapted: loss_fn(adapted, task.query),
            implicit_inner=implicit_inner,
            implicit_outer=implicit_outer,
            implicit_hyper=phi,
            alpha=self.inner_lr,
            groups={"init": list(phi)},
        )


def long_schedule(slots: int, segment: int) -> str:
    """The text form of binomial checkpointing with ``slots`` stored states over segments of ``segment`` steps."""
    return f"binomial:{slots}" + (f":{segment}" if segment > 1 else "")


def problems() -> dict[str, Any]:
    return {
        "digits-lr-wd": DigitsHyper(),
        "digits-maml": Maml(
            "digits-maml",
            Digits(5, 5, 15, flatten=True, dtype=DT),
            [64, 32, 5],
            cross_entropy_loss,
            0.1,
        ),
        "sinusoid-maml": Maml(
            "sinusoid-maml", Sinusoid(num_shots=10, num_query=50, dtype=DT), [1, 40, 40, 1], mse_loss, 0.01
        ),
    }


# --------------------------------------------------------------------------- methods
def applies(method: str, steps: int) -> bool:
    """Truncation to K steps only where K < T (K = T is the exact hypergradient)."""
    return not method.startswith("truncated:") or int(method.split(":")[1]) < steps


def unrolled(inst: Instance, method: str, *, schedule: str | None = SCHEDULE) -> dict[str, Tensor]:
    """The hypergradient of ``exact``, ``naive``, ``truncated:K`` or ``first-order`` through memmaml's engine
    (``naive`` is ``exact`` with ``schedule=None``)."""
    schedule = None if method == "naive" else schedule
    truncate = int(method.split(":")[1]) if method.startswith("truncated:") else None
    maml = memmaml.MAML(inst.model, inst.loss_fn, inst.optimizer, schedule=schedule, preserve_rng_state=False)
    result = maml(inst.batches, loss_kwargs=inst.loss_kwargs, truncate=truncate, first_order=method == "first-order")
    names = list(inst.wrt)
    grads = torch.autograd.grad(inst.outer(result.model), [inst.wrt[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(inst.wrt[n]) if g is None else g for n, g in zip(names, grads)}


def end_point(inst: Instance) -> dict[str, Tensor]:
    """The inner loop's end point, without a graph (what the implicit methods start from)."""
    with torch.no_grad():
        maml = memmaml.MAML(inst.model, inst.loss_fn, inst.optimizer, preserve_rng_state=False)
        result = maml(inst.batches, loss_kwargs=inst.loss_kwargs)
    return {name: p.detach() for name, p in result.params.items()}


def implicit(inst: Instance, method: str, params: dict[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, float]]:
    """``cg:N`` or ``neumann:N`` at ``params``; also the inner gradient norm and the solve's residual."""
    solver, iterations = method.split(":")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="implicit_hypergradient: hyperparams")  # lr: zero by design
        warnings.filterwarnings("ignore", message="implicit_hypergradient: the Neumann series")  # reported below
        warnings.filterwarnings("ignore", message="implicit_hypergradient: conjugate gradients met")
        result = memmaml.implicit_hypergradient(
            inst.implicit_inner,
            inst.implicit_outer,
            params,
            inst.implicit_hyper,
            method=solver,
            iterations=int(iterations),
            alpha=inst.alpha,
            grad_tol=None,  # the norm is recorded instead
        )
    info = {"inner_grad_norm": result.inner_grad_norm, "residual": result.residual, "hvps": result.iterations}
    return dict(result.grads), info


def is_implicit(method: str) -> bool:
    return method.startswith(("cg:", "neumann:"))


def hypergradient(inst: Instance, method: str, *, schedule: str | None = SCHEDULE) -> dict[str, Tensor]:
    """Any method, end to end (the downstream loop's entry point); ``schedule`` for the unrolled ones."""
    if is_implicit(method):
        return implicit(inst, method, end_point(inst))[0]
    return unrolled(inst, method, schedule=schedule)


# --------------------------------------------------------------------------- comparisons
def flat(grads: dict[str, Tensor], names: list[str]) -> Tensor:
    return torch.cat([grads[n].detach().reshape(-1) for n in names])


def compare(grads: dict[str, Tensor], exact: dict[str, Tensor], groups: dict[str, list[str]]) -> dict[str, Any]:
    """Per group: cosine similarity and relative error ``|g - g*| / |g*|`` against the exact hypergradient."""
    out = {}
    for group, names in groups.items():
        g, e = flat(grads, names), flat(exact, names)
        g_norm, e_norm = g.norm().item(), e.norm().item()
        cosine = (g @ e).item() / (g_norm * e_norm) if g_norm > 0 and e_norm > 0 else 0.0
        out[group] = {
            "cosine": cosine,
            "relative_error": (g - e).norm().item() / e_norm if e_norm > 0 else math.nan,
            "norm": g_norm,
            "exact_norm": e_norm,
        }
    return out


def max_relative_difference(a: dict[str, Tensor], b: dict[str, Tensor]) -> float:
    """``max |a - b| / max |b|`` over all entries (0: bitwise equal)."""
    names = list(b)
    x, y = flat(a, names), flat(b, names)
    return ((x - y).abs().max() / y.abs().max()).item()


def record_difference(record: dict[str, Any], reference: dict[str, Any]) -> float:
    """:func:`max_relative_difference` of problem (a)'s hypergradients as a run's record keeps them (``lr``, a list
    of floats, and ``wd``, a float)."""

    def tensors(r: dict[str, Any]) -> dict[str, Tensor]:
        return {"lr": torch.tensor(r["lr"], dtype=DT), "wd": torch.tensor([r["wd"]], dtype=DT)}

    return max_relative_difference(tensors(record), tensors(reference))


class Clock:
    """CPU time of this process (one thread): other jobs on a shared machine slow the wall clock, not this."""

    def __enter__(self) -> Clock:
        self.start, self.wall_start = time.process_time(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.process_time() - self.start
        self.wall_seconds = time.perf_counter() - self.wall_start


def state_bytes(params: dict[str, Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params.values())


__all__ = [
    "APPROXIMATIONS",
    "DT",
    "METHODS",
    "SCHEDULE",
    "Clock",
    "DigitsHyper",
    "Instance",
    "Maml",
    "applies",
    "compare",
    "digits_split",
    "end_point",
    "hypergradient",
    "implicit",
    "is_implicit",
    "max_relative_difference",
    "problems",
    "record_difference",
    "state_bytes",
    "unrolled",
]
