"""The GPU check's parts and their time planning (``scripts/gpu_check.py``).

NOTE [ Time planning ]
    The probe measures one inner step with and without its graph
    (:func:`~memmaml.measure_step_costs`). A part's seconds are predicted as
    ``(no-graph evaluations x nograph_seconds + n x graph_seconds) x scale``,
    the evaluations counted from the schedule's plan and ``scale`` naive's
    measured time per step over ``graph_seconds`` once part 1 has run
    (:func:`predict_seconds`). :func:`plan_gpu_part` then lowers a part's ``n``
    (or raises it, part 3) to fit the seconds it is given, or skips the part,
    and says so in a note. Process start-ups are not in the prediction: the
    caller subtracts them, measured, from each part's share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from memmaml import Auto, StepCosts, format_bytes

from ._engines import predict
from ._methods import Method, unavailable
from ._workload import Workload

__all__ = ["GPU_PARTS", "GPU_SIZES", "GpuPart", "GpuSizes", "fit_steps", "plan_gpu_part", "predict_seconds"]


class GpuPart(NamedTuple):
    """A part of the check: its number in the issue, title, share of the time budget, processes it starts."""

    number: int
    title: str
    share: float
    processes: int


#: the parts in the order they run: cheap and vital first
GPU_PARTS = {
    "naive": GpuPart(1, "naive: longest n under the cap", 0.08, 5),
    "exactness": GpuPart(5, "exactness of the meta-gradients", 0.04, 1),
    "uniform": GpuPart(2, "uniform checkpoint_steps=5", 0.13, 1),
    "binomial": GpuPart(3, "Auto schedule (binomial)", 0.27, 1),
    "offload": GpuPart(4, "host offload", 0.26, 4),
    "overlap": GpuPart(7, "offload's copies against compute (timed)", 0.12, 4),
    "torch_maml": GpuPart(6, "torch_maml side by side", 0.10, 2),
}


class GpuSizes(NamedTuple):
    """What each part runs: the workload, step counts and engines (:func:`~memmaml.parse_engine` text)."""

    workload: Workload
    naive_start: int  # part 1 searches from here: doubling or halving, then bisection
    naive_max: int
    uniform: str
    uniform_n: int
    binomial_n: int  # part 3 doubles it up to binomial_max while the time allows
    binomial_max: int
    offload_n: tuple[int, int]
    offload_slots: int
    overlap_n: int  # part 7: the offload part's schedule with and without offload, timed
    overlap_repeats: int
    exact_n: int
    exact_engines: tuple[str, ...]
    exact_dropout: float
    peer: str
    peer_n: int


#: the seed's sizes: what a GPU check measures
_SEED_SIZES = GpuSizes(
    Workload(),
    naive_start=16,
    naive_max=64,
    uniform="uniform:5",
    uniform_n=500,
    binomial_n=2000,
    binomial_max=8000,
    offload_n=(200, 2000),
    offload_slots=100,
    overlap_n=500,
    overlap_repeats=2,
    exact_n=8,
    exact_engines=("uniform:3", "binomial:2", "binomial:2+offload"),
    exact_dropout=0.2,
    peer="uniform:10",
    peer_n=100,
)
#: ``False``: the seed's workload; ``True``: the smoke run's (a tiny conv net with BatchNorm, n <= 8, on a CPU).
#: Each meta-step of the smoke run is a process (~3 s on a CPU, most of it importing torch), so its naive search
#: is one run, its offload part one n and its overlap part one repeat: the tests check the search, two n and two
#: repeats with stand-in runs.
GPU_SIZES = {
    False: _SEED_SIZES,
    True: _SEED_SIZES._replace(
        workload=Workload(model="conv4", image_size=16, batch_size=4, width=8),
        **dict.fromkeys(("naive_start", "naive_max", "uniform_n", "binomial_n", "binomial_max", "overlap_n"), 8),
        offload_n=(8, 8),
        offload_slots=2,
        overlap_repeats=1,
        peer="uniform:2",
        peer_n=8,
    ),
}


# ====================================================================== time planning
def predict_seconds(engine: str, n: int, costs: StepCosts | None, *, scale: float = 1.0) -> float | None:
    """Seconds of ``n`` inner steps by ``engine`` (``"auto:BUDGET"`` as Auto would choose), or ``None`` without costs.

    Example:
        >>> costs = StepCosts(state_bytes=1, graph_bytes=10, nograph_seconds=0.01, graph_seconds=0.03)
        >>> round(predict_seconds("naive", 100, costs), 6), round(predict_seconds("uniform:5", 100, costs), 6)
        (3.0, 3.95)
    """
    if costs is None:
        return None
    return predict(engine, n, costs).seconds * scale


def fit_steps(
    target: int, predict: Callable[[int], float], seconds: float, minimum: int, grow_to: int | None = None
) -> tuple[int | None, str | None]:
    """The largest n whose predicted seconds fit: ``target``, doubled up to ``grow_to``, or less; ``(n, note)``.

    ``n`` is ``None`` (skip the part) when not even ``minimum`` fits.

    Example:
        >>> fit_steps(500, lambda n: 0.1 * n, 20.0, 50)
        (200, 'reduced from 500 to 200: n=500 is predicted at 50 s > 20 s')
    """
    if seconds <= 0:
        return None, "skipped: no time left in the budget"
    if predict(target) <= seconds:
        n = target
        while grow_to and 2 * n <= grow_to and predict(2 * n) <= seconds:
            n *= 2
        return n, (f"raised from {target} to {n}: the time allowed it" if n != target else None)
    if predict(minimum) > seconds:
        return None, f"skipped: even n={minimum} is predicted at {predict(minimum):.0f} s > {seconds:.0f} s left for it"
    low, high = minimum, target
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if predict(mid) <= seconds else (low, mid)
    return low, f"reduced from {target} to {low}: n={target} is predicted at {predict(target):.0f} s > {seconds:.0f} s"


def plan_gpu_part(
    name: str,
    sizes: GpuSizes,
    costs: StepCosts | None,
    seconds: float,
    *,
    scale: float = 1.0,
    auto_budget: int | None = None,
) -> tuple[dict[str, Any] | None, float | None, str | None]:
    """``(spec for run_gpu_part or None to skip, predicted seconds of its meta-steps, note)``.

    ``seconds`` is the part's share of the time budget, process start-ups
    already taken out. ``auto_budget`` is part 3's Auto budget; ``None`` (the
    smoke run) gives one that forces a binomial schedule: one step's graph and
    five states.
    """

    def p(engine: str, n: int) -> float:
        return predict_seconds(engine, n, costs, scale=scale)

    if name == "naive":  # calibrates the others: no prediction
        return dict(n=sizes.naive_start, max_n=sizes.naive_max, seconds=max(seconds, 30.0)), None, None
    if name == "exactness":
        n, engines = sizes.exact_n, sizes.exact_engines
        predicted = costs and 2 * (2 * p("naive", n) + sum(p(e, n) for e in engines))
        return dict(n=n, engines=list(engines), dropout=sizes.exact_dropout), predicted, None
    if name == "torch_maml":
        reason = unavailable(Method("torch_maml"), sizes.workload.optimizer)
        if reason:
            return None, None, f"skipped: {reason}"
    budget = auto_budget or (costs and costs.graph_bytes + 5 * costs.state_bytes)
    if name == "binomial" and budget is None:
        return None, None, "skipped: the smoke run's Auto budget comes from the probe's step costs, and there are none"
    auto, (small, large), slots = f"auto:{budget}", sizes.offload_n, sizes.offload_slots

    def offload_engine(n: int) -> str:
        return f"binomial:{min(slots, max(1, n - 1))}"

    def on_and_off(n: int) -> float:  # on CUDA the offloading run warms up at n: twice its time
        return 2 * p(offload_engine(n) + "+offload", n) + p(offload_engine(n), n)

    repeats = sizes.overlap_repeats
    target, minimum, grow_to, predict_part = {
        "uniform": (sizes.uniform_n, 50, None, lambda n: p(sizes.uniform, n)),
        "binomial": (sizes.binomial_n, 100, sizes.binomial_max, lambda n: p(auto, n)),
        "offload": (large, small, None, lambda n: sum(on_and_off(m) for m in dict.fromkeys((small, n)))),
        "overlap": (sizes.overlap_n, 10, None, lambda n: repeats * on_and_off(n)),
        "torch_maml": (sizes.peer_n, 10, None, lambda n: 2 * p(sizes.peer, n)),
    }[name]
    if costs is None:
        n, note = target, "no prediction: the probe measured no step costs"
    else:
        try:
            n, note = fit_steps(target, predict_part, seconds, min(minimum, target), grow_to)
        except ValueError as err:  # Auto: not even one step fits the budget
            return None, None, f"skipped: {err}"
        if n is None:
            return None, predict_part(min(minimum, target)), note
    spec: dict[str, Any] = {"n": n}
    if name == "uniform":
        spec["engine"] = sizes.uniform
    elif name == "binomial":
        spec["auto_budget"] = budget
        if costs is None:
            spec.update(
                engine=auto,
                schedule=f"Auto(budget={format_bytes(budget)}) chose in the worker (not recorded: "
                "the probe measured no step costs)",
            )
        else:
            choice = Auto(budget).choose(n, costs)
            spec.update(engine=predict(auto, n, costs).engine, schedule=choice.describe())
    elif name == "offload":
        spec = {"runs": [[offload_engine(m), m] for m in dict.fromkeys((small, n))]}
    elif name == "overlap":
        spec.update(engine=offload_engine(n), repeats=repeats)
    else:
        spec["engine"] = sizes.peer
    return spec, costs and predict_part(n), note
