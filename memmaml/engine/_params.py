"""Which tensors the inner loop adapts."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Union

from torch import Tensor, nn

__all__ = ["Selection", "all_trainable", "select_parameters"]

#: what chooses the adapted parameters: ``None`` (every parameter that requires grad), a
#: ``get_parameters(model) -> iterable of the model's parameters``, or a dict keyed by name.
Selection = Union[None, Callable[[nn.Module], Iterable[Tensor]], Mapping[str, Tensor]]


def all_trainable(model: nn.Module) -> list[Tensor]:
    """Every parameter of ``model`` that requires grad (the default ``get_parameters``)."""
    return [p for p in model.parameters() if p.requires_grad]


def select_parameters(model: nn.Module, selection: Selection = None) -> dict[str, Tensor]:
    """The adapted parameters, keyed like ``model.named_parameters()``.

    Args:
        model: the module.
        selection: ``None`` for every parameter that requires grad; a
            ``get_parameters(model)`` callable returning some of the model's own
            parameters; or a dict ``{name: tensor}`` whose names are parameters of
            the model (the tensors may be other values for them).

    Raises:
        TypeError: ``get_parameters`` returned something that is not an iterable of tensors.
        ValueError: a tensor or name that is not the model's, a duplicate, or nothing to adapt.
    """
    if selection is None:
        selection = all_trainable
    if isinstance(selection, Mapping):
        named = dict(model.named_parameters())
        chosen = dict(selection)
        unknown = sorted(set(chosen) - set(named))
        if unknown:
            raise ValueError(f"params has entries that are not parameters of the model: {unknown[:5]}")
    else:
        chosen = _from_callable(model, selection)
    if not chosen:
        raise ValueError("get_parameters returned no parameters: there is nothing to adapt")
    return chosen


def _from_callable(model: nn.Module, get_parameters: Callable[[nn.Module], Iterable[Tensor]]) -> dict[str, Tensor]:
    picked = get_parameters(model)
    if isinstance(picked, Tensor):
        raise TypeError("get_parameters must return an iterable of parameters, not a single tensor")
    names = {id(p): name for name, p in model.named_parameters()}
    chosen: dict[str, Tensor] = {}
    for index, tensor in enumerate(picked):
        if not isinstance(tensor, Tensor):
            raise TypeError(f"get_parameters returned a {type(tensor).__name__} at position {index}, not a tensor")
        name = names.get(id(tensor))
        if name is None:
            raise ValueError(
                f"get_parameters returned a tensor of shape {tuple(tensor.shape)} at position {index} that is "
                "not a parameter of the model (it must return the model's own parameters, "
                "e.g. list(model.head.parameters()))"
            )
        if name in chosen:
            raise ValueError(f"get_parameters returned parameter {name!r} twice")
        chosen[name] = tensor
    return chosen
