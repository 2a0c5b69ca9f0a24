"""The report built from the store of a real tiny-model suite run (reports.sample runs the suites).

One session-scoped run of a subset of the suites on tiny-llama (``reports.sample.SAMPLE_K``) with a
bounds directory holding a robustness bound tiny-llama cannot meet (``reports.sample.FAILING_CLAIM``: the store
then holds a real failed claim next to the unverified ones), then a replay of that run with some claim values
worsened (a second run, for the trend and the regression sections). The comparison page adds a second model
(tiny-gpt-neox, fewer suites).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from harness.records import ResultStore
from reports import build_report
from reports.__main__ import main
from reports.compare import build_comparison
from reports.compare import main as compare_main
from reports.load import claim_direction, load_run, xget
from reports.sample import FAILING_BOUND, FAILING_CLAIM, FAILING_SUITE, replay_run, run_suites, sample_store
from reports.stats import wilson

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_run(sample_base) -> tuple[Path, str]:
    """(results dir, run id) of the real tiny-llama run (with a robustness bound it fails)."""
    return sample_store(sample_base)


@pytest.fixture(scope="session")
def two_runs(real_run, tmp_path_factory) -> tuple[Path, str, str, Path]:
    """A copy of the real run's store, a replay of the run with one upper-bound claim worsened x1.5 (a later
    commit), and the report of the replay."""
    d = tmp_path_factory.mktemp("two-runs") / "results"
    shutil.copytree(real_run[0], d, ignore=shutil.ignore_patterns("report*", "root"))
    first = real_run[1]
    recs = load_run(d, first).records
    claims = recs[recs["is_claim"] & (recs["value"] > 0) & (recs["value"] < math.inf)
                  & (xget(recs, "kind") != "relation")].drop_duplicates("claim", keep=False)
    side = [claim_direction(m, v, b, p, x, higher_is_better=h) for m, v, b, p, x, h in
            zip(claims["metric"], claims["value"], claims["bound"], claims["passed"], claims["xtra"],
                claims["higher_is_better"], strict=True)]
    upper = claims[[s is False for s in side]]
    assert len(upper) >= 1, "the sample run should record an upper-bound claim with a positive value"
    second = replay_run(d, first, scale={upper["claim"].iloc[-1]: 1.5}, info={"git_commit": "2222222"})
    return d, first, second, build_report(d, run_id=second)


@pytest.fixture(scope="session")
def report(real_run, tmp_path_factory) -> Path:
    """The report of the real run, in this worker's own directory (xdist workers share the run's store)."""
    d, first = real_run
    return build_report(d, run_id=first, out_dir=tmp_path_factory.mktemp("report-first"))


def _claims(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / "claims.csv")


def test_report_layout(real_run, report):
    d, first = real_run
    assert report.name == first and report.parent.name.startswith("report-first")
    for name in ("index.html", "analysis_report.md", "summary.md", "tables/claims.csv", "tables/attack_cells.csv",
                 "tables/adversarial_cells.csv"):
        assert (report / name).is_file(), name
    suites = set(load_run(d, first).records["suite"])
    assert {"smoke", "ablation", "bitflip", "attack", "adversarial"} <= suites, suites
    assert {f"summary_{s}.csv" for s in suites} == {p.name for p in (report / "tables").glob("summary_*.csv")}
    figs = {p.name for p in (report / "figures").glob("*.png")}
    for name in ("bitflip_bars__tiny-llama.png", "attack_curve__tiny-llama.png", "attack_flips__tiny-llama.png",
                 "adversarial_bars__tiny-llama.png", "ablation_heatmap__tiny-llama__zero.png"):
        assert name in figs, (name, figs)
    assert "bitflip_curve__tiny-llama.png" not in figs  # one flip count: bars, never a one-value axis
    assert not [p for p in report.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_four_outcomes_from_the_real_run(report):
    claims = _claims(report)
    outcomes = set(claims["outcome"])
    assert "failed" in outcomes and "unverified" in outcomes, outcomes
    failed = claims[claims["outcome"] == "failed"]
    assert list(failed["claim"]) == [FAILING_CLAIM] and failed["bound"].iloc[0] == FAILING_BOUND
    assert failed["value"].iloc[0] > FAILING_BOUND and failed["op"].iloc[0] == "<="
    assert list(claims["outcome"]) == sorted(claims["outcome"], key=["failed", "unverified", "passed",
                                                                     "not_applicable"].index)
    unverified = claims[claims["outcome"] == "unverified"]
    assert unverified["bound"].isna().all()  # unverified = no number for this model, never a silent pass


def test_attack_and_adversarial_sections_show_the_suites_records(real_run, report):
    d, first = real_run
    recs = load_run(d, first).records
    attack = pd.read_csv(report / "tables" / "attack_cells.csv")
    assert set(attack["attack"]) == {"progressive", "random"} and set(attack["dtype"]) == {"fp32"}
    n_attack = recs[(recs["suite"] == "attack") & (recs["metric"] == "flips_to_collapse")]
    assert attack["seeds"].sum() == len(n_attack) and (attack["budget"] == 4).all()
    adv = pd.read_csv(report / "tables" / "adversarial_cells.csv")
    assert set(adv["attack"]) == {"typo", "insertion"}
    deltas = recs[(recs["suite"] == "adversarial") & (recs["metric"] == "target_logprob_delta")]
    for row in adv.itertuples():
        mine = deltas[deltas["method"] == row.attack]["value"]
        assert row.prompts == len(mine) and row.mean_logprob_delta == pytest.approx(mine.mean())
    page = (report / "index.html").read_text()
    assert "id='attack_flips__tiny-llama'" in page and "id='adversarial_bars__tiny-llama'" in page


def test_bitflip_bars_count_collapses_per_bit_class(real_run, report):
    from reports.tables import sweep

    d, first = real_run
    recs = load_run(d, first).records
    df, metric, _ = sweep(recs, "bitflip")
    assert metric == "ppl_ratio" and df["x"].nunique() == 1
    trials = recs[(recs["suite"] == "bitflip") & (recs["metric"] == "ppl_ratio") & ~recs["is_claim"]]
    assert df["trials"].sum() == len(trials) and df["collapsed"].sum() == trials["collapsed"].sum()
    assert {"sign", "exp_msb", "mantissa_lsb"} <= set(df["bit_class"])


def test_run_page_attention_first(two_runs):
    out = two_runs[-1]
    page = (out / "index.html").read_text()
    main_html = page[page.index("<main>"):]
    first_h2 = re.search(r"<h2[^>]*>([^<]*)</h2>", main_html).group(1)
    assert first_h2 == "Needs attention"
    attention = main_html[: main_html.index("<section id='model'>")].replace("<wbr>", "")
    assert FAILING_CLAIM in attention and "Failed claims" in attention
    assert "Unverified claims" in attention and "Regressed against previous run" in attention
    assert main_html.index("id='attention'") < main_html.index("id='model'") < main_html.index("id='suites'") \
        < main_html.index("id='over-time'")
    # suites folded, the failing one open, each holding its claims and figures
    assert f"<details class='suite' id='suite-{FAILING_SUITE}' open>" in page
    assert re.search(r"<details class='suite' id='suite-bitflip'>.*?bitflip_bars__tiny-llama", page, re.S)
    assert "o-unverified" in page and "UNVERIFIED (no bound)" in page


def test_model_panel_of_the_real_run(real_run, report):
    """The model's health claims and its weights' identity, as the session recorded them, before the suites."""
    from reports.health import digests

    d, first = real_run
    (digest,) = {v for (rid, model), v in digests(load_run(d, first).records).items() if model == "tiny-llama"}
    main_html = (report / "index.html").read_text().split("<main>", 1)[1]
    model = main_html[main_html.index("<section id='model'>"): main_html.index("<section id='suites'>")]
    assert main_html.index("id='attention'") < main_html.index("id='model'")
    assert "Healthy: tiny-llama" in model and f"<td>{digest}</td>" in model and "<td>tiny</td>" in model
    claims = _claims(report).query("suite == 'model'").set_index("claim")["outcome"].to_dict()
    assert claims == {"output_finite": "passed", "clean_perplexity": "not_applicable", "below_uniform":
                      "not_applicable", "below_unigram": "not_applicable", "top1_above_chance": "not_applicable"}
    for name in claims:
        assert name.replace("_", "_<wbr>") in model, name
    assert "id='suite-model'" not in main_html
    md = (report / "analysis_report.md").read_text()
    assert "## Model" in md and f"| digest | {digest} |" in md


def test_runs_over_time(two_runs):
    out = two_runs[-1]
    changes = pd.read_csv(out / "tables" / "changes.csv")
    assert list(changes["change"].unique()) == ["value"] and len(changes) == 1
    row = changes.iloc[0]
    assert row["value"] == pytest.approx(1.5 * row["value_before"]) and row["rel"] == pytest.approx(0.5)
    trend = pd.read_csv(out / "tables" / "trend.csv")
    assert len(trend.columns) == 3 + 2 and "2222222" in trend.columns[-1]
    page = (out / "index.html").read_text()
    sparks = page.count("<svg class=\"spark\"")
    assert sparks == len(_claims(out).drop_duplicates(["suite", "model", "claim"]))
    assert 'stroke-dasharray="3,2"' in page  # the failed claim's bound is drawn


def test_html_is_self_contained_and_small(report):
    page = (report / "index.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(list((report / "figures").glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=['\"]https?:", page)
    assert page.count("<script>") == 1
    assert len(page.encode()) < 1_500_000, len(page.encode())


def test_rebuild_is_atomic(real_run, tmp_path, monkeypatch):
    d, first = real_run
    out = build_report(d, run_id=first, out_dir=tmp_path)
    before = (out / "index.html").read_text()
    import reports.html

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reports.html, "page", broken)
    with pytest.raises(RuntimeError):
        build_report(d, run_id=first, out_dir=tmp_path)
    assert (out / "index.html").read_text() == before  # the old report is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == [first]  # no temp dir left


def test_command_is_redacted(real_run, tmp_path):
    d, first = real_run
    store_dir = tmp_path / "copy"
    shutil.copytree(d, store_dir, ignore=shutil.ignore_patterns("report*", "root"))
    new = replay_run(store_dir, first, info={"command": "pytest --x token=abc hf_abcdefghijklmn"})
    page = (build_report(store_dir, run_id=new) / "index.html").read_text()
    assert "hf_abcdefghijklmn" not in page and "token=abc" not in page


@pytest.mark.parametrize("setup, message", [
    ("missing", "does not exist"),
    ("no-store", "no results store"),
    ("empty", "has no runs"),
    ("no-records", "has no records"),
    ("unknown-run", "unknown run id 'nope'"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, setup, message):
    d = tmp_path / "results"
    args = [str(d)]
    if setup != "missing":
        d.mkdir()
    if setup in ("empty", "no-records", "unknown-run"):
        with ResultStore(d) as store:
            if setup in ("no-records", "unknown-run"):
                rid = store.start_run({})
            if setup == "unknown-run":
                store.record(run_id=rid, test_id="t", suite="smoke", model="m", metric="perplexity", value=1.0)
                args += ["--run", "nope"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert not (d / "report").exists() or not any((d / "report").iterdir())


def test_cli_end_to_end_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    bad = subprocess.run([sys.executable, "-m", "reports", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=ROOT, env=env, timeout=120, check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_wilson():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


# -- the comparison page --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def second_model(sample_base) -> Path:
    """A real run of fewer suites on a second tiny family."""
    d = sample_base / "sample-tiny-gpt-neox"
    if not (d / "results.sqlite").is_file():
        run_suites(d, "tiny-gpt-neox", k="smoke or ablation or (bitflip and not attack)")
    return d


@pytest.fixture(scope="session")
def comparison(real_run, second_model, tmp_path_factory) -> Path:
    return build_comparison([real_run[0], second_model], tmp_path_factory.mktemp("compare"))


def test_comparison_page(comparison, real_run, second_model):
    page = comparison.read_text()
    for anchor in ("id='headlines'", "id='claims'", "id='figures'", "id='collapse_by_bit_class'",
                   "id='ablation_row'"):
        assert anchor in page, anchor
    matrix = pd.read_csv(comparison.parent / "tables" / "claim_matrix.csv")
    assert set(matrix["model"]) == {"tiny-llama", "tiny-gpt-neox"}
    heads = pd.read_csv(comparison.parent / "tables" / "headlines.csv").set_index("model")
    for d, model in ((real_run[0], "tiny-llama"), (second_model, "tiny-gpt-neox")):
        recs = load_run(d).history
        ppl = recs[(recs["model"] == model) & (recs["suite"] == "smoke") & (recs["metric"] == "perplexity")]
        assert heads.loc[model, "clean perplexity"] == pytest.approx(ppl["value"].iloc[-1])
    # the attack suite ran on tiny-llama only: its headline is blank for the other model
    assert pd.isna(heads.loc["tiny-gpt-neox", "flips to collapse: progressive"])
    assert heads.loc["tiny-llama", "flips to collapse: progressive"] == "> 4 (held)" or \
        float(heads.loc["tiny-llama", "flips to collapse: progressive"]) <= 4
    cell = re.search(rf"<td class='cell c-failed' title=\"{FAILING_CLAIM} on tiny-llama: FAILED", page)
    assert cell, "the failed claim is a red cell with its outcome on hover"


def test_compare_models_cli(tmp_path, capsys, real_run):
    assert compare_main([str(real_run[0]), "-o", str(tmp_path / "c")]) == 0
    assert Path(capsys.readouterr().out.strip()).is_file()
    assert compare_main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


# -- looked at as a person would: headless chromium -----------------------------------------------------

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)
PAGE_LIMIT = 1_500_000  # bytes: a page this size opens at once from a CI artifact


def _chromium(url: str, profile: Path, shot: Path | None = None, height: int = 1400) -> str:
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}"]
    if shot is not None:
        subprocess.run([*flags, f"--screenshot={shot}", f"--window-size=1280,{height}", url], capture_output=True,
                       timeout=120, check=False)
        assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        keep = os.environ.get("ESA_KEEP_SCREENSHOTS")
        if keep:
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, Path(keep) / shot.name)
        return ""
    return subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True, text=True,
                          timeout=120, check=False).stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")
def test_run_page_in_headless_chromium(two_runs, tmp_path):
    """The run page in a real browser: every figure decodes, the first screen is the attention summary."""
    _, _, _, out = two_runs
    page = out / "index.html"
    assert page.stat().st_size < PAGE_LIMIT, page.stat().st_size
    _chromium(page.as_uri(), tmp_path / "p", tmp_path / "run_page.png")
    _chromium(page.as_uri() + "#suite-bitflip", tmp_path / "p", tmp_path / "run_page_bitflip.png", height=2200)
    dom = _chromium(page.as_uri(), tmp_path / "p")
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_figs = len(list((out / "figures").glob("*.png")))
    assert 'data-loaded="true"' in body and f'data-images="{n_figs}"' in body and 'data-broken-images="0"' in body
    for section in ("attention", "suites", "over-time"):
        assert f'id="{section}"' in dom, section


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")
def test_comparison_page_in_headless_chromium(comparison, tmp_path):
    assert comparison.stat().st_size < PAGE_LIMIT, comparison.stat().st_size
    _chromium(comparison.as_uri(), tmp_path / "p", tmp_path / "compare_page.png", height=1800)
    dom = _chromium(comparison.as_uri(), tmp_path / "p")
    for section in ("headlines", "claims", "figures"):
        assert f'id="{section}"' in dom, section
    assert dom.count("<img") >= 2
