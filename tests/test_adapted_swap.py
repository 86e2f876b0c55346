"""The inner step's direct swap of tensors (NOTE [ Swapping tensors in place of functional_call ]): it computes what
``torch.func.functional_call`` computes, restores the module whatever happens, and every case it does not cover
goes through ``functional_call``."""

import copy

import pytest
import torch
from helpers import DTYPE, mlp, mse, regression_batches
from torch import nn
from torch.func import functional_call
from torch.nn.utils import parametrize

import memmaml
from memmaml.engine._adapted import AdaptedModule, tensor_places
from memmaml.engine._step import InnerStep


def _inputs(seed=5):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(6, 4, generator=gen, dtype=DTYPE)


def _others(model, seed=7):
    gen = torch.Generator().manual_seed(seed)
    return {
        n: torch.randn(p.shape, generator=gen, dtype=DTYPE, requires_grad=True) for n, p in model.named_parameters()
    }


def _view(model, params):
    return AdaptedModule._at(model, params, tensor_places(model, params), False)


def test_places_resolve_parameters_and_buffers_of_nested_modules():
    model = mlp(batchnorm=True)
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    places = tensor_places(model, names)
    assert [name for _, _, name in places] == names
    for store, key, name in places:
        prefix, _, attr = name.rpartition(".")
        owner = model.get_submodule(prefix)
        assert store is (owner._parameters if attr in owner._parameters else owner._buffers)
        assert store[key] is getattr(owner, attr)
    assert any(store is model[1]._buffers for store, _, _ in places)


@pytest.mark.parametrize(
    "names",
    [
        ["0.missing"],  # not a tensor of the module
        ["9.weight"],  # no such submodule
        ["0.training"],  # an attribute, not a parameter or buffer
        ["0.weight", "2.weight"],  # the same entry twice: a submodule registered under two names
    ],
)
def test_places_refuse_what_the_swap_does_not_cover(names):
    layer = nn.Linear(4, 4).to(DTYPE)
    model = nn.Sequential(layer, nn.Tanh(), layer)
    assert tensor_places(model, names) is None


def test_places_refuse_a_parametrized_weight_but_take_its_original():
    model = nn.Sequential(nn.Linear(4, 3)).to(DTYPE)
    parametrize.register_parametrization(model[0], "weight", nn.Tanh())
    assert tensor_places(model, ["0.weight"]) is None
    original = tensor_places(model, ["0.parametrizations.weight.original"])
    assert original[0][0] is model[0].parametrizations.weight._parameters


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_places_refuse_a_scripted_module():
    assert tensor_places(torch.jit.script(nn.Linear(2, 2)), ["weight"]) is None


def test_swap_computes_what_functional_call_computes_and_restores_the_module():
    """Values and gradients equal bitwise, BatchNorm's running statistics updated alike, the module's own tensors
    back in place."""
    fast_model, slow_model = mlp(batchnorm=True), mlp(batchnorm=True)
    params = _others(fast_model)
    own = dict(fast_model.named_parameters())
    x = _inputs()
    fast = _view(fast_model, params)(x)
    slow = functional_call(slow_model, params, (x,), tie_weights=False, strict=False)
    assert torch.equal(fast, slow)
    fast_grads = torch.autograd.grad(fast.square().sum(), list(params.values()))
    slow_grads = torch.autograd.grad(slow.square().sum(), list(params.values()))
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))
    for (name, a), (_, b) in zip(fast_model.named_buffers(), slow_model.named_buffers()):
        assert torch.equal(a, b), name
    assert all(p is own[n] for n, p in fast_model.named_parameters())


def test_swap_with_some_tensors_uses_the_module_s_own_for_the_rest():
    model = mlp()
    params = {"0.weight": _others(model)["0.weight"]}
    x = _inputs()
    assert torch.equal(_view(model, params)(x), functional_call(model, params, (x,)))


