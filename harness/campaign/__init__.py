"""Fault campaigns: cells of seeded trials, each a perturbation evaluated against the clean model.

- :mod:`~harness.campaign.trial`: the clean baseline, one trial (the full-recompute path), collapse;
- :mod:`~harness.campaign.engine`: :class:`Campaign` (prefix reuse, exact early stops, batched bit flips),
  the seed policy, trial specs and records;
- :mod:`~harness.campaign.prefix`, :mod:`~harness.campaign.batched`, :mod:`~harness.campaign.reduce`:
  the mechanisms; :mod:`~harness.campaign.progress`: trials done / total and time left, as log records.
"""

from harness.campaign.engine import (
    Campaign,
    TrialRecord,
    TrialSpec,
    default_trials_per_forward,
    touched_params,
    trial_seed,
    trial_specs,
)
from harness.campaign.trial import COLLAPSE_RATIO, Clean, Trial, clean_baseline, is_collapse, run_trial
from harness.stats import Z95, wilson

__all__ = [
    "COLLAPSE_RATIO", "Z95", "Campaign", "Clean", "Trial", "TrialRecord", "TrialSpec", "clean_baseline",
    "default_trials_per_forward", "is_collapse", "run_trial", "touched_params", "trial_seed", "trial_specs", "wilson",
]
