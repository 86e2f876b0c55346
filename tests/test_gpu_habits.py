"""What GPU users do, on the CPU: loss scaling with clipping, float16 norms, host budgets for offload, no_grad.

Each test fails on the engine before these habits were handled: the clip compared the scaled cotangent with
the unscaled limit, float16 norms overflowed to inf (a meta-gradient of exactly zero), Auto planned offload
without a host budget, and the naive engine built its second-order graph under no_grad.
"""

import math

import pytest
import torch
from helpers import flat, mlp, mse, regression_batches
from torch import nn

import memmaml
from memmaml import Auto, Binomial, StepCosts, Uniform

ENGINES = [None, "binomial:2", "uniform:2"]


# ------------------------------------------------------------------------ loss scaling
def _scaled_meta_gradient(schedule, scale, max_norm, *, tell_engine=True):
    """The meta-gradient of a float32 MLP, through a GradScaler of ``scale`` (None: no scaler), unscaled."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 2))
    batches = [(x.float(), y.float()) for x, y in regression_batches(5)]
    scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
    maml = memmaml.MAML(model, mse, memmaml.SGD(0.3, momentum=0.5), schedule=schedule)
    result = maml(batches, max_grad_grad_norm=max_norm, grad_scaler=scaler if tell_engine else None)
    loss = 10 * mse(result.model, batches[0])
    (loss if scaler is None else scaler.scale(loss)).backward()
    grads = flat([p.grad for p in model.parameters()])
    return grads if scaler is None else grads / scale


@pytest.mark.parametrize("schedule", ENGINES)
def test_clipping_under_a_grad_scaler_acts_on_the_unscaled_cotangent(schedule):
    unscaled = _scaled_meta_gradient(schedule, None, 0.05)
    assert (unscaled - _scaled_meta_gradient(schedule, None, None)).norm() > 0.1 * unscaled.norm(), "clip is active"
    for scale in (2.0**16, 2.0**5):
        # a power-of-two scale changes no rounding: the unscaled meta-gradients are equal to the last bit
        torch.testing.assert_close(_scaled_meta_gradient(schedule, scale, 0.05), unscaled, rtol=0, atol=0)
    # without the scaler the engine clips the scaled cotangent, 65,536 times too hard
    wrong = _scaled_meta_gradient(schedule, 2.0**16, 0.05, tell_engine=False)
    assert (wrong - unscaled).norm() > 0.1 * unscaled.norm()


def test_a_scaler_without_clipping_changes_nothing():
    torch.testing.assert_close(
        _scaled_meta_gradient("binomial:2", 2.0**16, None), _scaled_meta_gradient(None, None, None)
    )


def test_grad_scaler_must_be_a_grad_scaler():
    model = mlp()
    maml = memmaml.MAML(model, mse, memmaml.SGD(0.1))
    with pytest.raises(TypeError, match="grad_scaler must be a torch.amp.GradScaler.*got float"):
        maml(regression_batches(2), max_grad_grad_norm=1.0, grad_scaler=65536.0)


# ---------------------------------------------------------------------- float16 norms
def test_global_norm_of_float16_tensors_does_not_overflow():
    from memmaml.engine._step import global_norm

    tensors = [torch.full((10_000,), 1000.0, dtype=torch.float16), torch.full((3,), 2.0, dtype=torch.float16)]
    norm = global_norm(tensors)  # sqrt(10,000 * 1000**2 + 3 * 4) = 100,000.00006, above float16's 65,504
    assert norm.dtype == torch.float32 and math.isclose(norm.item(), 100_000.0, rel_tol=1e-5)


def _fp16_meta_gradient(dtype, schedule, scale):
    """A float16 net whose scaled cotangent has norm ~106,000 (float16's largest value is 65,504) with every
    entry below 4,000: the GradScaler sees nothing wrong, so a norm that overflows would go unnoticed."""
    torch.manual_seed(0)
    reference = nn.Sequential(nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, 64))
    model = nn.Sequential(nn.Linear(256, 64), nn.Tanh(), nn.Linear(64, 64)).to(dtype)
    model.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    gen = torch.Generator().manual_seed(1)
    data = [(torch.randn(32, 256, generator=gen), torch.randn(32, 64, generator=gen)) for _ in range(4)]
    data = [(x.to(dtype), y.to(dtype)) for x, y in data]
    loss_fn = lambda m, b: ((m(b[0]) - b[1]) ** 2).sum(1).mean()
    scaler = None if scale is None else torch.amp.GradScaler("cpu", init_scale=scale)
    result = memmaml.MAML(model, loss_fn, memmaml.SGD(0.01), schedule=schedule)(
        data[:3], max_grad_grad_norm=1.0, grad_scaler=scaler
    )
    loss = loss_fn(result.model, data[3])
    (loss if scaler is None else scaler.scale(loss)).backward()
    grads = flat([p.grad.double() for p in model.parameters()])
    return grads if scaler is None else grads / scale


@pytest.mark.parametrize("schedule", [None, "binomial:2"])
def test_float16_clipping_under_a_scaler_matches_float64(schedule):
    exact = _fp16_meta_gradient(torch.float64, None, None)
    half = _fp16_meta_gradient(torch.float16, schedule, 2.0**12)
    assert torch.isfinite(half).all()
    # float16 arithmetic through three inner steps: measured 8e-4 relative
    assert (half - exact).norm() <= 5e-3 * exact.norm(), ((half - exact).norm() / exact.norm()).item()


# ------------------------------------------------------------------ Auto's host budget
MiB, GiB = 2**20, 2**30
SEED_COSTS = StepCosts(state_bytes=int(44.7 * MiB), graph_bytes=664 * MiB, nograph_seconds=2.0, graph_seconds=6.0)


def test_auto_with_offload_stays_within_the_host_budget():
    choice = Auto("10GiB", host_budget="24GiB").choose(100_000, SEED_COSTS, offload=True)
    assert isinstance(choice.schedule, Binomial), choice.describe()
    assert 0 < choice.predicted_host_bytes <= 24 * GiB
    assert choice.predicted_host_bytes == choice.stats.max_stored * SEED_COSTS.state_bytes
    assert "pinned in host memory" in choice.describe() and "GiB" in choice.describe()
    for n in (10, 100, 1_000, 10_000):
        for host in ("200MiB", "1GiB", "24GiB"):
            c = Auto("10GiB", host_budget=host).choose(n, SEED_COSTS, offload=True)
            assert c.predicted_host_bytes <= memmaml.parse_size(host), (n, host, c.describe())


def test_auto_host_budget_defaults_to_a_share_of_available_memory(monkeypatch):
    monkeypatch.setattr(memmaml._host, "host_available_bytes", lambda: 10 * GiB)
    choice = Auto("10GiB").choose(100_000, SEED_COSTS, offload=True)
    assert choice.predicted_host_bytes <= 8 * GiB < choice.predicted_host_bytes + 2 * SEED_COSTS.state_bytes
    assert Auto("10GiB").choose(100, SEED_COSTS).predicted_host_bytes == 0, "no offload, no host memory"


def test_auto_host_budget_too_small_says_so():
    with pytest.raises(ValueError, match=r"host budget 50.0 MiB is smaller than what offloading 100 steps needs"):
        Auto("10GiB", host_budget="50MiB").choose(100, SEED_COSTS, offload=True)


@pytest.mark.parametrize("junk", ["lots", -5, 0, "12 parsecs", True])
def test_host_budget_junk_reads_like_a_junk_device_budget(junk):
    with pytest.raises(ValueError) as device_error:
        Auto(junk)
    with pytest.raises(ValueError) as host_error:
        Auto("1GiB", host_budget=junk)
    assert str(host_error.value) == str(device_error.value)


def test_an_offloaded_plan_larger_than_the_host_is_refused(monkeypatch):
    model = mlp()
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    monkeypatch.setattr(memmaml.engine._unroll, "host_available_bytes", lambda: 5 * state)
    maml = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule=Uniform(1), offload=True)
    with pytest.raises(ValueError, match=r"would pin .* of host memory \(20 states of .*\), more than the"):
        maml(regression_batches(20))
    memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule=Binomial(3), offload=True)(regression_batches(20))


# ----------------------------------------------------------------------------- no_grad
@pytest.mark.parametrize("schedule", ENGINES)
@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_no_grad_keeps_no_graph_in_any_engine(schedule, mode):
    model = mlp(sizes=(4, 32, 32, 2))
    batches = regression_batches(200)
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    maml = memmaml.MAML(model, mse, memmaml.Adam(0.01), schedule=schedule)
    with memmaml.track_memory() as mem:
        with mode():
            result = maml(batches)
        kept = mem.current_bytes  # what the result holds on to
    assert not any(p.requires_grad for p in result.params.values())
    assert not any(loss.requires_grad for loss in result.loss_history)
    # the parameters and Adam's two moments, plus 200 losses: no step's graph (naive kept 5 MB before)
    assert kept <= 3 * state + 200 * 64, (kept, state)
    expected = memmaml.MAML(model, mse, memmaml.Adam(0.01))(batches)
    for name, p in result.params.items():
        torch.testing.assert_close(p, expected.params[name].detach(), rtol=1e-12, atol=0)


def test_inference_mode_accepts_batches_made_in_inference_mode():
    model = mlp()
    with torch.inference_mode():
        batches = regression_batches(3)
        result = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule="uniform:2")(batches)
    assert len(result.loss_history) == 3 and not result.params["0.weight"].requires_grad


# ---------------------------------------------------------------- offload's copies
def _layouts():
    gen = torch.Generator().manual_seed(0)
    return {
        "channels_last": torch.randn(4, 3, 5, 5, generator=gen).to(memory_format=torch.channels_last),
        "transposed": torch.randn(6, 7, generator=gen).t(),
        "contiguous": torch.randn(2, 3, generator=gen, dtype=torch.float64),
        "scalar": torch.tensor(3.0),
        "bfloat16": torch.randn(8, 2, generator=gen).to(torch.bfloat16).t(),
    }


@pytest.mark.parametrize("name", list(_layouts()))
def test_host_copies_keep_size_strides_and_dtype(name):
    from memmaml.engine._store import from_host, to_host

    tensor = _layouts()[name]
    stored = to_host(tensor)
    back = from_host(stored)
    for copy in (stored.tensor, back):
        assert copy.stride() == tensor.stride() and copy.dtype == tensor.dtype and copy.device == tensor.device
        assert torch.equal(copy, tensor) and copy.data_ptr() != tensor.data_ptr()


def test_host_copies_of_expanded_tensors_are_contiguous_and_equal():
    from memmaml.engine._store import from_host, to_host

    expanded = torch.arange(3.0).expand(4, 3)  # stride 0: four rows share three numbers
    back = from_host(to_host(expanded))
    assert back.is_contiguous() and torch.equal(back, expanded)


def test_offloaded_tensors_return_to_their_own_devices():
    from memmaml.engine._store import OnHost, Store, StoredState

    store = Store(offload=True)
    leaf, buffer = torch.randn(3), torch.randn(2)
    store.states[0] = StoredState(
        [OnHost(leaf, torch.device("cpu")), 7], {"b": OnHost(buffer, torch.device("meta"))}, None
    )
    state = store.get(0)
    assert state.leaves[0].device.type == "cpu" and torch.equal(state.leaves[0], leaf) and state.leaves[1] == 7
    assert state.buffers["b"].device.type == "meta", "a buffer goes back where it came from, not to the first leaf's"


def test_channels_last_weights_come_back_channels_last_and_replay_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 2))
    model = model.double().to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(5, 3, 6, 6, generator=gen, dtype=torch.float64), torch.randn(5, 2, generator=gen))]
    batches = [(x.to(memory_format=torch.channels_last), y.double()) for x, y in batches * 6]
    formats = []

    def loss_fn(m, b):
        formats.append(m.params["0.weight"].is_contiguous(memory_format=torch.channels_last))
        return mse(m, b)

    grads = []
    for schedule, offload in [(None, False), ("uniform:2", True), ("binomial:2", True)]:
        model.zero_grad()
        maml = memmaml.MAML(model, loss_fn, memmaml.SGD(0.1, momentum=0.5), schedule=schedule, offload=offload)
        loss_fn(maml(batches, check_replay=True).model, batches[0]).backward()
        grads.append(flat([p.grad for p in model.parameters()]))
    assert all(formats), "every step, replays included, saw channels_last weights"
    for other in grads[1:]:
        torch.testing.assert_close(other, grads[0], rtol=1e-10, atol=0)


@pytest.mark.parametrize("schedule", ["uniform:3", "binomial:2", "binomial:4"])
def test_prefetch_asks_for_the_state_the_next_replay_reads(schedule, monkeypatch):
    from memmaml.engine._store import Store

    calls = []
    real_prefetch, real_get = Store.prefetch, Store.get

    def prefetch(self, index):
        assert index in self.states, f"prefetch of state {index}, which is not stored"
        calls.append(("prefetch", index))
        return real_prefetch(self, index)

    def get(self, index):
        calls.append(("get", index))
        return real_get(self, index)

    monkeypatch.setattr(Store, "prefetch", prefetch)
    monkeypatch.setattr(Store, "get", get)
    model = mlp()
    result = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule=schedule, offload=True)(regression_batches(11))
    mse(result.model, regression_batches(1, seed=5)[0]).backward()
    prefetched = [i for kind, i in calls if kind == "prefetch"]
    assert prefetched, "the backward pass asked for states ahead"
    for position, (kind, index) in enumerate(calls):
        if kind == "prefetch":
            following = next(i for k, i in calls[position + 1 :] if k == "get")
            assert following == index, (schedule, calls)


# -------------------------------------------------------------------- nested trackers
class _FakeCudaStats:
    """The allocator's current and peak counters, driven by the test."""

    def __init__(self):
        self.current = self.peak_value = 0

    def allocate(self, nbytes):
        self.current += nbytes
        self.peak_value = max(self.peak_value, self.current)

    def synchronize(self, device):
        pass

    def reset_peak(self, device):
        self.peak_value = self.current

    def allocated(self, device):
        return self.current

    def peak(self, device):
        return self.peak_value


def test_an_inner_cuda_tracker_does_not_erase_the_outer_peak(monkeypatch):
    from memmaml.engine import _memory

    stats = _FakeCudaStats()
    monkeypatch.setattr(_memory, "_cuda_stats", stats)
    stats.allocate(1_000)  # before both trackers
    with memmaml.track_memory("cuda:0") as outer:
        stats.allocate(500)
        stats.allocate(-500)  # the outer peak so far: 500
        with memmaml.track_memory("cuda:0") as inner:  # an Auto choice measuring a step, say
            stats.allocate(200)
            stats.allocate(-200)
        stats.allocate(100)
        with memmaml.track_memory("cuda:1") as other:  # another device's counters are its own
            pass
    assert inner.peak_bytes == 200 and outer.peak_bytes == 500 and other.peak_bytes == 0
    with memmaml.track_memory("cuda:0") as later:
        stats.allocate(300)
    assert later.peak_bytes == 300, "a tracker after the others starts afresh"


# -------------------------------------------------------------------------- cuDNN RNNs
def test_a_cudnn_rnn_with_dropout_is_refused_on_cuda():
    from memmaml.engine._replay_context import check_cudnn_rnn_dropout

    model = nn.Sequential()
    model.add_module("encoder", nn.LSTM(4, 8, num_layers=2, dropout=0.3))
    with pytest.raises(ValueError, match=r"module 'encoder' \(LSTM, dropout=0.3\) .*cudnn.flags\(enabled=False\)"):
        check_cudnn_rnn_dropout(model, {"cuda", "cpu"})
    check_cudnn_rnn_dropout(model, {"cpu"})  # the CPU kernels draw their masks from the generator
    with torch.backends.cudnn.flags(enabled=False):
        check_cudnn_rnn_dropout(model, {"cuda"})
    check_cudnn_rnn_dropout(model.eval(), {"cuda"})
    check_cudnn_rnn_dropout(nn.GRU(4, 8, num_layers=1, dropout=0.0), {"cuda"})


def test_replays_run_under_the_cudnn_flags_of_the_call():
    seen = []

    def loss_fn(m, b):
        seen.append(torch.backends.cudnn.enabled)
        return mse(m, b)

    model = mlp()
    with torch.backends.cudnn.flags(enabled=False):
        result = memmaml.MAML(model, loss_fn, memmaml.SGD(0.1), schedule="uniform:2")(regression_batches(6))
    mse(result.model, regression_batches(1)[0]).backward()  # the replays run here, with cuDNN enabled
    assert torch.backends.cudnn.enabled and len(seen) == 6 + 4, seen  # 6 steps, 4 of them replayed
    assert seen == [False] * len(seen), "forward and replays ran without cuDNN, as the call did"


# ------------------------------------------------------------- review: pinned bytes, host facts
def test_auto_counts_pinned_states_as_cuda_rounds_them():
    """CUDA's pinned allocator rounds each tensor up to a power of two: a 42.7 MiB ResNet-18 state pins
    75.3 MiB. Auto plans with the pinned figure when the measured costs carry it."""
    exact = Auto("10GiB", host_budget="24GiB").choose(100_000, SEED_COSTS, offload=True)
    pinned_costs = SEED_COSTS._replace(pinned_state_bytes=int(75.3 * MiB))
    pinned = Auto("10GiB", host_budget="24GiB").choose(100_000, pinned_costs, offload=True)
    assert pinned.predicted_host_bytes <= 24 * GiB
    assert pinned.predicted_host_bytes == pinned.stats.max_stored * pinned_costs.pinned_state_bytes
    assert pinned.schedule.slots < exact.schedule.slots * 0.6
    assert memmaml.pinned_bytes(44_765_128) == 64 * MiB and memmaml.pinned_bytes(1) == 1


def test_host_bytes_round_cuda_tensors_only():
    from memmaml.engine._store import host_bytes

    assert host_bytes([torch.zeros(1000), torch.zeros(3, dtype=torch.float64)]) == 4000 + 24  # CPU: exact


def test_available_memory_respects_a_control_groups_limit(tmp_path):
    from memmaml._host import _cgroup_room

    (tmp_path / "memory.max").write_text("8589934592\n")
    (tmp_path / "memory.current").write_text("2147483648\n")
    assert _cgroup_room(tmp_path) == 6 * GiB
    (tmp_path / "memory.max").write_text("max\n")
    assert _cgroup_room(tmp_path) is None, "no limit"
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(str(4 * GiB))
    (v1 / "memory.usage_in_bytes").write_text(str(1 * GiB))
    assert _cgroup_room(tmp_path / "v1") == 3 * GiB


def test_auto_with_offload_asks_for_a_host_budget_where_the_host_does_not_say(monkeypatch):
    monkeypatch.setattr(memmaml._host, "host_available_bytes", lambda: None)
    with pytest.raises(ValueError, match=r"cannot tell how much host memory .* pass host_budget="):
        Auto("10GiB").choose(100_000, SEED_COSTS, offload=True)
    assert Auto("10GiB", host_budget="24GiB").choose(100_000, SEED_COSTS, offload=True).predicted_host_bytes > 0


def test_float16_clip_factor_does_not_underflow():
    """A clip factor of 1e-8 is 0 in float16: the multiplication runs in float32."""
    from memmaml.engine._step import _ClipCotangent

    x = torch.zeros(10_000, dtype=torch.float16, requires_grad=True)
    for max_norm in (1.0, 1e-2, 1e-3):
        (grad,) = torch.autograd.grad(_ClipCotangent.apply(max_norm, None, x)[0], x, torch.full_like(x, 1000.0))
        norm = grad.double().norm().item()  # the cotangent's norm is 100,000
        assert abs(norm - max_norm) <= 2e-3 * max_norm + 1e-7, (max_norm, norm)


def test_a_frozen_model_keeps_no_graph_in_any_engine():
    model = mlp(sizes=(4, 32, 32, 2)).requires_grad_(False)
    batches = regression_batches(50)
    for schedule in ENGINES:
        params = {k: v.detach() for k, v in model.named_parameters()}
        with memmaml.track_memory() as mem:
            result = memmaml.unroll(model, mse, batches, memmaml.SGD(0.1), params=params, schedule=schedule)
            kept = mem.current_bytes
        assert not result.params["0.weight"].requires_grad, schedule
        assert kept <= 2 * sum(p.numel() * 8 for p in params.values()) + 50 * 64, (schedule, kept)


def test_last_choice_is_none_after_a_call_under_no_grad():
    maml = memmaml.MAML(mlp(), mse, memmaml.SGD(0.1), schedule="binomial:2")
    maml(regression_batches(20))
    assert maml.last_choice.num_steps == 20
    with torch.no_grad():
        maml(regression_batches(7))
    assert maml.last_choice is None


def test_every_store_of_an_unroll_shares_its_side_streams(monkeypatch):
    """A second backward pass rebuilds the stored states in a new store from the input state the first one
    copied out: it must read it back on the stream that copied it, so every store of the unroll shares them."""
    from memmaml.engine._store import Store

    made, real_init = [], Store.__init__

    def init(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Store, "__init__", init)
    model = mlp()
    result = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule="binomial:2", offload=True)(regression_batches(9))
    loss = mse(result.model, regression_batches(1)[0])
    first = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    again = torch.autograd.grad(loss, list(model.parameters()))
    assert len(made) >= 3, "the forward pass's store, the first backward's, and the second's rebuilt one"
    assert all(store.streams is made[0].streams for store in made)
    for a, b in zip(first, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_pinned_branch_keeps_strides_and_orders_its_copy(monkeypatch):
    """The CUDA branch of the offload copy, on the CPU with stand-ins for the CUDA calls: a pinned buffer with
    the source's strides, the side stream waits for the compute stream before the copy, the copy runs on the
    side stream without blocking, and the source is recorded on the side stream."""
    from memmaml.engine import _store

    events = []

    class Stream:
        def __init__(self, name):
            self.name = name

        def wait_stream(self, other):
            events.append(("wait", self.name, other.name))

    compute, side = Stream("compute"), Stream("side")
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: compute)

    class Entered:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            events.append(("enter", self.stream.name))

        def __exit__(self, *exc):
            events.append(("exit", self.stream.name))

    monkeypatch.setattr(torch.cuda, "stream", Entered)
    real_empty = _store._empty_like_strided

    def empty(tensor, *, pin_memory):
        events.append(("alloc", "pinned" if pin_memory else "pageable", tensor.stride()))
        return real_empty(tensor, pin_memory=False)  # no driver here to pin with

    monkeypatch.setattr(_store, "_empty_like_strided", empty)
    real_copy = torch.Tensor.copy_

    def copy(self, src, non_blocking=False):
        events.append(("copy", "non_blocking" if non_blocking else "blocking"))
        return real_copy(self, src)

    monkeypatch.setattr(torch.Tensor, "copy_", copy)
    monkeypatch.setattr(torch.Tensor, "record_stream", lambda self, stream: events.append(("record", stream.name)))
    weight = torch.randn(4, 3, 5, 5).to(memory_format=torch.channels_last)
    stored = _store._to_pinned(weight, side)
    assert stored.tensor.stride() == weight.stride() and torch.equal(stored.tensor, weight)
    assert events == [
        ("alloc", "pinned", weight.stride()),
        ("wait", "side", "compute"),
        ("enter", "side"),
        ("copy", "non_blocking"),
        ("exit", "side"),
        ("record", "side"),
    ]
