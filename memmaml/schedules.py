"""Checkpoint schedules: which inner-loop states to keep, and how to replay them.

A schedule turns the number of inner steps ``n`` into a :class:`Plan`: the
states stored during the forward pass and a list of operations for the
backward (meta) pass. The engine (:mod:`memmaml.engine`) executes any plan with
one mechanism; a schedule decides nothing else.

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

Schedules
    * :class:`Uniform` ``(checkpoint_steps)`` -- segments of ``k`` steps
      (Chen et al. 2016; the predecessor torch_maml's scheme).
    * :class:`Binomial` ``(slots)`` -- Griewank's binomial checkpointing
      (Griewank 1992, "Achieving logarithmic growth of temporal and spatial
      complexity in reverse automatic differentiation"; Griewank & Walther 2000,
      "Algorithm 799: Revolve"): at most ``slots`` stored states besides the
      input, one step's graph at a time, and the fewest step evaluations any
      schedule with that many stored states can achieve.
    * :class:`Auto` ``(budget)`` -- measures one step and picks the schedule
      with the least recomputation that fits a memory budget.

    Any of them can keep its stored states in host memory (``offload=True`` on
    :class:`~memmaml.GradientCheckpointMAML` / :func:`~memmaml.unroll`).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Union

__all__ = [
    "Advance",
    "Auto",
    "Binomial",
    "Drop",
    "Plan",
    "PlanStats",
    "Reverse",
    "Schedule",
    "StepCosts",
    "Uniform",
    "binomial_evaluations",
    "check_plan",
    "parse_schedule",
    "sqrt_steps",
]


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
        forward_steps: steps evaluated without a graph (forward pass plus ``Advance``).
        replayed_steps: steps evaluated without a graph during the backward pass only.
        reversed_steps: steps replayed with their graph (``n`` for a valid plan).
        max_segment: the longest ``Reverse``, i.e. how many steps' graphs are alive at once.
    """

    max_stored: int
    forward_steps: int
    replayed_steps: int
    reversed_steps: int
    max_segment: int


class Schedule:
    """Base class: ``plan(num_steps)`` returns a :class:`Plan`."""

    def plan(self, num_steps: int) -> Plan:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Uniform(Schedule):
    """Segments of ``checkpoint_steps`` steps (Chen et al. 2016; torch_maml's scheme).

    The forward pass keeps the state at the start of every segment; the backward
    pass replays one segment at a time with its graph. Memory is about
    ``ceil(n / k)`` states plus ``k`` steps' graphs; ``k ≈ sqrt(n * state / graph)``
    minimises it. Every step is evaluated twice: once in the forward pass
    without a graph and once in the replay with it.

    Args:
        checkpoint_steps: steps per segment, a positive integer. A value of at
            least ``n`` keeps only the input state and replays everything in one
            segment.
    """

    def __init__(self, checkpoint_steps: int) -> None:
        self.checkpoint_steps = _positive_int("checkpoint_steps", checkpoint_steps)

    def plan(self, num_steps: int) -> Plan:
        _check_num_steps(num_steps)
        k = self.checkpoint_steps
        starts = tuple(range(0, num_steps, k))
        backward: list[Op] = []
        for start in reversed(starts):
            backward.append(Reverse(start, min(start + k, num_steps)))
            backward.append(Drop(start))
        return Plan(num_steps, starts, tuple(backward))

    def __repr__(self) -> str:
        return f"Uniform(checkpoint_steps={self.checkpoint_steps})"


def sqrt_steps(num_steps: int) -> int:
    """``ceil(sqrt(num_steps))``, the segment length that balances states and graphs."""
    _check_num_steps(num_steps)
    return math.isqrt(num_steps - 1) + 1


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_num_steps(num_steps: int) -> None:
    _positive_int("the number of inner steps", num_steps)


