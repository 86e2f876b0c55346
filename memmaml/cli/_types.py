"""What the commands share: argparse ``type=`` functions, the parser and its help format.

Each ``type=`` function takes the text a user typed and returns the value, or
raises :class:`argparse.ArgumentTypeError` with a message that quotes the
text; argparse prefixes it with the flag, so a bad value reads ``error:
argument --repeats: must be a whole number >= 0, got '-1'``. Names (choices,
engines, devices, optimizers) are read case-insensitively everywhere.
Defaults are given as the text a user would type (``"1,2,4"``, ``"11GiB"``),
which argparse parses like any other value and ``--help`` shows as typed.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from memmaml import parse_engine, parse_size

__all__ = [
    "USAGE",
    "USAGE_WITH_OUT",
    "ArgumentParser",
    "CommandLineError",
    "HelpFormatter",
    "command_line",
    "default_device",
    "device",
    "engine",
    "engine_list",
    "existing_folder",
    "lower",
    "name_list",
    "non_negative_float",
    "non_negative_int",
    "non_negative_int_list",
    "output_folder",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "size",
]


#: the usage line: short, since --help lists every flag; a required flag is named in it
USAGE = "%(prog)s [-h] [options]"
USAGE_WITH_OUT = "%(prog)s [-h] --out OUT [options]"


class CommandLineError(SystemExit):
    """A bad command line: exit status 2, after argparse's ``usage:`` line and one ``error:`` line.

    ``str()`` of it is the error message, so a caller running ``main(argv)``
    in-process can read what was wrong.
    """

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` with each default shown once: appended as typed unless the help text already says it.

    No default is shown for flags without a value (``store_true``) or whose
    default is ``None``: their help says what happens without them.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or not action.option_strings
            or action.default in (None, False, True, argparse.SUPPRESS)
            or action.nargs == 0
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser with a short usage line, :class:`HelpFormatter`, and errors raised as
    :class:`CommandLineError` (exit status 2, the message as its text)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("usage", USAGE)
        super().__init__(**kwargs)

    def error(self, message: str) -> NoReturn:
        missing = "the following arguments are required: "
        if message.startswith(missing):  # named like every other error: "argument --out: ..."
            message = f"argument {message[len(missing) :]}: required, and not given"
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise CommandLineError(message)

    def fail(self, flag: str, message: str) -> NoReturn:
        """A bad value found after parsing: the same two lines, naming ``flag``."""
        self.error(f"argument {flag}: {message}")


def command_line(script: str, console: str, argv: Sequence[str] | None) -> tuple[str, list[str]]:
    """``(prog, argv)`` of a command: how it was started and its arguments.

    Run as ``python scripts/X.py`` (``sys.argv[0]`` ends in ``.py`` and
    ``argv`` is ``None``), ``prog`` is ``script``; otherwise (a console script,
    or ``main(argv)`` called from Python) it is ``console``.
    """
    if argv is None:
        argv = sys.argv[1:]
        prog = script if sys.argv[0].endswith(".py") else console
    else:
        prog = console
    return prog, list(argv)


# ----------------------------------------------------------------------------- numbers
def _integer(text: str) -> int | None:
    text = text.strip()
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _bounded(parse: Callable[[str], Any], bound: int, *, strict: bool, kind: str) -> Callable[[str], Any]:
    """A ``type=`` reading ``kind`` with ``parse`` (``None``: not one) that is above ``bound`` (or equal unless
    ``strict``)."""
    sign = ">" if strict else ">="

    def check(text: str) -> Any:
        value = parse(text)
        if value is None or value < bound or (strict and value == bound):
            raise argparse.ArgumentTypeError(f"must be {kind} {sign} {bound}, got {text!r}")
        return value

    check.__doc__ = f"{kind[0].upper()}{kind[1:]} {sign} {bound}."
    return check


positive_int = _bounded(_integer, 1, strict=False, kind="a whole number")
non_negative_int = _bounded(_integer, 0, strict=False, kind="a whole number")
positive_float = _bounded(_finite, 0, strict=True, kind="a finite number")
non_negative_float = _bounded(_finite, 0, strict=False, kind="a finite number")


def _items(text: str, what: str) -> list[str]:
    """The comma-separated items of ``text``; none may be empty (``",,"``, ``"1,,2"``)."""
    items = [item.strip() for item in text.split(",")]
    if not text.strip() or any(not item for item in items):
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {text!r}")
    return items


def _ints(text: str, minimum: int) -> list[int]:
    what = f"whole numbers >= {minimum}"
    values = [_integer(item) for item in _items(text, what)]
    if any(v is None or v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {text!r}")
    return list(dict.fromkeys(values))  # type: ignore[arg-type]


def positive_int_list(text: str) -> list[int]:
    """Whole numbers >= 1 separated by commas (``"1,2,4"``), repeats dropped, in the order given."""
    return _ints(text, 1)


def non_negative_int_list(text: str) -> list[int]:
    """Whole numbers >= 0 separated by commas (``"0,1,5"``), repeats dropped, in the order given."""
    return _ints(text, 0)


def size(text: str) -> int:
    """A memory size: bytes or text such as ``"11GiB"``, ``"500MB"`` (:func:`memmaml.parse_size`)."""
    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


# ----------------------------------------------------------------------------- names
def lower(text: str) -> str:
    """A name, read case-insensitively (use with ``choices=``)."""
    return text.strip().lower()


def name_list(known: Iterable[str]) -> Callable[[str], list[str]]:
    """A ``type=`` for names from ``known`` separated by commas, case-insensitive, in ``known``'s order."""
    known = tuple(known)

    def names(text: str) -> list[str]:
        given = [item.lower() for item in _items(text, "names")]
        unknown = [name for name in given if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown name {unknown[0]!r}; choose from {', '.join(known)}")
        return [name for name in known if name in given]

    names.__name__ = "names"
    return names


_NUMBERED = ("uniform", "binomial")


def engine(text: str) -> str:
    """An engine in :func:`memmaml.parse_engine`'s syntax, its names in lower case (``"Uniform:5"`` ->
    ``"uniform:5"``); a size after ``auto:`` stays as typed."""
    body = text.strip()
    offload = body.lower().endswith("+offload")
    if offload:
        body = body[: -len("+offload")].strip()
    name, colon, argument = body.partition(":")
    name, argument = name.strip().lower(), argument.strip()
    if name in _NUMBERED and argument.lower() not in ("best", "auto"):
        value = _integer(argument)
        if value is None or value < 1:
            what = "K (steps per segment)" if name == "uniform" else "SLOTS (stored states)"
            raise argparse.ArgumentTypeError(f"{text!r}: {name}:{what.split()[0]} needs {what} >= 1, got {argument!r}")
        argument = str(value)
    canonical = name + (f":{argument.lower() if name in _NUMBERED else argument}" if colon else "")
    canonical += "+offload" if offload else ""
    try:
        parse_engine(canonical, budget=1)  # "binomial:auto" parses; its budget is checked where one is given
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return canonical


def engine_list(text: str) -> list[str]:
    """Engines (:func:`engine`) separated by commas; none twice."""
    engines = [engine(item) for item in _items(text, "engines")]
    twice = [e for i, e in enumerate(engines) if e in engines[:i]]
    if twice:
        raise argparse.ArgumentTypeError(f"{twice[0]!r} is given twice in {text!r}")
    return engines


def default_device() -> str:
    """``"cuda"`` where torch sees a CUDA device, otherwise ``"cpu"``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:N`` that exists on this machine, or ``auto`` (:func:`default_device`)."""
    name = text.strip().lower()
    if name == "auto":
        return default_device()
    if name == "cpu":
        return name
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu, cuda or cuda:N")
    import torch

    if not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device here (torch.cuda.is_available() is False); use cpu")
    count = torch.cuda.device_count()
    if int(match.group(1) or 0) >= count:
        raise argparse.ArgumentTypeError(
            f"{text!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
        )
    return name


# ----------------------------------------------------------------------------- folders
def existing_folder(text: str) -> str:
    """A folder that exists (returned as typed)."""
    if not Path(text).expanduser().is_dir():
        what = "is a file, not a folder" if Path(text).expanduser().exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"the folder {text!r} {what}")
    return text


def output_folder(text: str) -> str:
    """A folder to write into: it may not exist yet, but may not be a file."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    if Path(text).expanduser().exists() and not Path(text).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
    return text
