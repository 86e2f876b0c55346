"""Memory: the tracker itself, and the engine's peak against the naive loop's."""

import gc

import pytest
import torch
import torch.nn.functional as F
from helpers import mlp

import memmaml


def test_tracker_counts_live_storages_not_views_or_earlier_tensors():
    before = torch.zeros(10_000, dtype=torch.float64)  # allocated outside: not counted
    param = torch.nn.Parameter(torch.zeros(100, dtype=torch.float64))
    with memmaml.track_memory("cpu") as mem:
        alias = param.detach()  # a new tensor on a storage made before the block: nothing allocated
        view = before[5:]
        before.add_(1.0)  # in place: nothing allocated
        assert mem.current_bytes == 0
        copy = alias.clone()  # 800 bytes
        assert mem.current_bytes == 800
        del alias, view, copy
        a = torch.zeros(1000, dtype=torch.float64)  # 8000 bytes
        view = a[10:]  # same storage: nothing new
        b = before + 1  # 80000 bytes
        del b
        c = torch.ones(500, dtype=torch.float32)  # 2000 bytes
        assert mem.current_bytes == 8000 + 2000
        del a
        assert mem.current_bytes == 8000 + 2000, "the view keeps the storage alive"
        del view
        gc.collect()
        assert mem.current_bytes == 2000
    assert mem.peak_bytes == 8000 + 80000
    del c


def test_tracker_sees_the_backward_pass():
    x = torch.randn(256, 256, dtype=torch.float64, requires_grad=True)
    with memmaml.track_memory() as mem:
        y = (x @ x).tanh().sum()
        y.backward()
    assert mem.peak_bytes >= 2 * 256 * 256 * 8


def test_tracker_rejects_other_devices():
    with pytest.raises(ValueError, match="cpu and cuda"):
        memmaml.track_memory("meta")


def _peak(make_maml, n, model, batch):
    with memmaml.track_memory("cpu") as mem:
        result = make_maml(model)([batch] * n)
        loss = ((result.model(batch[0]) - batch[1]) ** 2).mean()
        loss.backward()
        del result, loss
    model.zero_grad(set_to_none=True)
    return mem.peak_bytes


@pytest.fixture(scope="module")
def wide_mlp():
    # one step's graph (activations of a 256-row batch, kept for the double backward) is much
    # larger than one state (the parameters), as for the convolutional nets MAML is run on;
    # float32 keeps it quick, the counts do not depend on the dtype
    torch.manual_seed(0)
    model = mlp(0, sizes=(32, 128, 128, 4)).float()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(256, 32, generator=gen), torch.randn(256, 4, generator=gen))
    return model, batch


def test_checkpointed_peak_is_a_quarter_of_naive_at_32_steps(wide_mlp):
    model, batch = wide_mlp
    naive = _peak(lambda m: memmaml.NaiveMAML(m, _loss, memmaml.SGD(0.01)), 32, model, batch)
    ckpt = _peak(
        lambda m: memmaml.GradientCheckpointMAML(m, _loss, memmaml.SGD(0.01), checkpoint_steps=4), 32, model, batch
    )
    assert ckpt <= naive / 4, f"checkpointed {ckpt / 2**20:.1f} MiB vs naive {naive / 2**20:.1f} MiB"


def test_memory_grows_like_states_plus_segment(wide_mlp):
    """Peak ≈ base + (n/k) * state + k * step: linear in n/k at fixed k, linear in k at fixed n/k."""
    model, batch = wide_mlp
    peak = {}
    for n, k in [(8, 4), (16, 4), (32, 4), (32, 8)]:
        peak[n, k] = _peak(
            lambda m: memmaml.GradientCheckpointMAML(m, _loss, memmaml.SGD(0.01), checkpoint_steps=k), n, model, batch
        )
    naive8 = _peak(lambda m: memmaml.NaiveMAML(m, _loss, memmaml.SGD(0.01)), 8, model, batch)
    naive16 = _peak(lambda m: memmaml.NaiveMAML(m, _loss, memmaml.SGD(0.01)), 16, model, batch)
    step = (naive16 - naive8) / 8  # one step's graph, from the naive loop
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    # doubling n at fixed k adds about (n/k) more states, far less than naive's n more steps
    for n1, n2 in [(8, 16), (16, 32)]:
        growth = peak[n2, 4] - peak[n1, 4]
        expected = (n2 - n1) / 4 * state
        assert 0.5 * expected <= growth <= 1.5 * expected + 0.1 * step, (n1, n2, growth, expected)
    # doubling k at fixed n: 4 more steps' graphs, 4 fewer states
    growth = peak[32, 8] - peak[32, 4]
    expected = 4 * step - 4 * state
    assert 0.7 * expected <= growth <= 1.3 * expected, (growth, expected)


def _loss(model, batch):
    return ((model(batch[0]) - batch[1]) ** 2).mean()


@pytest.mark.parametrize(
    ("schedule", "differentiate"), [("binomial:4", True), ("binomial:4", False), (None, False)], ids=str
)
def test_the_loss_history_does_not_keep_batch_sized_storages(schedule, differentiate):
    """``F.mse_loss``'s 0-d result shares a batch-sized storage; the loss history keeps one loss per step, so it
    must keep copies of their own, or the peak grows by a batch per step (checkpointed, and every engine under
    ``no_grad``; naive MAML's graph grows with the steps by design, so it is checked without one). The peak at
    200 steps is that at 50 steps, within one batch's bytes (150 batches without the copies)."""
    points = 4000
    gen = torch.Generator().manual_seed(0)
    batch = tuple(torch.randn(points, 1, generator=gen, dtype=torch.float64) for _ in range(2))
    model = torch.nn.Linear(1, 1).double()

    def peak(steps):
        maml = memmaml.MAML(model, lambda m, b: F.mse_loss(m(b[0]), b[1]), memmaml.SGD(0.01), schedule=schedule)
        with memmaml.track_memory("cpu") as mem:
            if not differentiate:
                with torch.no_grad():
                    result = maml([batch] * steps)
            else:
                result = maml([batch] * steps)
                F.mse_loss(result.model(batch[0]), batch[1]).backward()
            del result
        model.zero_grad(set_to_none=True)
        return mem.peak_bytes

    short, long = peak(50), peak(200)
    assert long - short < points * 8, f"{short} bytes at 50 steps, {long} at 200"
