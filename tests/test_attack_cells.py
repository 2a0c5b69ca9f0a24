"""The weight-attack cells' records and claims (``harness.attacks.cells``), on hand-made runs: no model."""

from __future__ import annotations

import math

import pytest

from harness.attacks.cells import SEARCHES, AttackMeasurement, GuidedStart
from harness.attacks.options import ATTACK_DTYPES, FLOAT_DTYPES, floating_point
from harness.attacks.result import AttackResult, flips_or_inf
from harness.faults import FaultSite

SITE = FaultSite("model.layers.0.mlp.down_proj.weight", (0, 1), (30,))


class _Detection:
    """A stand-in ``Detection``: falsy when it holds no site."""

    def __init__(self, sites: list[FaultSite]) -> None:
        self.sites = sites

    def __bool__(self) -> bool:
        return bool(self.sites)

    def none_reason(self) -> str:
        return "no super weight detected (detection d0)"


def _run(method: str, curve: tuple[float, ...], **kw) -> AttackResult:
    return AttackResult(method, (SITE,) * (len(curve) - 1), curve, threshold=10.0, budget=4, seconds=0.5, **kw)


def _measure(attack: str, dtype: str = "fp32", defense: str = "none", detected: bool = True) -> AttackMeasurement:
    collapsed, censored = _run(attack, (2.0, 4.0, 40.0)), _run(attack, (2.0, 4.0, 6.0))
    guided = GuidedStart([SITE], "activation" if detected else "candidate", _Detection([SITE] if detected else []))
    runs = [(1, collapsed), (2, censored)] if attack == "random" else [(0, collapsed)]
    undefended = [r for _, r in runs] if defense != "none" else []
    replayed = censored if defense != "none" and attack != "random" else None
    return AttackMeasurement(attack, 4, [1, 2], [3.0, math.inf], runs, undefended, replayed, dtype, defense,
                             guided if attack == "guided" else None)


def test_floating_point_names_the_float_dtypes():
    assert [d for d in ATTACK_DTYPES if floating_point(d)] == list(FLOAT_DTYPES) == ["fp32", "bf16"]
    assert not floating_point("int8")


def test_a_runs_rows_are_its_flips_curve_and_seconds():
    run = AttackResult("random", (SITE, SITE), (2.0, math.nan, 40.0), threshold=10.0, budget=4, seconds=0.5,
                       extra={"trials": 3, "seed": 7})
    rows = run.rows({"kind": "bitflip_attack"}, seed=5)
    assert [r.metric for r in rows] == ["flips_to_collapse", "ppl_ratio", "seconds"]  # NaN: not measured
    first, ratio, seconds = rows
    assert first.value == 2.0 and first.columns == {"method": "random", "seed": 5, "collapsed": True}
    assert first.extra == {"flips": 2, "forwards": 0, "repaired": 0, "censored": False, "clean_perplexity": 2.0,
                           "trials": 3}  # seed: not a recorded detail
    assert ratio.value == 20.0 and ratio.clean_value == 2.0 and ratio.extra == {"flips": 2, "site": SITE.to_dict()}
    assert seconds.value == 0.5 and seconds.extra is first.extra
    censored = _run("guided", (2.0, 4.0))
    assert flips_or_inf(censored) == math.inf and censored.rows({}, 0)[0].columns["collapsed"] is False


@pytest.mark.parametrize(("attack", "defense", "kind", "metrics"), [
    ("random", "none", "random", []),
    ("random", "clamp", "random", ["flips_vs_undefended"]),
    ("progressive", "none", "undefended", ["flips_ratio_to_random"]),
    ("guided", "checksum", "defended", ["flips_ratio_to_random", "flips_vs_undefended"]),
])
def test_a_cells_rows_follow_its_kind(attack, defense, kind, metrics):
    m = _measure(attack, defense=defense)
    run_rows = [r for _, run in m.runs for r in run.rows(m.perturbation, 0)]
    rows = m.rows()
    assert m.kind == kind and [r.metric for r in rows[len(run_rows):]] == metrics
    assert all(r.perturbation == m.perturbation for r in rows)
    assert ("super_weights" in m.perturbation) == (attack == "guided")


def test_an_undefended_search_claims_its_flips_and_on_int8_beating_random():
    float_checks = _measure("progressive", "bf16").claims()
    assert [c.key for c in float_checks] == [("flips", "progressive", "bf16")] and float_checks[0].evidence == 2.0
    beats, flips = _measure("guided", "int8").claims()
    assert beats.key == ("beats_random", "guided") and beats.evidence.holds and beats.extra == {"seeds": [1, 2]}
    assert flips.key == ("flips", "guided", "int8") and not flips.not_applicable


def test_the_guided_claims_do_not_apply_from_stand_in_sites():
    checks = _measure("guided", "int8", detected=False).claims()
    assert [c.key for c in checks] == [("flips", "guided", "int8"), ("beats_random", "guided")]
    assert all(c.evidence is None and c.not_applicable.endswith("started from the candidate sites instead")
               for c in checks)


def test_a_defended_cell_claims_the_gain_on_floating_point_weights_only():
    (gain,) = _measure("progressive", "fp32", "clamp").claims()
    assert gain.key == ("defense_gain", "clamp") and gain.evidence.holds  # replayed: +inf vs 2 undefended
    assert gain.extra == {"undefended_flips": [SITE.to_dict()] * 2}
    assert _measure("progressive", "int8", "clamp").claims() == []


def test_random_cells_claim_nothing():
    for dtype in ATTACK_DTYPES:
        for defense in ("none", "checksum"):
            assert _measure("random", dtype, defense).claims() == []
    assert set(SEARCHES) == {"progressive", "guided"}
