"""SIGTERM without losing a record: a cancelled run stops at once, except in the middle of a commit.

A CI that cancels a job sends SIGTERM, then SIGKILL after a grace period (GitHub Actions, Slurm's
``KillWait``, Kubernetes: seconds to tens of seconds). With :func:`install`, SIGTERM raises
:class:`Terminated` in the main thread at once, wherever it is (a model forward ends first: Python runs
the handler between bytecodes). Inside :func:`commit_section` (every transaction of
:class:`~harness.records.ResultStore`) the signal is held: the record being written is committed, then
``Terminated`` is raised. A second SIGTERM while the first one is being handled is ignored.

``Terminated`` is a ``KeyboardInterrupt``, so an ``except Exception`` in library code does not swallow
it, and pytest ends the session (exit status 2, "interrupted") after its teardowns.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)


class Terminated(KeyboardInterrupt):
    """The process received SIGTERM; raised outside any commit."""


class _State:
    depth = 0  # open commit sections of the main thread
    held: int | None = None  # a signal received inside one, raised when the outermost ends
    fired = False  # Terminated was raised: the process is stopping


def _raise(signum: int) -> None:
    _State.fired = True
    raise Terminated(f"{signal.Signals(signum).name}: the run stopped after its last committed record; finish it "
                     "with the same command and --resume")


def _handler(signum: int, frame: Any) -> None:
    if _State.fired:
        log.warning("%s again: already stopping", signal.Signals(signum).name)
        return
    if _State.depth:
        _State.held = signum
        return
    _raise(signum)


@contextlib.contextmanager
def commit_section() -> Iterator[None]:
    """A section SIGTERM does not cut (one transaction): a signal received inside is raised when it ends.

    Only the main thread defers (Python runs signal handlers there); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if not _State.depth and _State.held is not None:
            signum, _State.held = _State.held, None
            _raise(signum)


def terminated() -> bool:
    """Whether SIGTERM has raised :class:`Terminated` since :func:`install`."""
    return _State.fired


def install() -> Any:
    """Make SIGTERM raise :class:`Terminated` (held over commits); return the previous handler, or None
    outside the main thread (where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    _State.depth, _State.held, _State.fired = 0, None, False
    return signal.signal(signal.SIGTERM, _handler)


def restore(previous: Any) -> None:
    """Put back the SIGTERM handler :func:`install` returned."""
    if previous is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, previous)
