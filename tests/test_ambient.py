"""Replays compute what the forward pass computed: autocast state, and the check that proves it.

These tests run in float32 (autocast only lowers float32 tensors) on CPU, where
replays are deterministic.
"""

import contextlib
import random
import warnings

import pytest
import torch
import torch.nn.functional as F
from helpers import flat, mse
from torch import nn

import memmaml

N = 6


def _conv_net(seed=0):
    """BatchNorm and dropout: the replay must also restore buffers and random numbers."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Dropout(0.2),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Dropout(0.2), nn.Linear(16, 3))


def _data(shape, n=N, seed=3):
    gen = torch.Generator().manual_seed(seed)
    make = lambda: (torch.randn(5, *shape, generator=gen), torch.randint(0, 3, (5,), generator=gen))
    return [make() for _ in range(n)], make()


def _ce(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


def _autocast(dtype):
    return contextlib.nullcontext() if dtype is None else torch.autocast("cpu", dtype=dtype)


def _run(net, schedule, dtype, offload=False, check_replay=True):
    """Meta-gradient (model and a learnable lr), losses and buffers; backward outside the autocast block."""
    model = _conv_net() if net == "conv" else _mlp()
    batches, query = _data((2, 6, 6) if net == "conv" else (4,))
    lr = torch.tensor(0.1, requires_grad=True)
    opt = memmaml.SGD(lr, momentum=0.5)
    maml = (
        memmaml.NaiveMAML(model, _ce, opt)
        if schedule is None
        else memmaml.GradientCheckpointMAML(model, _ce, opt, schedule=schedule, offload=offload)
    )
    torch.manual_seed(1)
    with _autocast(dtype):
        result = maml(batches, check_replay=check_replay)
        loss = _ce(result.model, query) + torch.stack(result.loss_history).mean()
    grads = torch.autograd.grad(loss, [*model.parameters(), lr])
    buffers = [b.reshape(-1).double() for b in model.buffers()] or [torch.zeros(0)]
    return flat(grads), torch.stack(result.loss_history).detach(), flat(buffers)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


SCHEDULES = [
    ("uniform:1", False),
    ("uniform:2", False),
    (f"uniform:{N}", False),
    ("binomial:2", False),
    ("uniform:2", True),
    ("binomial:2", True),
]


@pytest.mark.parametrize("net", ["conv", "mlp"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_checkpointed_equals_naive_under_autocast(net, dtype):
    naive = _run(net, None, dtype)
    float32 = _run(net, None, None)
    # autocast was active in the naive run (and so, below, in the replays that match it)
    assert _rel(naive[0], float32[0]) > 1e-3, "the low-precision run must differ from float32"
    for schedule, offload in SCHEDULES:
        grads, losses, buffers = _run(net, schedule, dtype, offload)
        what = f"{net} {dtype} {schedule} offload={offload}"
        # every replayed state is bitwise equal to the forward pass's (check_replay=True would raise
        # otherwise) and so are the losses and the running statistics; the meta-gradient sums the same
        # contributions in another order (per segment instead of in one graph), which is why it agrees
        # to float32 rounding, as it does without autocast, and is bitwise equal for a single segment
        assert torch.equal(losses, naive[1]), what
        assert torch.equal(buffers, naive[2]), what
        assert _rel(grads, naive[0]) <= 1e-6, f"{what}: {_rel(grads, naive[0]):.2e}"
        if schedule == f"uniform:{N}":
            assert torch.equal(grads, naive[0]), what


def test_float32_rounding_is_the_same_without_autocast():
    """The 1e-6 tolerance above is float32's summation order, not autocast: the same holds in float32."""
    naive = _run("conv", None, None)
    for schedule, offload in SCHEDULES:
        assert _rel(_run("conv", schedule, None, offload)[0], naive[0]) <= 1e-6


def test_forward_pass_under_autocast_does_not_grow_with_steps():
    """The autocast weight cache would keep a copy of every step's parameters; the engine runs without it."""
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))
    batch = (torch.randn(8, 16), torch.randn(8, 4))
    held = {}
    for n in (4, 16):
        maml = memmaml.GradientCheckpointMAML(model, mse, memmaml.SGD(0.01), schedule="binomial:2")
        with memmaml.track_memory("cpu") as mem, torch.autocast("cpu", dtype=torch.bfloat16):
            result = maml([batch] * n)
            held[n] = mem.current_bytes
        del result
    # 12 more steps keep 12 more losses (48 bytes) and nothing else; a cached copy of each step's parameters
    # would add 12 x 8 kB (float32 and bf16)
    param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert held[16] - held[4] < param_bytes, held


