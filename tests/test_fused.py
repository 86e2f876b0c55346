"""The fused Adam and RMSProp updates against their textbook formulas, gradcheck, and their memory."""

import pytest
import torch
from helpers import DTYPE, flat, mlp, mse, regression_batches

import memmaml
from memmaml.optim._fused import adam_update, rmsprop_update


# ------------------------------------------------------------- the unfused formulas, as torch.optim writes them
def _sqrt0(x):
    """sqrt with derivative 0 where x <= 0 (NOTE [ Square roots at zero ])."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def adam_reference(g, m, v, t, lr, beta1, beta2, eps, eps_root):
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    denom = _sqrt0(v + eps_root) / torch.sqrt(1 - beta2**t) + eps
    return -(lr / (1 - beta1**t)) * m / denom, m, v


def rmsprop_reference(g, square_avg, grad_avg, buf, lr, alpha, eps, momentum, eps_root):
    v = alpha * square_avg + (1 - alpha) * g * g
    out_v, rest, var = v, [], v
    if grad_avg is not None:
        a = alpha * grad_avg + (1 - alpha) * g
        rest.append(a)
        var = v - a * a
    avg = _sqrt0(var + eps_root) + eps
    if buf is None:
        return (-lr * g / avg, out_v, *rest)
    b = momentum * buf + g / avg
    return (-lr * b, out_v, *rest, b)


def _t(*shape, seed, positive=False, low=0.0, high=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = (
        torch.rand(shape, generator=gen, dtype=DTYPE) * (high - low) + low
        if positive
        else (torch.randn(shape, generator=gen, dtype=DTYPE))
    )
    return x.requires_grad_()


def _adam_inputs(hyper_shape):
    shape = (3, 4)
    return [
        _t(*shape, seed=1),
        _t(*shape, seed=2),
        _t(*shape, seed=3, positive=True),
        torch.tensor(3.0, dtype=DTYPE, requires_grad=True),
        _t(*hyper_shape, seed=5, positive=True, low=0.01, high=0.1),  # lr (per element with shape (3, 4))
        _t(*hyper_shape, seed=6, positive=True, low=0.5, high=0.95),  # beta1
        _t(*hyper_shape, seed=7, positive=True, low=0.9, high=0.99),  # beta2
        _t(*hyper_shape, seed=8, positive=True, low=1e-3, high=1e-2),  # eps
        _t(*hyper_shape, seed=9, positive=True, low=1e-4, high=1e-3),
    ]  # eps_root


def _compare(fused, reference, inputs, rtol=1e-12):
    outs, refs = fused(*inputs), reference(*inputs)
    assert len(outs) == len(refs)
    for out, ref in zip(outs, refs):
        torch.testing.assert_close(out, ref, rtol=rtol, atol=0)
    wrt = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    cotangents = [torch.randn_like(o) for o in outs]
    got = torch.autograd.grad(outs, wrt, cotangents, allow_unused=True)
    want = torch.autograd.grad(refs, wrt, cotangents, allow_unused=True)
    for index, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-14, msg=f"gradient of input {index}")


@pytest.mark.parametrize("hyper_shape", [(), (3, 4), (4,)], ids=["scalar", "per-element", "broadcast"])
def test_adam_equals_the_formula_with_learnable_hyperparameters(hyper_shape):
    _compare(adam_update, adam_reference, _adam_inputs(hyper_shape))


def test_adam_with_number_hyperparameters_and_a_zero_gradient():
    g, m, v = torch.zeros(5, dtype=DTYPE, requires_grad=True), torch.zeros(5, dtype=DTYPE), torch.zeros(5, dtype=DTYPE)
    inputs = [g, m, v, torch.tensor(1.0, dtype=DTYPE), 0.1, 0.9, 0.999, 1e-8, 0.0]
    _compare(adam_update, adam_reference, inputs)
    grad = torch.autograd.grad(adam_update(*inputs)[0].sum(), g)[0]
    assert torch.isfinite(grad).all(), "the square root at zero must not give NaN"


@pytest.mark.parametrize("centered", [False, True])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("hyper_shape", [(), (3, 4)], ids=["scalar", "per-element"])
def test_rmsprop_equals_the_formula_with_learnable_hyperparameters(centered, momentum, hyper_shape):
    shape = (3, 4)
    inputs = [
        _t(*shape, seed=1),
        _t(*shape, seed=2, positive=True, low=0.5, high=1.0),
        _t(*shape, seed=3, low=-0.1, high=0.1, positive=True) if centered else None,
        _t(*shape, seed=4) if momentum else None,
        _t(*hyper_shape, seed=5, positive=True, low=0.01, high=0.1),  # lr
        _t(*hyper_shape, seed=6, positive=True, low=0.8, high=0.99),  # alpha
        _t(*hyper_shape, seed=7, positive=True, low=1e-3, high=1e-2),  # eps
        _t(*hyper_shape, seed=8, positive=True, low=0.1, high=0.9),  # momentum
        _t(*hyper_shape, seed=9, positive=True, low=1e-4, high=1e-3),
    ]  # eps_root
    _compare(rmsprop_update, rmsprop_reference, inputs)


def test_gradcheck_and_gradgradcheck():
    adam = _adam_inputs(())
    assert torch.autograd.gradcheck(adam_update, adam)
    assert torch.autograd.gradgradcheck(adam_update, adam)
    shape = (2, 3)
    rms = [
        _t(*shape, seed=1),
        _t(*shape, seed=2, positive=True, low=0.5, high=1.0),
        _t(*shape, seed=3, positive=True, low=-0.1, high=0.1),
        _t(*shape, seed=4),
        _t(seed=5, positive=True, low=0.01, high=0.1),
        _t(seed=6, positive=True, low=0.8, high=0.99),
        _t(seed=7, positive=True, low=1e-3, high=1e-2),
        _t(seed=8, positive=True, low=0.1, high=0.9),
        1e-4,
    ]
    assert torch.autograd.gradcheck(rmsprop_update, rms)
    assert torch.autograd.gradgradcheck(rmsprop_update, rms)


def test_meta_sgd_style_per_parameter_hyperparameters_get_exact_meta_gradients():
    """Adam with a learnable learning rate per weight: the meta-gradient equals the unfused formula's."""
    grads = []
    for fused in (True, False):
        model = mlp(0)
        lrs = {name: torch.full_like(p, 0.05, requires_grad=True) for name, p in model.named_parameters()}
        beta1 = torch.tensor(0.8, dtype=DTYPE, requires_grad=True)
        opt = memmaml.Adam(lrs, beta1=beta1)
        if not fused:
            opt._update = lambda grads, state, params, hp: _unfused_adam(grads, state, params, hp)
        result = memmaml.MAML(model, mse, opt, schedule="uniform:2")(regression_batches(5))
        loss = mse(result.model, regression_batches(1, seed=9)[0])
        grads.append(flat(torch.autograd.grad(loss, [*model.parameters(), *lrs.values(), beta1])))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-14)


