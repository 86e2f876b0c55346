"""Hyperparameters that change with the inner step (PerStep): exact hypergradients for every entry."""

import pytest
import torch
from helpers import DTYPE, assert_rel_close, flat, mlp, mse, regression_batches

import memmaml

N = 7


def _hand_written(model, lrs, batches, query):
    """SGD with learning rate lrs[i] at step i, unrolled with plain autograd: the independent reference."""
    params = dict(model.named_parameters())
    for i, batch in enumerate(batches):
        loss = mse(memmaml.AdaptedModule(model, params), batch)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        params = {name: p - lrs[i] * g for (name, p), g in zip(params.items(), grads)}
    return mse(memmaml.AdaptedModule(model, params), query)


@pytest.mark.parametrize(
    "schedule, offload", [(None, False), ("uniform:2", False), ("binomial:2", False), ("binomial:2", True)]
)
def test_per_step_learning_rates_get_exact_hypergradients(schedule, offload):
    batches, query = regression_batches(N), regression_batches(1, seed=9)[0]
    log_lr = torch.linspace(-3.0, -1.0, N, dtype=DTYPE).requires_grad_()
    model = mlp(0)
    reference = _hand_written(model, log_lr.exp(), batches, query)
    expected = torch.autograd.grad(reference, [*model.parameters(), log_lr])

    model = mlp(0)
    maml = memmaml.MAML(model, mse, memmaml.SGD(memmaml.PerStep(log_lr.exp())), schedule=schedule, offload=offload)
    loss = mse(maml(batches).model, query)
    got = torch.autograd.grad(loss, [*model.parameters(), log_lr])
    assert_rel_close(list(got), list(expected), what=f"{schedule} offload={offload}")
    assert (got[-1] != 0).all(), "every step's learning rate must receive a gradient"


def test_blocks_of_steps_share_an_entry():
    batches, query = regression_batches(N), regression_batches(1, seed=9)[0]
    block_lrs = torch.tensor([0.05, 0.1, 0.2, 0.3], dtype=DTYPE, requires_grad=True)  # every=2: steps 0-1, 2-3, ...
    model = mlp(0)
    expected = torch.autograd.grad(_hand_written(model, block_lrs.repeat_interleave(2), batches, query), block_lrs)[0]
    model = mlp(0)
    maml = memmaml.MAML(model, mse, memmaml.SGD(memmaml.PerStep(block_lrs, every=2)), schedule="uniform:3")
    got = torch.autograd.grad(mse(maml(batches).model, query), block_lrs)[0]
    assert_rel_close(got, expected, what="blocks")


def test_per_step_with_adam_and_per_parameter_dicts():
    """A PerStep inside a per-parameter dict, with Adam: naive and checkpointed agree."""
    grads = []
    for schedule in (None, "uniform:3"):
        model = mlp(0)
        lrs = {
            name: memmaml.PerStep(torch.full((N,), 0.05, dtype=DTYPE).requires_grad_())
            for name, _ in model.named_parameters()
        }
        maml = memmaml.MAML(model, mse, memmaml.Adam(lrs), schedule=schedule)
        loss = mse(maml(regression_batches(N)).model, regression_batches(1, seed=9)[0])
        grads.append(flat(torch.autograd.grad(loss, [*model.parameters(), *(v.values for v in lrs.values())])))
    assert_rel_close(grads[1], grads[0], what="adam per step")


def test_optimizer_parameters_include_per_step_tensors():
    values = torch.zeros(3, requires_grad=True)
    assert list(memmaml.SGD(memmaml.PerStep(values)).parameters()) == [values]


def test_too_short_a_schedule_is_an_error():
    maml = memmaml.MAML(mlp(0), mse, memmaml.SGD(memmaml.PerStep(torch.full((3,), 0.1, dtype=DTYPE), every=2)))
    with pytest.raises(ValueError, match="a PerStep hyperparameter covers 6 inner steps, but there are 7 batches"):
        maml(regression_batches(7))


@pytest.mark.parametrize(
    "bad, error, message",
    [
        (memmaml.PerStep(torch.tensor(0.1)), TypeError, "needs a floating-point tensor with one entry per step"),
        (memmaml.PerStep(torch.arange(3)), TypeError, "needs a floating-point tensor"),
        (memmaml.PerStep(torch.ones(3), every=0), ValueError, "every must be a positive integer, got 0"),
    ],
)
def test_bad_per_step_values(bad, error, message):
    with pytest.raises(error, match=message):
        memmaml.SGD(bad)


def test_vmap_path_uses_the_step_entry():
    """batched_meta_gradient with a PerStep learning rate equals the engine task by task."""
    from memmaml.tasks import Sinusoid

    torch.manual_seed(0)
    model = memmaml.models.mlp([1, 8, 1], activation=torch.nn.Tanh).to(DTYPE)
    lrs = torch.tensor([0.01, 0.02, 0.03], dtype=DTYPE, requires_grad=True)
    tasks = Sinusoid(num_shots=5, dtype=DTYPE).sample_batch([1, 2])
    opt = memmaml.SGD(memmaml.PerStep(lrs))
    batched = memmaml.batched_meta_gradient(model, memmaml.tasks.mse_loss, tasks, opt, num_steps=3)
    total = 0
    for t in range(2):
        task = tasks.select(t)
        result = memmaml.MAML(model, memmaml.tasks.mse_loss, opt)([task.support] * 3)
        total = total + memmaml.tasks.mse_loss(result.model, task.query) / 2
    expected = torch.autograd.grad(total, [*model.parameters(), lrs])
    assert_rel_close(
        flat([batched.grads[i] for i in range(len(expected) - 1)] + [batched.grads[-1]]),
        flat(list(expected)),
        what="vmap per step",
    )
