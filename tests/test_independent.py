"""Both engines against references that share no code with them."""

import numpy as np
import pytest
import torch
from helpers import DTYPE, assert_rel_close, mlp, mse, regression_batches
from torch import nn

import memmaml

ENGINES = {
    "naive": lambda model, loss, opt: memmaml.NaiveMAML(model, loss, opt),
    "checkpointed-2": lambda model, loss, opt: memmaml.GradientCheckpointMAML(model, loss, opt, checkpoint_steps=2),
    "checkpointed-3": lambda model, loss, opt: memmaml.GradientCheckpointMAML(model, loss, opt, checkpoint_steps=3),
}


# ---------------------------------------------------------------- a hand-unrolled loop
def _hand_unrolled_sgd_momentum(model, batches, query, lr, momentum):
    """MAML with heavy-ball SGD written out with autograd.grad, no memmaml code involved."""
    w1, b1, w2, b2 = list(model.parameters())
    params = [w1, b1, w2, b2]
    bufs = [torch.zeros_like(p) for p in params]

    def f(ps, x):
        return torch.tanh(x @ ps[0].T + ps[1]) @ ps[2].T + ps[3]

    for x, y in batches:
        loss = ((f(params, x) - y) ** 2).mean()
        grads = torch.autograd.grad(loss, params, create_graph=True)
        bufs = [momentum * b + g for b, g in zip(bufs, grads)]
        params = [p - lr * b for p, b in zip(params, bufs)]
    xq, yq = query
    return ((f(params, xq) - yq) ** 2).mean()


@pytest.mark.parametrize("engine", list(ENGINES))
def test_against_hand_unrolled_loop(engine):
    batches = regression_batches(7)
    query = regression_batches(1, seed=42)[0]
    reference_model = mlp(3, sizes=(4, 8, 2))
    lr = torch.tensor(0.15, dtype=DTYPE, requires_grad=True)
    expected_loss = _hand_unrolled_sgd_momentum(reference_model, batches, query, lr, 0.6)
    expected = torch.autograd.grad(expected_loss, [*reference_model.parameters(), lr])

    model = mlp(3, sizes=(4, 8, 2))
    lr2 = torch.tensor(0.15, dtype=DTYPE, requires_grad=True)
    result = ENGINES[engine](model, mse, memmaml.SGD(lr2, momentum=0.6))(batches)
    loss = mse(result.model, query)
    got = torch.autograd.grad(loss, [*model.parameters(), lr2])
    assert_rel_close(loss.detach(), expected_loss.detach(), what="loss")
    assert_rel_close(list(got), list(expected), what="meta-gradient")


# -------------------------------------------------- closed form: linear regression, numpy
def _closed_form_linear_maml(w0, alpha, supports, query):
    """Second-order MAML meta-gradient for L(w) = ||X w - y||^2 / (2 m), plain gradient descent.

    Inner step t: w_{t+1} = w_t - alpha * (A_t w_t - b_t) = M_t w_t + alpha b_t, with
    A_t = X_t^T X_t / m, b_t = X_t^T y_t / m, M_t = I - alpha A_t (the Hessian is A_t, constant).
    Meta-loss L_q(w_n); its gradient with respect to w_0 is M_0^T ... M_{n-1}^T (A_q w_n - b_q).
    With respect to alpha, forward-mode: d w_{t+1} = M_t d w_t - (A_t w_t - b_t), d w_0 = 0.
    """
    d = w0.shape[0]
    w, dw = w0.copy(), np.zeros(d)
    jac = np.eye(d)  # d w_t / d w_0
    for x, y in supports:
        m = x.shape[0]
        a, b = x.T @ x / m, x.T @ y / m
        step_grad = a @ w - b
        dw = (np.eye(d) - alpha * a) @ dw - step_grad
        jac = (np.eye(d) - alpha * a) @ jac
        w = w - alpha * step_grad
    xq, yq = query
    mq = xq.shape[0]
    grad_q = xq.T @ (xq @ w - yq) / mq
    loss = 0.5 * np.mean((xq @ w - yq) ** 2)
    return loss, jac.T @ grad_q, grad_q @ dw


@pytest.mark.parametrize("engine", list(ENGINES))
def test_against_closed_form_linear_regression(engine):
    rng = np.random.default_rng(0)
    d, n = 5, 6
    supports = [(rng.normal(size=(8, d)), rng.normal(size=8)) for _ in range(n)]
    query = (rng.normal(size=(10, d)), rng.normal(size=10))
    w0 = rng.normal(size=d)
    alpha = 0.3
    expected_loss, expected_grad_w, expected_grad_alpha = _closed_form_linear_maml(w0, alpha, supports, query)

    model = nn.Linear(d, 1, bias=False).to(DTYPE)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w0)[None])
    lr = torch.tensor(alpha, dtype=DTYPE, requires_grad=True)

    def half_mse(m, batch):
        x, y = batch
        return 0.5 * ((m(x).squeeze(-1) - y) ** 2).mean()

    batches = [(torch.from_numpy(x), torch.from_numpy(y)) for x, y in supports]
    result = ENGINES[engine](model, half_mse, memmaml.IngraphGradientDescent(lr))(batches)
    loss = half_mse(result.model, tuple(map(torch.from_numpy, query)))
    grad_w, grad_alpha = torch.autograd.grad(loss, [model.weight, lr])
    assert abs(loss.item() - expected_loss) <= 1e-12 * abs(expected_loss)
    assert_rel_close(grad_w[0], torch.from_numpy(expected_grad_w), what="d/dw0")
    assert_rel_close(grad_alpha, torch.tensor(expected_grad_alpha, dtype=DTYPE), what="d/dalpha")


# ----------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("optimizer", ["sgd-momentum", "adam"])
def test_gradcheck_through_checkpointed_steps(optimizer):
    model = mlp(0, sizes=(3, 4, 1))
    batches = regression_batches(4, in_features=3, out_features=1, size=5)
    query = regression_batches(1, in_features=3, out_features=1, size=5, seed=7)[0]
    names = [name for name, _ in model.named_parameters()]

    def meta_loss(lr, *tensors):
        opt = memmaml.SGD(lr, momentum=0.5) if optimizer == "sgd-momentum" else memmaml.Adam(lr)
        params = dict(zip(names, tensors))
        # (no max_grad_grad_norm here: clipping makes the backward deliberately differ from the Jacobian)
        out = memmaml.unroll(model, mse, batches, opt, params=params, schedule=memmaml.Uniform(3))
        return mse(memmaml.AdaptedModule(model, out.params), query) + out.loss_history[-1]

    inputs = (
        torch.tensor(0.1, dtype=DTYPE, requires_grad=True),
        *[p.detach().clone().requires_grad_() for p in model.parameters()],
    )
    assert torch.autograd.gradcheck(meta_loss, inputs, eps=1e-6, atol=1e-7, rtol=1e-5)
