"""Truncated backpropagation (``truncate=K``) against its closed form on a quadratic inner problem, in float64.

Inner loss ``L(theta) = 1/2 (theta - a)^T A (theta - a)`` and SGD with learning rate ``eta``: each step is
``theta' = theta - eta A (theta - a)``, whose Jacobian is ``J = I - eta A``. For the meta-loss
``M = 1/2 |theta_n - b|^2`` with ``g = theta_n - b``:

* exact: ``dM/dtheta_0 = (J^T)^n g`` and ``dM/deta = -sum_t g^T J^(n-1-t) A (theta_t - a)``;
* truncated to the last K steps: the first ``n - K`` updates are constants, so ``dM/dtheta_0 = (J^T)^K g``
  and the sum over ``t`` runs over the last K steps only.

The closed forms below use matrix powers, not the engine. Their batches are all the same and the optimizer is
plain SGD, so they cannot tell which batches the differentiated steps read, nor with which optimizer state they
start: the tests after them use a different batch per step, momentum SGD and Adam, against a hand-written float64
loop (``_reference``) that runs the first ``n - K`` steps without a graph and differentiates the last K with
``torch.autograd.grad(..., create_graph=True)``.
"""

import numpy as np
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
    """``(dM/dtheta_0, dM/deta)`` truncated to the last K steps."""
    d_theta0, terms = _closed_form_terms(K, eta)
    return d_theta0, sum(terms)


