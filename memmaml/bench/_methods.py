"""One meta-step -- inner loop, query loss, backward into the model -- by memmaml or by a peer library.

Peers are optional and never dependencies of memmaml: torch_maml (the
predecessor: its naive and checkpointed MAML), higher and torchopt (naive
unrolls). Each adapter runs the same workload as memmaml and returns the
meta-gradient, so the benchmark can compare them.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any, NamedTuple

import memmaml
from memmaml import Uniform, parse_engine

from ._workload import Built

__all__ = ["PEER_INSTALL", "Method", "meta_step", "unavailable"]

#: how to install each peer
PEER_INSTALL = {
    "torch_maml": "pip install torch-maml",
    "higher": "pip install higher",
    "torchopt": "pip install torchopt",
}


class Method(NamedTuple):
    """What runs the meta-step: ``library`` and, for memmaml and torch_maml, an engine text.

    memmaml takes any concrete :func:`~memmaml.parse_engine` form
    (``"naive"``, ``"uniform:5"``, ``"binomial:20+offload"``); torch_maml
    ``"naive"`` or ``"uniform:K"`` (its ``checkpoint_steps``); higher and
    torchopt unroll naively (``"naive"``).
    """

    library: str
    engine: str = "naive"

    @property
    def label(self) -> str:
        return self.engine if self.library == "memmaml" else f"{self.library} {self.engine}"


def unavailable(method: Method, optimizer: str) -> str | None:
    """Why ``method`` cannot run here (not installed, no such optimizer), or ``None``."""
    if method.library == "memmaml":
        return None
    if method.library not in PEER_INSTALL:
        raise ValueError(f"unknown library {method.library!r}; known: memmaml, {', '.join(PEER_INSTALL)}")
    if importlib.util.find_spec(method.library) is None:
        return f"{method.library} is not installed: {PEER_INSTALL[method.library]}"
    if optimizer != "sgd":
        return f"the {method.library} adapter runs SGD only, not {optimizer}"
    return None


def meta_step(
    built: Built, method: Method, n: int, *, max_grad_grad_norm: float | None = None
) -> tuple[list[Any], Any, list[Any]]:
    """``n`` inner steps, the query loss, its backward: ``(grads in named_parameters order, query loss, losses)``.

    ``max_grad_grad_norm`` clips through the unroll in memmaml and torch_maml;
    higher and torchopt have no such option and run unclipped.
    """
    run = {"memmaml": _memmaml, "torch_maml": _torch_maml, "higher": _higher, "torchopt": _torchopt}[method.library]
    query_loss, losses = run(built, method, built.inputs(n), max_grad_grad_norm)
    return [p.grad for _, p in built.model.named_parameters()], query_loss, losses


def _memmaml(built: Built, method: Method, inputs: list[Any], clip: float | None) -> tuple[Any, list[Any]]:
    spec = parse_engine(method.engine)
    maml = memmaml.MAML(built.model, built.loss_function, built.optimizer, schedule=spec.schedule, offload=spec.offload)
    result = maml(inputs, max_grad_grad_norm=clip)
    query_loss = built.loss_function(result.model, built.query)
    query_loss.backward()
    return query_loss, result.loss_history


def _torch_maml(built: Built, method: Method, inputs: list[Any], clip: float | None) -> tuple[Any, list[Any]]:
    import torch_maml

    warnings.filterwarnings("ignore", message=".*use_reentrant.*")  # it calls checkpoint without it
    optimizer = torch_maml.IngraphGradientDescent(built.optimizer.hyperparams["lr"])
    spec = parse_engine(method.engine)
    if spec.schedule is None:
        maml = torch_maml.NaiveMAML(built.model, built.loss_function, optimizer)
    elif isinstance(spec.schedule, Uniform) and not spec.offload:
        maml = torch_maml.GradientCheckpointMAML(
            built.model, built.loss_function, optimizer, checkpoint_steps=spec.schedule.checkpoint_steps
        )
    else:
        raise ValueError(f"torch_maml has uniform segments only, not {method.engine!r}")
    result = maml(inputs, **({"max_grad_grad_norm": clip} if clip else {}))
    query_loss = built.loss_function(result.model, built.query)
    query_loss.backward()
    return query_loss, result.loss_history


def _steps(loss_of: Any, step: Any, inputs: list[Any]) -> list[Any]:
    """A peer's inner loop: the loss of each batch, then its optimizer's step on it."""
    losses = []
    for batch in inputs:
        losses.append(loss_of(batch))
        step(losses[-1])
    return losses


def _higher(built: Built, method: Method, inputs: list[Any], clip: float | None) -> tuple[Any, list[Any]]:
    import higher
    import torch

    inner = torch.optim.SGD(built.model.parameters(), lr=built.optimizer.hyperparams["lr"])
    with higher.innerloop_ctx(built.model, inner, copy_initial_weights=False) as (fmodel, diffopt):
        losses = _steps(lambda batch: built.loss_function(fmodel, batch), diffopt.step, inputs)
        query_loss = built.loss_function(fmodel, built.query)
        query_loss.backward()
    return query_loss, losses


def _torchopt(built: Built, method: Method, inputs: list[Any], clip: float | None) -> tuple[Any, list[Any]]:
    import torchopt

    model = built.model
    originals = dict(model.named_parameters())
    inner = torchopt.MetaSGD(model, lr=built.optimizer.hyperparams["lr"])
    state = torchopt.extract_state_dict(model)
    losses = _steps(lambda batch: built.loss_function(model, batch), inner.step, inputs)
    query_loss = built.loss_function(model, built.query)
    query_loss.backward()
    torchopt.recover_state_dict(model, state)  # the module holds its original leaves again
    if any(dict(model.named_parameters())[name] is not param for name, param in originals.items()):
        raise RuntimeError("torchopt.recover_state_dict did not restore the original parameters")
    return query_loss, losses
