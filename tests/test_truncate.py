"""Truncated backpropagation (``truncate=K``) against its closed form on a quadratic inner problem, in float64.

Inner loss ``L(theta) = 1/2 (theta - a)^T A (theta - a)`` and SGD with learning rate ``eta``: each step is
``theta' = theta - eta A (theta - a)``, whose Jacobian is ``J = I - eta A``. For the meta-loss
``M = 1/2 |theta_n - b|^2`` with ``g = theta_n - b``:

* exact: ``dM/dtheta_0 = (J^T)^n g`` and ``dM/deta = -sum_t g^T J^(n-1-t) A (theta_t - a)``;
* truncated to the last K steps: the first ``n - K`` updates are constants, so ``dM/dtheta_0 = (J^T)^K g``
  and the sum over ``t`` runs over the last K steps only.

The closed forms below use matrix powers, not the engine.
"""

import pytest
import torch
from torch import nn

import memmaml

DIM, STEPS = 4, 9


class Quadratic(nn.Module):
    def __init__(self, theta0):
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, A, a):
        d = self.theta - a
        return 0.5 * d @ A @ d


def _problem():
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
    A = q @ q.T / DIM + 0.3 * torch.eye(DIM, dtype=torch.float64)  # positive definite, no fixed point in 9 steps
    a, b, theta0 = (torch.randn(DIM, generator=gen, dtype=torch.float64) for _ in range(3))
    return A, a, b, theta0


def _closed_form(K, eta=0.2):
    A, a, b, theta0 = _problem()
    J = torch.eye(DIM, dtype=torch.float64) - eta * A
    thetas = [theta0]
    for _ in range(STEPS):
        thetas.append(thetas[-1] - eta * A @ (thetas[-1] - a))
    g = thetas[-1] - b
    d_theta0 = torch.linalg.matrix_power(J.T, K) @ g
    d_eta = -sum(g @ torch.linalg.matrix_power(J, STEPS - 1 - t) @ A @ (thetas[t] - a) for t in range(STEPS - K, STEPS))
    return d_theta0, d_eta


def _engine(K, schedule, eta=0.2):
    A, a, b, theta0 = _problem()
    model = Quadratic(theta0)
    lr = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
    maml = memmaml.MAML(model, lambda m, batch: m(*batch), memmaml.SGD(lr), schedule=schedule)
    result = maml([(A, a)] * STEPS, truncate=K)
    meta = 0.5 * ((result.params["theta"] - b) ** 2).sum()
    return torch.autograd.grad(meta, [model.theta, lr])


@pytest.mark.parametrize("schedule", [None, "uniform:2", "binomial:2"])
@pytest.mark.parametrize("K", [1, 3, STEPS])
def test_truncated_meta_gradients_equal_their_closed_form(K, schedule):
    d_theta0, d_eta = _closed_form(K)
    got_theta0, got_eta = _engine(K, schedule)
    torch.testing.assert_close(got_theta0, d_theta0, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_eta, d_eta, rtol=1e-12, atol=1e-14)


def test_truncation_changes_the_answer_and_full_length_is_exact():
    exact_theta0, exact_eta = _engine(None, None)
    for name, value in zip(("theta0", "eta"), _closed_form(STEPS)):
        torch.testing.assert_close((exact_theta0 if name == "theta0" else exact_eta), value, rtol=1e-12, atol=1e-14)
    short_theta0, _ = _engine(2, None)
    assert (short_theta0 - exact_theta0).norm() > 0.01 * exact_theta0.norm()


def test_truncated_steps_keep_their_losses_and_per_step_hyperparameters():
    """The head's losses are in loss_history (detached); a PerStep learning rate gets gradients only in the
    last K entries, each equal to the closed form's term for its step."""
    A, a, b, theta0 = _problem()
    model = Quadratic(theta0)
    lrs = torch.full((STEPS,), 0.2, dtype=torch.float64, requires_grad=True)
    result = memmaml.MAML(model, lambda m, batch: m(*batch), memmaml.SGD(memmaml.PerStep(lrs)))(
        [(A, a)] * STEPS, truncate=3
    )
    assert len(result.loss_history) == STEPS and not result.loss_history[0].requires_grad
    (grad,) = torch.autograd.grad(0.5 * ((result.params["theta"] - b) ** 2).sum(), [lrs])
    assert torch.all(grad[: STEPS - 3] == 0) and torch.all(grad[STEPS - 3 :] != 0)
    torch.testing.assert_close(grad.sum(), _closed_form(3)[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [0, -1, STEPS + 1, 2.5, True, "3"])
def test_truncate_must_be_a_step_count(bad):
    model = Quadratic(torch.zeros(DIM, dtype=torch.float64))
    A, a, _, _ = _problem()
    with pytest.raises(
        ValueError, match=rf"truncate must be an integer from 1 to the number of inner steps \({STEPS}\)"
    ):
        memmaml.MAML(model, lambda m, batch: m(*batch))([(A, a)] * STEPS, truncate=bad)


@pytest.mark.parametrize("schedule", [None, "binomial:2"])
def test_first_order_is_the_limit_of_no_differentiated_steps(schedule):
    """``first_order=True``: every step's Jacobian is the identity, so ``dM/dtheta_0 = g`` (``(J^T)^0 g``) and
    ``dM/deta = -sum_t g^T A (theta_t - a)`` over all steps: the closed form of K = 0 (which ``truncate`` refuses)."""
    A, a, b, theta0 = _problem()
    eta = 0.2
    thetas = [theta0]
    for _ in range(STEPS):
        thetas.append(thetas[-1] - eta * A @ (thetas[-1] - a))
    g = thetas[-1] - b
    d_eta = -sum(g @ A @ (thetas[t] - a) for t in range(STEPS))
    model = Quadratic(theta0)
    lr = torch.tensor(eta, dtype=torch.float64, requires_grad=True)
    result = memmaml.MAML(model, lambda m, batch: m(*batch), memmaml.SGD(lr), schedule=schedule)(
        [(A, a)] * STEPS, first_order=True
    )
    got_theta0, got_eta = torch.autograd.grad(0.5 * ((result.params["theta"] - b) ** 2).sum(), [model.theta, lr])
    torch.testing.assert_close(got_theta0, g, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_eta, d_eta, rtol=1e-12, atol=1e-14)
