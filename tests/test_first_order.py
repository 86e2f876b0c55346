"""First-order MAML (``first_order=True``) against a hand-written loop that shares no code with memmaml.

With the inner gradients treated as constants, the adapted parameters are
``theta_n = theta_0 + sum_i u_i`` where every update ``u_i`` is a function of
gradients alone (SGD: ``-lr g_i``; Adam: ``-lr m_hat_i / (sqrt(v_hat_i) + eps)``).
So the first-order meta-gradient is the query gradient at ``theta_n``, and the
learning rate's is ``sum_i (u_i / lr) . grad_q(theta_n)``. The reference computes
``theta_n`` with ``torch.autograd.grad`` (no ``create_graph``) and a functional
MLP written out here, then the query gradient at it; memmaml runs the same
problem with the naive engine and with checkpointed schedules whose segments do
and do not divide the number of steps. float64 throughout; every batch differs,
so nothing sits at a fixed point, and the second-order meta-gradient is checked
to differ (the curvature the first-order one leaves out is not zero here).
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import memmaml

DTYPE = torch.float64
NUM_STEPS = 5
SIZES = (3, 6, 5, 2)
ENGINES = [None, "uniform:2", "uniform:5", "binomial:2"]  # naive; segments of 2 (not dividing 5), of 5, Revolve


def problem(seed: int = 0):
    """A tanh MLP (as an nn.Module and as its weights), NUM_STEPS support batches and a query batch."""
    torch.manual_seed(seed)
    layers = []
    for fan_in, fan_out in itertools.pairwise(SIZES):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    model = nn.Sequential(*layers[:-1]).to(DTYPE)
    gen = torch.Generator().manual_seed(seed + 1)
    batches = [
        (torch.randn(7, SIZES[0], generator=gen, dtype=DTYPE), torch.randn(7, SIZES[-1], generator=gen, dtype=DTYPE))
        for _ in range(NUM_STEPS + 1)
    ]
    return model, batches[:-1], batches[-1]


def forward(weights: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The MLP written out: weights are [W1, b1, W2, b2, ...] in nn.Linear's layout."""
    for i in range(0, len(weights), 2):
        x = x @ weights[i].T + weights[i + 1]
        if i + 2 < len(weights):
            x = torch.tanh(x)
    return x


def mse_of(weights, batch) -> torch.Tensor:
    x, y = batch
    return ((forward(weights, x) - y) ** 2).mean()


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def reference(theta0, batches, query, optimizer: str, lr: float, betas=(0.9, 0.999), eps=1e-8):
    """theta_n by a first-order loop; the query loss, its gradient at theta_n, and d(query loss)/d(lr)."""
    theta = [p.detach().clone() for p in theta0]
    m = [torch.zeros_like(p) for p in theta]
    v = [torch.zeros_like(p) for p in theta]
    d_theta_d_lr = [torch.zeros_like(p) for p in theta]
    for t, batch in enumerate(batches, start=1):
        at = [p.detach().requires_grad_(True) for p in theta]
        grads = torch.autograd.grad(mse_of(at, batch), at)  # no create_graph: constants
        if optimizer == "sgd":
            directions = [-g for g in grads]
        else:  # torch.optim.Adam's formula, bias corrections in Python floats
            m = [betas[0] * mi + (1 - betas[0]) * g for mi, g in zip(m, grads)]
            v = [betas[1] * vi + (1 - betas[1]) * g * g for vi, g in zip(v, grads)]
            c1, c2 = 1 - betas[0] ** t, 1 - betas[1] ** t
            directions = [-(mi / c1) / ((vi / c2).sqrt() + eps) for mi, vi in zip(m, v)]
        theta = [p + lr * d for p, d in zip(theta, directions)]
        d_theta_d_lr = [s + d for s, d in zip(d_theta_d_lr, directions)]
    at = [p.detach().requires_grad_(True) for p in theta]
    loss = mse_of(at, query)
    grads = torch.autograd.grad(loss, at)
    d_lr = sum((g * s).sum() for g, s in zip(grads, d_theta_d_lr))
    return loss.detach(), list(grads), theta, d_lr


def memmaml_first_order(optimizer: str, lr: float, schedule, first_order: bool = True):
    model, batches, query = problem()
    lr_tensor = torch.tensor(lr, dtype=DTYPE, requires_grad=True)
    inner = memmaml.SGD(lr_tensor) if optimizer == "sgd" else memmaml.Adam(lr_tensor)
    maml = memmaml.MAML(model, mse, inner, schedule=schedule)
    result = maml(batches, first_order=first_order)
    loss = mse(result.model, query)
    grads = torch.autograd.grad(loss, [*model.parameters(), lr_tensor])
    return loss.detach(), list(grads[:-1]), [p.detach() for p in result.params.values()], grads[-1]


def assert_all_close(actual, expected, what):
    for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-13, msg=lambda m: f"{what}[{i}]: {m}")


@pytest.mark.parametrize("schedule", ENGINES, ids=lambda s: s or "naive")
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.3), ("adam", 0.05)])
def test_first_order_meta_gradient_is_the_query_gradient_at_the_adapted_parameters(optimizer, lr, schedule):
    model, batches, query = problem()
    expected_loss, expected_grads, expected_theta, expected_d_lr = reference(
        list(model.parameters()), batches, query, optimizer, lr
    )
    loss, grads, theta, d_lr = memmaml_first_order(optimizer, lr, schedule)
    assert_all_close(theta, expected_theta, "adapted parameters")
    torch.testing.assert_close(loss, expected_loss, rtol=1e-12, atol=0)
    assert_all_close(grads, expected_grads, "meta-gradient")
    torch.testing.assert_close(d_lr, expected_d_lr, rtol=1e-10, atol=1e-13)
    # not a trivial comparison: the adapted parameters moved, the gradients are not small
    moved = max((t - p).abs().max().item() for t, p in zip(theta, model.parameters()))
    assert moved > 1e-2 and max(g.abs().max().item() for g in expected_grads) > 1e-2


@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.3), ("adam", 0.05)])
def test_second_order_meta_gradient_differs_on_this_problem(optimizer, lr):
    """The curvature first-order MAML leaves out is not negligible here, so the comparison above can fail."""
    _, first, _, first_d_lr = memmaml_first_order(optimizer, lr, None)
    _, second, _, second_d_lr = memmaml_first_order(optimizer, lr, None, first_order=False)
    gap = max((a - b).abs().max().item() for a, b in zip(first, second))
    assert gap > 1e-3 * max(b.abs().max().item() for b in second)
    assert (first_d_lr - second_d_lr).abs() > 1e-6
