"""Claims: what a suite asserts about a model, declared in code next to the test that measures it.

Two kinds:

- a *relation* compares two quantities measured in the same run (super weights zeroed vs as many
  random weights; exp-MSB vs mantissa-LSB collapse rate; Wanda vs magnitude at equal sparsity). It
  needs no per-model number and is asserted on every model it applies to. Its margin comes from a
  statistic that holds at the preset's trial count (:func:`rate_greater`: non-overlapping Wilson
  intervals; :func:`paired_greater`: every seeded pair; :func:`greater`: a stated minimum effect).
- a *bound* is a regression bound: a model-specific number for one statistic, kept in
  ``suites/bounds/<suite>.toml`` (``[model] name = number``) and derived from that model's runs at
  several seeds (``python -m reports export-bounds``). ``side="max"`` holds when value <= bound,
  ``side="min"`` when value >= bound. A non-finite value (a collapse) compares as +inf: it never
  passes a ``max`` and NaN passes nothing.

Every checked claim has one of four outcomes (:class:`Outcome`): passed, failed, unverified (a bound
with no number for this model) and not applicable (the claim cannot apply: no super weight found,
random weights, a layer the model lacks), the last always with a reason.

The package, one module per concern: ``declarations`` (Claim, ClaimSet, Outcome), ``comparisons`` (the evidence
of a relation), ``bounds`` (bounds files and the configuration and weights they were derived under), ``judging``
(a claim on one model: its Verdict), ``derivation`` (a bound from several seeds), ``summary`` (the session's
claims section). Import the names from ``harness.claims``.
"""

from __future__ import annotations

from harness.claims.bounds import (
    BOUND_CONFIG,
    CONFIG_FILE,
    WEIGHTS_DIFFER,
    WEIGHTS_KEY,
    bound_config,
    bound_for,
    bounds_path,
    check_bounds_file,
    config_mismatch,
)
from harness.claims.comparisons import (
    Comparison,
    compared,
    greater,
    has_effect,
    increasing,
    paired_greater,
    paired_majority,
    rate_greater,
    trial_changed,
)
from harness.claims.declarations import (
    Z_BOUND,
    Claim,
    ClaimSet,
    Outcome,
    declared,
)
from harness.claims.derivation import (
    MAX_LOOSENESS,
    PREDICTIVE_K,
    REL_MARGIN,
    DerivedBound,
    derive_bound,
    rate_interval,
    widen,
)
from harness.claims.judging import (
    VACUOUS_RATE,
    Verdict,
    judge_bound,
    judge_relation,
    not_applicable,
    undecided,
    vacuous_reason,
)
from harness.claims.summary import (
    OUTCOMES,
    Summary,
    health_failure,
)
from harness.records.store import HEALTH_SUITE  # the model-health claims' suite, judged first

__all__ = [
    "BOUND_CONFIG",
    "CONFIG_FILE",
    "HEALTH_SUITE",
    "MAX_LOOSENESS",
    "OUTCOMES",
    "PREDICTIVE_K",
    "REL_MARGIN",
    "VACUOUS_RATE",
    "WEIGHTS_DIFFER",
    "WEIGHTS_KEY",
    "Z_BOUND",
    "Claim",
    "ClaimSet",
    "Comparison",
    "DerivedBound",
    "Outcome",
    "Summary",
    "Verdict",
    "bound_config",
    "bound_for",
    "bounds_path",
    "check_bounds_file",
    "compared",
    "config_mismatch",
    "declared",
    "derive_bound",
    "greater",
    "has_effect",
    "health_failure",
    "increasing",
    "judge_bound",
    "judge_relation",
    "not_applicable",
    "paired_greater",
    "paired_majority",
    "rate_greater",
    "rate_interval",
    "trial_changed",
    "undecided",
    "vacuous_reason",
    "widen",
]
