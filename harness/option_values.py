"""Parsers of option values (comma lists, positive integers, bounded numbers, names from a set), and option sets.

Each parser takes the text (a number from code too, for :func:`bounded_float`) and what it names, and
raises a one-line :class:`~harness.errors.HarnessError` that says what is allowed, in one wording per kind:

- ``expected a comma list of sparsities, got ''``
- ``trials must be an integer >= 1, got '0'``
- ``sparsity must be in [0, 1), got '1.5'``; ``learning rate must be a finite number > 0, got 'inf'``
- ``unknown defense 'clmp'. Did you mean 'clamp'? Known: none, checksum, clamp`` (a registry's wording)

:func:`as_option_type` makes one an argparse ``type=`` (pytest's ``addoption``), whose error argparse shows
as a one-line usage error after the option's name.

An analysis declares its options as one frozen dataclass, an *option set*, whose fields are :func:`option` s
(flag, help, parser, default); the plugin adds them (:func:`add_option_set`) and reads them back typed
(:func:`read_option_set`) into the session's ``Options``. :func:`pick_preset` picks an analysis's depth preset.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from harness.errors import HarnessError, UnknownNameError
from harness.registry import unknown_message

T = TypeVar("T")
Known = Iterable[str] | Callable[[], Iterable[str]]  # the allowed names, or a function read at parse time


def as_option_type(convert: Callable[..., T], *args: object, **kwargs: object) -> Callable[[str], T]:
    """A command-line ``type=``: ``convert(text, *args, **kwargs)``, its HarnessError argparse's usage error.

    Args:
        convert: a parser of this module, or any function of the text that raises HarnessError.
        args, kwargs: passed to ``convert`` after the text (what the value names, its bounds, ...).
    """

    def parse(text: str) -> T:
        try:
            return convert(text, *args, **kwargs)
        except HarnessError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = convert.__name__  # argparse names the converter in its message
    return parse


def comma_list(text: str | Iterable[str], what: str, *, unique: bool = True,
               required: bool = True) -> tuple[str, ...]:
    """The items of a comma list, stripped, empty ones dropped: ``" a, b,,a"`` -> ``("a", "b")``.

    Args:
        text: the list, or several (a repeated option), read as one.
        what: the items, plural (``"model names"``), for the message.
        unique: drop a repeated item (the first stays).
        required: refuse a list without an item.

    Raises:
        HarnessError: no item, when ``required``.
    """
    texts = [text] if isinstance(text, str) else [str(t) for t in text]
    items = [item.strip() for t in texts for item in t.split(",") if item.strip()]
    if unique:
        items = list(dict.fromkeys(items))
    if required and not items:
        raise HarnessError(f"expected a comma list of {what}, got {','.join(texts)!r}")
    return tuple(items)


def positive_int(text: str, what: str) -> int:
    """``text`` as a whole number >= 1 (what ``int()`` reads: ``" 5"``, ``"+5"``, ``"1_000"``).

    Raises:
        HarnessError: not a whole number, or below 1.
    """
    try:
        value = int(text)
    except (TypeError, ValueError):
        value = 0
    if value < 1:
        raise HarnessError(f"{what} must be an integer >= 1, got {text!r}")
    return value


def bounded_float(value: str | float, what: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within the bounds: ``bounded_float("0.5", "sparsity", 0, 1, high_open=True)``.

    Args:
        value: a number, or text ``float()`` reads.
        what: what the value is (``"sparsity"``), for the message.
        low, high: the bounds; None: unbounded on that side.
        low_open, high_open: exclude the bound itself.

    Raises:
        HarnessError: not a number, not finite, or out of bounds.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    above = low is None or (number > low if low_open else number >= low)
    below = high is None or (number < high if high_open else number <= high)
    if not (math.isfinite(number) and above and below):
        raise HarnessError(f"{what} must be {_interval(low, high, low_open, high_open)}, got {value!r}")
    return number


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f"a finite number {'<' if high_open else '<='} {high:g}"
    return "a finite number"


def choice(text: str, known: Known, what: str) -> str:
    """``text`` when it is one of ``known`` (a registry, a tuple, or a function giving the names).

    Raises:
        UnknownNameError: another name; the message lists the known names and the closest one.
    """
    names = list(known() if callable(known) else known)
    if text not in names:
        raise UnknownNameError(unknown_message(what, text, names))
    return text


def choices(text: str, known: Known, what: str) -> tuple[str, ...]:
    """A comma list of names, each one of ``known`` (:func:`choice`), repeated ones dropped.

    Raises:
        HarnessError: an empty list, or an unknown name (UnknownNameError, as :func:`choice`).
    """
    names = list(known() if callable(known) else known)
    return tuple(choice(name, names, what) for name in comma_list(text, f"{what} names"))


# -- option sets: an analysis's options as one typed dataclass ------------------------------------------------------


Help = str | Callable[[], str]  # a help text, or a function giving it (registry names, read when options are added)


@dataclass(frozen=True)
class Flag:
    """How one field of an option set is given on the command line (see :func:`option`)."""

    name: str
    help: Help
    parse: Callable[..., Any] | None = None
    args: tuple[Any, ...] = ()
    metavar: str | None = None
    default_factory: Callable[[], Any] | None = None
    action: str | None = None  # argparse's action (``append`` for a repeatable flag); None: a value or a switch

    @property
    def dest(self) -> str:
        """The argparse destination: ``--flip-budget`` -> ``esa_flip_budget``."""
        return "esa_" + self.name.lstrip("-").replace("-", "_")


def option(name: str, help: Help, *, parse: Callable[..., Any] | None = None, args: tuple[Any, ...] = (),
           default: Any = None, default_factory: Callable[[], Any] | None = None,
           metavar: str | None = None, action: str | None = None) -> Any:
    """A field of an option set that is also the command-line option ``name``.

    Args:
        name: the flag, ``--flip-budget``; its value lands in ``esa_flip_budget`` of pytest's options.
        help: the help text (the default is stated in it), or a function giving it.
        parse: a parser of this module (or any function of the text that raises HarnessError), called as
            ``parse(text, *args)``; None: the text itself. A ``bool`` field with no parser is a switch
            (``store_true``).
        default: the value when the option is not given (None: the analysis's preset decides).
        default_factory: a function giving the default instead, called when the options are added.
        action: argparse's action, e.g. ``append`` for a flag given several times.
    """
    flag = Flag(name, help, parse, args, metavar, default_factory, action)
    if default_factory is not None:
        return field(default_factory=default_factory, metadata={"flag": flag})
    return field(default=default, metadata={"flag": flag})


def add_option_set(group: Any, cls: type) -> None:
    """``group.addoption(...)`` for every field of the option set ``cls`` (a dataclass of :func:`option` fields).

    ``group``: pytest's option group (anything with ``addoption``; this module never imports pytest).
    """
    for f in fields(cls):
        flag: Flag = f.metadata["flag"]
        default = flag.default_factory() if flag.default_factory is not None else f.default
        text = flag.help() if callable(flag.help) else flag.help
        kwargs: dict[str, Any] = dict(dest=flag.dest, default=default, help=text)
        if flag.action is not None:
            kwargs["action"] = flag.action
        if flag.parse is not None:
            kwargs["type"] = as_option_type(flag.parse, *flag.args)
        elif default is False:
            kwargs["action"] = "store_true"
        if flag.metavar:
            kwargs["metavar"] = flag.metavar
        group.addoption(flag.name, **kwargs)


def read_option_set(cls: type[T], values: Any) -> T:
    """The option set ``cls`` from parsed options (``values``: pytest's ``config.option``, an argparse
    namespace); a field missing there keeps its default."""
    given = {f.name: getattr(values, f.metadata["flag"].dest) for f in fields(cls)
             if hasattr(values, f.metadata["flag"].dest)}
    return cls(**given)


def pick_preset(presets: Mapping[str, T], name: str) -> T:
    """The preset ``name`` (``quick``, ``full``) of an analysis's ``PRESETS``.

    Raises:
        UnknownNameError: another name; the message lists the presets.
    """
    return presets[choice(name, presets, "preset")]