def test_module_is_restored_when_its_forward_raises():
    class Failing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 2).to(DTYPE)

        def forward(self, x):
            self.lin(x)
            raise RuntimeError("boom")

    model = Failing()
    own = model.lin.weight
    with pytest.raises(RuntimeError, match="boom"):
        _view(model, {"lin.weight": torch.zeros(2, 4, dtype=DTYPE)})(_inputs())
    assert model.lin.weight is own


def test_a_buffer_reassigned_in_forward_reaches_params_as_with_functional_call():
    class Counting(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("count", torch.zeros((), dtype=DTYPE))

        def forward(self, x):
            self.count = self.count + 1  # reassigned, not updated in place
            return x * self.count

    expected_params = {"count": torch.full((), 4.0, dtype=DTYPE)}
    out_expected = functional_call(Counting(), expected_params, (_inputs(),))
    model = Counting()
    view = _view(model, {"count": torch.full((), 4.0, dtype=DTYPE)})
    out = view(_inputs())
    assert torch.equal(out, out_expected)
    assert torch.equal(view.params["count"], expected_params["count"])  # 5, as functional_call writes back
    assert view.params["count"].item() == 5.0
    assert model.count.item() == 0.0


@pytest.mark.parametrize("same_length", [False, True])
def test_a_view_whose_params_changed_names_goes_through_functional_call(same_length):
    model, twin = mlp(batchnorm=True), mlp(batchnorm=True)
    params = _others(model)
    view = _view(model, params)
    del view.params["0.bias"]  # the places no longer match: functional_call, with the module's own bias
    if same_length:  # as many tensors as places, but not the same names
        running_mean = next(name for name, _ in model.named_buffers() if name.endswith("running_mean"))
        view.params[running_mean] = torch.ones_like(model.get_buffer(running_mean))
    x = _inputs()
    expected = functional_call(twin, dict(view.params), (x,))
    assert torch.equal(view(x), expected)


def _tied_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)).to(DTYPE)
    model[2].weight = model[0].weight  # tied: one tensor under two names
    return model


class _Scaled(nn.Module):
    def forward(self, w):
        return 0.5 * w


def _parametrized_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2)).to(DTYPE)
    parametrize.register_parametrization(model[0], "weight", _Scaled())
    return model


def _forced_functional_call(monkeypatch):
    monkeypatch.setattr(InnerStep, "_places_of", lambda self, names: None)


@pytest.mark.parametrize("schedule", [None, "binomial:2"])
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: mlp(batchnorm=True), id="batchnorm"),
        pytest.param(_tied_model, id="tied"),
        pytest.param(_parametrized_model, id="parametrized"),
    ],
)
def test_engine_meta_gradient_is_the_same_with_and_without_the_swap(make, schedule, monkeypatch):
    """The same unroll, once with the swap and once forced through functional_call: the meta-gradients and the
    running statistics are bitwise equal (tied weights never take the swap: has_tied_weights)."""

    def run():
        model = make()
        maml = memmaml.MAML(model, mse, memmaml.SGD(0.1, momentum=0.5), schedule=schedule)
        out = maml(regression_batches(5))
        loss = mse(out.model, regression_batches(1, seed=9)[0])
        return torch.autograd.grad(loss, list(model.parameters())), [b.clone() for b in model.buffers()]

    fast_grads, fast_buffers = run()
    with monkeypatch.context() as patch:
        _forced_functional_call(patch)
        slow_grads, slow_buffers = run()
    assert all(torch.equal(a, b) for a, b in zip(fast_grads, slow_grads))
    assert all(torch.equal(a, b) for a, b in zip(fast_buffers, slow_buffers))


