"""Regression tracking: baseline files, Baseline.check (what the plugin's --baseline calls), compare."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from harness.errors import HarnessError
from harness.records import ResultStore
from reports.__main__ import main
from reports.load import load_run
from reports.regression import (
    BASELINE_SCHEMA_VERSION,
    Baseline,
    Tolerance,
    export_baseline,
    judge,
    load_baseline,
    load_tolerances,
)
from reports.sample import replay_run, sample_store

pytest_plugins = ["pytester"]


def _pick(records) -> dict[str, str]:
    """From a real run's claims with positive finite values: an upper-side claim to worsen (x1.5), a
    lower-side claim to worsen (x0.5) and another upper-side claim to improve (x0.8)."""
    from reports.load import claim_direction

    c = records[records["is_claim"] & (records["value"] > 0) & (records["value"] < math.inf)]
    c = c.drop_duplicates("claim", keep=False)  # one row per name: the test id is then unambiguous
    side = {r["claim"]: claim_direction(r["metric"], r["value"], r["bound"], r["passed"], r["xtra"],
                                        higher_is_better=r["higher_is_better"]) for r in c.to_dict("records")}
    upper = sorted(n for n, d in side.items() if d is False)
    lower = sorted(n for n, d in side.items() if d is True)
    assert len(upper) >= 2 and lower, f"the sample run should hold claims of both sides: {side}"
    return {"upper": upper[0], "lower": lower[0], "improved": upper[1]}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, sample_base):
    """The real sample run, its baseline file, and a replay of it (commit 2222222) with one upper-side and
    one lower-side claim worsened and one upper-side claim improved."""
    sample, first = sample_store(sample_base)
    d = tmp_path_factory.mktemp("reg") / "results"
    shutil.copytree(sample, d, ignore=shutil.ignore_patterns("report*", "root"))
    names = _pick(load_run(d, first).records)
    path = export_baseline(d, d / "baselines" / "tiny-llama.json", run_id=first)
    second = replay_run(d, first, info={"git_commit": "2222222"},
                        scale={names["upper"]: 1.5, names["lower"]: 0.5, names["improved"]: 0.8})
    return d, path, first, second, names


def _claims(d, run_id):
    recs = load_run(d, run_id).records
    return [r for r in recs.to_dict("records") if r["is_claim"]]


def test_check_fails_exactly_the_regressed_claims(two_runs):
    d, path, first, second, names = two_runs
    base = load_baseline(path)
    messages = {r["claim"]: base.check(r) for r in _claims(d, second)}
    flagged = {c for c, m in messages.items() if m}
    assert flagged == {names["upper"], names["lower"]}
    before = {r["claim"]: r["value"] for r in _claims(d, first)}
    msg = messages[names["lower"]]
    low = before[names["lower"]]
    assert "\n" not in msg and f"{low * 0.5:.4g} vs {low:.4g}" in msg and "-50.0%" in msg and "a lower bound" in msg
    assert str(path) in msg and "+50.0%" in messages[names["upper"]] and "an upper bound" in messages[names["upper"]]


def test_same_run_has_no_regression(two_runs):
    d, path, first, _, _ = two_runs
    base = load_baseline(path)
    assert all(base.check(r) is None for r in load_run(d, first).records.to_dict("records"))


def test_check_takes_the_recorder_dict(two_runs):
    """The plugin passes what it wrote: JSON columns as dicts, no parsed columns."""
    d, path, first, _, names = two_runs
    base = load_baseline(path)
    row = next(r for r in _claims(d, first) if r["claim"] == names["upper"])
    rec = {k: row[k] for k in ("run_id", "test_id", "suite", "model", "metric", "value", "seed", "dtype",
                               "higher_is_better", "collapsed", "bound", "passed", "outcome")}
    rec.update(extra=row["xtra"], perturbation=row["pert"])
    assert base.check(rec) is None
    assert f"{names['upper']} regressed" in base.check({**rec, "value": rec["value"] * 1.5})
    allowed = base.tolerances.for_row(rec["metric"], names["upper"]).allowed(rec["value"])
    assert base.check({**rec, "value": rec["value"] + 0.9 * allowed}) is None  # within tolerance
    assert base.check({**rec, "value": rec["value"] + 1.1 * allowed + 1e-12}) is not None
    assert base.check({**rec, "model": "other-model"}) is None  # nothing to compare with
    assert "inf (collapsed)" in base.check({**rec, "value": None, "collapsed": True})


def test_compare_against_previous_run_lists_statuses(two_runs):
    d, _path, first, second, names = two_runs
    base = Baseline.from_store(d, first)
    cmp = base.compare(load_run(d, second).records)
    claims = cmp[cmp["kind"] == "claim"].drop_duplicates("name", keep=False).set_index("name")["status"]
    assert claims[names["upper"]] == "regressed" and claims[names["lower"]] == "regressed"
    assert claims[names["improved"]] == "improved"
    others = claims.drop([names["upper"], names["lower"], names["improved"]])
    assert set(others) <= {"ok", "ignored"}, others[~others.isin(["ok", "ignored"])]
    assert list(cmp["kind"].unique()) == ["claim", "metric"]  # claims first


@pytest.mark.parametrize("base, value, direction, tol, status", [
    (10.0, 10.4, False, Tolerance(0.0, 0.05), "ok"),
    (10.0, 10.6, False, Tolerance(0.0, 0.05), "regressed"),
    (10.0, 9.4, False, Tolerance(0.0, 0.05), "improved"),
    (0.90, 0.885, True, Tolerance(0.01, 0.0), "regressed"),
    (0.90, 0.895, True, Tolerance(0.01, 0.0), "ok"),
    (0.0, 0.04, False, Tolerance(0.05, 0.05), "ok"),      # abs tolerance near zero
    (1.0, 1.2, None, Tolerance(0.0, 0.1), "changed"),     # unknown metric: two-sided
    (1.0, 0.8, None, Tolerance(0.0, 0.1), "changed"),
    (1.0, 1.05, None, Tolerance(0.0, 0.1), "ok"),
    (1.0, math.inf, False, Tolerance(0.0, 0.1), "regressed"),
    (math.inf, math.inf, False, Tolerance(0.0, 0.1), "ok"),
    (math.inf, 3.0, False, Tolerance(0.0, 0.1), "improved"),
])
def test_judge(base, value, direction, tol, status):
    assert judge(base, value, direction, tol)[0] == status


def test_unknown_metric_is_two_sided(tmp_path):
    def run(store, value):
        rid = store.start_run({"device": "cpu"})
        store.record(run_id=rid, test_id="t", suite="evaluate", model="m", metric="mystery", value=value)
        return rid

    with ResultStore(tmp_path) as store:
        first, second = run(store, 1.0), run(store, 0.5)
    base = Baseline.from_store(tmp_path, first)
    row = load_run(tmp_path, second).records.to_dict("records")[0]
    assert "no direction: two-sided" in base.check(row)
    assert base.compare(load_run(tmp_path, second).records)["status"].tolist() == ["changed"]


def test_baseline_file_roundtrip(two_runs):
    d, path, first, _, names = two_runs
    data = json.loads(path.read_text())
    assert data["schema_version"] == BASELINE_SCHEMA_VERSION and data["kind"] == "esa-harness-baseline"
    assert data["models"] == ["tiny-llama"] and data["run"]["run_id"] == first
    assert {"device", "dtype", "torch", "transformers", "git_commit"} <= set(data["run"])
    claim = next(r for r in data["rows"] if r["claim"] == names["lower"])
    assert claim["direction"] is True and claim["kind"] == "claim"
    assert any(r["value"] == "inf" for r in data["rows"])  # attacks that never collapsed survive JSON as inf
    from_file = load_baseline(path).rows.set_index(["kind", "name", "test_id", "method", "perturbation"])
    from_store = Baseline.from_store(d, first).rows.set_index(["kind", "name", "test_id", "method", "perturbation"])
    assert from_file.index.sort_values().equals(from_store.index.sort_values())


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"kind": "something-else"}', "is not an esa-harness baseline"),
    ('{"kind": "esa-harness-baseline", "schema_version": 99, "rows": []}', "has schema version 99"),
])
def test_bad_baseline_file_is_one_line_error(tmp_path, content, message):
    path = tmp_path / "b.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(HarnessError) as err:
        load_baseline(path)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_compatibility_warnings(two_runs):
    _, path, _, _, _ = two_runs
    base = load_baseline(path)
    assert base.compatibility(dict(base.run), ["tiny-llama"]) == []
    warnings = base.compatibility({**base.run, "device": "cuda:0 (H100)", "torch": "9.9"}, ["opt-350m"])
    assert warnings[0].startswith("WARNING (baseline from another model):") and "opt-350m" in warnings[0]
    assert any(w.startswith("WARNING (environment differs): device") for w in warnings)
    assert any("torch is '9.9'" in w for w in warnings)
    config = {k: int(v) if v.isdigit() else v for k, v in base.config.items()}
    assert base.config["seed"] == "0" and base.compatibility({**base.run, **config}, ["tiny-llama"]) == []
    (other,) = base.compatibility({**base.run, **config, "seed": 5}, ["tiny-llama"])
    assert other.startswith("WARNING (baseline of another configuration)") and "seed 0 (this run: 5)" in other


def test_report_warns_when_environment_differs(two_runs, tmp_path):
    from reports.build import build_report

    d, _, first, _, _ = two_runs
    copy = tmp_path / "copy"
    shutil.copytree(d, copy, ignore=shutil.ignore_patterns("report*", "root", "baselines"))
    device = load_run(copy, first).run["device"]
    new = replay_run(copy, first, info={"device": "cuda:0 (H100)", "transformers": "9.0"})
    md = (build_report(copy, run_id=new) / "analysis_report.md").read_text()
    assert f"WARNING (environment differs): device is 'cuda:0 (H100)' in this run but '{device}'" in md
    assert "WARNING (environment differs): transformers is '9.0'" in md


def test_tolerance_table(tmp_path):
    tol = load_tolerances()
    assert tol.for_row("top1").abs == 0.01 and tol.for_row("never-heard-of").rel == tol.default.rel
    assert tol.for_row("super_weight_score").ignore
    assert tol.for_row("x_collapse_rate", "x_collapse_rate").abs == 0.10  # the metric in the name
    assert tol.for_row("mystery", "mystery") == tol.default
    bad = tmp_path / "t.toml"
    bad.write_text("[metric.kl]\nabsolute = 1\n")
    with pytest.raises(HarnessError, match="unknown keys"):
        load_tolerances(bad)
    custom = tmp_path / "c.toml"
    custom.write_text('[default]\nrel = 0.5\n[claim."x"]\nabs = 3\n')
    t = load_tolerances(custom)
    assert t.for_row("kl").rel == 0.5 and t.for_row("kl", "x").abs == 3


def test_cli_export_and_compare(two_runs, tmp_path, capsys):
    d, _, first, second, names = two_runs
    out = tmp_path / "b.json"
    assert main(["export-baseline", str(d), "--run", first, "-o", str(out)]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["compare", str(d), "--baseline", str(out), "--run", second]) == 1
    text = capsys.readouterr().out
    assert f"tiny-llama {names['upper']}" in text and "REGRESSED:" in text
    assert main(["compare", str(d), "--baseline", str(out), "--run", first]) == 0
    assert main(["compare", str(d), "--baseline", str(tmp_path / "missing.json")]) == 2


# -- black-box: the plugin's --baseline with this API ----------------------------------------------

DEMO_SUITE = """
import json
from pathlib import Path

