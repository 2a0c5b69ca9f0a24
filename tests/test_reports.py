"""The report builder on a synthetic store (reports.synthetic follows docs/RECORDS.md)."""

from __future__ import annotations

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
from reports.stats import jaccard, wilson
from reports.synthetic import ALL_SUITES, build_store, write_run

ROOT = Path(__file__).resolve().parents[1]
WORSE = {"wanda_50_ppl_ratio_max": 1.5}  # a lower-is-better claim pushed over its bound


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Three runs of every suite (the last one worse on one claim) and the report of the last."""
    d = tmp_path_factory.mktemp("full")
    ids = build_store(d, runs=2)
    with ResultStore(d) as store:
        ids.append(write_run(store, d, commit="3333333", seed=2, worsen=WORSE))
    return d, ids, build_report(d)


def test_report_layout(full):
    d, ids, out = full
    assert out == d / "report" / ids[-1]
    for name in ("index.html", "analysis_report.md", "summary.md", "tables/claims.csv", "tables/claims.md",
                 "tables/regression.csv", "tables/trend.csv", "tables/collapse_rates.csv"):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "tables").glob("summary_*.csv")} == {f"summary_{s}.csv" for s in ALL_SUITES}
    figs = {p.name for p in (out / "figures").glob("*.png")}
    assert figs == {
        "ablation_heatmap__tiny-llama__zero.png", "ablation_bars__tiny-llama.png",
        "robustness_curve__tiny-llama.png", "bitflip_curve__tiny-llama.png", "attack_curve__tiny-llama.png",
        "adversarial_curve__tiny-llama.png", "targeted_curve__tiny-llama.png", "pruning_curve__tiny-llama.png",
        "selective_curve__tiny-llama.png", "method_similarity__tiny-llama.png",
        "execution_time__tiny-llama.png", "super_weights_per_layer__tiny-llama.png", "claim_trend.png"}
    assert not [p for p in (d / "report").iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_claims_table(full):
    _, _, out = full
    claims = pd.read_csv(out / "tables" / "claims.csv")
    assert len(claims) == 9
    failed = claims[claims["result"] == "FAIL"]
    assert list(failed["claim"]) == ["wanda_50_ppl_ratio_max"]
    row = failed.iloc[0]
    assert row["op"] == "<=" and row["bound"] == 2.0 and row["value"] == pytest.approx(1.5 * 1.5683, rel=1e-3)
    assert set(claims.loc[claims["claim"] == "exponent_msb_collapse_rate_min", "op"]) == {">="}
    assert set(claims.loc[claims["claim"] == "mantissa_64_ppl_ratio_max", "op"]) == {"<="}


def test_analysis_report_has_the_numbers(full):
    _, _, out = full
    md = (out / "analysis_report.md").read_text()
    assert "model.layers.1.mlp.down_proj.weight[17, 402] = -3.92, score 120" in md
    assert "Most sensitive layer of tiny-llama: layer 1 (mlp_down, ppl_ratio 40.7" in md
    assert re.search(r"Highest collapse rate in robustness .*: \d+/8 = \d+% \(95% CI \d+%–\d+%\)", md)
    assert "Claim failed: wanda_50_ppl_ratio_max (pruning, tiny-llama): 2.352, bound <= 2." in md
    assert "**1 claims regressed**" in md
    assert "](figures/ablation_heatmap__tiny-llama__zero.png)" in md
    summary = (out / "summary.md").read_text()
    assert "wanda_50_ppl_ratio_max" in summary and "![" not in summary


def test_trend_has_one_column_per_run(full):
    _, ids, out = full
    trend = pd.read_csv(out / "tables" / "trend.csv")
    assert len(trend.columns) == 3 + len(ids)
    row = trend[trend["claim"] == "wanda_50_ppl_ratio_max"].iloc[0]
    assert row.iloc[-1].endswith(" !") and not str(row.iloc[-2]).endswith("!")
    assert "3333333" in trend.columns[-1]


def test_html_is_self_contained_and_escaped(full):
    _, _, out = full
    page = (out / "index.html").read_text()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(list((out / "figures").glob("*.png")))
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(href|src)=['\"]https?:", page)
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert page.count("<script>") == 1


def test_only_figures_of_suites_that_ran(tmp_path):
    build_store(tmp_path, suites=("smoke", "pruning"))
    out = build_report(tmp_path)
    assert [p.name for p in (out / "figures").iterdir()] == ["pruning_curve__tiny-llama.png"]
    assert not (out / "tables" / "trend.csv").exists()  # one run: no trend
    assert "Regression: no earlier run of these models" in (out / "analysis_report.md").read_text()


def test_super_weights_from_file_only(tmp_path):
    build_store(tmp_path, suites=("smoke",))
    sw = tmp_path / "tiny-llama" / "super_weights.json"
    sw.parent.mkdir(parents=True, exist_ok=True)
    sw.write_text('[{"method": "activation", "module": "model.layers.2.mlp.down_proj.weight", "layer": 2, '
                  '"row": 3, "col": 7, "value": 5.5, "score": 9.0}]')
    out = build_report(tmp_path)
    assert [p.name for p in (out / "figures").iterdir()] == ["super_weights_per_layer__tiny-llama.png"]
    assert "model.layers.2.mlp.down_proj.weight[3, 7] = 5.5" in (out / "analysis_report.md").read_text()


def test_run_option_and_rebuild_is_atomic(tmp_path, monkeypatch):
    ids = build_store(tmp_path, runs=2, suites=("smoke",))
    first = build_report(tmp_path, run_id=ids[0])
    assert first.name == ids[0] and (first / "index.html").is_file()
    marker = first / "index.html"
    before = marker.read_text()

    import reports.html

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(reports.html, "page", broken)
    with pytest.raises(RuntimeError):
        build_report(tmp_path, run_id=ids[0])
    assert marker.read_text() == before  # the old report is untouched
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == [ids[0]]  # no temp dir left
    monkeypatch.undo()
    assert build_report(tmp_path, run_id=ids[0]) == first


def test_command_is_redacted(tmp_path):
    with ResultStore(tmp_path) as store:
        write_run(store, tmp_path, suites=("smoke",), info={"command": "pytest --x token=abc hf_abcdefghijklmn"})
    page = (build_report(tmp_path) / "index.html").read_text()
    assert "hf_abcdefghijklmn" not in page and "abc" not in page.replace("abcdef", "")


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
            if setup == "no-records":
                store.start_run({})
            if setup == "unknown-run":
                write_run(store, d, suites=("smoke",))
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


def test_cli_prints_the_report_dir(tmp_path, capsys):
    build_store(tmp_path, suites=("smoke",))
    assert main([str(tmp_path)]) == 0
    assert Path(capsys.readouterr().out.strip(), "index.html").is_file()


def test_wilson_and_jaccard():
    assert wilson(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert wilson(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3) and jaccard([], []) == 1.0


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                None)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (apt-get install -y chromium)")
def test_index_html_renders_in_headless_chromium(full, tmp_path):
    """Load the page in a real browser: a screenshot is written and every figure decoded."""
    _, _, out = full
    url = (out / "index.html").as_uri()
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    shot = tmp_path / "page.png"
    subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2400", url], capture_output=True,
                   timeout=120, check=False)
    assert shot.is_file() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run([*flags, "--virtual-time-budget=5000", "--dump-dom", url], capture_output=True,
                         text=True, timeout=120, check=False).stdout
    body = re.search(r"<body[^>]*>", dom).group(0)
    n_figs = len(list((out / "figures").glob("*.png")))
    assert 'data-loaded="true"' in body
    assert f'data-images="{n_figs}"' in body and 'data-broken-images="0"' in body
    if os.environ.get("ESA_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["ESA_KEEP_SCREENSHOT"])