def check_plan(plan: Plan) -> PlanStats:
    """Simulate ``plan`` and return its costs; raise ``ValueError`` if it is not valid.

    Valid means: every operation reads a stored state, the backward pass reverses
    each step exactly once from ``n`` down to 0, and ``Advance`` never runs past
    the state whose cotangent is pending.
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
    return PlanStats(max_stored, n + replayed, replayed, reversed_steps, max_segment)


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

    This counts the forward pass (``n`` steps) plus every replay in the backward
    pass; each step is also evaluated once more with its graph. Closed form:
    ``t * n - C(s + t, s + 1) + 1`` with ``t`` the least integer such that
    ``C(s + t, s) >= n`` (Griewank & Walther 2000): the first ``n - 1`` advances
    of the optimal reversal are done by the forward pass itself.
    """
    _check_num_steps(num_steps)
    return _advance_cost(num_steps, slots) + 1


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
    ``t * n - C(slots + t, slots + 1) + 1`` steps without a graph (forward
    pass included; see :func:`binomial_evaluations`), i.e. each step at most
    about ``t + 1`` times, plus once with its graph. ``t`` grows like
    ``log n`` for ``slots ∝ log n``; with 200 slots, 100,000 steps need ``t = 3``.

    Args:
        slots: how many states may be stored at once besides the input (>= 1).

    Example:
        >>> from memmaml.schedules import Binomial, check_plan
        >>> check_plan(Binomial(slots=3).plan(20)).max_stored  # the input + 3
        4
        >>> binomial_evaluations(20, 3)
        46
    """

    def __init__(self, slots: int) -> None:
        self.slots = _positive_int("slots", slots)

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

    def __repr__(self) -> str:
        return f"Binomial(slots={self.slots})"


# ---------------------------------------------------------------------------------- auto
class StepCosts(NamedTuple):
    """What one inner step costs, as measured by the engine for :class:`Auto`.

    Attributes:
        state_bytes: bytes of one stored state (parameters, optimizer state, buffers).
        graph_bytes: peak bytes one step adds while its graph is alive
            (forward activations and the differentiable gradient).
        nograph_seconds: time of one step without a graph.
        graph_seconds: time of one step with its graph plus its backward.
    """

    state_bytes: int
    graph_bytes: int
    nograph_seconds: float
    graph_seconds: float


class Choice(NamedTuple):
    """The schedule :class:`Auto` picked and what it predicts."""

    schedule: Schedule | None  # None: keep the whole graph (naive)
    stored_states: int
    evaluations: int  # no-graph step evaluations (forward pass included; 0 for naive)
    predicted_peak_bytes: int
    predicted_seconds: float

    def describe(self, num_steps: int) -> str:
        name = "naive (whole graph)" if self.schedule is None else repr(self.schedule)
        per_step = self.evaluations / num_steps
        return (f"{name} for {num_steps} steps: {self.stored_states} stored states, "
                f"{per_step:.2f} no-graph evaluations per step, predicted peak "
                f"{format_bytes(self.predicted_peak_bytes)}, predicted {self.predicted_seconds:.3g} s")


class Auto(Schedule):
    """Pick the schedule with the least predicted time that fits a memory budget.

    On first use the engine measures one inner step (:class:`StepCosts`: the
    bytes of a state, the peak bytes of one step's graph, and the time of a step
    with and without its graph). For ``n`` steps, with ``S`` the state and ``A``
    the graph bytes, the candidates and their predicted peaks are:

    * naive: ``n * A`` (no replays);
    * ``Uniform(k)``: ``(ceil(n / k) + 1) * S + k * A``;
    * ``Binomial(s)``: ``(s + 2) * S + A``
      (``+ 1`` for the input, ``+ 1`` for the working state).

    With ``offload=True`` stored states live in host memory and count as
    ``2 * S`` on the device whatever their number. Among the candidates whose
    peak fits ``budget``, the one with the least predicted time (no-graph
    evaluations times their cost, plus ``n`` graph steps) wins. The choice is
    kept in :attr:`choice` and :meth:`describe` explains it.

    Args:
        budget: bytes (int) or a size string such as ``"11GiB"`` or ``"500MB"``:
            the memory the unroll may add on top of what is allocated when it
            starts.

    Raises:
        ValueError: when even one step's graph and two states do not fit (the
            message says how much is needed).
    """

    needs_costs = True

    def __init__(self, budget: int | str) -> None:
        self.budget = parse_size(budget)
        self.costs: StepCosts | None = None
        self.choice: Choice | None = None
        self._num_steps: int | None = None
        self.offload = False

    def choose(self, num_steps: int, costs: StepCosts, *, offload: bool = False) -> Choice:
        """Pick the schedule for ``num_steps`` steps given measured ``costs``."""
        _check_num_steps(num_steps)
        self.costs, self.offload, self._num_steps = costs, offload, num_steps
        S, A = costs.state_bytes, costs.graph_bytes
        n = num_steps
        minimum = A + 2 * S
        if self.budget < minimum:
            raise ValueError(
                f"memory budget {format_bytes(self.budget)} is smaller than one inner step's graph "
                f"({format_bytes(A)}) plus two states ({format_bytes(2 * S)}): at least "
                f"{format_bytes(minimum)} is needed")

        def seconds(evaluations: int) -> float:
            return evaluations * costs.nograph_seconds + n * costs.graph_seconds

        def stored(count: int) -> int:
            return 2 * S if offload else count * S

        options: list[Choice] = [Choice(None, 0, 0, n * A, n * costs.graph_seconds)]
        # uniform segments: k from 1 to n; the cost in time is the same n replays for every k
        best_uniform = None
        for k in sorted({1, n} | {max(1, round(n / m)) for m in range(1, min(n, 2000) + 1)}):
            peak = stored(-(-n // k) + 1) + k * A
            if peak <= self.budget and (best_uniform is None or peak < best_uniform.predicted_peak_bytes):
                best_uniform = Choice(Uniform(k), -(-n // k), n, peak, seconds(n))
        if best_uniform is not None:
            options.append(best_uniform)
        # binomial: the most slots that fit (more slots never cost more evaluations)
        room = self.budget - A - 2 * S
        slots = min(max(n - 1, 1), room // S if not offload else max(n - 1, 1))
        if slots >= 1:
            evaluations = binomial_evaluations(n, int(slots))
            options.append(Choice(Binomial(int(slots)), int(slots), evaluations, stored(int(slots) + 2) + A,
                                  seconds(evaluations)))
        fitting = [o for o in options if o.predicted_peak_bytes <= self.budget]
        self.choice = min(fitting, key=lambda o: (o.predicted_seconds, o.predicted_peak_bytes))
        return self.choice

    def plan(self, num_steps: int) -> Plan:
        if self.choice is None or self._num_steps != num_steps or self.choice.schedule is None:
            raise RuntimeError("Auto.plan needs a choice for this number of steps: the engine calls "
                               "Auto.choose(num_steps, costs) first")
        return self.choice.schedule.plan(num_steps)

    def describe(self) -> str:
        """A readable summary of the last choice."""
        if self.choice is None or self._num_steps is None:
            return f"Auto(budget={format_bytes(self.budget)}): no choice made yet"
        return f"Auto(budget={format_bytes(self.budget)}) chose " + self.choice.describe(self._num_steps)

    def __repr__(self) -> str:
        return f"Auto(budget={format_bytes(self.budget)!r})"


# ------------------------------------------------------------------------------- parsing
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string like ``"11GiB"``, ``"500 MB"``, ``"4g"`` (k/M/G are powers of 1000).

    Raises:
        ValueError: for anything else, naming the value.
    """
    if isinstance(size, bool):
        raise ValueError(f"a memory size must be bytes or a string like '11GiB', got {size!r}")
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"a memory size must be positive, got {size}")
        return size
    if isinstance(size, str):
        text = size.strip().lower().replace(" ", "")
        number = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(number):]
        try:
            value = float(number)
        except ValueError:
            value = None
        if value is not None and unit in _UNITS and math.isfinite(value):
            if value <= 0:
                raise ValueError(f"a memory size must be positive, got {size!r}")
            return int(value * _UNITS[unit])
    raise ValueError(f"cannot read {size!r} as a memory size; use bytes or a string like '11GiB', '500MB', '4G'")