from harness.claims import ClaimSet

VALUES = json.loads(Path(__file__).with_name("values.json").read_text())
CLAIMS = ClaimSet("regdemo")
UPPER = CLAIMS.bound("upper_ppl_ratio", "stays low", side="max", statistic="ppl_ratio")
LOWER = CLAIMS.bound("lower_ppl_ratio", "stays high", side="min", statistic="ppl_ratio")
BETTER = CLAIMS.bound("better_top1", "stays high", side="min", statistic="top1")
STEADY = CLAIMS.bound("steady_kl", "stays low", side="max", statistic="kl")

def test_upper(model_name, recorder):
    recorder.claim(UPPER, VALUES["upper"])

def test_lower(model_name, recorder):
    recorder.claim(LOWER, VALUES["lower"])

def test_improved(model_name, recorder):
    recorder.claim(BETTER, VALUES["better"])

def test_steady(model_name, recorder):
    recorder.claim(STEADY, VALUES["steady"])
"""


def test_plugin_baseline_fails_exactly_the_regressed_claims(pytester):
    """A deliberately worsened run against a baseline: `--baseline` fails exactly the regressed claims,
    even though every claim still holds its bound."""
    pytester.makepyfile(test_regdemo=DEMO_SUITE)
    bounds = pytester.mkdir("suites") / "bounds"
    bounds.mkdir()
    (bounds / "regdemo.toml").write_text("[tiny-llama]\nupper_ppl_ratio = 10.0\nlower_ppl_ratio = 5.0\n"
                                      "better_top1 = 0.5\nsteady_kl = 1.0\n")
    values = pytester.path / "values.json"
    res = pytester.path / "res"
    args = ("-p", "fixtures.plugin", "-p", "no:cacheprovider", "--results-dir", str(res), "--model", "tiny-llama")

    values.write_text(json.dumps({"upper": 1.0, "lower": 41.0, "better": 0.8, "steady": 0.1}))
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=4)
    baseline = export_baseline(res, pytester.path / "baseline.json")

    values.write_text(json.dumps({"upper": 1.5, "lower": 20.0, "better": 0.9, "steady": 0.101}))
    result = pytester.runpytest_inprocess(*args, "--baseline", str(baseline), "-rf")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    # the plugin fails them in the recorder's teardown (an error) or in the call (a failure): either counts
    bad_reports = [r for r in result.reprec.getreports("pytest_runtest_logreport") if r.failed]
    assert {r.nodeid.split("::")[-1].split("[")[0] for r in bad_reports} == {"test_upper", "test_lower"}
    result.stdout.fnmatch_lines(["*upper_ppl_ratio regressed against baseline*1.5 vs 1 (+50.0%)*"])
    result.stdout.fnmatch_lines(["*lower_ppl_ratio regressed*20 vs 41 (-51.2%); a lower bound (>= 5)*"])

    bad = pytester.path / "other.json"
    bad.write_text('{"kind": "esa-harness-baseline", "schema_version": 99}')
    result = pytester.runpytest_inprocess(*args, "--baseline", str(bad))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*has schema version 99*"])
