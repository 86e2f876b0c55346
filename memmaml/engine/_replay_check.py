"""``check_replay``: proof, step by step, that a replay is the forward pass.

NOTE [ Checking the replay ]
    With ``check_replay=True`` the forward pass records a digest of the state
    after every step (for each tensor of the parameters, the optimizer state
    and the buffers: the sum and the sum of squares of its bits read as
    integers, and the sum of its values), and every replayed step, with or
    without its graph, compares its state with that digest. On CPU the
    replay is bitwise identical to the forward pass, so any difference is an
    error: :class:`ReplayMismatchError` names the step and the first tensor
    that differs. It catches a loss function whose result depends on anything
    the engine does not restore (a counter, a random generator outside
    torch's, a ``training`` flag it flips, a branch on mutable state). Cost:
    one pass over the state per evaluated step, one host sync per replayed
    step, and 24 bytes per state tensor per step. The naive engine replays
    nothing; there the option does nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["Digest", "ReplayMismatchError", "check_digest", "digest"]

_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class ReplayMismatchError(RuntimeError):
    """A replayed inner step did not reproduce the forward pass (``check_replay=True``).

    The message names the step and the first tensor of the state that differs.
    """


class Digest(NamedTuple):
    """Per tensor of a state: its bits summed (exact) and its values summed (for messages)."""

    bits: Tensor  # (num_tensors, 2) int64: sum and sum of squares of the bits read as integers
    values: Tensor  # (num_tensors,) float64: sum of the values


def digest(tensors: Sequence[Tensor]) -> Digest:
    """Equal digests mean equal tensors, but for a collision of two 64-bit checksums."""
    bits, values = [], []
    with torch.no_grad():
        for t in tensors:
            t = t.detach().reshape(-1)
            as_int = t.view(_INT_OF_SIZE.get(t.element_size(), torch.uint8)).to(torch.int64)
            bits.append(torch.stack([as_int.sum(), (as_int * as_int).sum()]))
            values.append(t.sum(dtype=torch.float64) if t.is_floating_point() else as_int.sum().double())
    if not bits:
        return Digest(torch.zeros(0, 2, dtype=torch.int64), torch.zeros(0, dtype=torch.float64))
    device = bits[0].device
    return Digest(torch.stack([b.to(device) for b in bits]), torch.stack([v.to(device) for v in values]))


def check_digest(step: int, expected: Digest, got: Digest, names: Sequence[str]) -> None:
    """Raise :class:`ReplayMismatchError` unless the replay of ``step`` gave the ``expected`` state."""
    if torch.equal(got.bits, expected.bits):
        return
    row = int((got.bits != expected.bits).any(dim=1).nonzero()[0, 0])
    raise ReplayMismatchError(
        f"check_replay: the replay of inner step {step} did not reproduce the forward pass: "
        f"{names[row]} differs (sum of its values {float(expected.values[row]):.12g} in the forward pass, "
        f"{float(got.values[row]):.12g} in the replay). loss_function must compute the same thing each "
        "time it is called on the same state: it must not depend on anything the engine does not "
        "restore (a counter, a random generator other than torch's, a train/eval flag it changes, a "
        "branch on mutable state); see the README, 'What the loss function must not do'" + _cuda_hint(got.bits)
    )


def _cuda_hint(bits: Tensor) -> str:
    if bits.device.type != "cuda" or torch.are_deterministic_algorithms_enabled():
        return ""
    return (
        ". On CUDA, non-deterministic kernels (allowed now) also make a replay differ in the last bits: "
        "call torch.use_deterministic_algorithms(True), set CUBLAS_WORKSPACE_CONFIG=:4096:8 and "
        "torch.backends.cudnn.benchmark = False before checking"
    )
