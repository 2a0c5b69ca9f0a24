"""Cells of the targeted-perturbation suite (harness.targeted.cells): the grid and a curve's rows."""

from __future__ import annotations

from harness.targeted import cells as T


def test_grid_is_every_method_then_random_times_every_action():
    found = T.grid(("wanda",))
    assert [c.id for c in found] == [f"{m}-{a}" for m in ("wanda", T.RANDOM) for a in T.ACTIONS]


def _curve(method: str, action: str, seconds: float | None) -> T.Curve:
    points = {1e-4: [T.TrialPoint(1.2, 0.1, False, 3, 0, 11), T.TrialPoint(20.0, None, True, 3, 1, 12)]}
    return T.Curve(T.TargetedCell(method, action), points, seconds, 5.0)


def test_a_curves_rows_are_each_trials_ratio_and_kl_then_the_scoring_seconds_once():
    rows = _curve("wanda", T.ACTIONS[0], 2.5).rows()
    assert [(r.metric, r.value) for r in rows] == [("ppl_ratio", 1.2), ("kl", 0.1), ("ppl_ratio", 20.0),
                                                   ("kl", None), ("seconds", 2.5)]
    assert [r.clean_value for r in rows[:2]] == [5.0, None]
    assert rows[2].columns == {"method": "wanda", "collapsed": True} and rows[2].extra == {"trial": 1,
                                                                                          "trial_seed": 12}
    assert rows[0].perturbation == {"kind": "targeted", "fraction": 1e-4, "action": T.ACTIONS[0], "count": 3}
    assert (rows[-1].perturbation, rows[-1].columns, rows[-1].extra) == ({"kind": "score"}, {"method": "wanda"}, None)
    assert [r.metric for r in _curve("wanda", T.ACTIONS[1], 2.5).rows()][-1] == "kl"  # one scoring per method
    assert [r.metric for r in _curve(T.RANDOM, T.ACTIONS[0], None).rows()][-1] == "kl"
