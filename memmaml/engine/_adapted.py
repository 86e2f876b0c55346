"""A module that computes with other parameters than its own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["AdaptedModule", "has_tied_weights"]


def has_tied_weights(module: nn.Module) -> bool:
    """Whether one tensor is registered under several names (a shared embedding, say)."""
    for named in (module.named_parameters(remove_duplicate=False), module.named_buffers(remove_duplicate=False)):
        seen: set[int] = set()
        for _, tensor in named:
            if id(tensor) in seen:
                return True
            seen.add(id(tensor))
    return False


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

    def __init__(self, module: nn.Module, params: dict[str, Tensor], *, tie_weights: bool = True) -> None:
        super().__init__()
        object.__setattr__(self, "module", module)  # not a submodule: it owns no parameters here
        self.params = dict(params)
        self.tie_weights = tie_weights

    def forward(self, *args: Any, **kwargs: Any) -> Any:
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
