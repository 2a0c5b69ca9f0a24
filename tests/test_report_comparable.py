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


# -- the model under test (issue 35): its health claims and its weights' identity -----------------------------

HEALTH_TEST = "model::{}"
SMOLLM_SOURCE = {"name": "m", "source": "gguf-package", "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf", "converted_by_transformers": "5.25.0",
                 "transformers": "5.25.0", "torch": "2.13.0+cpu"}


def _health(store: ResultStore, rid: str, digest: str, *, model: str = "m", ppl: float = 17.47,
            bound: float = 18.35, seed: int = 0, weights_differ: str = "") -> None:
    """A model's health rows as ``fixtures.health`` writes them: the weights row, the clean-perplexity bound
    (judged against ``bound``) and one relation (perplexity below sqrt(V)); a failed claim carries its one-line
    ``failure``, every claim ``weights_differ`` when given."""
    from harness.health import BELOW_UNIFORM, CLEAN_PERPLEXITY, failure

    test_id = HEALTH_TEST.format(model)
    store = _Seeded(store, seed)
    store.record(run_id=rid, test_id=test_id, suite="model", model=model, metric="weights", value=134515008,
                 extra={"digest": digest, "dtype": "float32", "parameters": 134515008, "source": SMOLLM_SOURCE})
    measured = {"perplexity": ppl, "vocab": 49152, "weights": digest,
                **({"weights_differ": weights_differ} if weights_differ else {})}
    bound_claim = {"claim": "clean_perplexity", "kind": "bound", "side": "max", "seeded": False,
                   "statistic": "perplexity", "statement": "Clean perplexity on the evaluation windows stays at its "
                   "measured level", **measured}
    why = {} if ppl <= bound else {"failure": failure(CLEAN_PERPLEXITY, ppl, bound)}
    store.record(run_id=rid, test_id=test_id, suite="model", model=model, metric="clean_perplexity", value=ppl,
                 bound=bound, passed=ppl <= bound, outcome="passed" if ppl <= bound else "failed",
                 extra={**bound_claim, **why})
    why = {} if 221.7 > ppl else {"failure": failure(BELOW_UNIFORM, 221.7, ppl)}
    store.record(run_id=rid, test_id=test_id, suite="model", model=model, metric="below_uniform", value=221.7,
                 bound=ppl, passed=221.7 > ppl, outcome="passed" if 221.7 > ppl else "failed",
                 extra={"claim": "below_uniform", "kind": "relation", "side": "min", "seeded": False,
                        "statistic": "perplexity", "statement": "Clean perplexity is below sqrt(V)", **measured, **why})


class _Seeded:
    """A store whose ``record`` writes every row at one seed (as the recorder does)."""

    def __init__(self, store: ResultStore, seed: int) -> None:
        self.store, self.seed = store, seed

    def record(self, **row) -> None:
        self.store.record(seed=self.seed, dtype="float32", **row)


def _health_run(store: ResultStore, digest: str, value: float = 10.0, **kw) -> str:
    """A run of the robustness claim of :func:`_run` with the model's health rows."""
    rid = _run(store, value)
    _health(store, rid, digest, **kw)
    return rid


def _main_html(page: str) -> str:
    return page[page.index("<main>"):]


def test_health_panel_comes_before_the_suites(tmp_path):
    """The run page shows the model's health claims and the identity of its weights before every suite."""
    with ResultStore(tmp_path) as store:
        rid = _health_run(store, "w1:71b3399fdf41a6ba")
        _health(store, rid, "w1:71b3399fdf41a6ba")  # a second shard of the run judged the model too (merged)
    out = build_report(tmp_path, rid)
    health = pd.read_csv(out / "tables" / "claims.csv").query("suite == 'model'")
    assert sorted(health["claim"]) == ["below_uniform", "clean_perplexity"]  # once per model, as Summary counts
    main_html = _main_html((out / "index.html").read_text())
    assert main_html.index("id='attention'") < main_html.index("id='model'") < main_html.index("id='suites'")
    model = main_html[main_html.index("<section id='model'>"): main_html.index("<section id='suites'>")]
    assert "<h2>Model</h2>" in model and "Healthy: m" in model
    for text in ("clean_<wbr>perplexity", "17.47", "&lt;=&nbsp;18.35", "below_<wbr>uniform", "&gt;&nbsp;17.47",
                 "w1:71b3399fdf41a6ba", "gguf-package", "HuggingFaceTB/SmolLM2-135M-Instruct",
                 "converted by transformers", "SmolLM2-135M-Instruct.Q4_1.gguf"):
        assert text in model, text
    assert "id='suite-model'" not in main_html  # shown once, in the Model panel
    assert "class='unhealthy'" not in main_html and "weights changed" not in main_html
    md = (out / "analysis_report.md").read_text()
    assert md.index("## Model") < md.index("## Failed claims")
    assert "| digest | w1:71b3399fdf41a6ba |" in md and "| converted by transformers | 5.25.0 |" in md
    assert "| passed | m | clean_perplexity | 17.47 | &lt;= | 18.35 |" in md


