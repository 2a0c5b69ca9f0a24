"""The perturbation base class, the registry of perturbation kinds, and exact save/restore of blocks.

A perturbation is built (validated, sites sampled) by its constructor and does nothing until it is
applied. ``with p:`` applies it and restores the model in ``finally``; ``p.apply()`` /
``p.restore()`` do the same by hand. Each edit pushes its own undo, so a perturbation that fails
half-way restores what it had done, and nested perturbations restore inner first. Restore
overlapping perturbations in the reverse order of applying them (``with`` blocks do); each one
puts back the values it found when it was applied.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from harness.errors import HarnessError
from harness.faults.storage import layout
from harness.registry import Registry

log = logging.getLogger(__name__)

PERTURBATIONS: Registry[type[Perturbation]] = Registry("perturbation")


class Perturbation:
    """Base class: subclasses implement ``_apply`` and push one undo per edit with ``_push``."""

    kind = "perturbation"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.active = False
        self._undo: list[Callable[[], None]] = []

    def _apply(self) -> None:
        raise NotImplementedError

    def _push(self, undo: Callable[[], None]) -> None:
        self._undo.append(undo)

    def apply(self) -> Perturbation:
        """Edit the model in place; on any error, undo what was done and re-raise.

        Raises:
            HarnessError: if this perturbation is already applied.
        """
        if self.active:
            raise HarnessError(f"this {self.kind} perturbation is already applied; restore it first")
        self.active = True
        try:
            with torch.no_grad():
                self._apply()
        except BaseException:
            self.restore()
            raise
        log.debug("applied %s", self.kind)
        return self

    def restore(self) -> None:
        """Undo every edit, last first. Safe to call when not applied."""
        first_error: BaseException | None = None
        with torch.no_grad():
            while self._undo:
                undo = self._undo.pop()
                try:
                    undo()
                except BaseException as e:  # keep restoring the rest, then report the first failure
                    first_error = first_error or e
        self.active = False
        if first_error is not None:
            raise first_error
        log.debug("restored %s", self.kind)

    def __enter__(self) -> Perturbation:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def describe(self) -> dict[str, Any]:
        """JSON-serializable description (kind and parameters) for the results store."""
        return {"kind": self.kind}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.describe()})"


def save_block(tensor: torch.Tensor, index: tuple) -> tuple[torch.Tensor, Callable[[], None]]:
    """Copy the stored bits of ``tensor[index]`` and return (copy as values, undo).

    The undo writes the saved integer codes back through the same-width integer view, so the
    restore is bit-exact (NaN payloads and -0.0 included).

    Args:
        tensor: a parameter or buffer.
        index: an index expression (``(Ellipsis,)``, ``(rows,)``, ``(rows[:, None], cols)``, ...).

    Returns:
        (values, undo): a copy of ``tensor[index]`` in ``tensor``'s dtype, and the restoring closure.
    """
    codes = tensor.detach().view(layout(tensor.dtype).int_dtype)  # shares storage
    saved = codes[index].clone()

    def undo() -> None:
        codes[index] = saved

    return saved.view(tensor.dtype), undo
