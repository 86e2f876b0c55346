"""Implicit hypergradients (``implicit_hypergradient``) against closed forms on a quadratic inner problem, float64.

Inner objective ``L(theta; wd, a) = 1/2 (theta - a)^T A (theta - a) + wd/2 |theta|^2`` with ``A`` positive
definite: its stationary point is ``theta* = M^{-1} A a`` with ``M = A + wd I`` (the Hessian). For the outer
loss ``O = 1/2 |theta - b|^2 + c wd^2`` and ``g = theta* - b``:

* implicit (exact at ``theta*``): ``dO/dwd = 2 c wd - theta*^T M^{-1} g`` and ``dO/da = A M^{-1} g``;
* the Neumann series with ``J`` terms replaces ``M^{-1} g`` by ``alpha sum_{j<J} (I - alpha M)^j g``, and its
  residual is ``|(I - alpha M)^J g| / |g|``;
* ``k`` conjugate-gradient steps from 0 give the minimiser over the Krylov space ``K = [g, Mg, ..., M^(k-1) g]``,
  ``x_k = K (K^T M K)^{-1} K^T g``;
* iMAML's proximal inner problem ``1/2 (theta - a)^T A (theta - a) + lam/2 |theta - phi|^2`` gives
  ``dO/dphi = (I + A/lam)^{-1} g``.

The closed forms use ``torch.linalg``, not the solver.
"""

import math
from collections.abc import Callable
from typing import NamedTuple

import pytest
import torch
from torch import nn

import memmaml
from memmaml import ImplicitResult, implicit_hypergradient

DIM = 4
DT = torch.float64
C = 0.1  # weight of the outer loss's direct term c wd^2


def _problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(DIM, DIM, generator=gen, dtype=DT)
    A = q @ q.T / DIM + 0.3 * torch.eye(DIM, dtype=DT)
    a, b = (torch.randn(DIM, generator=gen, dtype=DT) for _ in range(2))
    return A, a, b


def _losses(A, b):
    def inner(p, h):
        d = p["theta"] - h["a"]
        return 0.5 * d @ A @ d + 0.5 * h["wd"] * (p["theta"] ** 2).sum()

    def outer(p, h):
        return 0.5 * ((p["theta"] - b) ** 2).sum() + C * h["wd"] ** 2

    return inner, outer


class Setup(NamedTuple):
    A: torch.Tensor
    b: torch.Tensor
    M: torch.Tensor  # the Hessian of the inner objective
    theta: torch.Tensor  # its stationary point
    hyper: dict
    inner: Callable
    outer: Callable


def _setup(wd=0.7):
    A, a, b = _problem()
    M = A + wd * torch.eye(DIM, dtype=DT)
    theta = torch.linalg.solve(M, A @ a)
    hyper = {"wd": torch.tensor(wd, dtype=DT, requires_grad=True), "a": a.clone().requires_grad_()}
    return Setup(A, b, M, theta, hyper, *_losses(A, b))


def _hypergradient_from(x, theta, wd, A):
    """The closed form's hypergradient for a given solution ``x`` of ``M x = g``."""
    return {"wd": 2 * C * wd - theta @ x, "a": A @ x}


def _assert_grads(got, expected, rtol=1e-12, atol=1e-14):
    assert set(got) == set(expected)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=rtol, atol=atol)


