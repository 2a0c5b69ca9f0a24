"""pytest options of the super-weights, compare-sensitivity and targeted-perturbation suites (added to
the plugin's "esa" group).

They reach tests as ``esa.options.scoring`` (:class:`ScoringOptions`: ``method``, ``methods``,
``targeted_methods``, ``fractions``). A value left at None means "the preset's" (see each help text and the
constants below).
Scorer names are checked against the registry (``SCORERS``) when parsed, and the compare suite's
default is every registered scorer (:func:`compare_methods`): a new ``@scorer`` needs no change here.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.option_values import bounded_float, choices, comma_list, option

DEFAULT_METHOD = ("activation",)  # super_weights suite
# targeted suite: methods whose ranking is perturbed (plus the seeded random control); a chosen subset of
# the registered scorers (tests/test_registries.py checks each name is registered).
QUICK_TARGETED = ("magnitude", "wanda")
FULL_TARGETED = ("magnitude", "wanda", "gradient", "taylor")
QUICK_FRACTIONS = (1e-6, 1e-4)
FULL_FRACTIONS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)  # 0.0001% .. 1% of the scored weights


def compare_methods() -> tuple[str, ...]:
    """The compare suite's default methods: every registered scorer (``SCORERS``), in both presets (the presets
    differ in each method's own sizes, ``harness.scoring.compare_cells.PRESETS``: quick runs hessian with 2 probes
    and integrated with 2 steps on 2 calibration windows)."""
    from harness.scoring import SCORERS

    return tuple(SCORERS.names())


def parse_methods(text: str) -> tuple[str, ...]:
    """A comma list of scorer names, each checked against ``SCORERS`` (unknown -> the known ones)."""
    from harness.scoring import SCORERS

    return choices(text, SCORERS, SCORERS.kind)


def parse_fractions(text: str) -> tuple[float, ...]:
    """A comma list of fractions in (0, 1] (``1e-6,1e-4``), sorted, repeated ones dropped."""
    return tuple(sorted({bounded_float(t, "a fraction", 0, 1, low_open=True) for t in comma_list(text, "fractions")}))


@dataclass(frozen=True)
class ScoringOptions:
    """Options of the super-weights, compare-sensitivity and targeted-perturbation suites
    (``esa.options.scoring``); None: the preset's."""

    method: tuple[str, ...] | None = option(
        "--method", f"super_weights suite: scorer name or comma list (default: {','.join(DEFAULT_METHOD)})",
        parse=parse_methods)
    methods: tuple[str, ...] | None = option(
        "--methods", lambda: "compare suite: scorers to compare (default: every registered scorer, "
                             f"{','.join(compare_methods())})",
        parse=parse_methods)
    targeted_methods: tuple[str, ...] | None = option(
        "--targeted-methods", "targeted suite: scorers whose top weights are perturbed, against random "
                              f"(default quick: {','.join(QUICK_TARGETED)}; full: {','.join(FULL_TARGETED)})",
        parse=parse_methods)
    fractions: tuple[float, ...] | None = option(
        "--fractions", "targeted suite: shares of the scored weights perturbed "
                       f"(default quick: {','.join(map(str, QUICK_FRACTIONS))}; "
                       f"full: {','.join(map(str, FULL_FRACTIONS))})",
        parse=parse_fractions)
