"""Checkpoint schedules: which inner-loop states to keep, and how to replay them.

A schedule turns the number of inner steps ``n`` into a :class:`~memmaml.Plan`
(:mod:`memmaml.schedules._plans`): the states stored during the forward pass and the
operations of the backward (meta) pass. The engine executes any plan with one
mechanism; a schedule decides nothing else.

* :class:`Uniform` ``(checkpoint_steps)`` -- segments of ``k`` steps (Chen et
  al. 2016, "Training Deep Nets with Sublinear Memory Cost"; the predecessor
  torch_maml's scheme). :class:`SqrtUniform` picks ``k = ceil(sqrt(n))``.
* :class:`Binomial` ``(slots)`` -- Griewank's binomial checkpointing (Griewank
  1992, "Achieving logarithmic growth of temporal and spatial complexity in
  reverse automatic differentiation"; Griewank & Walther 2000, "Algorithm 799:
  Revolve"): at most ``slots`` stored states besides the input, one step's graph
  at a time, and the fewest step evaluations any schedule with that many stored
  states can achieve. ``Binomial(slots, segment=k)`` runs it over segments of
  ``k`` steps: ``k`` steps' graph at a time, ``ceil(n / k)`` reversals.
:class:`~memmaml.Auto` (:mod:`memmaml.schedules._auto`) chooses among them from measured
costs; :mod:`memmaml.schedules._parse` reads their text forms. Any of them can keep its
stored states in host memory (``offload=True``).
"""

from __future__ import annotations

import math

from .._checks import positive_int
from ._cost_model import Choice, StepCosts
from ._plans import Advance, Drop, Op, Plan, PlanStats, Reverse, check_plan

__all__ = ["Binomial", "Schedule", "SqrtUniform", "Uniform", "binomial_evaluations", "check_num_steps", "sqrt_steps"]


def check_num_steps(num_steps: int) -> int:
    return positive_int("the number of inner steps", num_steps)


