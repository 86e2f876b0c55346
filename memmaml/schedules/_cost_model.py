"""What a schedule costs: one peak-memory model, one time model, one search for the longest unroll.

Every prediction memmaml makes -- :class:`~memmaml.Auto`'s choice, the budget
answers of ``scripts/compare_memory.py`` -- comes from here, from measured
:class:`StepCosts` and a plan's :class:`~memmaml.PlanStats`:

* peak bytes: naive ``n * A``; checkpointed ``(max_stored + 1) * S +
  max_segment * A`` (the stored states, the working state and the graphs of
  the longest replayed segment); with ``offload=True`` the stored states live
  in host memory and ``3 * S + max_segment * A`` stays on the device (the
  working state, the state a replay started from, and the next one, copied
  back while the current segment is reversed: ``prefetch``, what the engine
  does on CUDA); ``2 * S`` where there is nothing to overlap and the engine
  does not copy ahead (``prefetch=False``: a CPU run);
* host bytes: with ``offload=True``, ``max_stored`` states pinned in host
  memory, each as CUDA's allocator rounds it (``StepCosts.pinned_state_bytes``;
  ``S`` on a CPU), 0 otherwise;
* seconds: ``forward_steps * t_nograph + n * t_graph`` (every step is evaluated
  once with its graph; the forward pass and the replays without one).

``S`` is one state (parameters, optimizer state, buffers), ``A`` the peak bytes
one step adds while its graph is alive, ``base`` what the run holds besides
(model, batches, gradients), 0 unless given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .._units import format_bytes
from ._plans import PlanStats

__all__ = [
    "Choice",
    "StepCosts",
    "longest_steps",
    "pinned_bytes",
    "predicted_host_bytes",
    "predicted_peak_bytes",
    "predicted_seconds",
]


class StepCosts(NamedTuple):
    """What one inner step costs, as measured by :func:`~memmaml.measure_step_costs`.

    Attributes:
        state_bytes: bytes of one stored state (parameters, optimizer state, buffers).
        graph_bytes: peak bytes one step adds while its graph is alive
            (forward activations and the differentiable gradient).
        nograph_seconds: time of one step without a graph.
        graph_seconds: time of one step with its graph plus its backward.
        pinned_state_bytes: host bytes one offloaded state pins, where that is
            not ``state_bytes``: CUDA's pinned-memory allocator rounds every
            allocation up to a power of two (:func:`pinned_bytes`), so a state of
            many tensors pins up to twice its size. ``None``: ``state_bytes``
            (a CPU run, whose host copies are exact).
    """

    state_bytes: int
    graph_bytes: int
    nograph_seconds: float
    graph_seconds: float
    pinned_state_bytes: int | None = None

    @property
    def host_state_bytes(self) -> int:
        """The host bytes one offloaded state takes (:attr:`pinned_state_bytes`, else :attr:`state_bytes`)."""
        return self.state_bytes if self.pinned_state_bytes is None else self.pinned_state_bytes


def pinned_bytes(nbytes: int) -> int:
    """What CUDA's caching host allocator reserves for a pinned tensor of ``nbytes``: the next power of two
    (its default rounding; ``PYTORCH_CUDA_ALLOC_CONF``'s pinned round threshold can turn it off).

    Example:
        >>> pinned_bytes(44_000_000), pinned_bytes(4096), pinned_bytes(0)
        (67108864, 4096, 0)
    """
    return 0 if nbytes <= 0 else 1 << (int(nbytes) - 1).bit_length()


def predicted_peak_bytes(
    stats: PlanStats | None,
    num_steps: int,
    costs: StepCosts,
    *,
    offload: bool = False,
    base: int = 0,
    prefetch: bool = True,
) -> int:
    """Peak bytes of an unroll: ``stats`` of its plan, or ``None`` for the naive engine.

    With ``offload``, ``prefetch`` counts the state the engine copies back ahead of the replay that needs it
    (CUDA; pass ``False`` to predict a CPU run, where it does not).

    Example:
        >>> costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
        >>> predicted_peak_bytes(None, 10, costs)  # naive: ten graphs
        20000
        >>> predicted_peak_bytes(PlanStats(5, 10, 0, 10, 2), 10, costs)  # 5 stored + 1 working state, 2 graphs
        4600
        >>> predicted_peak_bytes(PlanStats(5, 10, 0, 10, 2), 10, costs, offload=True)  # 3 states on the device
        4300
    """
    S, A = costs.state_bytes, costs.graph_bytes
    if stats is None:
        return base + num_steps * A
    stored = (3 if prefetch else 2) * S if offload else (stats.max_stored + 1) * S
    return base + stored + stats.max_segment * A


def predicted_host_bytes(stats: PlanStats | None, num_steps: int, costs: StepCosts, *, offload: bool = False) -> int:
    """Host bytes an unroll pins for its stored states: ``max_stored`` states of
    :attr:`StepCosts.host_state_bytes` with ``offload``, else 0.

    Example:
        >>> costs = StepCosts(state_bytes=100, graph_bytes=2_000, nograph_seconds=1.0, graph_seconds=3.0)
        >>> predicted_host_bytes(PlanStats(5, 10, 0, 10, 2), 10, costs, offload=True)
        500
    """
    if stats is None or not offload:
        return 0
    return stats.max_stored * costs.host_state_bytes


def predicted_seconds(stats: PlanStats | None, num_steps: int, costs: StepCosts) -> float:
    """Seconds of an unroll's steps (forward and backward), ``stats=None`` for the naive engine."""
    evaluations = 0 if stats is None else stats.forward_steps
    return evaluations * costs.nograph_seconds + num_steps * costs.graph_seconds


class Choice(NamedTuple):
    """A concrete schedule for ``num_steps`` steps and what the cost model predicts for it.

    Attributes:
        schedule: the schedule (``None``: the naive engine, which keeps every graph).
        num_steps: the number of inner steps it was chosen for.
        stats: its plan's costs (``None`` for naive).
        offload: whether stored states live in host memory.
        predicted_peak_bytes: device bytes the unroll adds (``None`` without measured costs).
        predicted_seconds: its steps' time (``None`` without measured costs).
        chooser: what made the choice (``"Auto(budget=11.0 GiB)"``), or ``""`` if it was given.
        predicted_host_bytes: host bytes pinned for offloaded states (0 without
            offload, ``None`` without measured costs).
    """

    schedule: Any
    num_steps: int
    stats: PlanStats | None
    offload: bool
    predicted_peak_bytes: int | None
    predicted_seconds: float | None
    chooser: str = ""
    predicted_host_bytes: int | None = None

    @classmethod
    def of(
        cls, schedule: Any, num_steps: int, costs: StepCosts | None = None, *, offload: bool = False, chooser: str = ""
    ) -> Choice:
        """The choice of ``schedule`` (``None`` for naive), with predictions when ``costs`` are given."""
        stats = None if schedule is None else schedule.stats(num_steps)
        offload = offload and schedule is not None
        if costs is None:
            return cls(schedule, num_steps, stats, offload, None, None, chooser)
        return cls(
            schedule,
            num_steps,
            stats,
            offload,
            predicted_peak_bytes(stats, num_steps, costs, offload=offload),
            predicted_seconds(stats, num_steps, costs),
            chooser,
            predicted_host_bytes(stats, num_steps, costs, offload=offload),
        )

    @property
    def stored_states(self) -> int:
        """States stored at once besides the input (0 for naive)."""
        return 0 if self.stats is None else self.stats.max_stored - 1

    @property
    def evaluations(self) -> int:
        """Steps evaluated without a graph, the forward pass included (0 for naive)."""
        return 0 if self.stats is None else self.stats.forward_steps

    def describe(self) -> str:
        """One line: the schedule, its stored states and replays, and the predictions."""
        name = "naive (whole graph)" if self.schedule is None else repr(self.schedule)
        text = f"{self.chooser} chose {name}" if self.chooser else name
        text += (
            f" for {self.num_steps} steps: {self.stored_states} stored states"
            f"{' in host memory' if self.offload else ''}, "
            f"{self.evaluations / self.num_steps:.2f} no-graph evaluations per step"
        )
        if self.predicted_peak_bytes is not None:
            text += f", predicted peak {format_bytes(self.predicted_peak_bytes)}"
            if self.offload:
                text += f" on the device and {format_bytes(self.predicted_host_bytes)} pinned in host memory"
            text += f", predicted {self.predicted_seconds:.3g} s"
        return text


def longest_steps(peak: Callable[[int], float], budget: float, *, limit: int = 10**7) -> int | None:
    """The largest ``n <= limit`` with ``peak(n) <= budget``, for ``peak`` non-decreasing in ``n``.

    Returns ``0`` when not even one step fits and ``None`` when ``peak(limit)``
    still fits: then memory does not grow with ``n`` within the limit (a
    binomial schedule with fixed slots, or offloaded states), and "the longest
    unroll" is the wrong question.

    Example:
        >>> longest_steps(lambda n: 100 * n, 1_050), longest_steps(lambda n: 7, 10)
        (10, None)
    """
    if peak(1) > budget:
        return 0
    if peak(limit) <= budget:
        return None
    low, high = 1, limit  # peak(low) fits, peak(high) does not
    while high - low > 1:
        mid = (low + high) // 2
        if peak(mid) <= budget:
            low = mid
        else:
            high = mid
    return low
