"""Changes only against comparable runs (issue 27): a run is compared only with earlier runs of the same model
under the same configuration; other seeds give the spread; a run without a comparable predecessor says so.

The stores are written here directly, as the plugin writes them (its run options in ``runs.extra``)."""

from __future__ import annotations

import json

import matplotlib
import pandas as pd
import pytest

from harness.records import ResultStore
from reports import figures
from reports.build import build_report, collect
from reports.comparable import find, run_config
from reports.load import load_run
from reports.tables import fmt, sweep

matplotlib.use("Agg")

OPTIONS = {"models": "m", "preset": "quick", "seed": 0, "finetune": "none", "corpus": "pydoc-topics",
           "eval_tokens": 1024, "window": 256, "calib_tokens": 2048, "trials": None, "flip_budget": None}
CLAIM = {"claim": "noise_ppl_ratio_max", "kind": "bound", "side": "max", "statement": "noise stays mild"}


def _run(store: ResultStore, value: float, *, model: str = "m", **options) -> str:
    """A run of one bound claim (upper bound 100) and one measurement, under the plugin's options."""
    rid = store.start_run({"device": "cpu", **OPTIONS, **options})
    store.record(run_id=rid, test_id="suites/test_robustness.py::test_noise", suite="robustness", model=model,
                 metric="noise_ppl_ratio_max", value=value, bound=100.0, passed=value <= 100.0,
                 outcome="passed" if value <= 100.0 else "failed", extra=CLAIM, seed=options.get("seed", 0))
    store.record(run_id=rid, test_id="suites/test_robustness.py::test_noise", suite="robustness", model=model,
                 metric="ppl_ratio", value=value, method="gaussian", perturbation={"level": 0.1},
                 seed=options.get("seed", 0))
    store.finish_run(rid)
    return rid


def test_run_config_reads_the_plugins_options():
    row = {"run_id": "r", "dtype": None, "extra": json.dumps({**OPTIONS, "seed": 5, "trials": 8})}
    config = run_config(row)
    assert config["seed"] == "5" and config["trials"] == "8" and config["dtype"] == "model default"
    assert config["preset"] == "quick" and config["finetune"] == "none" and config["eval_tokens"] == "1024"
    assert run_config({**row, "dtype": "bf16"})["dtype"] == "bf16"


def test_find_separates_same_configuration_other_seeds_and_other_options():
    rows = [{"run_id": rid, "extra": json.dumps({**OPTIONS, **o})} for rid, o in (
        ("a", {}), ("b", {"seed": 5}), ("c", {"window": 128}), ("d", {"seed": 1}), ("e", {}), ("f", {}))]
    models = {r["run_id"]: {"m"} for r in rows}
    c = find(rows, "e", "m", models)
    assert c.same == ("a",) and c.seeds == ("b", "d") and c.previous == "d"
    assert c.differs == ("seed 1 (this run: 0)",)
    assert "compared with run a" in c.note()
    first = find(rows, "b", "m", models)  # seed 5: nothing earlier at seed 5
    assert first.same == () and first.seeds == ("a",)
    assert "no earlier run at this configuration" in first.note() and "differs in seed 0 (this run: 5)" in first.note()
    assert find(rows, "a", "m", models).previous is None
    assert find(rows, "f", "other", models).same == ()  # another model's runs never count
    with pytest.raises(ValueError, match="not among"):
        find(rows, "zz", "m", models)


def test_runs_at_two_seeds_show_no_regression(tmp_path):
    """make test's two runs: the same preset at seed 0 and seed 5, values far apart (another draw)."""
    with ResultStore(tmp_path) as store:
        first = _run(store, 40980.0, seed=0)
        second = _run(store, 9575.0, seed=5)
    r = collect(load_run(tmp_path, second))
    assert r.comparison is None and r.regressed().empty and r.changes.empty
    assert r.history["run_id"].unique().tolist() == [second]
    (line,) = r.compared_with()
    assert "no earlier run at this configuration" in line and first in line and "seed 0 (this run: 5)" in line
    spread = r.spread.set_index("claim")
    assert spread.loc["noise_ppl_ratio_max", "seeds"] == "0" and spread.loc["noise_ppl_ratio_max", "where"] == "below"
    page = (build_report(tmp_path, second) / "index.html").read_text()
    assert "data-count='regressed'" not in page and "Regressed against" not in page
    assert "no earlier run at this configuration" in page and "1 outside" in page


