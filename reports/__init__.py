"""Reports built from the results store: tables, figures, ``analysis_report.md``, ``index.html``,
regression tracking against a baseline, and trends across runs.

Entry points: ``python -m reports <results-dir>`` (see ``__main__``), :func:`build_report` (the run page),
:func:`build_comparison` (models side by side, ``python -m reports compare-models``),
:func:`load_baseline` / :class:`Baseline` (used by the pytest plugin's ``--baseline``).
Names are imported on first use, so ``python -m reports`` answers a bad argument without loading
pandas and matplotlib.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_report": "reports.build",
    "build_comparison": "reports.compare",
    "BASELINE_SCHEMA_VERSION": "reports.regression",
    "Baseline": "reports.regression",
    "export_baseline": "reports.regression",
    "load_baseline": "reports.regression",
}
__all__ = ["BASELINE_SCHEMA_VERSION", "Baseline", "build_comparison", "build_report", "export_baseline",
           "load_baseline"]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'reports' has no attribute {name!r}")