def test_an_unhealthy_model_comes_first_in_attention(tmp_path):
    """A failed health claim is the first line of "Needs attention", with its value and bound."""
    with ResultStore(tmp_path) as store:
        rid = _health_run(store, "w1:00000000deadbeef", ppl=55918.0)
    out = build_report(tmp_path, rid)
    main_html = _main_html((out / "index.html").read_text())
    first = main_html.index("<h2>Needs attention</h2>") + len("<h2>Needs attention</h2>")
    line = main_html[first:].lstrip().removeprefix("<div class='unhealthy'>").split("</div>")[0]
    assert line.startswith("model m is not healthy: clean perplexity 55918 is not &lt;= 18.35, its bound; clean "
                           "perplexity 55918 is not below sqrt(V) = 221.7: its suite tests were skipped"), line
    assert main_html.index(line) < main_html.index("class='cards'")
    model = main_html[main_html.index("<section id='model'>"):]
    assert line.split(": its suite")[0] in model and "Healthy:" not in model
    for name in ("analysis_report.md", "summary.md"):
        md = (out / name).read_text()
        assert ("- **UNHEALTHY model m is not healthy: clean perplexity 55918 is not <= 18.35, its bound; clean "
                "perplexity 55918 is not below sqrt(V) = 221.7: its suite tests were skipped.**") in md, name


def test_bounds_measured_on_other_weights_say_so(tmp_path):
    """On weights other than those its bounds were measured on, a model's suite bounds are unverified with the
    reason "weights differ ..." (its health bound is still judged, its health rows carry the reason): the page says
    so in one line per model, with both digests, and labels those bounds as such."""
    from harness.claims import WEIGHTS_DIFFER, bound_config, config_mismatch

    bounds = tmp_path / "bounds"
    bounds.mkdir()
    (bounds / "config.toml").write_text('[m]\npreset = "quick"\nweights = "w1:aaaaaaaaaaaaaaaa"\n'
                                        '[n]\npreset = "quick"\nweights = "w1:aaaaaaaaaaaaaaaa"\n')
    reasons = {model: config_mismatch(bounds, model, {**bound_config(OPTIONS), "weights": "w1:bbbbbbbbbbbbbbbb"})
               for model in ("m", "n")}
    assert all(why.startswith(WEIGHTS_DIFFER) for why in reasons.values())
    with ResultStore(tmp_path / "results") as store:
        rid = store.start_run({"device": "cpu", **OPTIONS})
        store.record(run_id=rid, test_id="suites/test_robustness.py::test_noise", suite="robustness", model="m",
                     metric="noise_ppl_ratio_max", value=10.0, outcome="unverified", seed=0,
                     extra={**CLAIM, "reason": reasons["m"]})
        for model in ("m", "n"):  # n: no suite bound in this run, only its health rows say it
            _health(store, rid, "w1:bbbbbbbbbbbbbbbb", model=model, weights_differ=reasons[model])
        store.finish_run(rid)
    out = build_report(tmp_path / "results", rid)
    main_html = _main_html((out / "index.html").read_text())
    attention = main_html[: main_html.index("<section id='model'>")]
    line = (f"m: {WEIGHTS_DIFFER} (bounds: w1:aaaaaaaaaaaaaaaa, this run: w1:bbbbbbbbbbbbbbbb): 1 bound(s) "
            "unverified in robustness (1)")
    noted = f"n: {WEIGHTS_DIFFER} (bounds: w1:aaaaaaaaaaaaaaaa, this run: w1:bbbbbbbbbbbbbbbb)"
    assert f"<div class='warn'>{line}</div>" in attention and f"<div class='warn'>{noted}</div>" in attention
    assert "Nothing needs attention" not in attention
    assert "title='UNVERIFIED (weights differ)'" in main_html
    md = (out / "analysis_report.md").read_text()
    assert f"**{line}**" in md and f"**{noted}**" in md
    row = "| UNVERIFIED (weights differ) | robustness | m | noise_ppl_ratio_max | 10 | &lt;= |  | "
    assert f"{row}{WEIGHTS_DIFFER}" in md  # the reason, not the statement


