"""``Auto``: the schedule with the least predicted time that fits a memory budget, chosen from measured costs.

A pure function of ``n``, measured :class:`~memmaml.StepCosts` and the budget
(the cost model predicts every candidate), returning a
:class:`~memmaml.Choice` whose schedule is concrete.
"""

from __future__ import annotations

import math

from .._host import default_host_budget
from .._units import format_bytes, parse_size
from ._cost_model import Choice, StepCosts, predicted_host_bytes, predicted_peak_bytes
from ._plans import Plan, PlanStats
from ._schedules import Binomial, Schedule, Uniform, check_num_steps

__all__ = ["Auto", "best_uniform", "binomial_slots"]


def best_uniform(
    num_steps: int, costs: StepCosts, *, offload: bool = False, host_budget: int | float = math.inf
) -> Uniform:
    """The segment length with the least predicted peak for ``num_steps`` steps (ties: the longer segment).

    With ``offload``, only segment lengths whose stored states fit ``host_budget`` bytes of host memory are
    considered (the longest segment, one stored state, if none does).
    """
    n = check_num_steps(num_steps)
    candidates = sorted({1, n} | {max(1, round(n / m)) for m in range(1, min(n, 2000) + 1)}, reverse=True)
    fitting = [
        k for k in candidates if predicted_host_bytes(Uniform(k).stats(n), n, costs, offload=offload) <= host_budget
    ]
    return min(
        (Uniform(k) for k in fitting or [n]),
        key=lambda s: predicted_peak_bytes(s.stats(n), n, costs, offload=offload),
    )


def binomial_slots(
    num_steps: int, costs: StepCosts, budget: int, *, offload: bool = False, host_budget: int | float = math.inf
) -> int:
    """The most slots worth having that fit ``budget`` (0 if none): more slots never cost more replays,
    and more than ``n - 1`` are never used. With ``offload`` the slots live in host memory and must fit
    ``host_budget`` instead, beside the input state."""
    useful = max(check_num_steps(num_steps) - 1, 1)
    S, A = costs.state_bytes, costs.graph_bytes
    if offload:
        room = useful if host_budget == math.inf else host_budget // max(costs.host_state_bytes, 1) - 1
    else:
        room = (budget - A - 2 * S) // max(S, 1)
    return int(max(0, min(useful, room)))


_FAMILIES = ("naive", "uniform", "binomial")