class Schedule:
    """Base class: ``plan(num_steps)`` returns a :class:`~memmaml.Plan`.

    Attributes:
        needs_costs: ``True`` for a schedule that chooses from measured
            :class:`~memmaml.StepCosts` (:class:`Auto`); the engine then measures
            one step before the unroll and calls :meth:`choose` with them.
    """

    needs_costs = False

    def plan(self, num_steps: int) -> Plan:
        raise NotImplementedError

    def stats(self, num_steps: int) -> PlanStats:
        """The plan's costs, as :func:`~memmaml.check_plan` counts them."""
        return check_plan(self.plan(num_steps))

    def choose(
        self,
        num_steps: int,
        costs: StepCosts | None = None,
        *,
        offload: bool = False,
        host_room: int | None = None,
    ) -> Choice:
        """This schedule, with the cost model's predictions when ``costs`` are given.

        ``host_room``: the host memory offloaded states may pin, as the caller knows it (a schedule that
        chooses, :class:`~memmaml.Auto`, uses it when it was given no ``host_budget`` of its own).
        """
        return Choice.of(self, check_num_steps(num_steps), costs, offload=offload)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Uniform(Schedule):
    """Segments of ``checkpoint_steps`` steps (Chen et al. 2016; torch_maml's scheme).

    The forward pass keeps the state at the start of every segment; the backward
    pass replays one segment at a time with its graph. Memory is about
    ``ceil(n / k)`` states plus ``k`` steps' graphs; ``k ≈ sqrt(n * state / graph)``
    minimises it. Every step but those of the last segment is evaluated twice:
    once in the forward pass without a graph and once in the replay with it;
    the forward pass keeps the last segment's graph (``n - k`` replays for
    ``k`` dividing ``n``).

    Args:
        checkpoint_steps: steps per segment, a positive integer. A value of at
            least ``n`` keeps only the input state and replays everything in one
            segment.
    """

    def __init__(self, checkpoint_steps: int) -> None:
        self.checkpoint_steps = positive_int("checkpoint_steps", checkpoint_steps)

    def plan(self, num_steps: int) -> Plan:
        check_num_steps(num_steps)
        k = self.checkpoint_steps
        starts = tuple(range(0, num_steps, k))
        backward: list[Op] = []
        for start in reversed(starts):
            backward.append(Reverse(start, min(start + k, num_steps)))
            backward.append(Drop(start))
        return Plan(num_steps, starts, tuple(backward))

    def stats(self, num_steps: int) -> PlanStats:
        n = check_num_steps(num_steps)
        k = self.checkpoint_steps
        last_start = (n - 1) // k * k  # the last segment's graph is kept by the forward pass
        return PlanStats(-(-n // k), last_start, 0, n, min(n, k))

    def __repr__(self) -> str:
        return f"Uniform(checkpoint_steps={self.checkpoint_steps})"


def sqrt_steps(num_steps: int) -> int:
    """``ceil(sqrt(num_steps))``, the segment length that balances states and graphs."""
    check_num_steps(num_steps)
    return math.isqrt(num_steps - 1) + 1


class SqrtUniform(Schedule):
    """:class:`Uniform` with ``checkpoint_steps = ceil(sqrt(n))`` chosen for each ``n`` (text form ``"sqrt"``)."""

    def plan(self, num_steps: int) -> Plan:
        return Uniform(sqrt_steps(num_steps)).plan(num_steps)

    def stats(self, num_steps: int) -> PlanStats:
        return Uniform(sqrt_steps(num_steps)).stats(num_steps)


# ------------------------------------------------------------------------------ binomial
def _repetitions(num_steps: int, slots: int) -> int:
    """The least ``t`` with ``C(slots + t, slots) >= num_steps``."""
    t = 0
    while math.comb(slots + t, slots) < num_steps:
        t += 1
    return t


def _advance_cost(num_steps: int, slots: int) -> int:
    """Fewest no-graph step evaluations that reverse ``num_steps`` steps one at a time,
    from a stored first state, with ``slots`` more states storable at once.

    Griewank's closed form: ``t * d - C(s + t, s + 1)`` where ``t`` is the least integer
    with ``C(s + t, s) >= d``. (The test suite checks it against the recursion
    ``min_c c + cost(d - c, s - 1) + cost(c, s)``.)
    """
    if num_steps <= 1:
        return 0
    if slots < 1:
        raise ValueError("reversing more than one step needs at least one slot")
    t = _repetitions(num_steps, slots)
    return t * num_steps - math.comb(slots + t, slots + 1)


def binomial_evaluations(num_steps: int, slots: int) -> int:
    """Steps evaluated without a graph by :class:`Binomial` ``(slots)`` over ``num_steps`` steps.

    This counts the forward pass (``n - 1`` steps: it runs the last one with its
    graph, which the backward pass uses directly) plus every replay in the
    backward pass; each step is also evaluated once with its graph. Closed
    form: ``t * n - C(s + t, s + 1)`` with ``t`` the least integer such that
    ``C(s + t, s) >= n`` (Griewank & Walther 2000): the optimal reversal's
    first ``n - 1`` advances are the forward pass itself.
    """
    check_num_steps(num_steps)
    return _advance_cost(num_steps, slots)


def _binomial_split(distance: int, slots: int) -> int:
    """Where to place the next stored state to reverse ``distance`` steps optimally."""
    t = _repetitions(distance, slots)
    target = _advance_cost(distance, slots)
    candidates = (
        math.comb(slots + t - 1, slots),
        distance - math.comb(slots - 1 + t, slots - 1),
        distance - math.comb(slots + t - 2, slots - 1),
    )
    for c in candidates:
        if 0 < c < distance and c + _advance_cost(distance - c, slots - 1) + _advance_cost(c, slots) == target:
            return c
    for c in range(1, distance):  # not reached in the tested range; kept for safety
        if c + _advance_cost(distance - c, slots - 1) + _advance_cost(c, slots) == target:
            return c
    raise AssertionError("no optimal split found")


class Binomial(Schedule):
    """Binomial checkpointing (Revolve; Griewank & Walther 2000).

    Keeps at most ``slots`` stored states besides the input and reverses the
    inner loop one step at a time, so the backward pass holds ``slots + 1``
    states, the working state and a single step's graph. Among all schedules
    with that many stored states it evaluates the fewest steps: with ``t`` the
    least integer such that ``C(slots + t, slots) >= n``, it runs
    ``t * n - C(slots + t, slots + 1)`` steps without a graph (forward pass
    included; see :func:`binomial_evaluations`), i.e. each step at most ``t``
    times, plus once with its graph. ``t`` grows like
    ``log n`` for ``slots ∝ log n``; with 200 slots, 100,000 steps need ``t = 3``.

    With ``segment=k`` the same schedule runs over segments of ``k`` steps
    (the first one shorter when ``k`` does not divide ``n``): states are stored
    only at segment starts, and each reversal replays one segment with its
    graph and pulls the cotangent through it at once. The backward pass then
    holds ``k`` steps' graph instead of one, and makes ``ceil(n / k)``
    reversals instead of ``n``. Each reversal has a fixed cost besides its
    steps (an autograd call, restoring the replay context), so a short segment
    saves that cost ``n - ceil(n / k)`` times at the memory of ``k - 1`` more
    steps' graph; for ``k`` dividing ``n`` the steps evaluated without a graph
    are ``k * binomial_evaluations(n // k, slots)``.

    Args:
        slots: how many states may be stored at once besides the input (>= 1).
        segment: steps per reversed segment (>= 1; text form ``"binomial:SLOTS:SEGMENT"``).

    Example:
        >>> from memmaml import Binomial, binomial_evaluations, check_plan
        >>> check_plan(Binomial(slots=3).plan(20)).max_stored  # the input + 3
        4
        >>> binomial_evaluations(20, 3)
        45
        >>> check_plan(Binomial(slots=3, segment=2).plan(20)).max_segment
        2
    """

    def __init__(self, slots: int, *, segment: int = 1) -> None:
        self.slots = positive_int("slots", slots)
        self.segment = positive_int("segment", segment)

    def plan(self, num_steps: int) -> Plan:
        n = check_num_steps(num_steps)
        k = self.segment
        if k == 1:
            return _binomial_plan(n, self.slots)
        m = -(-n // k)
        macro = _binomial_plan(m, self.slots)
        short = m * k - n  # the first segment is this much shorter: it is the one evaluated most often

        def at(index: int) -> int:  # the step where segment ``index`` starts
            return max(0, index * k - short)

        def scaled(op: Op) -> Op:
            if isinstance(op, Drop):
                return Drop(at(op.index))
            return type(op)(at(op.start), at(op.stop))

        return Plan(n, tuple(at(i) for i in macro.forward_saves), tuple(scaled(op) for op in macro.backward))

    def stats(self, num_steps: int) -> PlanStats:
        n = check_num_steps(num_steps)
        k = self.segment
        if n % k:  # a shorter first segment: counted on the plan
            return check_plan(self.plan(n))
        m = n // k  # the forward pass runs all segments but the last without a graph
        evaluations = k * binomial_evaluations(m, self.slots)
        return PlanStats(1 + min(self.slots, m - 1), evaluations, evaluations - (n - k), n, k)

    def __repr__(self) -> str:
        more = f", segment={self.segment}" if self.segment > 1 else ""
        return f"Binomial(slots={self.slots}{more})"


def _binomial_plan(num_steps: int, slots: int) -> Plan:
    """Binomial checkpointing's plan reversing ``num_steps`` steps one at a time with ``slots`` stored states."""
    saves = [0]
    backward: list[Op] = []
    in_forward = True  # the first chain of advances is done by the forward pass itself
    stack: list[tuple] = [("reverse", 0, num_steps, slots)]
    while stack:
        task = stack.pop()
        if task[0] == "drop":
            backward.append(Drop(task[1]))
            continue
        _, start, stop, free = task
        if stop - start == 1:
            backward.append(Reverse(start, stop))
            in_forward = False
            continue
        mid = start + _binomial_split(stop - start, free)
        if in_forward:
            saves.append(mid)
        else:
            backward.append(Advance(start, mid))
        stack.append(("reverse", start, mid, free))
        stack.append(("drop", mid))
        stack.append(("reverse", mid, stop, free - 1))
    return Plan(num_steps, tuple(saves), tuple(backward))
