"""Errors the harness raises for user mistakes.

A :class:`HarnessError` is a ``ValueError`` whose message is one line that says what was wrong and
what is allowed. The pytest plugin turns it into a one-line usage error instead of a traceback.
"""

from __future__ import annotations


class HarnessError(ValueError):
    """A user mistake: bad name, bad range, missing file. The message is one readable line."""


class UnknownNameError(HarnessError, KeyError):
    """An unknown registry name; the message lists the known names and the closest match."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class OfflineError(HarnessError):
    """Something needs the Hugging Face hub and this machine cannot reach it."""


class DiskFullError(HarnessError):
    """The disk holding the results store or the model cache is full; what was committed before is kept."""

