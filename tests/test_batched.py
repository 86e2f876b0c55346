"""The vmap-over-tasks meta-gradient (memmaml.batched_meta_gradient) against memmaml.NaiveMAML run task by task,
in float64. Held-out evaluation under vmap is tested in test_evaluation.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import memmaml
from memmaml import batched_meta_gradient, check_vmappable
from memmaml.tasks import Sinusoid, Task, mse_loss

DTYPE = torch.float64


def mlp(seed: int = 0, norm: nn.Module | None = None) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(1, 16), nn.Tanh()]
    if norm is not None:
        layers.append(norm)
    layers += [nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)]
    return nn.Sequential(*layers).to(DTYPE)


def tasks(num_tasks: int = 5, shots: int = 6):
    return Sinusoid(num_shots=shots, num_query=7, dtype=DTYPE).sample_batch(range(100, 100 + num_tasks))


def grads_of(params) -> list[torch.Tensor]:
    return [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in params]


def loop_meta_gradient(model, optimizer, batch, num_steps, first_order, get_parameters=None, wrt=None):
    """The reference: NaiveMAML per task, mean query loss, .backward()."""
    wrt = list(model.parameters()) if wrt is None else wrt
    for p in wrt:
        p.grad = None
    kwargs = {} if get_parameters is None else {"get_parameters": get_parameters}
    maml = memmaml.NaiveMAML(model, mse_loss, optimizer, **kwargs)
    n = batch.num_tasks
    losses = []
    for t in range(n):
        task = batch.select(t)
        result = maml([task.support] * num_steps, first_order=first_order)
        loss = mse_loss(result.model, task.query)
        (loss / n).backward()
        losses.append(loss.detach())
    return grads_of(wrt), torch.stack(losses)


def vmap_meta_gradient(model, optimizer, batch, num_steps, first_order, params=None, wrt=None, **kwargs):
    wrt = list(model.parameters()) if wrt is None else wrt
    for p in wrt:
        p.grad = None
    out = batched_meta_gradient(
        model,
        mse_loss,
        batch,
        optimizer,
        num_steps=num_steps,
        params=params,
        first_order=first_order,
        accumulate=True,
        **kwargs,
    )
    return grads_of(wrt), out.query_losses


def assert_all_close(a, b, rtol=1e-10, atol=1e-12):
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


OPTIMIZERS = {
    "sgd": lambda: memmaml.SGD(0.05),
    "momentum": lambda: memmaml.SGD(0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: memmaml.RMSProp(0.01, momentum=0.5),
    "adam": lambda: memmaml.Adam(0.02),
}


@pytest.mark.parametrize("first_order", [False, True], ids=["second_order", "first_order"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_vmap_meta_gradient_equals_loop(opt, first_order):
    model, batch = mlp(), tasks()
    ref, ref_losses = loop_meta_gradient(model, OPTIMIZERS[opt](), batch, 3, first_order)
    got, losses = vmap_meta_gradient(model, OPTIMIZERS[opt](), batch, 3, first_order)
    torch.testing.assert_close(losses, ref_losses, rtol=1e-12, atol=0)
    assert max(g.abs().max().item() for g in ref) > 1e-3  # a real, non-zero meta-gradient
    assert_all_close(got, ref)


def test_first_and_second_order_differ():
    # the comparison above would be vacuous if the second-order terms vanished
    model, batch = mlp(), tasks()
    so, _ = vmap_meta_gradient(model, memmaml.SGD(0.1), batch, 3, False)
    fo, _ = vmap_meta_gradient(model, memmaml.SGD(0.1), batch, 3, True)
    assert max((a - b).abs().max().item() for a, b in zip(so, fo)) > 1e-4


def test_subset_of_parameters_and_learnable_lr():
    # adapt only the head; the body still gets a meta-gradient; so does a learnable per-tensor lr
    model, batch = mlp(1), tasks()
    head = {"4.weight", "4.bias"}
    lr = {name: torch.tensor(0.05, dtype=DTYPE, requires_grad=True) for name in head}
    wrt = [*model.parameters(), *lr.values()]
    ref, _ = loop_meta_gradient(
        model, memmaml.SGD(lr), batch, 2, False, get_parameters=lambda m: list(m[4].parameters()), wrt=wrt
    )
    params = {k: v for k, v in model.named_parameters() if k in head}
    got, _ = vmap_meta_gradient(model, memmaml.SGD(lr), batch, 2, False, params=params, wrt=wrt)
    assert all(g.abs().max() > 0 for g in ref)
    assert_all_close(got, ref)


def test_chunked_vmap_matches_unchunked():
    model, batch = mlp(2), tasks(7)
    whole, _ = vmap_meta_gradient(model, memmaml.SGD(0.05), batch, 2, False)
    chunked, _ = vmap_meta_gradient(model, memmaml.SGD(0.05), batch, 2, False, chunk_size=3)
    assert_all_close(chunked, whole, rtol=1e-12)


def image_tasks(num_tasks: int = 4) -> Task:
    g = torch.Generator().manual_seed(5)
    make = lambda *shape: torch.randn(num_tasks, *shape, generator=g, dtype=DTYPE)
    return Task((make(6, 2, 6, 6), make(6, 1)), (make(5, 2, 6, 6), make(5, 1)))


def conv(norm: nn.Module | None) -> nn.Module:
    torch.manual_seed(4)
    layers = [nn.Conv2d(2, 4, 3, padding=1)] + ([norm] if norm is not None else [])
    layers += [nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(36, 1)]
    return nn.Sequential(*layers).to(DTYPE)


# Normalisation layers are where differentiating vmapped torch.func.grad with ordinary autograd goes
# wrong in torch 2.14 (see NOTE [ The meta-gradient stays inside torch.func ] in memmaml/_batched.py).
MODELS = {
    "batchnorm1d-batch-stats": lambda: (mlp(3, nn.BatchNorm1d(16, track_running_stats=False)), tasks()),
    "layernorm": lambda: (mlp(3, nn.LayerNorm(16)), tasks()),
    "groupnorm": lambda: (mlp(3, nn.GroupNorm(4, 16)), tasks()),
    "conv-maxpool": lambda: (conv(None), image_tasks()),
    "conv-batchnorm2d-batch-stats": lambda: (conv(nn.BatchNorm2d(4, track_running_stats=False)), image_tasks()),
    "conv-instancenorm": lambda: (conv(nn.InstanceNorm2d(4, affine=True)), image_tasks()),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_layers_match_loop_second_order(name):
    model, batch = MODELS[name]()
    ref, _ = loop_meta_gradient(model, memmaml.SGD(0.1), batch, 2, False)
    got, _ = vmap_meta_gradient(model, memmaml.SGD(0.1), batch, 2, False)
    assert max(g.abs().max().item() for g in ref) > 1e-3
    scale = max(g.abs().max().item() for g in ref)
    for x, y in zip(got, ref, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12 * scale)


def test_batchnorm_running_stats_are_refused():
    model = mlp(norm=nn.BatchNorm1d(16))
    with pytest.raises(ValueError, match="track_running_stats=False"):
        check_vmappable(model)
    with pytest.raises(ValueError, match="running statistics"):
        batched_meta_gradient(model, mse_loss, tasks(), memmaml.SGD(0.1), num_steps=1)
    model.eval()  # running statistics are read, not written: fine
    check_vmappable(model)


def test_bad_arguments():
    model = mlp()
    with pytest.raises(ValueError, match="num_steps"):
        batched_meta_gradient(model, mse_loss, tasks(), memmaml.SGD(0.1), num_steps=0)
    with pytest.raises(TypeError, match="Task"):
        batched_meta_gradient(model, mse_loss, [tasks()], memmaml.SGD(0.1), num_steps=1)
    with pytest.raises(ValueError, match="not parameters of the model"):
        batched_meta_gradient(model, mse_loss, tasks(), memmaml.SGD(0.1), num_steps=1, params={"x": torch.ones(1)})


# ------------------------------------------------------------------- one inner step
def _engine_task(model, optimizer, task, num_steps, max_norm, schedule):
    maml = memmaml.MAML(model, mse_loss, optimizer, schedule=schedule)
    return maml([task.support] * num_steps, max_grad_grad_norm=max_norm)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_vectorised_and_engine_paths_run_the_same_inner_step_with_clipping(name):
    """Both paths call memmaml.engine.inner_step; only how they differentiate differs (torch.func.grad under
    vmap, torch.autograd.grad in the engines). Per-task adapted parameters, and meta-gradients with the clip
    active at every step, agree to rounding."""
    from memmaml.engine import inner_step
    from memmaml.training._batched import Adapter

    model, batch, steps, max_norm = mlp(3), tasks(4), 4, 0.05
    optimizer = OPTIMIZERS[name]()
    # per-task adapted parameters: the vectorised Adapter against the engine, task by task
    adapter = Adapter(model, mse_loss, optimizer, optimizer.hyperparams, False, max_grad_grad_norm=max_norm)
    params = {k: v.detach() for k, v in model.named_parameters()}

    def adapt(support):
        current, state = params, optimizer.init(params)
        for index in range(steps):
            current, state, _ = adapter.step(current, state, support, index)
        return current

    vectorised = torch.func.vmap(adapt)(batch.support)
    for t in range(batch.num_tasks):
        engine = _engine_task(model, optimizer, batch.select(t), steps, max_norm, "binomial:2")
        for k, p in engine.params.items():
            torch.testing.assert_close(vectorised[k][t], p.detach(), rtol=1e-12, atol=1e-12)
    # meta-gradients with clipping, against the naive engine task by task
    looped = []
    for p in model.parameters():
        p.grad = None
    for t in range(batch.num_tasks):
        task = batch.select(t)
        result = _engine_task(model, optimizer, task, steps, max_norm, None)
        (mse_loss(result.model, task.query) / batch.num_tasks).backward()
    looped = grads_of(list(model.parameters()))
    unclipped, _ = loop_meta_gradient(model, optimizer, batch, steps, False)
    assert sum((a - b).norm() for a, b in zip(looped, unclipped)) > 1e-3, "the clip is active"
    vmapped, _ = vmap_meta_gradient(model, optimizer, batch, steps, False, max_grad_grad_norm=max_norm)
    assert_all_close(vmapped, looped, rtol=1e-10, atol=1e-12)
    assert inner_step is Adapter.step.__globals__["inner_step"], "the Adapter's step is the engine's"