def _unfused_adam(grads, state, params, hp):
    count = state.count + 1
    updates, m, v = {}, {}, {}
    for name in params:
        updates[name], m[name], v[name] = adam_reference(
            grads[name],
            state.exp_avg[name],
            state.exp_avg_sq[name],
            count.to(torch.promote_types(grads[name].dtype, torch.float32)),  # as memmaml.Adam: float32 at least
            *(hp[k][name] if isinstance(hp[k], dict) else hp[k] for k in ("lr", "beta1", "beta2", "eps", "eps_root")),
        )
    return updates, memmaml.AdamState(count, m, v)


# ------------------------------------------------------------------------------ memory
def _bytes_per_graph_step(optimizer, width=256):
    """Peak bytes the naive unroll adds per step (the slope between 2 and 6 steps), in weight-sized tensors."""
    model = mlp(0, sizes=(8, width, width, 4))
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    peaks = []
    for n in (2, 6):
        with memmaml.track_memory("cpu") as mem:
            result = memmaml.NaiveMAML(model, mse, optimizer)(regression_batches(n, in_features=8, out_features=4))
            del result
        peaks.append(mem.peak_bytes)
    return (peaks[1] - peaks[0]) / 4 / params


def test_adam_and_rmsprop_keep_at_most_three_weight_sized_tensors_more_than_sgd_per_step():
    """Measured: Adam 3.0, RMSProp 2.0, centred RMSProp with momentum 4.0 (the unfused formulas: 5.1 each)."""
    sgd = _bytes_per_graph_step(memmaml.SGD(0.01))
    # SGD keeps the new parameters (1) and little else: measured 1.08 (a foreach addition made it 2.08)
    assert sgd <= 1.2, f"SGD: {sgd:.2f} weight-sized tensors per step"
    for name, opt, limit in [
        ("adam", memmaml.Adam(0.01), 3.05),
        ("rmsprop", memmaml.RMSProp(0.01), 2.05),
        ("rmsprop centred + momentum", memmaml.RMSProp(0.01, momentum=0.9, centered=True), 4.05),
    ]:
        extra = _bytes_per_graph_step(opt) - sgd
        # the new optimizer state (Adam: 2 moments; RMSProp: the average, plus one for centring and one for
        # momentum) and the gradient its backward reads; nothing else stays in the graph
        assert extra <= limit, f"{name}: {extra:.2f} weight-sized tensors per step above SGD"
