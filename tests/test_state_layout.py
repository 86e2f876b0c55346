"""The inner step's fast flattening of ``(params, opt_state)`` gives exactly pytree's leaves, and falls back to
pytree (with its error) for anything else."""

from typing import NamedTuple

import pytest
import torch
from torch.utils import _pytree as pytree

import memmaml
from memmaml.engine._step import _StateLayout
from memmaml.optim import InnerOptimizer

DT = torch.float64


def _params():
    return {"w": torch.randn(3, 2, dtype=DT), "b": torch.randn(2, dtype=DT)}


OPTIMIZERS = {
    "sgd": memmaml.SGD(0.1),
    "sgd-momentum": memmaml.SGD(0.1, momentum=0.9, weight_decay=0.01),
    "adam": memmaml.Adam(0.01),
    "rmsprop-centered": memmaml.RMSProp(0.01, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_layout_matches_pytree(name):
    params = _params()
    state = OPTIMIZERS[name].init(params)
    leaves, spec = pytree.tree_flatten((params, state))
    layout = _StateLayout.of(spec)
    assert layout is not None
    flat = layout.flatten(params, state)
    assert len(flat) == len(leaves) and all(a is b for a, b in zip(flat, leaves))
    rebuilt = layout.unflatten(leaves)
    assert pytree.tree_flatten(rebuilt)[1] == spec
    assert all(a is b for a, b in zip(pytree.tree_leaves(rebuilt), leaves))
    assert type(rebuilt[1]) is type(state)


class _Pair(NamedTuple):
    first: dict
    second: dict


@pytest.mark.parametrize(
    "state",
    [
        {"m": {"w": torch.zeros(1)}},  # a dict, not a NamedTuple
        (torch.zeros(1),),  # a plain tuple
        _Pair({"w": [torch.zeros(1)]}, {}),  # a list inside a field
    ],
    ids=["dict", "tuple", "nested-list"],
)
def test_other_structures_go_through_pytree(state):
    assert _StateLayout.of(pytree.tree_flatten((_params(), state))[1]) is None


def test_a_state_of_another_shape_is_not_flattened_fast():
    params = _params()
    state = memmaml.SGD(0.1, momentum=0.9).init(params)
    layout = _StateLayout.of(pytree.tree_flatten((params, state))[1])
    assert layout.flatten(dict(reversed(params.items())), state) is None  # key order is part of pytree's spec
    assert layout.flatten(params, state._replace(momentum_buffer={"w": state.momentum_buffer["w"]})) is None
    assert layout.flatten(params, state._replace(momentum_buffer={**state.momentum_buffer, "b": 1.0})) is None


class _GrowingState(NamedTuple):
    buffers: dict


class _Growing(InnerOptimizer):
    """Plain SGD whose state gains an entry after the first step: a structure change the engine must refuse."""

    _defaults = {"lr": 0.1}

    def init(self, params):
        return _GrowingState({})

    def _update(self, grads, opt_state, params, hp):
        updates = {name: -hp["lr"] * g for name, g in grads.items()}
        return updates, _GrowingState({**opt_state.buffers, f"seen{len(opt_state.buffers)}": grads["weight"]})


@pytest.mark.parametrize("schedule", [None, "uniform:2"])
def test_a_state_that_changes_structure_is_refused(schedule):
    model = torch.nn.Linear(2, 1, dtype=DT)
    batches = [torch.randn(4, 2, dtype=DT) for _ in range(3)]
    with pytest.raises(TypeError, match="changed the structure of the state at inner step 0"):
        memmaml.unroll(
            model,
            lambda m, x: m(x).pow(2).mean(),
            batches,
            _Growing(),
            params=dict(model.named_parameters()),
            schedule=schedule,
        )


class _SameFields(NamedTuple):
    momentum_buffer: dict


def test_another_type_or_a_dict_subclass_is_not_flattened_fast():
    from collections import OrderedDict

    params = _params()
    state = memmaml.SGD(0.1, momentum=0.9).init(params)
    layout = _StateLayout.of(pytree.tree_flatten((params, state))[1])
    assert layout.flatten(params, _SameFields(state.momentum_buffer)) is None
    assert layout.flatten(params, state._replace(momentum_buffer=OrderedDict(state.momentum_buffer))) is None


class _Checked:
    """A state registered with pytree whose constructor checks its contents: the layout must not rebuild it."""

    def __init__(self, buffers):
        assert all(isinstance(b, torch.Tensor) for b in buffers.values())
        self.buffers = buffers


pytree.register_pytree_node(
    _Checked, lambda s: (list(s.buffers.values()), list(s.buffers)), lambda v, c: _Checked(dict(zip(c, v)))
)


class _CheckedSGD(InnerOptimizer):
    _defaults = {"lr": 0.1}

    def init(self, params):
        return _Checked({name: torch.zeros_like(p) for name, p in params.items()})

    def _update(self, grads, opt_state, params, hp):
        return {name: -hp["lr"] * g for name, g in grads.items()}, _Checked(dict(grads))


@pytest.mark.parametrize("schedule", [None, "uniform:2"])
def test_a_registered_state_type_goes_through_pytree(schedule):
    model = torch.nn.Linear(2, 1, dtype=DT)
    batches = [torch.randn(4, 2, dtype=DT) for _ in range(3)]
    params = dict(model.named_parameters())
    spec = pytree.tree_flatten((params, _CheckedSGD().init(params)))[1]
    assert _StateLayout.of(spec) is None
    memmaml.unroll(model, lambda m, x: m(x).pow(2).mean(), batches, _CheckedSGD(), params=params, schedule=schedule)
