"""What the commands share: argparse ``type=`` functions, the parser and its help format.

Each ``type=`` function takes the text a user typed and returns the value, or
raises :class:`argparse.ArgumentTypeError` with a message that quotes the
text; argparse prefixes it with the flag, so a bad value reads ``error:
argument --repeats: must be a whole number >= 0, got '-1'``. Names (choices,
engines, devices, optimizers) are read case-insensitively everywhere. A list
of things to run (step counts, engines, peers, parts) may not name one thing
twice, in any spelling (``2,2``, ``naive,NAIVE``, ``uniform:5,uniform:05``):
the error says which; only a list of sizes (``--hidden 40,40``) repeats.
Defaults are given as the text a user would type (``"1,2,4"``, ``"11GiB"``),
which argparse parses like any other value and ``--help`` shows as typed.
"""

from __future__ import annotations

import argparse
import math
import os
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
    "invocation",
    "lower",
    "name_list",
    "non_negative_float",
    "non_negative_int",
    "non_negative_int_list",
    "output_folder",
    "positive_float",
    "positive_int",
    "positive_int_list",
    "positive_int_sequence",
    "readable_folder",
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


def command_line(script: str, console: str, argv: Sequence[str] | None, module: str = "") -> tuple[str, list[str]]:
    """``(prog, argv)`` of a command: how it was started and its arguments.

    With ``argv`` ``None`` (the arguments of this process): run as ``python -m
    MODULE`` (``__main__`` is ``module``), ``prog`` is ``"python -m MODULE"``;
    run as the script (``sys.argv[0]`` is a file named like ``script``), it is
    ``script``; otherwise (the console script) ``console``. ``main(argv)``
    called from Python is ``console`` too.
    """
    if argv is not None:
        return console, list(argv)
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if module and getattr(spec, "name", None) == module:
        prog = f"python -m {module}"
    elif Path(sys.argv[0]).name == Path(script).name:
        prog = script
    else:
        prog = console
    return prog, sys.argv[1:]


def invocation(prog: str, script: str) -> list[str]:
    """The words that start the command again: ``["python", script]`` for the script, else ``[prog]``."""
    return ["python", script] if prog == script else [prog]


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


def _twice(items: Sequence[Any], text: str) -> None:
    """Refuse a list of things to run that names one thing twice (``items`` as read: equal means the same)."""
    seen: list[Any] = []
    for item in items:
        if item in seen:
            raise argparse.ArgumentTypeError(f"{str(item)!r} is given twice in {text!r}")
        seen.append(item)


def _ints(text: str, minimum: int, *, repeats: bool = False) -> list[int]:
    what = f"whole numbers >= {minimum}"
    values = [_integer(item) for item in _items(text, what)]
    if any(v is None or v < minimum for v in values):
        raise argparse.ArgumentTypeError(f"expected {what} separated by commas, got {text!r}")
    if not repeats:
        _twice(values, text)
    return values  # type: ignore[return-value]


def positive_int_list(text: str) -> list[int]:
    """Distinct whole numbers >= 1 separated by commas (``"1,2,4"``), in the order given."""
    return _ints(text, 1)


def non_negative_int_list(text: str) -> list[int]:
    """Distinct whole numbers >= 0 separated by commas (``"0,1,5"``), in the order given."""
    return _ints(text, 0)


def positive_int_sequence(text: str) -> list[int]:
    """Whole numbers >= 1 separated by commas, repeats kept (``"40,40"``: layer sizes, not a set)."""
    return _ints(text, 1, repeats=True)


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
    """A ``type=`` for distinct names from ``known`` separated by commas, case-insensitive, in ``known``'s order."""
    known = tuple(known)

    def names(text: str) -> list[str]:
        given = [item.lower() for item in _items(text, "names")]
        unknown = [name for name in given if name not in known]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown name {unknown[0]!r}; choose from {', '.join(known)}")
        _twice(given, text)
        return [name for name in known if name in given]

    names.__name__ = "names"
    return names


#: the engines with whole numbers after the name, and what each number is (binomial's segment is optional)
_NUMBERED = {
    "uniform": (("K", "steps per segment"),),
    "binomial": (("SLOTS", "stored states"), ("SEGMENT", "steps per segment")),
}


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
        symbols = _NUMBERED[name]
        parts = argument.split(":", len(symbols) - 1)
        values = []
        for i, (part, (symbol, what)) in enumerate(zip(parts, symbols)):
            value = _integer(part)
            if value is None or value < 1:
                form = ":".join([name, *(s for s, _ in symbols[: i + 1])])
                raise argparse.ArgumentTypeError(f"{text!r}: {form} needs {symbol} ({what}) >= 1, got {part!r}")
            values.append(str(value))
        if values[1:] == ["1"]:  # binomial:SLOTS:1 is binomial:SLOTS
            values.pop()
        argument = ":".join(values)
    canonical = name + (f":{argument.lower() if name in _NUMBERED else argument}" if colon else "")
    canonical += "+offload" if offload else ""
    try:
        parse_engine(canonical, budget=1)  # "binomial:auto" parses; its budget is checked where one is given
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return canonical


def engine_list(text: str) -> list[str]:
    """Engines (:func:`engine`) separated by commas; none twice, in any spelling (``auto:1GiB`` and
    ``auto:1024MiB`` are one engine)."""
    engines = [engine(item) for item in _items(text, "engines")]
    seen: dict[str, str] = {}
    for spelled in engines:
        first = seen.get(_same_engine(spelled))
        if first is not None:
            same = "" if first == spelled else f" (the same engine as {first!r})"
            raise argparse.ArgumentTypeError(f"{spelled!r} is given twice in {text!r}{same}")
        seen[_same_engine(spelled)] = spelled
    return engines


def _same_engine(canonical: str) -> str:
    """``canonical`` (:func:`engine`) with an ``auto:`` size in bytes, so that two spellings of one engine compare
    equal."""
    body, offload = canonical.removesuffix("+offload"), canonical.endswith("+offload")
    name, colon, argument = body.partition(":")
    if name != "auto" or not colon:
        return canonical
    return f"auto:{parse_size(argument)}" + ("+offload" if offload else "")


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


def readable_folder(text: str) -> str:
    """A folder that may not exist yet (returned as typed), but is no file and lies under no file."""
    _folder(text)
    return text


def output_folder(text: str) -> str:
    """A folder to write into (returned as typed): no file and under no file; if it exists, writable, and if
    not, the nearest folder above it that exists is one this process may create folders in."""
    path, ancestor = _folder(text)
    if not os.access(ancestor, os.W_OK | os.X_OK):
        if ancestor == path:
            raise argparse.ArgumentTypeError(f"the folder {text!r} is not writable")
        raise argparse.ArgumentTypeError(
            f"cannot create {text!r}: {str(ancestor)!r}, the nearest folder above it that exists, is not writable"
        )
    return text


def _folder(text: str) -> tuple[Path, Path]:
    """``text`` as an absolute path and the nearest of it and its ancestors that exists, which is a folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a folder, got ''")
    path = Path(text).expanduser().absolute()
    ancestor = path
    try:
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        is_folder = ancestor.is_dir()
    except OSError as err:  # a folder on the way this process may not look into
        raise argparse.ArgumentTypeError(f"cannot look at {text!r}: {err.strerror}") from None
    if not is_folder:
        if ancestor == path:
            raise argparse.ArgumentTypeError(f"{text!r} is a file, not a folder")
        raise argparse.ArgumentTypeError(f"{text!r} lies inside {str(ancestor)!r}, which is a file, not a folder")
    return path, ancestor
