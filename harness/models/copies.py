"""A session model's second copy in another float dtype (bit flips in bf16, attacks on a bf16 model).

:class:`DtypeCopy` holds at most one such copy at a time (one extra model in memory), loads it on first need, and
checks after each use that the body left it unchanged: a copy left changed is forgotten (and loaded again next
time) and the use fails, like the session model's own guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from harness.errors import HarnessError

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


class DtypeCopy:
    """The one second copy of a model in another dtype, for the session (see the module docstring).

    Args:
        device: where the copy is loaded.
    """

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._copy: tuple[str, str, Any] | None = None  # (model name, dtype word, its LoadedModel)

    def clear(self, name: str | None = None) -> None:
        """Forget the copy (of model ``name`` only, when given)."""
        if self._copy is not None and name in (None, self._copy[0]):
            self._copy = None

    @contextmanager
    def use(self, loaded: LoadedModel, dtype: str, what: str = "the test") -> Iterator[Any]:
        """``loaded`` (a ``LoadedModel``) when it has ``dtype`` (a word of ``harness.models.device.DTYPES``), else
        its copy in ``dtype``, loaded once; checked unchanged after the body.

        Raises:
            HarnessError: the body left the copy changed (``what`` names the body in the message).
        """
        from harness.fingerprint import changed, fingerprint
        from harness.models.device import DTYPES

        if loaded.dtype == DTYPES[dtype]:
            yield loaded
            return
        if self._copy is None or self._copy[:2] != (loaded.name, dtype):
            from harness.models import load_model

            self._copy = None  # one extra model at a time
            self._copy = (loaded.name, dtype, load_model(loaded.name, device=self.device, dtype=dtype))
        other = self._copy[2]
        before, done = fingerprint(other.model), False
        try:
            yield other
            done = True
        finally:
            leaked = changed(before, fingerprint(other.model))
            if leaked:
                self._copy = None
                if done:  # else the body's own error is on its way
                    raise HarnessError(f"{what} left {len(leaked)} tensor(s) of the {dtype} copy of {loaded.name} "
                                       f"changed: {', '.join(leaked[:5])}")
