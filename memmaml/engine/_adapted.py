"""A module that computes with other parameters than its own."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["AdaptedModule", "Places", "has_tied_weights", "tensor_places"]

#: where each named tensor of a module is held: ``(the _parameters or _buffers dict of its submodule, its key
#: there, its full name)`` (see :func:`tensor_places`)
Places = list[tuple[dict[str, Any], str, str]]


def has_tied_weights(module: nn.Module) -> bool:
    """Whether one tensor is registered under several names (a shared embedding, say)."""
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        seen: set[int] = set()
        for _, tensor in named:
            if id(tensor) in seen:
                return True
            seen.add(id(tensor))
    return False


def tensor_places(module: nn.Module, names: Iterable[str]) -> Places | None:
    """Where ``module`` holds each of the tensors ``names``, or ``None`` when a name is not a plain entry of a
    submodule's ``_parameters`` or ``_buffers`` (a parametrized weight, an attribute, a missing name), two names
    share an entry, or ``module`` is one ``functional_call`` refuses (scripted, ``DataParallel``).

    NOTE [ Swapping tensors in place of functional_call ]
        ``functional_call(module, params, tie_weights=False, strict=False)`` resolves every name to its
        submodule and swaps the tensor into that submodule's ``_parameters`` or ``_buffers`` dict for the call,
        then swaps the originals back and writes what the dicts hold at the end into ``params``. An inner step
        calls the same module with the same names thousands of times, and on a small model resolving them again
        each time is a visible part of the step (on a CPU, about 25-40 us of a 0.4 ms no-graph step of a
        2,410-parameter MLP). An :class:`InnerStep` resolves the places once for each set of names it passes (at
        most two: with and without buffers) and again at the start of each backward pass, in case the module was
        changed in between; :class:`AdaptedModule` then swaps the entries directly, with the same effect. Tied
        weights, names that are not plain entries (parametrized weights, attributes), scripted and
        ``DataParallel`` modules, and a view whose names differ from the resolved ones go through
        ``functional_call``. The direct swap leaves out what ``functional_call`` adds around the call: its
        checks of the names and of the tensors' types, and its handling of ``torch.jit`` tracing.
    """
    if isinstance(module, (torch.jit.ScriptModule, nn.DataParallel)):
        return None
    places: Places = []
    seen: set[tuple[int, str]] = set()
    for name in names:
        prefix, _, key = name.rpartition(".")
        try:
            owner = module.get_submodule(prefix)
        except AttributeError:
            return None
        if key in owner._parameters:
            store: dict[str, Any] = owner._parameters
        elif key in owner._buffers:
            store = owner._buffers
        else:
            return None
        if (id(store), key) in seen:
            return None
        seen.add((id(store), key))
        places.append((store, key, name))
    return places


def _swapped_call(module: nn.Module, places: Places, params: dict[str, Tensor], args: Any, kwargs: Any) -> Any:
    """``module(*args, **kwargs)`` with the tensors of ``params`` (whose names are those of ``places``) swapped
    into their places, as ``functional_call(module, params, args, kwargs, tie_weights=False, strict=False)``
    does for a forward pass that deletes no entry (NOTE [ Swapping tensors in place of functional_call ])."""
    originals: list[Any] = []
    try:
        for store, key, name in places:
            originals.append(store[key])
            store[key] = params[name]
        return module(*args, **kwargs)
    finally:
        for (store, key, name), original in zip(places, originals):
            if key in store:  # skipped for an entry the forward pass deleted; restored below either way
                params[name] = store[key]  # what the forward pass left there: a buffer it reassigned, say
            store[key] = original


class AdaptedModule(nn.Module):
    """``module`` evaluated at the tensors in ``params`` (and ``module``'s own for the rest).

    Calling it runs ``torch.func.functional_call(module, params, args, kwargs)``:
    no copy of the module is made, and the output is differentiable with
    respect to every tensor in ``params`` (for MAML, the adapted parameters,
    and through them the original parameters and tensor hyperparameters).

    The wrapped module's buffers are used and, in train mode, updated in place
    (BatchNorm running statistics), exactly as a forward pass of ``module``
    itself would; pass buffer tensors in ``params`` to use those instead.

    ``train()`` and ``eval()`` switch the wrapped module. ``named_parameters()``
    and ``parameters()`` yield the tensors the module computes with (adapted
    ones in place of the originals); they are ordinary tensors, not
    ``nn.Parameter``. ``module`` is not registered as a submodule, so the
    wrapper owns no parameters in ``state_dict()``; use
    :meth:`adapted_state_dict` to save the adapted weights.

    Args:
        module: the original module.
        params: tensors keyed like ``module.named_parameters()`` /
            ``module.named_buffers()``.
        tie_weights: a tensor given for one of several tied names is used for
            all of them (as ``torch.func.functional_call``). Finding the ties
            costs a walk over the module's parameters on every call; pass
            ``False`` for a module without tied weights (``has_tied_weights``).
    """

    _places: Places | None = None  # set by _at; a class default, so a view pickled before it existed loads

    def __init__(self, module: nn.Module, params: dict[str, Tensor], *, tie_weights: bool = True) -> None:
        super().__init__()
        # plain attributes, set past nn.Module.__setattr__ (which would store them the same way, more slowly: an
        # inner step makes a view per step); module is not a submodule, so it owns no parameters here
        self.__dict__.update(module=module, params=dict(params), tie_weights=tie_weights, _places=None)

    @classmethod
    def _at(
        cls, module: nn.Module, params: dict[str, Tensor], places: Places | None, tie_weights: bool
    ) -> AdaptedModule:
        """The view an inner step calls: ``places`` is :func:`tensor_places` of ``module`` for ``params``'s names,
        resolved by the inner step (``None``: through ``functional_call``; NOTE [ Swapping tensors in place of
        functional_call ])."""
        view = cls(module, params, tie_weights=tie_weights)
        view.__dict__["_places"] = places
        return view

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        places, params = self._places, self.params
        if places is not None and len(places) == len(params) and all(name in params for _, _, name in places):
            return _swapped_call(self.module, places, params, args, kwargs)
        return functional_call(self.module, self.params, args, kwargs, tie_weights=self.tie_weights, strict=False)

    def named_parameters(
        self, prefix: str = "", recurse: bool = True, remove_duplicate: bool = True
    ) -> Iterator[tuple[str, Tensor]]:
        for name, original in self.module.named_parameters(remove_duplicate=remove_duplicate):
            yield prefix + name, self.params.get(name, original)

    def adapted_state_dict(self) -> dict[str, Tensor]:
        """The wrapped module's ``state_dict()`` with adapted tensors (detached) in place of the originals."""
        state = self.module.state_dict()
        for name, tensor in self.params.items():
            if name in state:
                state[name] = tensor.detach()
        return state

    def train(self, mode: bool = True) -> AdaptedModule:
        self.module.train(mode)
        return self

    @property
    def training(self) -> bool:  # type: ignore[override]
        module = self.__dict__.get("module")
        return module.training if module is not None else True

    @training.setter
    def training(self, value: bool) -> None:
        pass  # nn.Module.__init__ sets it; the wrapped module's flag is the one that counts

    def extra_repr(self) -> str:
        return f"module={type(self.module).__name__}, tensors={len(self.params)}"
