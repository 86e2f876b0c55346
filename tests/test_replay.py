"""Replays are exact: recompute order, randomness, BatchNorm buffers, train/eval flags."""

import pytest
import torch
from helpers import DTYPE, assert_rel_close, flat, mlp, mse, regression_batches
from torch import nn

import memmaml


def _counting_loss(calls):
    def loss(model, batch):
        calls.append(batch[2])
        return mse(model, batch)

    return loss


@pytest.mark.parametrize(
    "n, k, replays",
    [
        # the last segment is not replayed: the forward pass kept its graph (n - k replays for k dividing n)
        (7, 3, [3, 4, 5, 0, 1, 2]),
        (6, 2, [2, 3, 0, 1]),
        (5, 1, [3, 2, 1, 0]),
        (4, 9, []),
    ],
)
def test_each_segment_is_replayed_exactly_once_in_reverse_order(n, k, replays):
    calls = []
    model = mlp(0)
    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(n))]
    maml = memmaml.GradientCheckpointMAML(model, _counting_loss(calls), memmaml.SGD(0.1), checkpoint_steps=k)
    result = maml(batches)
    assert calls == list(range(n)), "forward pass: each step once, in order"
    calls.clear()
    loss = mse(result.model, regression_batches(1)[0])
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    assert calls == replays
    calls.clear()
    second = torch.autograd.grad(loss, list(model.parameters()))
    last_start = (n - 1) // k * k
    rebuilt = list(range(last_start))  # the forward pass's stored states, recomputed from the input
    assert calls == rebuilt + list(range(last_start, n)) + replays, "a second backward pass replays every segment"
    assert_rel_close(list(second), list(first), what="second backward")


def test_naive_does_not_replay():
    calls = []
    model = mlp(0)
    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(4))]
    result = memmaml.NaiveMAML(model, _counting_loss(calls), memmaml.SGD(0.1))(batches)
    mse(result.model, regression_batches(1)[0]).backward()
    assert calls == [0, 1, 2, 3]


def _dropout_run(factory, seed=123):
    model = mlp(0, sizes=(4, 16, 16, 2), dropout=0.3)
    torch.manual_seed(seed)
    result = factory(model)(regression_batches(6))
    loss = mse(result.model, regression_batches(1, seed=9)[0])
    loss.backward()
    after = torch.rand(3)  # the caller's random stream after forward + backward
    return flat([p.grad for p in model.parameters()]), loss.detach(), after


def test_dropout_replay_sees_the_same_random_numbers():
    naive = _dropout_run(lambda m: memmaml.NaiveMAML(m, mse, memmaml.SGD(0.2)))
    ckpt = _dropout_run(lambda m: memmaml.GradientCheckpointMAML(m, mse, memmaml.SGD(0.2), checkpoint_steps=4))
    assert_rel_close(ckpt[0], naive[0], what="dropout meta-gradient")
    assert_rel_close(ckpt[1], naive[1], what="dropout loss")
    assert torch.equal(ckpt[2], naive[2]), "the replay must not consume the caller's random numbers"
    other_seed = _dropout_run(lambda m: memmaml.NaiveMAML(m, mse, memmaml.SGD(0.2)), seed=321)
    assert (other_seed[0] - naive[0]).abs().max() > 1e-6, "dropout must actually change the gradient"


def test_without_preserved_rng_the_replay_differs():
    """preserve_rng_state=False is honoured (and shows the RNG handling above is what makes replay exact)."""
    naive = _dropout_run(lambda m: memmaml.NaiveMAML(m, mse, memmaml.SGD(0.2)))
    loose = _dropout_run(
        lambda m: memmaml.GradientCheckpointMAML(m, mse, memmaml.SGD(0.2), checkpoint_steps=4, preserve_rng_state=False)
    )
    assert (loose[0] - naive[0]).abs().max() > 1e-6