def test_conjugate_gradients_reach_the_implicit_function_theorem_in_dim_steps():
    A, b, M, theta, hyper, inner, outer = _setup()
    result = implicit_hypergradient(inner, outer, {"theta": theta}, hyper, method="cg", iterations=DIM)
    assert isinstance(result, ImplicitResult)
    expected = _hypergradient_from(torch.linalg.solve(M, theta - b), theta, 0.7, A)
    _assert_grads(result.grads, expected, rtol=1e-10, atol=1e-12)
    assert result.residual < 1e-10 and result.iterations <= DIM and result.inner_grad_norm < 1e-12
    torch.testing.assert_close(result.outer_loss, outer({"theta": theta}, hyper).detach())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_truncated_conjugate_gradients_are_the_krylov_minimiser(k):
    A, b, M, theta, hyper, inner, outer = _setup()
    g = theta - b
    K = torch.stack([torch.linalg.matrix_power(M, j) @ g for j in range(k)], dim=1)
    x = K @ torch.linalg.solve(K.T @ M @ K, K.T @ g)
    result = implicit_hypergradient(inner, outer, {"theta": theta}, hyper, method="cg", iterations=k)
    _assert_grads(result.grads, _hypergradient_from(x, theta, 0.7, A), rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(torch.tensor(result.residual, dtype=DT), (g - M @ x).norm() / g.norm())
    assert result.iterations == k


@pytest.mark.parametrize("terms", [1, 3, 25])
def test_neumann_series_equals_its_closed_form_and_reports_its_residual(terms):
    A, b, M, theta, hyper, inner, outer = _setup()
    alpha = 0.4
    g = theta - b
    step = torch.eye(DIM, dtype=DT) - alpha * M
    x = alpha * sum(torch.linalg.matrix_power(step, j) @ g for j in range(terms))
    result = implicit_hypergradient(
        inner, outer, {"theta": theta}, hyper, method="neumann", iterations=terms, alpha=alpha
    )
    _assert_grads(result.grads, _hypergradient_from(x, theta, 0.7, A))
    expected_residual = (torch.linalg.matrix_power(step, terms) @ g).norm() / g.norm()
    assert math.isclose(result.residual, expected_residual.item(), rel_tol=1e-10)
    assert math.isclose(result.residual, ((g - M @ x).norm() / g.norm()).item(), rel_tol=1e-10)


def test_rtol_stops_early():
    s = _setup()
    result = implicit_hypergradient(
        s.inner, s.outer, {"theta": s.theta}, s.hyper, method="neumann", iterations=500, alpha=0.4, rtol=1e-6
    )
    assert result.residual <= 1e-6 and result.iterations < 500


class Quadratic(nn.Module):
    def __init__(self, theta0):
        super().__init__()
        self.theta = nn.Parameter(theta0.clone())

    def forward(self, A, a):
        d = self.theta - a
        return 0.5 * d @ A @ d


def test_at_a_converged_inner_loop_implicit_equals_the_unrolled_hypergradient():
    """SGD with weight decay descends exactly ``L`` above: after enough steps its end point is ``theta*`` and the
    exact hypergradient through every step (memmaml.MAML) equals the implicit one. The learning rates, which
    do not appear in ``L``, get an exact hypergradient that vanishes with convergence and an implicit one that is
    zero by construction (with a warning)."""
    A, a, b = _problem()
    steps, wd0 = 400, 0.7
    model = Quadratic(torch.zeros(DIM, dtype=DT))
    lrs = torch.full((4,), 0.2, dtype=DT, requires_grad=True)
    wd = torch.tensor(wd0, dtype=DT, requires_grad=True)
    optimizer = memmaml.SGD(memmaml.PerStep(lrs, every=steps // 4), weight_decay=wd)
    result = memmaml.MAML(model, lambda m, batch: m(*batch), optimizer, schedule="binomial:4")([(A, a)] * steps)
    inner, outer = _losses(A, b)
    hyper = {"wd": wd, "a": a.clone().requires_grad_()}
    # the end point carries the unroll's graph, through which wd and lrs reach it: differentiating through it
    # would compute the cotangent of the end point, which this hook sees, and give the exact hypergradient
    end = result.params["theta"]
    seen = []
    end.register_hook(seen.append)
    with pytest.warns(UserWarning, match=r"hyperparams \['lr'\] do not affect the gradient of inner_loss"):
        implicit = implicit_hypergradient(inner, outer, result.params, {**hyper, "lr": lrs}, iterations=DIM)
    assert seen == []  # the unroll's graph was not used
    exact_wd, exact_lr = torch.autograd.grad(outer(result.params, hyper), [wd, lrs])
    assert len(seen) == 1  # ... and the hook does see a pass through it
    torch.testing.assert_close(implicit.grads["wd"], exact_wd, rtol=1e-9, atol=1e-12)
    assert torch.equal(implicit.grads["lr"], torch.zeros_like(lrs))
    assert 0 < exact_lr.abs().max() < 1e-12  # vanishing with convergence, not structurally zero


def test_imaml_proximal_form():
    """``hyperparams={"phi": phi}`` with iMAML's proximal term gives ``(I + A/lam)^{-1} grad O``."""
    A, a, b = _problem()
    lam = 0.5
    phi = torch.randn(DIM, dtype=DT, generator=torch.Generator().manual_seed(3), requires_grad=True)
    theta = torch.linalg.solve(A + lam * torch.eye(DIM, dtype=DT), A @ a + lam * phi.detach())

    def inner(p, h):
        d = p["theta"] - a
        return 0.5 * d @ A @ d + 0.5 * lam * ((p["theta"] - h["phi"]) ** 2).sum()

    def outer(p, h):
        return 0.5 * ((p["theta"] - b) ** 2).sum()

    result = implicit_hypergradient(inner, outer, {"theta": theta}, {"phi": phi}, iterations=DIM)
    expected = torch.linalg.solve(torch.eye(DIM, dtype=DT) + A / lam, theta - b)
    torch.testing.assert_close(result.grads["phi"], expected, rtol=1e-10, atol=1e-12)


def test_an_inner_loop_that_has_not_converged_warns_with_its_gradient_norm():
    _, _, M, theta, hyper, inner, outer = _setup()
    away = theta + 0.1
    norm = (M @ (away - theta)).norm().item()  # the gradient is M theta - A a = M (theta - theta*)
    with pytest.warns(UserWarning, match=rf"not a stationary point of inner_loss: its gradient norm is {norm:.3g}"):
        result = implicit_hypergradient(inner, outer, {"theta": away}, hyper, iterations=DIM)
    assert math.isclose(result.inner_grad_norm, norm, rel_tol=1e-12)
    implicit_hypergradient(inner, outer, {"theta": away}, hyper, iterations=DIM, grad_tol=None)  # no warning


def test_failures_of_the_linear_solve_warn():
    A, _, _, theta, hyper, inner, outer = _setup()
    with pytest.warns(UserWarning, match="Neumann series does not converge"):
        result = implicit_hypergradient(
            inner, outer, {"theta": theta}, hyper, method="neumann", iterations=30, alpha=10.0
        )
    assert result.residual > 1
    indefinite = A - 2.0 * torch.eye(DIM, dtype=DT)  # eigenvalues of both signs

    def saddle(p, h):
        return 0.5 * p["theta"] @ indefinite @ p["theta"] + h["wd"] * p["theta"].sum()

    with pytest.warns(UserWarning, match="non-positive curvature"):
        implicit_hypergradient(
            saddle, outer, {"theta": torch.zeros(DIM, dtype=DT)}, {"wd": hyper["wd"]}, iterations=DIM, grad_tol=None
        )


def _indefinite(case):
    """``(H, g)``, an indefinite Hessian and a right-hand side on which conjugate gradients meet non-positive
    curvature after their last iterate got worse: "x1" (4-D, eigenvalues 2, 1, 0.5, -1): residuals 1, 0.32, 4.0
    at x = 0, x1, x2, then p^T H p <= 0; "x0" (2-D, H = diag(1, -1), g = (1, 0.5)): 1, 1.33, then p^T H p < 0."""
    if case == "x0":
        return torch.diag(torch.tensor([1.0, -1.0], dtype=DT)), torch.tensor([1.0, 0.5], dtype=DT)
    gen = torch.Generator().manual_seed(40)
    q, _ = torch.linalg.qr(torch.randn(DIM, DIM, generator=gen, dtype=DT))
    H = q @ torch.diag(torch.tensor([2.0, 1.0, 0.5, -1.0], dtype=DT)) @ q.T
    return H, torch.randn(DIM, generator=gen, dtype=DT)


def _hand_written_cg(H, g, iterations):
    """The textbook CG iterates ``[x0 = 0, x1, ...]`` until ``p^T H p <= 0``, the products spent, and whether
    it stopped there."""
    x, r, p, xs = torch.zeros_like(g), g.clone(), g.clone(), [torch.zeros_like(g)]
    for k in range(iterations):
        hp = H @ p
        if p @ hp <= 0:
            return xs, k + 1, True
        step = (r @ r) / (p @ hp)
        x, r_next = x + step * p, r - step * hp
        p, r = r_next + (r_next @ r_next) / (r @ r) * p, r_next
        xs.append(x)
    return xs, iterations, False


@pytest.mark.parametrize("case", ["x1", "x0"])
def test_conjugate_gradients_at_non_positive_curvature_return_the_last_iterate_and_its_residual(case):
    """Inner ``1/2 theta^T H theta + wd u^T theta`` and outer ``g^T theta``: the hypergradient for a solution x
    is ``-u^T x``. CG stops at non-positive curvature and returns its last iterate, which here is worse than an
    earlier one (and than x = 0 in case "x0"); the residual it reports, ``|g - H x| / |g|`` of that iterate, is
    how a caller sees it (the documented behaviour; the stored benchmark figures were measured with it)."""
    H, g = _indefinite(case)
    u = torch.linspace(-1.0, 2.0, len(g), dtype=DT)
    xs, products, stopped = _hand_written_cg(H, g, iterations=len(g))
    residuals = [((g - H @ x).norm() / g.norm()).item() for x in xs]
    best = min(range(len(xs)), key=residuals.__getitem__)
    assert stopped and best < len(xs) - 1 and residuals[-1] > 1  # the problem is what it claims
    wd = torch.tensor(0.3, dtype=DT, requires_grad=True)

    def inner(p, h):
        return 0.5 * p["theta"] @ H @ p["theta"] + h["wd"] * (u @ p["theta"])

    def outer(p, h):
        return g @ p["theta"]

    with pytest.warns(UserWarning, match="non-positive curvature"):
        result = implicit_hypergradient(
            inner, outer, {"theta": torch.zeros(len(g), dtype=DT)}, {"wd": wd}, iterations=len(g), grad_tol=None
        )
    assert result.iterations == products
    assert math.isclose(result.residual, residuals[-1], rel_tol=1e-10, abs_tol=1e-14)
    assert result.residual > residuals[best]  # worse than an earlier iterate, and reported as such
    torch.testing.assert_close(result.grads["wd"], -u @ xs[-1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "lbfgs"}, "method must be one of 'cg', 'neumann'"),
        ({"iterations": 0}, "iterations must be a positive integer, got 0"),
        ({"method": "neumann"}, "method='neumann' needs alpha"),
        ({"method": "neumann", "alpha": -1.0}, "alpha must be a positive number, got -1.0"),
        ({"rtol": -1.0}, "rtol must satisfy"),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    s = _setup()
    with pytest.raises(ValueError, match=message):
        implicit_hypergradient(s.inner, s.outer, {"theta": s.theta}, s.hyper, **kwargs)


def test_bad_params_and_hyperparams_are_refused():
    *_, theta, hyper, inner, outer = _setup()
    with pytest.raises(ValueError, match=r"hyperparams\['wd'\] must be a tensor that requires grad"):
        implicit_hypergradient(inner, outer, {"theta": theta}, {"wd": torch.tensor(0.7, dtype=DT)})
    with pytest.raises(ValueError, match="params is empty"):
        implicit_hypergradient(inner, outer, {}, hyper)
    with pytest.raises(ValueError, match=r"inner_loss does not use params \['extra'\]"):
        implicit_hypergradient(inner, outer, {"theta": theta, "extra": torch.zeros(2, dtype=DT)}, hyper)


WRONG_KINDS = {  # name: (params and hyperparams from _setup's theta and hyper, the error, its message)
    "no hyperparams": (
        lambda theta, hyper: ({"theta": theta}, {}),
        ValueError,
        r"^hyperparams is empty: there is nothing to take the hypergradient with respect to$",
    ),
    "hyperparams a list": (
        lambda theta, hyper: ({"theta": theta}, list(hyper.values())),
        TypeError,
        r"^hyperparams must be a mapping of names to tensors, got list$",
    ),
    "a number hyperparameter": (
        lambda theta, hyper: ({"theta": theta}, {"wd": 0.7}),
        TypeError,
        r"^hyperparams\['wd'\] must be a tensor that requires grad .*, got float$",
    ),
    "params a list": (
        lambda theta, hyper: ([theta], hyper),
        TypeError,
        r"^params must be a mapping of names to tensors, got list$",
    ),
    "integer params": (
        lambda theta, hyper: ({"theta": theta.to(torch.int64)}, hyper),
        TypeError,
        r"^params\['theta'\] must be a floating-point tensor \(it is differentiated\), got dtype torch.int64$",
    ),
    "a list parameter": (
        lambda theta, hyper: ({"theta": theta.tolist()}, hyper),
        TypeError,
        r"^params\['theta'\] must be a floating-point tensor \(it is differentiated\), got list$",
    ),
}


@pytest.mark.parametrize("case", list(WRONG_KINDS))
def test_params_and_hyperparams_of_the_wrong_kind_are_refused(case):
    make, error, message = WRONG_KINDS[case]
    s = _setup()
    params, hyperparams = make(s.theta, s.hyper)
    with pytest.raises(error, match=message):
        implicit_hypergradient(s.inner, s.outer, params, hyperparams)


@pytest.mark.parametrize("which", ["inner_loss", "outer_loss"])
def test_a_loss_that_depends_on_neither_params_nor_hyperparams_is_named(which):
    s = _setup()
    constant = lambda p, h: (p["theta"].detach() ** 2).sum()  # computed from a detached copy
    losses = {"inner_loss": s.inner, "outer_loss": s.outer, which: constant}
    with pytest.raises(ValueError, match=rf"^{which}\(params, hyperparams\) does not require grad: it depends on"):
        implicit_hypergradient(losses["inner_loss"], losses["outer_loss"], {"theta": s.theta}, s.hyper)


@pytest.mark.parametrize(
    ("returned", "error", "message"),
    [
        (1.0, TypeError, r"^outer_loss must return a 0-d floating-point tensor, got float$"),
        ("vector", ValueError, r"^outer_loss must return a 0-d floating-point tensor, got shape \(4,\)"),
    ],
)
def test_a_loss_that_is_not_a_scalar_tensor_is_named(returned, error, message):
    s = _setup()
    outer = (lambda p, h: p["theta"] * 2) if returned == "vector" else (lambda p, h: returned)
    with pytest.raises(error, match=message):
        implicit_hypergradient(s.inner, outer, {"theta": s.theta}, s.hyper)


def test_inference_mode_is_refused_and_no_grad_is_not():
    s = _setup()
    with torch.inference_mode(), pytest.raises(RuntimeError, match=r"^implicit_hypergradient cannot run under "):
        implicit_hypergradient(s.inner, s.outer, {"theta": s.theta}, s.hyper, iterations=DIM)
    expected = implicit_hypergradient(s.inner, s.outer, {"theta": s.theta}, s.hyper, iterations=DIM).grads
    with torch.no_grad():
        got = implicit_hypergradient(s.inner, s.outer, {"theta": s.theta}, s.hyper, iterations=DIM).grads
    _assert_grads(got, expected, rtol=0, atol=0)
