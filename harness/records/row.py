"""The one row type: a record an analysis's cells produce and a suite commits with ``recorder.rows``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Row:
    """One record: metric, value and the store columns that describe it.

    Attributes:
        metric: the store's ``metric`` column.
        value: the measured value (None: not measured).
        perturbation: the ``perturbation`` column (a description dict).
        extra: the ``extra`` column (None: none).
        clean_value: the unperturbed value compared against, if any.
        columns: any other store column (``method``, ``seed``, ``passed``, ...); a column the suite gives
            to ``recorder.rows`` applies to every row that does not set it itself.
    """

    metric: str
    value: float | None
    perturbation: dict[str, Any] | None
    extra: dict[str, Any] | None = None
    clean_value: float | None = None
    columns: dict[str, Any] = field(default_factory=dict)

    def store_columns(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The keyword columns of ``recorder.record`` for this row, over ``defaults``."""
        out = {**defaults, "perturbation": self.perturbation, **self.columns}
        if self.extra is not None:
            out["extra"] = self.extra
        if self.clean_value is not None:
            out["clean_value"] = self.clean_value
        return out


def trial_rows(ratio: float, kl: float, perturbation: dict[str, Any], extra: dict[str, Any],
               clean_perplexity: float | None, columns: dict[str, Any]) -> list[Row]:
    """One fault trial's records: its ``ppl_ratio`` (against the clean perplexity) and its ``kl``."""
    return [Row("ppl_ratio", ratio, perturbation, extra, clean_perplexity, columns),
            Row("kl", kl, perturbation, extra, columns=columns)]
