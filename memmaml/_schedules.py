"""Checkpoint schedules: which inner-loop states to keep, and how to replay them.

A schedule turns the number of inner steps ``n`` into a :class:`~memmaml.Plan`
(:mod:`memmaml._plans`): the states stored during the forward pass and the
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
  states can achieve.
* :class:`Auto` ``(budget)`` -- not a plan but a choice: a pure function of
  ``n``, measured :class:`~memmaml.StepCosts` and the budget that returns the
  concrete schedule (naive, uniform or binomial) with the least predicted time
  that fits (:mod:`memmaml._cost_model`).

Any of them can keep its stored states in host memory (``offload=True``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ._checks import positive_int
from ._cost_model import Choice, StepCosts, predicted_peak_bytes
from ._plans import Advance, Drop, Op, Plan, PlanStats, Reverse, check_plan
from ._units import format_bytes, parse_size

__all__ = ["Auto", "Binomial", "EngineSpec", "Schedule", "SqrtUniform", "Uniform", "best_uniform",
           "binomial_evaluations", "binomial_slots", "parse_engine", "parse_schedule", "sqrt_steps"]


def _check_num_steps(num_steps: int) -> int:
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

    def choose(self, num_steps: int, costs: StepCosts | None = None, *, offload: bool = False) -> Choice:
        """This schedule, with the cost model's predictions when ``costs`` are given."""
        return Choice.of(self, _check_num_steps(num_steps), costs, offload=offload)

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
        _check_num_steps(num_steps)
        k = self.checkpoint_steps
        starts = tuple(range(0, num_steps, k))
        backward: list[Op] = []
        for start in reversed(starts):
            backward.append(Reverse(start, min(start + k, num_steps)))
            backward.append(Drop(start))
        return Plan(num_steps, starts, tuple(backward))

    def stats(self, num_steps: int) -> PlanStats:
        n = _check_num_steps(num_steps)
        k = self.checkpoint_steps
        last_start = (n - 1) // k * k  # the last segment's graph is kept by the forward pass
        return PlanStats(-(-n // k), last_start, 0, n, min(n, k))

    def __repr__(self) -> str:
        return f"Uniform(checkpoint_steps={self.checkpoint_steps})"


def sqrt_steps(num_steps: int) -> int:
    """``ceil(sqrt(num_steps))``, the segment length that balances states and graphs."""
    _check_num_steps(num_steps)
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
    _check_num_steps(num_steps)
    return _advance_cost(num_steps, slots)


def _binomial_split(distance: int, slots: int) -> int:
    """Where to place the next stored state to reverse ``distance`` steps optimally."""
    t = _repetitions(distance, slots)
    target = _advance_cost(distance, slots)
    candidates = (math.comb(slots + t - 1, slots), distance - math.comb(slots - 1 + t, slots - 1),
                  distance - math.comb(slots + t - 2, slots - 1))
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

    Args:
        slots: how many states may be stored at once besides the input (>= 1).

    Example:
        >>> from memmaml import Binomial, binomial_evaluations, check_plan
        >>> check_plan(Binomial(slots=3).plan(20)).max_stored  # the input + 3
        4
        >>> binomial_evaluations(20, 3)
        45
    """

    def __init__(self, slots: int) -> None:
        self.slots = positive_int("slots", slots)

    def plan(self, num_steps: int) -> Plan:
        _check_num_steps(num_steps)
        saves = [0]
        backward: list[Op] = []
        in_forward = True  # the first chain of advances is done by the forward pass itself
        stack: list[tuple] = [("reverse", 0, num_steps, self.slots)]
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

    def stats(self, num_steps: int) -> PlanStats:
        n = _check_num_steps(num_steps)
        evaluations = binomial_evaluations(n, self.slots)
        return PlanStats(1 + min(self.slots, n - 1), evaluations, evaluations - (n - 1), n, 1)

    def __repr__(self) -> str:
        return f"Binomial(slots={self.slots})"


# ---------------------------------------------------------------------------------- auto
def best_uniform(num_steps: int, costs: StepCosts, *, offload: bool = False) -> Uniform:
    """The segment length with the least predicted peak for ``num_steps`` steps (ties: the longer segment)."""
    n = _check_num_steps(num_steps)
    candidates = sorted({1, n} | {max(1, round(n / m)) for m in range(1, min(n, 2000) + 1)}, reverse=True)
    return min((Uniform(k) for k in candidates),
               key=lambda s: predicted_peak_bytes(s.stats(n), n, costs, offload=offload))


def binomial_slots(num_steps: int, costs: StepCosts, budget: int, *, offload: bool = False) -> int:
    """The most slots worth having that fit ``budget`` (0 if none): more slots never cost more replays,
    and more than ``n - 1`` are never used."""
    useful = max(_check_num_steps(num_steps) - 1, 1)
    if offload:
        return useful
    S, A = costs.state_bytes, costs.graph_bytes
    return int(max(0, min(useful, (budget - A - 2 * S) // S)))


_FAMILIES = ("naive", "uniform", "binomial")


class Auto(Schedule):
    """The schedule with the least predicted time that fits a memory budget.

    :meth:`choose` is a pure function of ``n``, measured
    :class:`~memmaml.StepCosts` (the bytes of a state ``S`` and of one step's
    graph ``A``, the time of a step with and without it) and the budget. The
    candidates are naive (peak ``n * A``), the :class:`Uniform` segment length
    with the least peak (``(ceil(n / k) + 1) * S + k * A``) and
    :class:`Binomial` with the most slots that fit (``(slots + 2) * S + A``);
    with ``offload=True`` stored states count as ``2 * S`` whatever their
    number (:mod:`memmaml._cost_model`). Among those that fit, the least
    predicted time wins.

    Given as a schedule to :func:`~memmaml.unroll` or :class:`~memmaml.MAML`,
    the engine measures one step first (:func:`~memmaml.measure_step_costs`)
    and runs the concrete schedule chosen; ``MAML.last_choice.describe()``
    says which.

    Args:
        budget: bytes (int) or a size string such as ``"11GiB"`` or ``"500MB"``:
            the memory the unroll may add on top of what is allocated when it
            starts. ``None`` only with ``among=("uniform",)``: the segment
            length with the least peak, whatever it is.
        among: the families to choose from (``"naive"``, ``"uniform"``,
            ``"binomial"``); text forms ``"uniform:best"`` and
            ``"binomial:auto"`` (:func:`parse_engine`) choose within one.

    Example:
        >>> from memmaml import Auto, StepCosts
        >>> costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
        >>> Auto(10_000).choose(1000, costs).describe()  # doctest: +NORMALIZE_WHITESPACE
        'Auto(budget=9.8 KiB) chose Binomial(slots=78) for 1000 steps: 78 stored states,
         1.92 no-graph evaluations per step, predicted peak 9.8 KiB, predicted 4.92e+03 s'
    """

    needs_costs = True

    def __init__(self, budget: int | str | None, *, among: tuple[str, ...] = _FAMILIES) -> None:
        among = tuple(among)
        if not among or any(family not in _FAMILIES for family in among):
            raise ValueError(f"among must name some of {_FAMILIES}, got {among!r}")
        if budget is None and among != ("uniform",):
            raise ValueError(f"Auto(among={among!r}) needs a memory budget")
        self.budget = None if budget is None else parse_size(budget)
        self.among = among

    def plan(self, num_steps: int) -> Plan:
        raise TypeError(f"{self!r} is not a plan: it chooses one from measured step costs; use "
                        "auto.choose(num_steps, costs).schedule.plan(num_steps)")

    def stats(self, num_steps: int) -> PlanStats:
        return self.plan(num_steps)  # raises

    def choose(self, num_steps: int, costs: StepCosts | None = None, *, offload: bool = False) -> Choice:
        """The fastest candidate that fits the budget.

        Raises:
            ValueError: ``costs`` missing, or the budget below what the smallest
                candidate needs (the message says how much).
        """
        n = _check_num_steps(num_steps)
        if costs is None:
            raise ValueError(f"{self!r} chooses from measured step costs: pass costs=measure_step_costs(...)")
        S, A = costs.state_bytes, costs.graph_bytes
        budget = math.inf if self.budget is None else self.budget
        candidates: list[Schedule | None] = []
        if "naive" in self.among:
            candidates.append(None)
        if "uniform" in self.among:
            candidates.append(best_uniform(n, costs, offload=offload))
        if "binomial" in self.among:
            slots = binomial_slots(n, costs, int(min(budget, 2**62)), offload=offload)
            if slots >= 1:
                candidates.append(Binomial(slots))
        choices = [Choice.of(s, n, costs, offload=offload, chooser=repr(self).replace("'", "")) for s in candidates]
        fitting = [c for c in choices if c.predicted_peak_bytes <= budget]
        if not fitting:
            smallest = min((c.predicted_peak_bytes for c in choices), default=A + 2 * S)
            if "binomial" in self.among and n > 1:
                smallest = min(smallest, predicted_peak_bytes(Binomial(1).stats(n), n, costs, offload=offload))
            raise ValueError(
                f"memory budget {format_bytes(budget)} is smaller than what {n} steps need with "
                f"{' or '.join(self.among)}: at least {format_bytes(smallest)} (one inner step's graph is "
                f"{format_bytes(A)}, one state {format_bytes(S)})")
        return min(fitting, key=lambda c: (c.predicted_seconds, c.predicted_peak_bytes))

    def __repr__(self) -> str:
        budget = "None" if self.budget is None else repr(format_bytes(self.budget))
        among = "" if self.among == _FAMILIES else f", among={self.among!r}"
        return f"Auto(budget={budget}{among})"


# ------------------------------------------------------------------------------- parsing
_FORMS = "'uniform:K', 'sqrt', 'binomial:SLOTS', 'auto:BUDGET' (e.g. 'auto:11GiB')"


def parse_schedule(spec: str | Schedule) -> Schedule:
    """A schedule from a short text: ``"uniform:10"``, ``"sqrt"``, ``"binomial:20"``, ``"auto:11GiB"``.

    ``"sqrt"`` is :class:`SqrtUniform`. A :class:`Schedule` is returned unchanged.

    Raises:
        TypeError: neither a schedule nor a string.
        ValueError: an unknown name or a malformed argument, with the accepted forms.

    Example:
        >>> parse_schedule("binomial:20"), parse_schedule("auto:11GiB")
        (Binomial(slots=20), Auto(budget='11.0 GiB'))
    """
    if isinstance(spec, Schedule):
        return spec
    if not isinstance(spec, str):
        raise TypeError(f"a schedule must be a Schedule or a string ({_FORMS}), got {type(spec).__name__}")
    name, _, arg = spec.strip().partition(":")
    makers = {"uniform": lambda a: Uniform(int(a)), "binomial": lambda a: Binomial(int(a)), "auto": Auto}
    name = name.lower()
    try:
        if name == "sqrt" and not arg:
            return SqrtUniform()
        if name in makers and arg:
            return makers[name](arg)
    except ValueError as err:
        raise ValueError(f"bad schedule {spec!r}: {err}") from None
    raise ValueError(f"unknown schedule {spec!r}; use one of {_FORMS}")


class EngineSpec(NamedTuple):
    """What runs an unroll: a schedule (``None``: naive) and whether stored states go to host memory."""

    schedule: Schedule | None
    offload: bool


_ENGINE_FORMS = f"'naive', {_FORMS}, 'uniform:best', 'binomial:auto', each but 'naive' optionally + '+offload'"


def parse_engine(spec: str, *, budget: int | str | None = None) -> EngineSpec:
    """The engine a text names, as command lines write it.

    Forms: ``"naive"``; every :func:`parse_schedule` form; ``"uniform:best"``
    (the segment length with the least peak for each ``n``) and
    ``"binomial:auto"`` (the most slots that fit ``budget``), which are
    :class:`Auto` restricted to one family; any of those followed by
    ``"+offload"``.

    Raises:
        ValueError: an unknown form (listing the accepted ones), or
            ``"binomial:auto"`` without a budget.

    Example:
        >>> parse_engine("binomial:auto+offload", budget="11GiB")
        EngineSpec(schedule=Auto(budget='11.0 GiB', among=('binomial',)), offload=True)
        >>> parse_engine("naive")
        EngineSpec(schedule=None, offload=False)
    """
    if not isinstance(spec, str):
        raise TypeError(f"an engine must be given as text ({_ENGINE_FORMS}), got {type(spec).__name__}")
    text = spec.strip()
    offload = text.lower().endswith("+offload")
    if offload:
        text = text[: -len("+offload")].strip()
    name = text.lower()
    if name == "naive":
        if offload:
            raise ValueError(f"bad engine {spec!r}: the naive unroll stores no states to offload")
        return EngineSpec(None, False)
    if name == "uniform:best":
        return EngineSpec(Auto(budget, among=("uniform",)), offload)
    if name == "binomial:auto":
        if budget is None:
            raise ValueError(f"{spec!r} chooses its slots for a memory budget: give one (e.g. --budget 11GiB)")
        return EngineSpec(Auto(budget, among=("binomial",)), offload)
    try:
        return EngineSpec(parse_schedule(text), offload)
    except ValueError as err:
        if "unknown schedule" in str(err):
            raise ValueError(f"unknown engine {spec!r}; use one of {_ENGINE_FORMS}") from None
        raise