@pytest.mark.parametrize("schedule", [None, "binomial:2"])
def test_engine_takes_the_swap_for_an_untied_model_and_not_for_a_tied_one(schedule):
    """Every set of names the engine passes resolves for an untied model: the parameters alone and, with batch
    norm, the parameters with the buffers, in the forward pass and in the replays of a checkpointed one."""
    batches = regression_batches(4)
    seen: dict[int, dict] = {}
    original = InnerStep._places_of

    def spy(self, names):
        places = original(self, names)
        seen.setdefault(id(self.model), {})[names] = places
        return places

    untied, normed, tied = mlp(), mlp(batchnorm=True), _tied_model()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(InnerStep, "_places_of", spy)
        for model in (untied, normed, tied):
            out = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule=schedule)(batches)
            mse(out.model, regression_batches(1, seed=9)[0]).backward()
    assert [len(places) for places in seen[id(untied)].values()] == [6]
    parameters = tuple(n for n, _ in normed.named_parameters())
    buffers = tuple(n for n, _ in normed.named_buffers())
    resolved = seen[id(normed)]
    with_buffers = {names for names in resolved if set(names) == set(parameters + buffers)}
    assert len(with_buffers) == (0 if schedule is None else 1)  # replays pass the stored running statistics
    assert parameters in resolved and len(resolved) == (1 if schedule is None else 2)  # the parameters alone too
    assert all(places is not None and len(places) == len(names) for names, places in resolved.items())
    assert all(places is None for places in seen[id(tied)].values())


def test_a_model_changed_between_forward_and_backward_is_resolved_again():
    """A layer replaced by an equal copy after the forward pass: the replays of the backward pass swap into the
    new layer (the places are resolved again), and the meta-gradient is the one of the unchanged model."""
    batches, query = regression_batches(4), regression_batches(1, seed=9)[0]

    def grads(replace):
        model = mlp()
        out = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule="binomial:1")(batches)
        loss, initial = mse(out.model, query), list(model.parameters())
        if replace:
            model[0] = copy.deepcopy(model[0])
        return torch.autograd.grad(loss, initial)

    assert all(torch.equal(a, b) for a, b in zip(grads(False), grads(True)))


def test_a_view_without_places_in_its_state_loads_and_computes():
    """A view saved before views had places (its state lacks the entry) loads and calls functional_call."""
    model, x = mlp(), _inputs()
    params = _others(model)
    state = AdaptedModule(model, params, tie_weights=False).__dict__.copy()
    del state["_places"]
    loaded = AdaptedModule.__new__(AdaptedModule)
    loaded.__setstate__(state)
    assert torch.equal(loaded(x), functional_call(model, params, (x,)))


def test_engine_with_a_parametrized_weight_matches_an_independent_unroll():
    """A weight under torch.nn.utils.parametrize is adapted through its original tensor (the swap puts it into the
    parametrization's own dict): the meta-gradient equals a hand-written unroll's, through the parametrization."""
    model = _parametrized_model()
    batches, query = regression_batches(3), regression_batches(1, seed=9)[0]
    out = memmaml.MAML(model, mse, memmaml.SGD(0.1), schedule="binomial:1")(batches)
    names = [n for n, _ in model.named_parameters()]
    got = torch.autograd.grad(mse(out.model, query), list(model.parameters()))

    # the oracle: the model written out by hand, its parameters a dict of tensors
    init = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    order = ["0.parametrizations.weight.original", "0.bias", "2.weight", "2.bias"]

    def forward(p, x):
        return torch.tanh(x @ (0.5 * p[0]).T + p[1]) @ p[2].T + p[3]

    p = [init[n] for n in order]
    for x, y in batches:
        grads = torch.autograd.grad(((forward(p, x) - y) ** 2).mean(), p, create_graph=True)
        p = [t - 0.1 * g for t, g in zip(p, grads)]
    expected = dict(
        zip(order, torch.autograd.grad(((forward(p, query[0]) - query[1]) ** 2).mean(), [init[n] for n in order]))
    )
    assert sorted(names) == sorted(order)
    for name, a in zip(names, got):
        b = expected[name]
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
