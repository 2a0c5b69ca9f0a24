"""Compatibility names: the campaign pieces now live in :mod:`harness.campaign` (one trial, its clean
baseline, collapse and its Wilson interval); this module re-exports them under their old home."""

from __future__ import annotations

from harness.campaign.trial import COLLAPSE_RATIO, Clean, Trial, clean_baseline, is_collapse, run_trial
from harness.stats import Z95, wilson

__all__ = ["COLLAPSE_RATIO", "Z95", "Clean", "Trial", "clean_baseline", "is_collapse", "run_trial", "wilson"]