def _bn_run(factory, eval_before_backward=False):
    model = mlp(0, sizes=(4, 8, 8, 2), batchnorm=True, dropout=0.2)
    model.train()
    torch.manual_seed(5)
    result = factory(model)(regression_batches(7))
    after_inner = [b.clone() for b in model.buffers()]
    if eval_before_backward:
        model.eval()
    loss = mse(result.model, regression_batches(1, seed=9)[0])
    loss.backward()
    flags = [m.training for m in model.modules()]
    return {
        "grads": flat([p.grad for p in model.parameters()]),
        "after_inner": after_inner,
        "after_all": [b.clone() for b in model.buffers()],
        "flags": flags,
        "loss": loss.detach(),
    }


@pytest.mark.parametrize("eval_before_backward", [False, True])
def test_batchnorm_buffers_and_flags(eval_before_backward):
    naive = _bn_run(lambda m: memmaml.NaiveMAML(m, mse, memmaml.Adam(0.05)), eval_before_backward)
    for k in (1, 3, 10):
        ckpt = _bn_run(
            lambda m: memmaml.GradientCheckpointMAML(m, mse, memmaml.Adam(0.05), checkpoint_steps=k),
            eval_before_backward,
        )
        assert_rel_close(ckpt["grads"], naive["grads"], what=f"BN meta-gradient k={k}")
        assert_rel_close(ckpt["loss"], naive["loss"], what="BN query loss")
        for a, b in zip(ckpt["after_inner"] + ckpt["after_all"], naive["after_inner"] + naive["after_all"]):
            assert torch.equal(a, b), "running statistics must be updated exactly as by the naive loop"
        assert ckpt["flags"] == naive["flags"], "the user's train/eval choice must survive the replay"
    tracked = [b for name, b in mlp(0, batchnorm=True).named_buffers()]
    assert len(tracked) > 0
    counts = naive["after_all"][2::3]  # num_batches_tracked of each BatchNorm
    assert all(int(c) == 7 + (0 if eval_before_backward else 1) for c in counts)


def test_batchnorm_matches_plain_forward_passes():
    """Independent of both engines: running stats equal those of plain forward passes at the adapted params."""
    model = mlp(0, batchnorm=True)
    batches = regression_batches(4)
    twin = mlp(0, batchnorm=True)
    result = memmaml.GradientCheckpointMAML(model, mse, memmaml.SGD(0.3), checkpoint_steps=2)(batches)
    mse(result.model, batches[0]).backward()
    # replay by hand on the twin: plain SGD steps with ordinary forward passes (train mode)
    params = {k: v.detach().clone() for k, v in twin.named_parameters()}
    for batch in batches:
        leaves = {k: v.requires_grad_() for k, v in params.items()}
        loss = mse(memmaml.AdaptedModule(twin, leaves), batch)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        params = {k: (v - 0.3 * g).detach() for (k, v), g in zip(leaves.items(), grads)}
    memmaml.AdaptedModule(twin, params)(batches[0][0])
    for (name, a), b in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=name)


def test_eval_mode_inner_loop_leaves_buffers_alone():
    model = mlp(0, batchnorm=True)
    model.eval()
    before = [b.clone() for b in model.buffers()]
    result = memmaml.GradientCheckpointMAML(model, mse, memmaml.SGD(0.1), checkpoint_steps=2)(regression_batches(4))
    mse(result.model, regression_batches(1)[0]).backward()
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), before))


class _Noisy(nn.Module):
    """Random augmentation inside the model: the replay must reproduce it."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2).to(DTYPE)

    def forward(self, x):
        return self.lin(x + 0.1 * torch.randn_like(x))


def test_random_augmentation_inside_forward():
    grads = []
    for factory in (
        lambda m: memmaml.NaiveMAML(m, mse, memmaml.SGD(0.2)),
        lambda m: memmaml.GradientCheckpointMAML(m, mse, memmaml.SGD(0.2), checkpoint_steps=2),
    ):
        torch.manual_seed(0)
        model = _Noisy()
        torch.manual_seed(1)
        result = factory(model)(regression_batches(5))
        mse(result.model, regression_batches(1)[0]).backward()
        grads.append(flat([p.grad for p in model.parameters()]))
    assert_rel_close(grads[1], grads[0], what="augmentation")