def format_bytes(num: float) -> str:
    """``1536 -> '1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num) < 1024 or unit == "TiB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1024
    raise AssertionError


def parse_schedule(spec: str | Schedule) -> Schedule:
    """A schedule from a short text: ``"uniform:10"``, ``"sqrt"`` (see below), ``"binomial:20"``, ``"auto:11GiB"``.

    ``"sqrt"`` returns a :class:`Uniform` whose segment length is chosen per
    call as ``ceil(sqrt(n))``. A :class:`Schedule` is returned unchanged.

    Raises:
        ValueError: an unknown name or a malformed argument, with the accepted forms.
    """
    if isinstance(spec, Schedule):
        return spec
    forms = "'uniform:K', 'sqrt', 'binomial:SLOTS', 'auto:BUDGET' (e.g. 'auto:11GiB')"
    if not isinstance(spec, str):
        raise TypeError(f"a schedule must be a Schedule or a string ({forms}), got {type(spec).__name__}")
    name, _, arg = spec.strip().partition(":")
    name = name.lower()
    try:
        if name == "uniform" and arg:
            return Uniform(int(arg))
        if name == "sqrt" and not arg:
            return SqrtUniform()
        if name == "binomial" and arg:
            return Binomial(int(arg))
        if name == "auto" and arg:
            return Auto(arg)
    except ValueError as err:
        raise ValueError(f"bad schedule {spec!r}: {err}") from None
    raise ValueError(f"unknown schedule {spec!r}; use one of {forms}")


class SqrtUniform(Schedule):
    """:class:`Uniform` with ``checkpoint_steps = ceil(sqrt(n))`` chosen for each ``n``."""

    def plan(self, num_steps: int) -> Plan:
        return Uniform(sqrt_steps(num_steps)).plan(num_steps)

    def __repr__(self) -> str:
        return "Uniform(checkpoint_steps=ceil(sqrt(n)))"
