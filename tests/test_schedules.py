"""Schedules beyond sqrt(n): binomial checkpointing, host offload, a schedule chosen from a budget."""

import functools
import math

import pytest
import torch
from helpers import DTYPE, assert_rel_close, flat, mlp, mse, regression_batches

import memmaml
from memmaml import (
    Advance,
    Auto,
    Binomial,
    Drop,
    Plan,
    Reverse,
    StepCosts,
    Uniform,
    binomial_evaluations,
    check_plan,
    parse_schedule,
    parse_size,
)


# ------------------------------------------------------------------------ the plans
@functools.cache
def _optimal_cost(steps, slots):
    """Fewest no-graph evaluations to reverse ``steps`` steps, by exhaustive recursion (independent of the code)."""
    if steps == 1:
        return 0
    if slots == 0:
        return math.inf
    return min(c + _optimal_cost(steps - c, slots - 1) + _optimal_cost(c, slots) for c in range(1, steps))


@pytest.mark.parametrize("slots", range(1, 7))
def test_binomial_plan_is_valid_optimal_and_within_its_slots(slots):
    for n in range(1, 61):
        stats = check_plan(Binomial(slots).plan(n))
        assert stats.max_stored <= slots + 1, "the input plus `slots` stored states at most"
        assert stats.max_segment == 1, "one step's graph at a time"
        assert stats.reversed_steps == n
        # the forward pass does the first n - 1 advances of the optimal reversal, plus the last step
        # the forward pass is the optimal reversal's first n - 1 advances and runs the last step with its graph
        assert stats.forward_steps == _optimal_cost(n, slots) == binomial_evaluations(n, slots), (n, slots)