def test_weights_changed_between_compared_runs(tmp_path):
    """Two runs of one model at one configuration on different weights: the run page (compared with the earlier
    run), the latest-per-suite page and the model comparison say so, with both digests."""
    from reports.build import build_store
    from reports.compare import build_comparison

    with ResultStore(tmp_path) as store:
        first = _health_run(store, "w1:1111111111111111")
        second = store.start_run({"device": "cpu", **OPTIONS})  # the health claims only, on new weights
        _health(store, second, "w1:2222222222222222")
        store.finish_run(second)
    built = build_store(tmp_path)
    page = (built.run_page / "index.html").read_text()
    line = f"m: weights changed between the runs: w1:1111111111111111 in run {first}, w1:2222222222222222 in this run"
    assert line in page and line in (built.run_page / "analysis_report.md").read_text()
    assert page.index(line) < page.index("<section id='model'>") and "Nothing needs attention" not in page
    across = f"m: weights changed between the runs: w1:1111111111111111 in run {first}; w1:2222222222222222 in run"
    assert across in (built.latest["m"] / "index.html").read_text()
    assert "weights changed" not in (built.run_pages[first] / "index.html").read_text()  # nothing earlier
    index = built.index.read_text()  # the store index names each run's weights
    assert "<td>w1:1111111111111111</td>" in index and "<td>w1:2222222222222222</td>" in index
    comparison = build_comparison([tmp_path], tmp_path / "compare").read_text()
    assert across in comparison
    heads = pd.read_csv(tmp_path / "compare" / "tables" / "headlines.csv").set_index("model")
    assert heads.loc["m", "weights"] == "w1:1111111111111111 / w1:2222222222222222"
    assert heads.loc["m", "health"] == "healthy"


def test_export_bounds_records_the_weights_they_were_measured_on(tmp_path):
    """export-bounds writes the digest of the runs' weights into config.toml, where a run on other weights gets
    the bounds unverified; runs on different weights are refused in one line."""
    from harness.claims import WEIGHTS_DIFFER, bound_config, config_mismatch
    from harness.errors import HarnessError
    from reports.bounds import export_bounds

    bounds = tmp_path / "bounds"
    bounds.mkdir()
    with ResultStore(tmp_path / "results") as store:
        for seed in (0, 1):
            rid = store.start_run({"device": "cpu", **OPTIONS, "seed": seed})
            _health(store, rid, "w1:71b3399fdf41a6ba", seed=seed)
            store.finish_run(rid)
    exported, written = export_bounds(tmp_path / "results", "m", bounds, min_seeds=2)
    assert [e.claim for e in exported] == ["clean_perplexity"] and (bounds / "model.toml") in written
    config = (bounds / "config.toml").read_text()
    assert '[m]\n' in config and 'weights = "w1:71b3399fdf41a6ba"\n' in config and 'preset = "quick"' in config
    assert config_mismatch(bounds, "m", {**bound_config(OPTIONS), "weights": "w1:71b3399fdf41a6ba"}) == ""
    assert config_mismatch(bounds, "m", {**bound_config(OPTIONS), "weights": "w1:0"}).startswith(WEIGHTS_DIFFER)
    with ResultStore(tmp_path / "results") as store:
        rid = store.start_run({"device": "cpu", **OPTIONS, "seed": 2})
        _health(store, rid, "w1:ffffffffffffffff", seed=2)
        store.finish_run(rid)
    with pytest.raises(HarnessError) as err:
        export_bounds(tmp_path / "results", "m", bounds, min_seeds=2)
    message = str(err.value)
    assert "\n" not in message and "differ in their weights" in message
    assert "w1:71b3399fdf41a6ba" in message and f"w1:ffffffffffffffff: {rid}" in message
    assert 'weights = "w1:71b3399fdf41a6ba"' in (bounds / "config.toml").read_text()  # nothing written
