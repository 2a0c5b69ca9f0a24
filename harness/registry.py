"""One generic registry type for models, perturbations, scorers, pruners and metrics.

Register by decorator (or call), duplicate names raise, an unknown name raises and lists the known
ones with the closest match (``"gptneo125m"`` -> ``"gpt-neo-125m"``). An entry may carry tags
(``register("sign", tags=("campaign",))``), so a suite's default subset is read from the registry
(``names(tag="campaign")``) instead of being a second, hand-written list. ``registered(...)`` is a
context manager that adds an entry for a block and removes it after (tests, plug-ins).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Generic, TypeVar

from harness.errors import HarnessError, UnknownNameError

T = TypeVar("T")


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def closest(name: str, known: Iterable[str]) -> str | None:
    """The name of ``known`` closest to ``name`` (case and punctuation aside), or None when nothing is close."""
    squashed = {_squash(n): n for n in known}
    if _squash(name) in squashed:
        return squashed[_squash(name)]
    close = difflib.get_close_matches(_squash(name), list(squashed), n=1, cutoff=0.6)
    return squashed[close[0]] if close else None


def unknown_message(kind: str, name: str, known: Iterable[str]) -> str:
    """The one wording of an unknown name, a registry's or an option value's:
    ``unknown scorer 'magnitud'. Did you mean 'magnitude'? Known: magnitude, wanda, ...``."""
    known = list(known)
    hint = closest(name, known)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    return f"unknown {kind} {name!r}.{did_you_mean} Known: {', '.join(known)}"


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Args:
        kind: what the registry holds ("model", "scorer", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._tags: dict[str, frozenset[str]] = {}

    def register(self, name: str, obj: T | None = None, *, tags: Iterable[str] = ()) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Args:
            name: the registry name (test ids, records and options use it).
            obj: the object; None returns a decorator.
            tags: labels that select default subsets (``names(tag=...)``).

        Raises:
            HarnessError: if ``name`` is already registered, or a tag is not a non-empty string.
        """
        tag_set = frozenset((tags,) if isinstance(tags, str) else tags)
        if any(not isinstance(t, str) or not t for t in tag_set):
            raise HarnessError(f"{self.kind} {name!r}: tags must be non-empty strings, got {tuple(tag_set)!r}")

        def add(item: T) -> T:
            if name in self._items:
                raise HarnessError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            self._tags[name] = tag_set
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return what was registered under it.

        Raises:
            UnknownNameError: ``name`` is not registered.
        """
        item = self.get(name)
        del self._items[name]
        del self._tags[name]
        return item

    @contextmanager
    def registered(self, name: str, obj: T, *, tags: Iterable[str] = ()) -> Iterator[T]:
        """``with REG.registered(name, obj): ...`` registers ``obj`` for the block and removes it after."""
        self.register(name, obj, tags=tags)
        try:
            yield obj
        finally:
            if self._items.get(name) is obj:
                self.unregister(name)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: listing the known names and the closest match.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        """The one-line message for an unknown ``name`` (:func:`unknown_message`)."""
        return unknown_message(self.kind, name, self.names())

    def names(self, tag: str | None = None) -> list[str]:
        """Registered names in registration order; with ``tag``, only those carrying it."""
        return [n for n in self._items if tag is None or tag in self._tags[n]]

    def tags(self, name: str) -> frozenset[str]:
        """The tags ``name`` was registered with.

        Raises:
            UnknownNameError: ``name`` is not registered.
        """
        self.get(name)
        return self._tags[name]

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