@pytest.mark.parametrize("segment", [2, 3, 5])
def test_segmented_binomial_plan_is_the_binomial_plan_over_segments(segment):
    for slots in range(1, 5):
        for n in range(1, 41):
            stats = check_plan(Binomial(slots, segment=segment).plan(n))
            segments = -(-n // segment)
            assert stats.max_stored <= min(slots, segments - 1) + 1, (n, slots)
            assert stats.max_segment == min(segment, n), "one segment's graph at a time"
            assert stats.reversed_steps == n
            if n % segment == 0:  # each no-graph evaluation of a segment is `segment` steps
                assert stats.forward_steps == segment * _optimal_cost(segments, slots), (n, slots)
                assert Binomial(slots, segment=segment).stats(n) == stats  # the closed form
            elif segments > 1:  # the first segment is shorter, and the forward pass evaluates it at least once
                assert stats.forward_steps < segment * _optimal_cost(segments, slots), (n, slots)


def test_segment_of_at_least_n_steps_replays_nothing():
    assert check_plan(Binomial(3, segment=10).plan(7)) == (1, 0, 0, 7, 7)


def test_binomial_reaches_100k_steps_with_200_slots_at_three_repetitions():
    n, slots = 100_000, 200
    stats = check_plan(Binomial(slots).plan(n))
    assert stats.max_stored == slots + 1
    assert stats.forward_steps == binomial_evaluations(n, slots)
    assert stats.forward_steps / n < 3, "fewer than 3 evaluations without a graph per step (t = 3)"


def test_uniform_plan():
    stats = check_plan(Uniform(3).plan(10))
    assert stats == (4, 9, 0, 10, 3), "the forward pass runs the last segment (step 9) with its graph"


@pytest.mark.parametrize(
    "plan, message",
    [
        (Plan(3, (1,), ()), "forward_saves must contain 0"),
        (Plan(3, (0,), (Reverse(1, 3),)), "reads state 1, which is not stored"),
        (Plan(3, (0,), (Reverse(0, 2),)), "must end at state 3"),
        (Plan(3, (0,), (Advance(0, 3), Reverse(0, 3))), "must advance forward and stop before state 3"),
        (Plan(3, (0,), (Drop(2),)), "frees state 2"),
        (Plan(3, (0, 1), (Reverse(1, 3),)), "ends with the cotangent of state 1"),
    ],
)
def test_check_plan_rejects_invalid_plans(plan, message):
    with pytest.raises(ValueError, match=message):
        check_plan(plan)


# -------------------------------------------------------- meta-gradients equal naive
class _Net(torch.nn.Module):
    """Dropout and BatchNorm, so the replays must restore RNG and buffers exactly."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(3, 6),
            torch.nn.BatchNorm1d(6),
            torch.nn.Tanh(),
            torch.nn.Dropout(0.2),
            torch.nn.Linear(6, 2),
        )

    def forward(self, x):
        return self.body(x)


def _run(make, n):
    torch.manual_seed(0)
    model = _Net().to(DTYPE)
    lr = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    batches = regression_batches(n, in_features=3, size=5)
    torch.manual_seed(1)
    result = make(model, memmaml.SGD(lr, momentum=0.5))(batches, max_grad_grad_norm=0.05)
    loss = mse(result.model, regression_batches(1, in_features=3, size=5, seed=7)[0])
    loss = loss + torch.stack(result.loss_history).mean()
    grads = torch.autograd.grad(loss, [*model.parameters(), lr])
    return flat(grads), flat(list(model.buffers())), torch.rand(2)


@pytest.fixture(scope="module")
def naive_references():
    return {n: _run(lambda m, o: memmaml.NaiveMAML(m, mse, o), n) for n in range(1, 41)}


def test_binomial_matches_naive_for_every_n_up_to_40_and_slots_up_to_6(naive_references):
    for slots in range(1, 7):
        for n in range(1, 41):
            grads, buffers, rng_after = _run(
                lambda m, o: memmaml.GradientCheckpointMAML(m, mse, o, schedule=Binomial(slots)), n
            )
            ref_grads, ref_buffers, ref_rng_after = naive_references[n]
            assert_rel_close(grads, ref_grads, what=f"n={n} slots={slots}")
            assert torch.equal(buffers, ref_buffers), f"running statistics differ at n={n} slots={slots}"
            assert torch.equal(rng_after, ref_rng_after)


@pytest.mark.parametrize(
    "schedule", ["uniform:4", "sqrt", "binomial:3", "binomial:3:2", "binomial:2:4", "auto:1GiB", "auto:200KiB"]
)
@pytest.mark.parametrize("offload", [False, True])
def test_every_schedule_with_and_without_offload_matches_naive(schedule, offload, naive_references):
    for n in (1, 7, 23):
        grads, buffers, _ = _run(
            lambda m, o: memmaml.GradientCheckpointMAML(m, mse, o, schedule=schedule, offload=offload), n
        )
        assert_rel_close(grads, naive_references[n][0], what=f"{schedule} offload={offload} n={n}")
        assert torch.equal(buffers, naive_references[n][1])


def test_clipping_is_active_in_the_schedule_comparison(naive_references):
    torch.manual_seed(0)
    model = _Net().to(DTYPE)
    lr = torch.tensor(0.1, dtype=DTYPE, requires_grad=True)
    torch.manual_seed(1)
    result = memmaml.NaiveMAML(model, mse, memmaml.SGD(lr, momentum=0.5))(regression_batches(23, in_features=3, size=5))
    loss = mse(result.model, regression_batches(1, in_features=3, size=5, seed=7)[0])
    loss = loss + torch.stack(result.loss_history).mean()
    unclipped = flat(torch.autograd.grad(loss, [*model.parameters(), lr]))
    assert (unclipped - naive_references[23][0]).abs().max() > 1e-3


# ------------------------------------------------------------------- counted replays
# 11 steps in two-step segments with one slot: 6 segments, the first of one step, reversed with Griewank's
# 5 * 6 - C(6, 2) = 15 segment evaluations without a graph, of which 5 are of the first: 15 * 2 - 5 = 25 steps
SHORT_FIRST = {(11, 1, 2): 25}


@pytest.mark.parametrize(
    "n, slots, segment",
    [(1, 1, 1), (10, 1, 1), (20, 3, 1), (37, 2, 1), (40, 6, 1), (20, 2, 2), (36, 1, 3), (11, 1, 2)],
)
def test_binomial_evaluates_exactly_the_closed_form_number_of_steps(n, slots, segment):
    calls = []

    def loss(model, batch):
        calls.append((batch[2], torch.is_grad_enabled() and any(p.requires_grad for p in model.params.values())))
        return mse(model, batch)

    model = mlp(0)
    batches = [(x, y, i) for i, (x, y) in enumerate(regression_batches(n))]
    schedule = Binomial(slots, segment=segment)
    result = memmaml.GradientCheckpointMAML(model, loss, memmaml.SGD(0.1), schedule=schedule)(batches)
    mse(result.model, regression_batches(1)[0]).backward()
    evaluations = SHORT_FIRST.get((n, slots, segment), segment * binomial_evaluations(n // segment, slots))
    assert len(calls) == evaluations + n
    assert schedule.stats(n).forward_steps == evaluations
    forward, backward = [step for step, _ in calls[:n]], [step for step, _ in calls[n:]]
    assert forward == list(range(n)), "the forward pass: each step once, the last segment with its graph"
    # the backward pass replays every step but the last segment's (whose graph the forward pass kept)
    assert set(backward) == set(range(n - segment))
    # ... and ends with the first segment (shorter when `segment` does not divide n), replayed with its graph
    first = n - (-(-n // segment) - 1) * segment
    assert backward[-first:] == list(range(first)) if n > segment else not backward


def _state_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _tracked_peak(n, schedule, offload=False, model=None):
    model = model or mlp(0, sizes=(16, 64, 64, 4)).float()
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 16, generator=gen), torch.randn(32, 4, generator=gen))
    with memmaml.track_memory("cpu") as mem:
        maml = memmaml.GradientCheckpointMAML(model, mse, memmaml.SGD(0.01), schedule=schedule, offload=offload)
        result = maml([batch] * n)
        mse(result.model, batch).backward()
        del result
    return mem, _state_bytes(model)


def test_binomial_never_holds_more_than_its_slots_measured():
    """With the memory tracker: each extra slot costs about one state, and n barely matters."""
    peaks = {}
    for n, slots in [(30, 2), (30, 6), (120, 2)]:
        mem, state = _tracked_peak(n, Binomial(slots))
        peaks[n, slots] = mem.peak_bytes
    extra = peaks[30, 6] - peaks[30, 2]
    assert 0 <= extra <= 4 * state * 1.25, (extra, state)
    assert abs(peaks[120, 2] - peaks[30, 2]) <= 0.1 * peaks[30, 2], peaks


def test_offload_device_peak_does_not_grow_with_n():
    """On CPU the tracker counts offloaded states as host memory: what would stay on the accelerator."""
    device10, state = _tracked_peak(10, Uniform(1), offload=True)
    device200, _ = _tracked_peak(200, Uniform(1), offload=True)
    kept200, _ = _tracked_peak(200, Uniform(1), offload=False)
    assert abs(device200.peak_bytes - device10.peak_bytes) < 0.1 * device10.peak_bytes
    # states 0 .. 198 went to the host; state 199 was not stored: the forward pass kept the last step's graph
    assert device200.host_peak_bytes >= 199 * state, "the states went to the host"
    assert kept200.peak_bytes > device200.peak_bytes + 150 * state, "without offload they stay on the device"


# ----------------------------------------------------------------------------- auto
COSTS = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)


def test_auto_prefers_naive_when_everything_fits():
    choice = Auto(10**9).choose(50, COSTS)
    assert choice.schedule is None and choice.predicted_peak_bytes == 50 * 2_000


def test_auto_picks_uniform_then_binomial_as_the_budget_shrinks():
    n = 1000
    roomy = Auto(2_000 * 40 + 100 * 40).choose(n, COSTS)
    assert isinstance(roomy.schedule, Uniform) and roomy.predicted_peak_bytes <= 2_000 * 40 + 100 * 40
    tight = Auto(2_000 + 100 * 12).choose(n, COSTS)
    assert isinstance(tight.schedule, Binomial) and tight.schedule.slots == 10
    assert tight.evaluations == binomial_evaluations(n, 10)
    assert "Binomial(slots=10)" in tight.describe() and "evaluations per step" in tight.describe()
    offloaded = Auto(2_000 + 100 * 3).choose(n, COSTS, offload=True)
    assert offloaded.schedule is not None and offloaded.predicted_peak_bytes <= 2_300


def test_auto_budget_too_small_says_how_much_is_needed():
    # the smallest candidate: Binomial(1), the input, one slot and the working state beside one graph
    with pytest.raises(
        ValueError,
        match=r"memory budget 1000 B is smaller than what 10 steps need with naive or "
        r"uniform or binomial: at least 2.2 KiB \(one inner step's graph is "
        r"2.0 KiB, one state 100 B\)",
    ):
        Auto(1_000).choose(10, COSTS)


def test_auto_measures_one_step_and_reports_its_choice():
    model = mlp(0)
    auto = Auto("64KiB")
    maml = memmaml.GradientCheckpointMAML(model, mse, memmaml.SGD(0.1), schedule=auto)
    result = maml(regression_batches(30))
    mse(result.model, regression_batches(1)[0]).backward()
    assert maml.step_costs.state_bytes == _state_bytes(model)
    assert maml.step_costs.graph_bytes > maml.step_costs.state_bytes
    assert maml.last_choice is not None and "Auto(budget=64.0 KiB) chose" in maml.last_choice.describe()
    assert maml.last_choice.schedule is not None, "64 KiB does not hold 30 graphs: a checkpoint schedule"


# -------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "spec, message",
    [
        ("binomial:0", "slots must be a positive integer, got 0"),
        ("binomial:x", "bad schedule 'binomial:x'"),
        ("binomial:3:0", "segment must be a positive integer, got 0"),
        ("binomial:3:x", "'binomial:SLOTS:SEGMENT' takes a whole number of steps per segment after the second colon"),
        ("revolve:3", "unknown schedule 'revolve:3'"),
        ("uniform", "unknown schedule 'uniform'"),
        ("auto:lots", "cannot read 'lots' as a memory size"),
    ],
)
def test_bad_schedules(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(spec)


def test_bad_slots_and_offload_without_schedule():
    for slots in (0, -2, 1.5, True):
        with pytest.raises(ValueError, match="slots must be a positive integer"):
            Binomial(slots)
    with pytest.raises(ValueError, match="offload=True needs a checkpoint schedule"):
        memmaml.unroll(
            mlp(0), mse, regression_batches(2), memmaml.SGD(0.1), params=dict(mlp(0).named_parameters()), offload=True
        )


@pytest.mark.parametrize(
    "text, expected",
    [("11GiB", 11 * 2**30), ("500MB", 500 * 10**6), ("4g", 4 * 10**9), ("1.5 KiB", 1536), (2048, 2048)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected
