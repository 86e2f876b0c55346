"""What the replay's fast paths must keep: consecutive advances that do not chain, autocast off (and its weight
cache off) where the inner loop ran without it, and the caller's cuDNN flags."""

import torch
import torch.nn.functional as F
from torch import nn

import memmaml
from memmaml import Advance, Drop, Plan, Reverse, Schedule

DT = torch.float64


def _batches(n, dtype=torch.float32, features=4):
    gen = torch.Generator().manual_seed(3)
    return [
        (torch.randn(6, features, generator=gen, dtype=dtype), torch.randint(0, 3, (6,), generator=gen))
        for _ in range(n)
    ]


def _cross_entropy(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


class _Restarting(Schedule):
    """Two consecutive advances of which the second starts again from the input state: not one chain."""

    def plan(self, num_steps):
        assert num_steps == 4
        backward = (
            Reverse(3, 4),
            Drop(3),
            Advance(0, 1),
            Advance(0, 2),
            Reverse(2, 3),
            Drop(2),
            Reverse(1, 2),
            Drop(1),
            Reverse(0, 1),
            Drop(0),
        )
        return Plan(4, (0, 3), backward)


def _meta_gradient(schedule):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3), nn.Linear(8, 3)).to(DT)
    batches = _batches(4, DT)
    maml = memmaml.MAML(model, _cross_entropy, memmaml.SGD(0.1), schedule=schedule)
    torch.manual_seed(1)
    result = maml(batches, **({} if schedule is None else {"check_replay": True}))
    return torch.autograd.grad(_cross_entropy(result.model, batches[0]), list(model.parameters()))


def test_consecutive_advances_that_do_not_chain_equal_naive():
    for naive, planned in zip(_meta_gradient(None), _meta_gradient(_Restarting())):
        assert torch.equal(naive, planned)


def test_a_loop_run_without_autocast_is_replayed_without_it_under_an_outer_autocast():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 3))
    batches = _batches(6)
    maml = memmaml.MAML(model, _cross_entropy, memmaml.SGD(0.1), schedule="binomial:2")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.autocast("cpu", enabled=False):
            result = maml(batches, check_replay=True)
            loss = _cross_entropy(result.model, batches[0])
        loss.backward()  # replays in float32, as the inner loop ran; check_replay raises otherwise


def test_the_weight_cache_is_off_in_every_step_under_a_disabled_outer_autocast():
    # a loss function opening its own autocast block would otherwise cache a copy of every step's parameters
    seen = []

    def loss_fn(model, batch):
        seen.append(torch.is_autocast_cache_enabled())
        return _cross_entropy(model, batch)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    batches = _batches(6)
    for schedule in (None, "binomial:2", "uniform:2"):
        seen.clear()
        maml = memmaml.MAML(model, loss_fn, memmaml.SGD(0.1), schedule=schedule)
        with torch.autocast("cpu", enabled=False):
            result = maml(batches)
            _cross_entropy(result.model, batches[0]).backward()
        checkpointed = seen if schedule is None else seen[len(batches) :]  # the replays
        if schedule is not None:
            assert checkpointed and not any(checkpointed), schedule
    assert torch.is_autocast_cache_enabled()


def test_replays_see_the_cudnn_flags_of_the_call_and_leave_the_callers():
    seen = []

    def loss_fn(model, batch):
        seen.append((torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic))
        return _cross_entropy(model, batch)

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    batches = _batches(6)
    maml = memmaml.MAML(model, loss_fn, memmaml.SGD(0.1), schedule="binomial:2")
    with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=True):
        result = maml(batches)
        loss = _cross_entropy(result.model, batches[0])
    seen.clear()
    with torch.backends.cudnn.flags(enabled=True, benchmark=True, deterministic=False):
        loss.backward()
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    assert seen and set(seen) == {(False, True)}
