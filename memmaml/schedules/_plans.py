"""Plans: what the checkpointed engine stores in the forward pass and does in the backward pass.

State ``i`` is the state *before* inner step ``i`` (parameters, optimizer state,
BatchNorm buffers, RNG state); state 0 is the input and state ``n`` the output.

Operations of the backward pass
    * ``Advance(start, stop)``: load stored state ``start``, run steps
      ``start .. stop-1`` without building a graph, store state ``stop``.
    * ``Reverse(start, stop)``: load stored state ``start``, replay steps
      ``start .. stop-1`` *with* their graph, and pull the cotangent of state
      ``stop`` back to state ``start``. Only this segment's graph is alive.
    * ``Drop(index)``: free stored state ``index``.

The backward pass starts with the cotangent of state ``n``; a valid plan ends
with the cotangent of state 0, reversing every step exactly once.

NOTE [ The last segment is not replayed ]
    When the backward pass starts with ``Reverse(a, n)`` and state ``a`` is
    stored by the forward pass, the forward pass runs steps ``a .. n-1`` with
    their graph and keeps it, and that first ``Reverse`` backpropagates
    through the kept graph instead of replaying the segment: the forward pass
    evaluates ``a`` steps without a graph, not ``n``. Peak memory is the same
    (the backward pass holds that segment's graph anyway), state ``a`` need not
    be stored, and ``n - a`` replays are saved (a uniform schedule's last
    segment; a binomial schedule's last step). A second backward pass through
    the same result replays it as any other segment.
"""

from __future__ import annotations

from typing import NamedTuple, Union

__all__ = ["Advance", "Drop", "Plan", "PlanStats", "Reverse", "check_plan", "kept_graph_start"]


class Advance(NamedTuple):
    """Run steps ``start .. stop-1`` without a graph from stored state ``start``; store state ``stop``."""

    start: int
    stop: int


class Reverse(NamedTuple):
    """Replay steps ``start .. stop-1`` with their graph and backpropagate through them."""

    start: int
    stop: int


class Drop(NamedTuple):
    """Free stored state ``index``."""

    index: int


Op = Union[Advance, Reverse, Drop]


class Plan(NamedTuple):
    """What the engine keeps and replays for ``num_steps`` inner steps.

    Attributes:
        num_steps: number of inner steps ``n``.
        forward_saves: states stored during the forward pass (always includes 0).
        backward: operations of the backward pass, in order.
    """

    num_steps: int
    forward_saves: tuple[int, ...]
    backward: tuple[Op, ...]


class PlanStats(NamedTuple):
    """Costs of a plan, counted by :func:`check_plan`.

    Attributes:
        max_stored: the most states stored at once (state 0, the input, included).
        forward_steps: steps evaluated without a graph (forward pass plus ``Advance``;
            see NOTE [ The last segment is not replayed ]).
        replayed_steps: steps evaluated without a graph during the backward pass only.
        reversed_steps: steps replayed with their graph (``n`` for a valid plan).
        max_segment: the longest ``Reverse``, i.e. how many steps' graphs are alive at once.
    """

    max_stored: int
    forward_steps: int
    replayed_steps: int
    reversed_steps: int
    max_segment: int


def check_plan(plan: Plan) -> PlanStats:
    """Simulate ``plan`` and return its costs; raise ``ValueError`` if it is not valid.

    Valid means: every operation reads a stored state, the backward pass reverses
    each step exactly once from ``n`` down to 0, and ``Advance`` never runs past
    the state whose cotangent is pending.

    Example:
        >>> check_plan(Plan(4, (0, 2), (Reverse(2, 4), Drop(2), Reverse(0, 2), Drop(0))))
        PlanStats(max_stored=2, forward_steps=2, replayed_steps=0, reversed_steps=4, max_segment=2)
    """
    n = plan.num_steps
    saves = sorted(set(plan.forward_saves))
    if not saves or saves[0] != 0 or saves[-1] >= n:
        raise ValueError(f"forward_saves must contain 0 and lie in [0, {n}), got {plan.forward_saves}")
    stored = set(saves)
    max_stored = len(stored)
    pending = n  # the state whose cotangent we hold
    replayed = reversed_steps = max_segment = 0
    for op in plan.backward:
        if isinstance(op, Advance):
            if op.start not in stored:
                raise ValueError(f"{op} reads state {op.start}, which is not stored")
            if not op.start < op.stop < pending:
                raise ValueError(f"{op} must advance forward and stop before state {pending}")
            replayed += op.stop - op.start
            stored.add(op.stop)
            max_stored = max(max_stored, len(stored))
        elif isinstance(op, Reverse):
            if op.start not in stored:
                raise ValueError(f"{op} reads state {op.start}, which is not stored")
            if op.stop != pending or not op.start < op.stop:
                raise ValueError(f"{op} must end at state {pending}, whose cotangent is pending")
            reversed_steps += op.stop - op.start
            max_segment = max(max_segment, op.stop - op.start)
            pending = op.start
        elif isinstance(op, Drop):
            if op.index not in stored:
                raise ValueError(f"{op} frees state {op.index}, which is not stored")
            stored.discard(op.index)
        else:
            raise ValueError(f"unknown operation {op!r}")
    if pending != 0 or reversed_steps != n:
        raise ValueError(f"plan ends with the cotangent of state {pending}, not 0")
    return PlanStats(max_stored, kept_graph_start(plan) + replayed, replayed, reversed_steps, max_segment)


def kept_graph_start(plan: Plan) -> int:
    """Where the segment whose graph the forward pass keeps starts (``n`` if none);
    see NOTE [ The last segment is not replayed ]."""
    first = plan.backward[0] if plan.backward else None
    if isinstance(first, Reverse) and first.stop == plan.num_steps and first.start in plan.forward_saves:
        return first.start
    return plan.num_steps