class Auto(Schedule):
    """The schedule with the least predicted time that fits a memory budget.

    :meth:`choose` is a pure function of ``n``, measured
    :class:`~memmaml.StepCosts` (the bytes of a state ``S`` and of one step's
    graph ``A``, the time of a step with and without it) and the budget. The
    candidates are naive (peak ``n * A``), the :class:`Uniform` segment length
    with the least peak (``(ceil(n / k) + 1) * S + k * A``) and
    :class:`Binomial` with the most slots that fit (``(slots + 2) * S + A``);
    with ``offload=True`` stored states live in host memory and count as
    ``3 * S`` on the device whatever their number (the cost model),
    and the ``max_stored * S`` bytes they pin must fit ``host_budget``. Among
    those that fit, the least predicted time wins.

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
        host_budget: with ``offload=True``, the host memory the stored states
            may pin: bytes or a size string. ``None`` (default): 80% of the
            host's available memory when :meth:`choose` runs
            (:func:`~memmaml.default_host_budget`), leaving the rest to the
            process itself (its batches, the pinned staging of the copies).

    Example:
        >>> from memmaml import Auto, StepCosts
        >>> costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
        >>> Auto(10_000).choose(1000, costs).describe()  # doctest: +NORMALIZE_WHITESPACE
        'Auto(budget=9.8 KiB) chose Binomial(slots=78) for 1000 steps: 78 stored states,
         1.92 no-graph evaluations per step, predicted peak 9.8 KiB, predicted 4.92e+03 s'
    """

    needs_costs = True

    def __init__(
        self,
        budget: int | str | None,
        *,
        among: tuple[str, ...] = _FAMILIES,
        host_budget: int | str | None = None,
    ) -> None:
        among = tuple(among)
        if not among or any(family not in _FAMILIES for family in among):
            raise ValueError(f"among must name some of {_FAMILIES}, got {among!r}")
        if budget is None and among != ("uniform",):
            raise ValueError(f"Auto(among={among!r}) needs a memory budget")
        self.budget = None if budget is None else parse_size(budget)
        self.host_budget = None if host_budget is None else parse_size(host_budget)
        self.among = among

    def plan(self, num_steps: int) -> Plan:
        raise TypeError(
            f"{self!r} is not a plan: it chooses one from measured step costs; use "
            "auto.choose(num_steps, costs).schedule.plan(num_steps)"
        )

    def stats(self, num_steps: int) -> PlanStats:
        return self.plan(num_steps)  # raises

    def choose(
        self,
        num_steps: int,
        costs: StepCosts | None = None,
        *,
        offload: bool = False,
        host_room: int | None = None,
    ) -> Choice:
        """The fastest candidate that fits the budget.

        With ``offload``, the stored states must fit this Auto's ``host_budget``;
        without one, ``host_room`` (what the caller knows the host can pin; the
        engine adds the pinned blocks its own allocator holds for reuse), or else
        :func:`~memmaml.default_host_budget`.

        Raises:
            ValueError: ``costs`` missing, or the budget below what the smallest
                candidate needs (the message says how much).
        """
        n = check_num_steps(num_steps)
        if costs is None:
            raise ValueError(f"{self!r} chooses from measured step costs: pass costs=measure_step_costs(...)")
        S, A = costs.state_bytes, costs.graph_bytes
        budget = math.inf if self.budget is None else self.budget
        host_budget = self._host_budget(host_room) if offload else math.inf
        chooser = repr(self).replace("'", "")
        candidates: list[Schedule | None] = []
        if "naive" in self.among:
            candidates.append(None)
        if "uniform" in self.among:
            candidates.append(best_uniform(n, costs, offload=offload, host_budget=host_budget))
        if "binomial" in self.among:
            slots = binomial_slots(n, costs, int(min(budget, 2**62)), offload=offload, host_budget=host_budget)
            if slots >= 1:
                candidates.append(Binomial(slots))
        choices = [Choice.of(s, n, costs, offload=offload, chooser=chooser) for s in candidates]
        fitting = [c for c in choices if c.predicted_peak_bytes <= budget and c.predicted_host_bytes <= host_budget]
        if not fitting:
            if offload and n > 1 and predicted_host_bytes(Binomial(1).stats(n), n, costs, offload=True) > host_budget:
                H = costs.host_state_bytes
                raise ValueError(
                    f"host budget {format_bytes(host_budget)} is smaller than what offloading {n} steps needs: "
                    f"at least {format_bytes(2 * H)} (two stored states of {format_bytes(H)} in host memory)"
                )
            smallest = min((c.predicted_peak_bytes for c in choices), default=A + 2 * S)
            if "binomial" in self.among and n > 1:
                smallest = min(smallest, predicted_peak_bytes(Binomial(1).stats(n), n, costs, offload=offload))
            raise ValueError(
                f"memory budget {format_bytes(budget)} is smaller than what {n} steps need with "
                f"{' or '.join(self.among)}: at least {format_bytes(smallest)} (one inner step's graph is "
                f"{format_bytes(A)}, one state {format_bytes(S)})"
            )
        return min(fitting, key=lambda c: (c.predicted_seconds, c.predicted_peak_bytes))

    def _host_budget(self, host_room: int | None) -> int:
        if self.host_budget is not None:
            return self.host_budget
        budget = default_host_budget() if host_room is None else host_room
        if budget is None:
            raise ValueError(
                f"{self!r} cannot tell how much host memory offloaded states may pin: this system does not say "
                "how much it has available; pass host_budget= (bytes or a size such as '16GiB')"
            )
        return budget

    def __repr__(self) -> str:
        budget = "None" if self.budget is None else repr(format_bytes(self.budget))
        among = "" if self.among == _FAMILIES else f", among={self.among!r}"
        host = "" if self.host_budget is None else f", host_budget={format_bytes(self.host_budget)!r}"
        return f"Auto(budget={budget}{among}{host})"
