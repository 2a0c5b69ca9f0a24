"""pytest options of the super-weights, compare-sensitivity and targeted-perturbation suites (added to
the plugin's "esa" group).

They reach tests as ``esa.options.extra["<name>"]`` (``method``, ``methods``, ``targeted_methods``,
``fractions``). A value left at None means "the preset's" (see each help text and the constants below).
Scorer names are checked against the registry (``SCORERS``) when parsed, and the compare suite's
default is every registered scorer (:func:`compare_methods`): a new ``@scorer`` needs no change here.
"""

from __future__ import annotations

from typing import Any

from harness.errors import HarnessError
from harness.option_values import as_option_type, bounded_float, choices, comma_list

DEFAULT_METHOD = ("activation",)  # super_weights suite
# targeted suite: methods whose ranking is perturbed (plus the seeded random control); a chosen subset of
# the registered scorers (tests/test_registries.py checks each name is registered).
QUICK_TARGETED = ("magnitude", "wanda")
FULL_TARGETED = ("magnitude", "wanda", "gradient", "taylor")
QUICK_FRACTIONS = (1e-6, 1e-4)
FULL_FRACTIONS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # 0.0001% .. 1% of the scored weights


def compare_methods(preset: str = "quick") -> tuple[str, ...]:
    """The compare suite's default methods: every registered scorer (``SCORERS``), in both presets.

    The quick preset runs hessian with 2 probes and integrated with 2 steps on 2 calibration windows
    (~21 s and ~6 s on smollm2-135m, two CPU cores; see suites/test_compare_sensitivity.py).

    Raises:
        HarnessError: a preset other than ``quick`` or ``full``.
    """
    from harness.scoring import SCORERS

    if preset not in ("quick", "full"):
        raise HarnessError(f"unknown preset {preset!r}; use quick or full")
    return tuple(SCORERS.names())


def __getattr__(name: str) -> Any:  # FULL_METHODS / QUICK_METHODS: the names suites imported before
    if name in ("FULL_METHODS", "QUICK_METHODS"):
        return compare_methods("full" if name == "FULL_METHODS" else "quick")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def methods(text: str) -> tuple[str, ...]:
    """A comma list of scorer names, each checked against ``SCORERS`` (unknown -> the known ones)."""
    from harness.scoring import SCORERS

    return choices(text, SCORERS, SCORERS.kind)


def fractions(text: str) -> tuple[float, ...]:
    """A comma list of fractions in (0, 1] (``1e-6,1e-4``), sorted, repeated ones dropped."""
    return tuple(sorted({bounded_float(t, "a fraction", 0, 1, low_open=True) for t in comma_list(text, "fractions")}))


def add_options(group) -> None:
    group.addoption("--method", dest="esa_method", type=as_option_type(methods), default=None,
                    help="super_weights suite: scorer name or comma list "
                         f"(default: {','.join(DEFAULT_METHOD)})")
    group.addoption("--methods", dest="esa_methods", type=as_option_type(methods), default=None,
                    help="compare suite: scorers to compare (default: every registered scorer, "
                         f"{','.join(compare_methods())})")
    group.addoption("--targeted-methods", dest="esa_targeted_methods", type=as_option_type(methods), default=None,
                    help=f"targeted suite: scorers whose top weights are perturbed, against random "
                         f"(default quick: {','.join(QUICK_TARGETED)}; full: {','.join(FULL_TARGETED)})")
    group.addoption("--fractions", dest="esa_fractions", type=as_option_type(fractions), default=None,
                    help="targeted suite: shares of the scored weights perturbed "
                         f"(default quick: {','.join(map(str, QUICK_FRACTIONS))}; "
                         f"full: {','.join(map(str, FULL_FRACTIONS))})")
