"""Fault campaigns: cells of seeded trials, each a perturbation evaluated against the clean model.

- :mod:`~harness.campaign.trial`: the clean baseline, one trial (the full-recompute path);
- :mod:`~harness.campaign.engine`: :class:`Campaign` (prefix reuse, exact early stops, batched bit flips),
  trial specs and records (seeds from :func:`harness.stats.trial_seed`);
- :mod:`~harness.campaign.prefix`, :mod:`~harness.campaign.batched`: the mechanisms (the reduction is
  :mod:`harness.metrics.reduce`, collapse :func:`harness.metrics.is_collapse`);
  :mod:`~harness.campaign.progress`: trials done / total and time left, as log records.
"""

from harness.campaign.engine import (
    Campaign,
    TrialRecord,
    TrialSpec,
    default_trials_per_forward,
    touched_params,
    trial_specs,
)
from harness.campaign.trial import Clean, Trial, clean_baseline, run_trial

__all__ = [
    "Campaign", "Clean", "Trial", "TrialRecord", "TrialSpec", "clean_baseline", "default_trials_per_forward",
    "run_trial", "touched_params", "trial_specs",
]