def test_low_precision_halves_the_graph_of_a_conv_step():
    """Per graph step, the tracker sees the bf16 activations: measured ratio 0.54 (README)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 8 * 8, 5),
    )
    batch = (torch.randn(8, 3, 16, 16), torch.randint(0, 5, (8,)))
    per_step = {}
    for dtype in (None, torch.bfloat16):
        peaks = []
        for n in (1, 3):
            with memmaml.track_memory("cpu") as mem:
                with _autocast(dtype):
                    result = memmaml.NaiveMAML(model, _ce, memmaml.SGD(0.1))([batch] * n)
                    loss = _ce(result.model, batch)
                loss.backward()
            peaks.append(mem.peak_bytes)
        per_step[dtype] = (peaks[1] - peaks[0]) / 2
    ratio = per_step[torch.bfloat16] / per_step[None]
    assert ratio < 0.7, f"bf16 / float32 bytes per graph step: {ratio:.2f}"


# ------------------------------------------------------------------------ check_replay
def _checked(loss_function, model=None, n=6, k=2):
    model = _mlp() if model is None else model
    batches, query = _data((4,), n=n)
    maml = memmaml.GradientCheckpointMAML(model, loss_function, memmaml.SGD(0.1), checkpoint_steps=k)
    result = maml(batches, check_replay=True)
    _ce(result.model, query).backward()


def test_check_replay_names_the_step_of_a_counting_loss():
    calls = [0]

    def counting(model, batch):
        calls[0] += 1
        return _ce(model, batch) * (1 + 0.01 * calls[0])

    # n = 6, k = 2: the forward pass keeps the graph of steps 4 and 5; the backward pass replays steps 2 and 3
    # first, with different counts
    with pytest.raises(memmaml.ReplayMismatchError, match=r"inner step 2 .*params\['0.weight'\] differs"):
        _checked(counting)


def test_check_replay_catches_an_uncontrolled_random_generator():
    rng = random.Random(0)

    def noisy(model, batch):
        keep = rng.randrange(3, 6)  # a subset of the batch drawn from Python's random, not torch's
        return _ce(model, (batch[0][:keep], batch[1][:keep]))

    with pytest.raises(memmaml.ReplayMismatchError, match="inner step 2 "):
        _checked(noisy)


def test_check_replay_catches_a_loss_function_that_flips_the_training_flag():
    def switching(model, batch):
        loss = _ce(model, batch)  # dropout is active while the model trains
        model.eval()  # e.g. an evaluation inside the loss function; the engine replays in train mode
        return loss

    model = _mlp()
    with pytest.raises(memmaml.ReplayMismatchError, match="inner step 2 "):
        _checked(switching, model)


def test_check_replay_names_a_buffer_and_catches_a_branch_on_mutable_state():
    """An extra forward pass only when a counter is high: running statistics are updated once more."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    calls = [0]

    def branching(model, batch):
        calls[0] += 1
        if calls[0] > 6:  # true only in the replay; the output is unused, the buffers are not
            model(batch[0])
        return _ce(model, batch)

    # the parameters do not depend on running statistics in train mode: the first tensor that differs
    # is a buffer
    with pytest.raises(memmaml.ReplayMismatchError, match="inner step 2 .*buffer '1.running_mean'"):
        _checked(branching, model)


@pytest.mark.parametrize("schedule, offload", SCHEDULES)
def test_check_replay_passes_for_exact_replays(schedule, offload):
    """Dropout, BatchNorm and autocast, replayed as they ran: no error (also through a second backward)."""
    _run("conv", schedule, torch.bfloat16, offload, check_replay=True)
    model = _conv_net()
    batches, query = _data((2, 6, 6))
    maml = memmaml.GradientCheckpointMAML(model, _ce, memmaml.SGD(0.1), schedule=schedule, offload=offload)
    result = maml(batches, check_replay=True)
    loss = _ce(result.model, query)
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    second = torch.autograd.grad(loss, list(model.parameters()))
    assert torch.equal(flat(first), flat(second))