def _closed_form_terms(K, eta=0.2):
    """``dM/dtheta_0`` truncated to the last K steps, and the K terms ``-g^T J^(n-1-t) A (theta_t - a)`` of
    ``dM/deta``, one per differentiated step ``t`` (the derivative with respect to step t's learning rate)."""
    A, a, b, theta0 = _problem()
    J = torch.eye(DIM, dtype=torch.float64) - eta * A
    thetas = [theta0]
    for _ in range(STEPS):
        thetas.append(thetas[-1] - eta * A @ (thetas[-1] - a))
    g = thetas[-1] - b
    d_theta0 = torch.linalg.matrix_power(J.T, K) @ g
    terms = [-g @ torch.linalg.matrix_power(J, STEPS - 1 - t) @ A @ (thetas[t] - a) for t in range(STEPS - K, STEPS)]
    return d_theta0, terms


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
    last K entries, each equal to the closed form's term for its step (the learning rates are all equal, so
    each step's term is that of the scalar closed form)."""
    A, a, b, theta0 = _problem()
    model = Quadratic(theta0)
    lrs = torch.full((STEPS,), 0.2, dtype=torch.float64, requires_grad=True)
    result = memmaml.MAML(model, lambda m, batch: m(*batch), memmaml.SGD(memmaml.PerStep(lrs)))(
        [(A, a)] * STEPS, truncate=3
    )
    assert len(result.loss_history) == STEPS and not result.loss_history[0].requires_grad
    (grad,) = torch.autograd.grad(0.5 * ((result.params["theta"] - b) ** 2).sum(), [lrs])
    assert torch.all(grad[: STEPS - 3] == 0)
    torch.testing.assert_close(grad[STEPS - 3 :], torch.stack(_closed_form_terms(3)[1]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("bad", [0, -1, STEPS + 1, np.int64(0)])
def test_truncate_must_be_a_step_count(bad):
    model = Quadratic(torch.zeros(DIM, dtype=torch.float64))
    A, a, _, _ = _problem()
    with pytest.raises(
        ValueError, match=rf"truncate must be an integer from 1 to the number of inner steps \({STEPS}\), got"
    ):
        memmaml.MAML(model, lambda m, batch: m(*batch))([(A, a)] * STEPS, truncate=bad)


@pytest.mark.parametrize(("bad", "kind"), [(2.5, "float"), (np.float64(3.0), "float64"), (True, "bool"), ("3", "str")])
def test_truncate_must_be_an_integer(bad, kind):
    model = Quadratic(torch.zeros(DIM, dtype=torch.float64))
    A, a, _, _ = _problem()
    with pytest.raises(TypeError, match=rf"^truncate must be an int, got {kind}$"):
        memmaml.MAML(model, lambda m, batch: m(*batch))([(A, a)] * STEPS, truncate=bad)


def test_truncate_accepts_numpy_integers():
    """Any integer ``operator.index`` accepts (NumPy's too) is a step count."""
    expected = _engine(3, "binomial:2")
    got = _engine(np.int64(3), "binomial:2")
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


@pytest.mark.parametrize("schedule", [None, "binomial:2"])
def test_first_order_agrees_with_no_differentiated_steps_for_theta0_only(schedule):
    """``first_order=True``: every step's Jacobian is the identity, so ``dM/dtheta_0 = g``, which is ``(J^T)^K g`` at
    K = 0 (``truncate`` refuses 0). The two differ for the learning rate: first order still differentiates every
    update ``-eta A (theta_t - a)`` with respect to ``eta``, giving ``dM/deta = -sum_t g^T A (theta_t - a)`` over all
    steps, where truncation to K steps sums K terms, none at K = 0."""
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


# ------------------------------------------------ a different batch per step, optimizers with a state
N = 6  # inner steps of the tests below


def _distinct_problem():
    """One ``(A_t, a_t)`` per step, the initial parameters and the meta-loss's target."""
    gen = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(N):
        q = torch.randn(DIM, DIM, generator=gen, dtype=torch.float64)
        A = q @ q.T / DIM + 0.3 * torch.eye(DIM, dtype=torch.float64)
        batches.append((A, torch.randn(DIM, generator=gen, dtype=torch.float64)))
    theta0, b = (torch.randn(DIM, generator=gen, dtype=torch.float64) for _ in range(2))
    return batches, theta0, b


def _quartic(theta, A, a):
    """Step t's inner loss: a quadratic in its own ``(A_t, a_t)`` and a quartic, so Hessians change along the path."""
    d = theta - a
    return 0.5 * d @ A @ d + 0.05 * (d**4).sum()


class Quartic(nn.Module):
    def __init__(self, theta0):
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, A, a):
        return _quartic(self.theta, A, a)


MOMENTUM, BETA1, BETA2, EPS = 0.9, 0.8, 0.95, 1e-8
LR = {"momentum": 0.05, "adam": 0.1}


def _hand_written_step(kind, grad, state, t, lr):
    """``(update, new state)`` of step ``t`` (1-based), written from the textbook formulas (``torch.optim``'s)."""
    if kind == "momentum":
        buf = MOMENTUM * state["buf"] + grad
        return -lr * buf, {"buf": buf}
    m = BETA1 * state["m"] + (1 - BETA1) * grad
    v = BETA2 * state["v"] + (1 - BETA2) * grad**2
    m_hat, v_hat = m / (1 - BETA1**t), v / (1 - BETA2**t)
    return -lr * m_hat / (v_hat.sqrt() + EPS), {"m": m, "v": v}


def _reference(kind, K):
    """``(dM/dtheta_0, dM/dlr)`` and the losses, by hand: steps ``0 .. N-K-1`` without a graph, their updates
    constants (the cotangent of the state they reach goes to theta_0 unchanged), then the last K steps with
    ``create_graph=True``, continuing the head's optimizer state and reading batches ``N-K .. N-1``."""
    batches, theta0, b = _distinct_problem()
    theta0_leaf = theta0.clone().requires_grad_(True)
    lr = torch.tensor(LR[kind], dtype=torch.float64, requires_grad=True)
    state = {"buf": torch.zeros(DIM, dtype=torch.float64)}
    if kind == "adam":
        state = {"m": torch.zeros(DIM, dtype=torch.float64), "v": torch.zeros(DIM, dtype=torch.float64)}
    head, losses, theta = N - K, [], theta0.clone()
    for t in range(head):
        leaf = theta.detach().requires_grad_(True)
        loss = _quartic(leaf, *batches[t])
        (grad,) = torch.autograd.grad(loss, leaf)
        update, state = _hand_written_step(kind, grad, state, t + 1, LR[kind])
        theta, losses = theta + update, [*losses, loss.detach()]
    theta = theta.detach() + (theta0_leaf - theta0_leaf.detach())  # the head's value, exactly; Jacobian I
    for t in range(head, N):
        loss = _quartic(theta, *batches[t])
        (grad,) = torch.autograd.grad(loss, theta, create_graph=True)
        update, state = _hand_written_step(kind, grad, state, t + 1, lr)
        theta, losses = theta + update, [*losses, loss.detach()]
    meta = 0.5 * ((theta - b) ** 2).sum()
    return torch.autograd.grad(meta, [theta0_leaf, lr]), torch.stack(losses)


def _engine_distinct(kind, K, schedule):
    batches, theta0, b = _distinct_problem()
    model = Quartic(theta0)
    lr = torch.tensor(LR[kind], dtype=torch.float64, requires_grad=True)
    if kind == "momentum":
        optimizer = memmaml.SGD(lr, momentum=MOMENTUM)
    else:
        optimizer = memmaml.Adam(lr, beta1=BETA1, beta2=BETA2, eps=EPS)
    result = memmaml.MAML(model, lambda m, batch: m(*batch), optimizer, schedule=schedule)(batches, truncate=K)
    meta = 0.5 * ((result.params["theta"] - b) ** 2).sum()
    return torch.autograd.grad(meta, [model.theta, lr]), torch.stack([loss.detach() for loss in result.loss_history])


@pytest.mark.parametrize("schedule", [None, "uniform:2", "binomial:2"])
@pytest.mark.parametrize("K", [1, 2, N])
@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_truncation_differentiates_the_last_batches_from_the_heads_optimizer_state(kind, K, schedule):
    """A different batch per step and an optimizer with a state (momentum buffers; Adam's count and moments):
    the differentiated steps must read the *last* K batches and continue the state the head reached."""
    (ref_theta0, ref_lr), ref_losses = _reference(kind, K)
    (got_theta0, got_lr), got_losses = _engine_distinct(kind, K, schedule)
    torch.testing.assert_close(got_losses, ref_losses, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(got_theta0, ref_theta0, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_lr, ref_lr, rtol=1e-10, atol=1e-12)
