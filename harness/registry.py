"""One generic registry type for models, perturbations, scorers, pruners and metrics.

Register by decorator (or call), duplicate names raise, an unknown name raises and lists the known
ones with the closest match (``"gptneo125m"`` -> ``"gpt-neo-125m"``).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from harness.errors import HarnessError, UnknownNameError

T = TypeVar("T")


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


class Registry(Generic[T]):
    """A named collection of objects of one kind.

    Args:
        kind: what the registry holds ("model", "scorer", ...), used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator.

        Raises:
            HarnessError: if ``name`` is already registered.
        """

        def add(item: T) -> T:
            if name in self._items:
                raise HarnessError(f"{self.kind} {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            UnknownNameError: listing the known names and the closest match.
        """
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def suggest(self, name: str) -> str | None:
        """The known name closest to ``name``, or None when nothing is close."""
        squashed = {_squash(n): n for n in self._items}
        if _squash(name) in squashed:
            return squashed[_squash(name)]
        close = difflib.get_close_matches(_squash(name), list(squashed), n=1, cutoff=0.6)
        return squashed[close[0]] if close else None

    def unknown_message(self, name: str) -> str:
        hint = self.suggest(name)
        did_you_mean = f" Did you mean {hint!r}?" if hint else ""
        return f"unknown {self.kind} {name!r}.{did_you_mean} Known: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