def test_check_replay_is_a_no_op_for_the_naive_engine():
    calls = [0]

    def counting(model, batch):
        calls[0] += 1
        return _ce(model, batch) * (1 + 0.01 * calls[0])

    batches, query = _data((4,))
    result = memmaml.NaiveMAML(_mlp(), counting, memmaml.SGD(0.1))(batches, check_replay=True)
    _ce(result.model, query).backward()
    assert calls[0] == N


def test_unsupported_autocast_dtype_is_pytorchs_own_warning():
    """PyTorch warns and disables CPU autocast for float64; memmaml adds nothing and replays in float32."""
    batches, query = _data((4,))
    grads = {}
    for schedule in (None, "uniform:2"):
        model = _mlp()
        maml = (
            memmaml.NaiveMAML(model, _ce, memmaml.SGD(0.1))
            if schedule is None
            else memmaml.GradientCheckpointMAML(model, _ce, memmaml.SGD(0.1), schedule=schedule)
        )
        torch.manual_seed(1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with torch.autocast("cpu", dtype=torch.float64):
                result = maml(batches, check_replay=True)
                loss = _ce(result.model, query)
            grads[schedule] = flat(torch.autograd.grad(loss, list(model.parameters())))
        messages = [str(w.message) for w in caught]
        assert len(messages) == 1 and "CPU Autocast only supports" in messages[0], messages
    model = _mlp()
    torch.manual_seed(1)
    plain = memmaml.NaiveMAML(model, _ce, memmaml.SGD(0.1))(batches)
    expected = flat(torch.autograd.grad(_ce(plain.model, query), list(model.parameters())))
    assert torch.equal(grads[None], expected)
    assert _rel(grads["uniform:2"], expected) <= 1e-6


# --------------------------------------------------------------------- fp16 loss scale
_SMALL = 1e-3


def _tiny_regression(model, batch, scale=1.0):
    """Residuals of ~1e-3 over 16 examples: gradients of ~1e-7, below fp16's normal range (6e-5)."""
    x, y = batch
    return scale * ((model(x) * _SMALL - y) ** 2).mean()


def _scaled_meta_gradient(dtype, scale, schedule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1))
    gen = torch.Generator().manual_seed(1)
    make = lambda: (torch.randn(16, 8, generator=gen), _SMALL * torch.randn(16, 1, generator=gen))
    batches, query = [make() for _ in range(4)], make()
    lr = 1e3
    scale = torch.tensor(scale)
    opt = memmaml.SGD(lr)
    maml = (
        memmaml.NaiveMAML(model, _tiny_regression, opt)
        if schedule is None
        else memmaml.GradientCheckpointMAML(model, _tiny_regression, opt, schedule=schedule)
    )
    with _autocast(dtype):
        # the inner loss is multiplied by the scale, so are its gradients; lr / scale undoes it in the update
        result = maml(batches, opt_kwargs={"lr": lr / scale}, loss_kwargs={"scale": scale})
        query_loss = _tiny_regression(result.model, query, scale=scale)  # the meta-gradient is scaled too
    return flat(torch.autograd.grad(query_loss, list(model.parameters()))) / scale  # ... and unscaled here


@pytest.mark.parametrize("schedule", [None, "uniform:2"])
def test_fp16_with_a_loss_scale_matches_float32(schedule):
    """Tolerance 2e-3 (relative L2): four times fp16's unit roundoff 2**-11 = 4.9e-4; every matmul rounds
    its inputs to fp16 once, and the errors of three layers over four steps and their second-order terms
    add up (measured: 6.2e-4). Without the scale, most gradients underflow and the result is wrong."""
    reference = _scaled_meta_gradient(None, 1.0, schedule)
    scaled = _scaled_meta_gradient(torch.float16, 2.0**16, schedule)
    unscaled = _scaled_meta_gradient(torch.float16, 1.0, schedule)
    rel = lambda a: ((a - reference).norm() / reference.norm()).item()
    assert rel(scaled) <= 2e-3, rel(scaled)
    assert rel(unscaled) > 0.5, f"the test problem must underflow in fp16 without a scale: {rel(unscaled)}"