def test_a_worsened_replay_at_the_same_configuration_is_flagged(tmp_path):
    with ResultStore(tmp_path) as store:
        first = _run(store, 10.0, seed=0)
        _run(store, 12.0, seed=5)  # another seed in between: never the baseline
        _run(store, 10.0, seed=0, window=128)  # another window in between: never the baseline
        last = _run(store, 15.0, seed=0)
    r = collect(load_run(tmp_path, last))
    assert first in r.baseline_label
    regressed = r.regressed()
    assert regressed["name"].tolist() == ["noise_ppl_ratio_max"]
    assert regressed["value_base"].iloc[0] == 10.0 and regressed["value"].iloc[0] == 15.0
    change = r.changes.set_index("claim").loc["noise_ppl_ratio_max"]
    assert change["value_before"] == 10.0 and change["rel"] == pytest.approx(0.5)
    assert set(r.history["run_id"]) == {first, last}  # over time: this configuration only
    assert r.spread["seeds"].tolist() == ["5"] and r.spread["where"].tolist() == ["above"]


def test_each_claim_is_compared_with_its_newest_comparable_value(tmp_path):
    """A comparable run that measured other suites does not hide an older comparable value."""
    with ResultStore(tmp_path) as store:
        first = _run(store, 10.0)
        other = store.start_run({"device": "cpu", **OPTIONS})
        store.record(run_id=other, test_id="suites/test_smoke.py::test_clean", suite="smoke", model="m",
                     metric="perplexity", value=30.0)
        store.finish_run(other)
        last = _run(store, 20.0)
    r = collect(load_run(tmp_path, last))
    cmp = r.comparison.set_index("name")
    assert cmp.loc["noise_ppl_ratio_max", "value_base"] == 10.0 and cmp.loc["noise_ppl_ratio_max", "status"] == \
        "regressed"
    assert "perplexity" not in cmp.index  # a suite this run did not measure is not 'missing'
    assert first in r.baseline_label or other in r.baseline_label


def test_numbers_are_formatted_one_way():
    assert [fmt(x) for x in (40980.3, 9575.2, 278.43, 0.2, 1.0, 2.5e-5, float("inf"), None, 3)] == \
        ["4.098e4", "9575", "278.4", "0.2", "1", "2.5e-5", "inf", "", "3"]


def test_bitflip_bars_draw_collapses(tmp_path, monkeypatch):
    """A cell where 3 of 4 trials collapsed reaches the top edge (its median is a collapse), hatched, with its
    share marked; the old panel drew it at the median of its one surviving trial (1.0)."""
    with ResultStore(tmp_path) as store:
        rid = store.start_run({"device": "cpu", **OPTIONS})
        for i, (bit, value, collapsed) in enumerate([("exp_msb", None, True)] * 3 + [("exp_msb", 1.0, False)]
                                                    + [("mantissa_lsb", 1.0, False)] * 4):
            store.record(run_id=rid, test_id="suites/test_bitflip.py::t", suite="bitflip", model="m",
                         metric="ppl_ratio", value=value, collapsed=collapsed, method="uniform", seed=i,
                         perturbation={"n_flips": 1, "bit_class": bit, "dtype": "fp32"})
    data = load_run(tmp_path)
    cells = sweep(data.records, "bitflip")[0].set_index("bit_class")
    assert cells.loc["exp_msb", "median"] == 1.0 and cells.loc["exp_msb", "median_all"] == float("inf")
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, outdir, name: drawn.append(fig) or f"figures/{name}.png")
    (fig_meta,) = figures.sweep_curves(data, tmp_path)
    ax = drawn[0].axes[0]
    bars = {round(p.get_x() + p.get_width() / 2, 3): p for p in ax.patches if p.get_fill()}
    heights = sorted(p.get_height() for p in bars.values())
    assert heights[0] == 1.0 and heights[-1] > 1.0  # the collapsed cell stands at the top edge, above 1.0
    frames = [p for p in ax.patches if not p.get_fill()]
    assert len(frames) == 1 and frames[0].get_hatch() == "///"
    assert [t.get_text() for t in ax.texts] == ["75%"]
    assert "collapse" in fig_meta.caption and "all trials" in fig_meta.caption


def test_latest_per_suite_takes_the_newest_run_of_each_suite(tmp_path):
    from reports.build import build_store

    with ResultStore(tmp_path) as store:
        first = _run(store, 10.0, seed=0)
        smoke = store.start_run({"device": "cpu", **OPTIONS})
        store.record(run_id=smoke, test_id="suites/test_smoke.py::test_clean", suite="smoke", model="m",
                     metric="perplexity", value=30.0)
        store.finish_run(smoke)
        last = _run(store, 12.0, seed=5)
    built = build_store(tmp_path)
    assert built.run_page.name == last and set(built.run_pages) == {first, smoke, last}
    latest = (built.latest["m"] / "tables" / "claims.csv")
    claims = pd.read_csv(latest)
    assert claims["value"].tolist() == [12.0]  # robustness from the newest run (seed 5)
    page = (built.latest["m"] / "index.html").read_text()
    assert f"From run <a href='../{smoke}/index.html'>" in page and f"From run <a href='../{last}/index.html'>" in page
    assert "2 suites from 2 runs" in page
