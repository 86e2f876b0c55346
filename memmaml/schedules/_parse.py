"""Schedules and engines from text, as users and command lines write them."""

from __future__ import annotations

from typing import NamedTuple

from ._auto import Auto
from ._schedules import Binomial, Schedule, SqrtUniform, Uniform

__all__ = ["EngineSpec", "parse_engine", "parse_schedule"]


_FORMS = "'uniform:K', 'sqrt', 'binomial:SLOTS', 'binomial:SLOTS:SEGMENT', 'auto:BUDGET' (e.g. 'auto:11GiB')"


def parse_schedule(spec: str | Schedule) -> Schedule:
    """A schedule from a short text: ``"uniform:10"``, ``"sqrt"``, ``"binomial:20"``, ``"binomial:20:2"``,
    ``"auto:11GiB"``.

    ``"sqrt"`` is :class:`SqrtUniform`; ``"binomial:20:2"`` is ``Binomial(20, segment=2)``. A
    :class:`Schedule` is returned unchanged.

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
    makers = {
        "uniform": lambda a: Uniform(_whole("uniform:K", "steps per segment", a)),
        "binomial": _binomial,
        "auto": Auto,
    }
    name = name.lower()
    try:
        if name == "sqrt" and not arg:
            return SqrtUniform()
        if name in makers and arg:
            return makers[name](arg)
    except ValueError as err:
        raise ValueError(f"bad schedule {spec!r}: {err}") from None
    raise ValueError(f"unknown schedule {spec!r}; use one of {_FORMS}")


def _binomial(arg: str) -> Binomial:
    slots, colon, segment = arg.partition(":")
    if not colon:
        return Binomial(_whole("binomial:SLOTS", "stored states", slots))
    return Binomial(
        _whole("binomial:SLOTS:SEGMENT", "stored states", slots),
        segment=_whole("binomial:SLOTS:SEGMENT", "steps per segment", segment, "after the second colon"),
    )


def _whole(form: str, what: str, text: str, where: str = "after the colon") -> int:
    """The whole number at ``where`` in ``form``; a message naming the form otherwise."""
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{form!r} takes a whole number of {what} {where}, got {text!r}") from None


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
