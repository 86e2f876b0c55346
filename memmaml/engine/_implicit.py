"""Implicit hypergradients at a stationary point: conjugate gradients or a Neumann series.

The approximation of Lorraine, Vicol & Duvenaud (AISTATS 2020, "Optimizing Millions of
Hyperparameters by Implicit Differentiation"; Neumann series) and of Rajeswaran, Finn, Kakade &
Levine (NeurIPS 2019, "Meta-Learning with Implicit Gradients", iMAML; conjugate gradients). Where
:func:`~memmaml.unroll` differentiates through every inner step, this differentiates the *end
point* alone, as if it were an exact stationary point of the inner objective.

NOTE [ The implicit hypergradient ]
    Let ``theta*(lam)`` satisfy ``grad_theta L(theta*, lam) = 0`` for the inner objective ``L``.
    The implicit function theorem gives ``d theta*/d lam = -H^{-1} d/dlam grad_theta L`` with
    ``H = grad^2_theta L`` (invertible at a strict minimum), so for an outer loss
    ``O(theta*(lam), lam)``::

        dO/dlam = dO/dlam (direct) - (d/dlam grad_theta L)^T x,    H x = grad_theta O.

    ``x`` is solved for with Hessian-vector products only (double backward through one gradient
    of ``L``): by conjugate gradients (``H`` positive definite) or by the truncated Neumann series
    ``x = alpha sum_j (I - alpha H)^j grad_theta O`` (``0 < alpha < 2 / lambda_max(H)``). The
    second term is one vector-Jacobian product of ``grad_theta L`` with respect to ``lam``.

    What this is exact for, and what it cannot see:

    * Exact only at a stationary point, with the linear system solved exactly. At the end of a
      finite inner loop it is an approximation whose error nobody bounds in general; the
      benchmark ``benchmarks/hypergradients`` measures it against the exact (unrolled)
      hypergradient.
    * A hyperparameter that does not appear in ``L`` gets no implicit term: the stationary point
      does not depend on it. Learning rates, momentum and per-step schedules shape the *path* to
      the stationary point, not the point, so their implicit hypergradient is exactly zero
      whatever the solver (a warning says so). Weight decay, written into ``L`` as
      ``weight_decay / 2 * |theta|^2``, moves the point and gets one.
    * MAML's initialisation ``phi`` does not appear in an unregularised inner loss either (the
      minimiser does not depend on where the descent started). iMAML therefore differentiates the
      proximal problem ``L(theta) + lam / 2 * |theta - phi|^2`` instead, whose stationary point
      does depend on ``phi``: with ``hyperparams={"phi": phi}`` the formula above becomes
      ``(I + H_L / lam)^{-1} grad_theta O``. ``lam`` is a modelling choice, not a solver setting.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .._checks import number_in, one_of, positive_int, positive_number

__all__ = ["ImplicitResult", "implicit_hypergradient"]

Params = dict[str, Tensor]
METHODS = ("cg", "neumann")


class ImplicitResult(NamedTuple):
    """What :func:`implicit_hypergradient` returns.

    Attributes:
        grads: the implicit hypergradient, keyed like ``hyperparams`` (detached; a hyperparameter that
            neither loss uses gets zeros).
        outer_loss: ``outer_loss(params, hyperparams)`` (detached).
        inner_grad_norm: the global L2 norm of ``grad_theta inner_loss`` at ``params``: zero at a
            stationary point, the size of the assumption's violation elsewhere.
        residual: ``|grad_theta O - H x| / |grad_theta O|`` of the linear solve (0: solved exactly;
            1: ``x = 0``; above 1: a diverging Neumann series or a failed CG).
        iterations: the Hessian-vector products spent on the solve (fewer than asked when it stopped
            early: converged to ``rtol``, or CG met non-positive curvature).
    """

    grads: Params
    outer_loss: Tensor
    inner_grad_norm: float
    residual: float
    iterations: int


def implicit_hypergradient(
    inner_loss: Callable[[Params, Params], Tensor],
    outer_loss: Callable[[Params, Params], Tensor],
    params: Mapping[str, Tensor],
    hyperparams: Mapping[str, Tensor],
    *,
    method: str = "cg",
    iterations: int = 10,
    alpha: float | None = None,
    rtol: float = 0.0,
    grad_tol: float | None = 1e-3,
) -> ImplicitResult:
    """The hypergradient of ``outer_loss`` at ``params``, taken to be a stationary point of ``inner_loss``.

    Solves ``H x = grad_theta outer_loss`` with ``H`` the Hessian of ``inner_loss`` at ``params``,
    and returns ``d outer_loss / d hyperparams = direct - (d/d hyperparams grad_theta inner_loss)^T x``
    (NOTE [ The implicit hypergradient ]). It reads only the end point: nothing of how ``params`` were
    reached is differentiated or kept.

    Differentiable with respect to: nothing (the result is detached). The hypergradient is taken with
    respect to each tensor in ``hyperparams`` (leaf or not: ``log_lr.exp()`` gets ``d/d exp``), through
    both losses; ``params`` are detached first, so a graph they carry (an unroll's) is neither used nor
    kept alive.

    Cost: one gradient of ``inner_loss`` with its graph (``create_graph=True``), ``iterations``
    Hessian-vector products (a double backward each, about two gradients), one gradient of
    ``outer_loss`` and one vector-Jacobian product with respect to ``hyperparams``. Memory: that one
    graph and four parameter-sized vectors (CG; two for the Neumann series), whatever the length of the
    inner loop that produced ``params``. One host sync per iteration (the CG step size, the stopping
    test) and one for ``grad_tol``.

    Args:
        inner_loss: ``inner_loss(params, hyperparams) -> scalar``, the objective whose stationary point
            ``params`` is meant to be (for a network, ``torch.func.functional_call(model, params, x)``
            inside it). It must contain every hyperparameter that moves the stationary point:
            weight decay as ``weight_decay / 2 * |params|^2``, iMAML's proximal term
            ``lam / 2 * |params - phi|^2``. The full objective, not a minibatch of it, unless a
            stochastic estimate is what you want.
        outer_loss: ``outer_loss(params, hyperparams) -> scalar`` (a validation or query loss).
        params: the end point of the inner loop, floating-point tensors keyed like
            ``model.named_parameters()``; every entry must affect ``inner_loss`` (a parameter it ignores
            makes ``H`` singular).
        hyperparams: the tensors to differentiate with respect to (at least one), keyed by name; each
            must require grad.
        method: ``"cg"`` (conjugate gradients; needs ``H`` positive definite; at non-positive curvature
            it stops, warns and returns its current iterate, which can be worse than ``x = 0``: the
            result's ``residual`` says how well it solves the system) or ``"neumann"`` (the series;
            needs ``alpha``).
        iterations: Hessian-vector products to spend. CG: at most that many CG steps (exact after
            ``dim(params)`` steps in exact arithmetic). Neumann: that many terms,
            ``x = alpha sum_{j < iterations} (I - alpha H)^j g``; the last product gives the
            residual exactly. (Lorraine et al.'s loop sums one more term with the same products and
            reports no residual: their ``J`` is ``iterations - 1`` here.)
        alpha: the Neumann series' step size (required for ``"neumann"``, ignored by CG). It must be
            below ``2 / lambda_max(H)`` or the series diverges (the residual grows; a warning says so);
            the inner loop's learning rate is the usual choice.
        rtol: stop when the residual falls below ``rtol`` (relative to ``|grad_theta O|``); 0 runs
            every iteration unless the residual is exactly zero.
        grad_tol: warn when ``|grad_theta inner_loss(params)|`` exceeds this (the inner loop has not
            converged; the theorem does not hold there, and the warning gives the norm). ``None``:
            never warn.

    Returns:
        :class:`ImplicitResult` ``(grads, outer_loss, inner_grad_norm, residual, iterations)``.

    Raises:
        TypeError: ``params`` or ``hyperparams`` not a mapping, a parameter that is not a floating-point
            tensor, a hyperparameter that is not a tensor, or a loss that does not return a tensor.
        ValueError: an unknown ``method``, a non-positive ``iterations``/``alpha``, a missing ``alpha``
            for ``"neumann"``, empty ``params`` or ``hyperparams``, a hyperparameter that does not require
            grad, a parameter that ``inner_loss`` does not use, or a loss that is not 0-d or does not
            require grad (it depends on neither ``params`` nor ``hyperparams``).
        RuntimeError: called under ``torch.inference_mode()``, where nothing can be differentiated
            (under ``torch.no_grad()`` it runs: it enables grad inside).

    Example:
        Ridge regression, whose stationary point is known: ``theta* = (X^T X + wd I)^{-1} X^T y``.

        >>> import torch, memmaml
        >>> X, y = torch.randn(20, 3, dtype=torch.float64), torch.randn(20, dtype=torch.float64)
        >>> wd = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
        >>> inner = lambda p, h: 0.5 * ((X @ p["w"] - y) ** 2).sum() + 0.5 * h["wd"] * (p["w"] ** 2).sum()
        >>> outer = lambda p, h: 0.5 * (p["w"] ** 2).sum()
        >>> M = X.T @ X + 0.5 * torch.eye(3, dtype=torch.float64)
        >>> w = torch.linalg.solve(M, X.T @ y)
        >>> result = memmaml.implicit_hypergradient(inner, outer, {"w": w}, {"wd": wd}, iterations=3)
        >>> closed_form = -w @ torch.linalg.solve(M, w)  # d(|theta*|^2 / 2)/d wd
        >>> torch.allclose(result.grads["wd"], closed_form), result.residual < 1e-10
        (True, True)
    """
    one_of("method", method, METHODS)
    iterations = positive_int("iterations", iterations)
    rtol = number_in("rtol", rtol, 0.0)
    if method == "neumann":
        if alpha is None:
            raise ValueError("method='neumann' needs alpha, the series' step size (e.g. the inner learning rate)")
        alpha = positive_number("alpha", alpha)
    if grad_tol is not None:
        grad_tol = number_in("grad_tol", grad_tol, 0.0)
    _check_params(params)
    _check_hyperparams(hyperparams)
    if torch.is_inference_mode_enabled():
        raise RuntimeError(
            "implicit_hypergradient cannot run under torch.inference_mode(): it differentiates inner_loss and "
            "outer_loss, and inference mode records no graph; call it outside (torch.no_grad() is fine)"
        )
    names, lam_names = list(params), list(hyperparams)
    lams = [hyperparams[name] for name in lam_names]

    with torch.enable_grad():
        theta = {name: params[name].detach().requires_grad_(True) for name in names}
        thetas = [theta[name] for name in names]
        inner = _checked_loss("inner_loss", inner_loss(theta, dict(hyperparams)))
        inner_grads = torch.autograd.grad(inner, thetas, create_graph=True, allow_unused=True)
        unused = [name for name, g in zip(names, inner_grads) if g is None]
        if unused:
            raise ValueError(
                f"inner_loss does not use params {unused}: its Hessian is singular there; pass only the "
                "parameters the inner loop adapts"
            )
        inner_grad_norm = _norm([g.detach() for g in inner_grads])
        if grad_tol is not None and not inner_grad_norm <= grad_tol:
            warnings.warn(
                f"implicit_hypergradient: params are not a stationary point of inner_loss: its gradient norm is "
                f"{inner_grad_norm:.3g} (grad_tol={grad_tol:g}); the implicit function theorem assumes it is 0, "
                "so this hypergradient is an approximation of unknown error (run the inner loop longer, or "
                "compare with the exact hypergradient of memmaml.unroll)",
                stacklevel=2,
            )
        outer = _checked_loss("outer_loss", outer_loss(theta, dict(hyperparams)))
        outer_grads = torch.autograd.grad(outer, thetas + lams, allow_unused=True)
        g = [_or_zeros(d, t) for d, t in zip(outer_grads[: len(thetas)], thetas)]
        direct = [_or_zeros(d, t) for d, t in zip(outer_grads[len(thetas) :], lams)]

        def hvp(v: list[Tensor]) -> list[Tensor]:
            products = torch.autograd.grad(inner_grads, thetas, grad_outputs=v, retain_graph=True, allow_unused=True)
            return [_or_zeros(p, t) for p, t in zip(products, thetas)]

        solve = _cg if method == "cg" else _neumann
        x, residual, done = solve(hvp, g, iterations, rtol, alpha)
        mixed = torch.autograd.grad(inner_grads, lams, grad_outputs=x, allow_unused=True) if lams else ()
    blind = [name for name, m in zip(lam_names, mixed) if m is None]
    if blind:
        warnings.warn(
            f"implicit_hypergradient: hyperparams {blind} do not affect the gradient of inner_loss, so the "
            "stationary point does not depend on them and their implicit hypergradient is only outer_loss's "
            "direct derivative (zero if it does not use them either): a learning rate or a per-step schedule "
            "shapes the path to the stationary point, not the point",
            stacklevel=2,
        )
    grads = {name: d if m is None else d - m.detach() for name, d, m in zip(lam_names, direct, mixed)}
    return ImplicitResult(grads, outer.detach(), inner_grad_norm, residual, done)


# --------------------------------------------------------------------------- helpers
def _check_mapping(name: str, value: Any, empty: str) -> None:
    if not isinstance(value, Mapping):
        raise TypeError(f"{name} must be a mapping of names to tensors, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} is empty: {empty}")


def _check_params(params: Mapping[str, Tensor]) -> None:
    _check_mapping("params", params, "there is nothing to be stationary")
    for name, value in params.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            got = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"params[{name!r}] must be a floating-point tensor (it is differentiated), got {got}")


def _check_hyperparams(hyperparams: Mapping[str, Tensor]) -> None:
    _check_mapping("hyperparams", hyperparams, "there is nothing to take the hypergradient with respect to")
    for name, value in hyperparams.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"hyperparams[{name!r}] must be a tensor that requires grad (the hypergradient is taken with "
                f"respect to it), got {type(value).__name__}"
            )
        if not value.requires_grad:
            raise ValueError(
                f"hyperparams[{name!r}] must be a tensor that requires grad (the hypergradient is taken with "
                "respect to it), got a tensor without grad"
            )


def _checked_loss(name: str, loss: object) -> Tensor:
    """``loss`` if it is a 0-d floating-point tensor that requires grad; an error naming ``name`` otherwise."""
    if not isinstance(loss, Tensor):
        raise TypeError(f"{name} must return a 0-d floating-point tensor, got {type(loss).__name__}")
    if loss.dim() != 0 or not loss.is_floating_point():
        raise ValueError(
            f"{name} must return a 0-d floating-point tensor, got shape {tuple(loss.shape)} and dtype {loss.dtype}"
        )
    if not loss.requires_grad:
        raise ValueError(
            f"{name}(params, hyperparams) does not require grad: it depends on neither the params nor the "
            "hyperparams it is given (compute it from them, not from detached or captured copies)"
        )
    return loss


def _or_zeros(grad: Tensor | None, like: Tensor) -> Tensor:
    return torch.zeros_like(like) if grad is None else grad.detach()


def _dot(a: list[Tensor], b: list[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(vectors: list[Tensor]) -> float:
    return math.sqrt(float(_dot(vectors, vectors)))


def _cg(hvp, g, iterations, rtol, alpha):
    """Conjugate gradients for ``H x = g`` from ``x = 0``; the residual is the recurrence's."""
    del alpha
    g_norm = _norm(g)
    x = [torch.zeros_like(v) for v in g]
    if g_norm == 0:
        return x, 0.0, 0
    r = [v.clone() for v in g]
    p = [v.clone() for v in g]
    rr = float(_dot(r, r))
    done = 0
    for i in range(iterations):
        hp = hvp(p)
        done += 1
        curvature = float(_dot(p, hp))
        if not curvature > 0:
            warnings.warn(
                f"implicit_hypergradient: conjugate gradients met non-positive curvature (p^T H p = {curvature:.3g}) "
                f"at iteration {i + 1}: the Hessian of inner_loss is not positive definite at params; "
                "stopping with the current solution (a proximal or weight-decay term makes H definite)",
                stacklevel=3,
            )
            break
        step = rr / curvature
        x = [xi + step * pi for xi, pi in zip(x, p)]
        r = [ri - step * hi for ri, hi in zip(r, hp)]
        rr_next = float(_dot(r, r))
        if math.sqrt(rr_next) <= rtol * g_norm:
            rr = rr_next
            break
        p = [ri + (rr_next / rr) * pi for ri, pi in zip(r, p)]
        rr = rr_next
    return x, math.sqrt(rr) / g_norm, done


def _neumann(hvp, g, iterations, rtol, alpha):
    """``alpha sum_{j < iterations} (I - alpha H)^j g``; after ``j`` terms the residual ``g - H x`` is the
    next term (``v_{j+1} = v_j - alpha H v_j`` telescopes), so it is exact and free."""
    g_norm = _norm(g)
    total = [torch.zeros_like(v) for v in g]
    if g_norm == 0:
        return total, 0.0, 0
    v = list(g)
    done = 0
    for _ in range(iterations):
        total = [t + vi for t, vi in zip(total, v)]
        v = [vi - alpha * hi for vi, hi in zip(v, hvp(v))]
        done += 1
        if rtol > 0 and _norm(v) <= rtol * g_norm:
            break
    residual = _norm(v) / g_norm
    if not residual < 1:
        warnings.warn(
            f"implicit_hypergradient: the Neumann series does not converge: after {done} terms the residual is "
            f"{residual:.3g} times the right-hand side; alpha={alpha:g} must be below 2 / (the largest eigenvalue "
            "of the Hessian of inner_loss), and the Hessian must be positive definite",
            stacklevel=3,
        )
    return [alpha * t for t in total], residual, done
