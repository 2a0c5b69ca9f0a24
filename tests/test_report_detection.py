"""The detection panel (issue 38, ``reports.detection``): per detector and bit class the coverage of harmful flips
with its Wilson interval, the coverage of all flips, the harm rate, false alarms and overhead, on the run page
(HTML and Markdown), a paragraph in the findings and a column of the model comparison's headlines; nothing of it
for a run without detection records.

The store is written here directly, its detection rows made by the suite's own result types
(``harness.detection.outcomes``: ``CellResult.rows()``, ``CleanChecks.rows()``) and committed as the recorder
commits them, so the panel is tested against the format the suite records; no model is loaded.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest

from harness.campaign.sizing import Sizing
from harness.detection.outcomes import CellResult, CleanChecks, FlipOutcome
from harness.faults import FaultSite
from harness.metrics import direction
from harness.records import ResultStore
from harness.stats import wilson
from reports.build import build_report
from reports.compare import build_comparison
from reports.detection import audit_coverage, findings, panel
from reports.load import load_run

OPTIONS = {"models": "m", "preset": "quick", "seed": 0, "finetune": "none", "corpus": "pydoc-topics"}
HEADLINE = "harmful flips caught by the audit"
TEST_ID = "suites/test_detection.py::test_detection_cell"


def _flip(trial: int, ratio: float, *, audit: bool, checksum: bool = True, range_: bool = False,
          bits: tuple[int, ...] = (30,), weights: int = 1) -> FlipOutcome:
    sites = tuple(FaultSite("model.layers.0.mlp.down_proj.weight", (trial, w), bits) for w in range(weights))
    return FlipOutcome(trial, trial, sites, ratio, math.isinf(ratio),
                       {"audit": audit, "checksum": checksum, "range": range_})


INF = math.inf
# exp_msb: two collapses and one harmful flip (x1.5), all caught by the audit, the range check misses the x1.5 one;
# sign: a collapse the audit MISSES; mantissa_lsb: nothing harmful; a multi-bit pattern: one harmful flip caught
CELLS = {
    "exp_msb": [_flip(0, INF, audit=True, range_=True), _flip(1, INF, audit=True, range_=True),
                _flip(2, 1.5, audit=True), _flip(3, 1.0, audit=False)],
    "sign": [_flip(0, INF, audit=False, bits=(31,)), _flip(1, 1.0, audit=True, bits=(31,))],
    "mantissa_lsb": [_flip(t, 1.0, audit=False, bits=(0,)) for t in range(3)],
    "two_bits_one_weight": [_flip(0, 2.0, audit=True, bits=(30, 3)), _flip(1, 1.0, audit=False, bits=(1, 2))],
}
CLEAN_ALARMS = {"audit": 0, "checksum": 0, "range": 1}


def _record(store: ResultStore, rid: str, rows, *, test_id: str = TEST_ID, model: str = "m") -> None:
    """Commit ``rows`` as ``fixtures.recorder.Recorder.rows`` does (suite, model, seed, dtype, direction, collapsed)."""
    for row in rows:
        value = None if row.value is None else float(row.value)
        store.record(**{"run_id": rid, "test_id": test_id, "suite": "detection", "model": model, "metric": row.metric,
                        "value": value, "seed": 0, "dtype": "float32", "higher_is_better": direction(row.metric),
                        "collapsed": value is not None and not math.isfinite(value),
                        **row.store_columns({})})


def _detection_run(store: ResultStore, model: str = "m", dtypes: tuple[str, ...] = ("fp32",)) -> str:
    rid = store.start_run({"device": "cpu", **OPTIONS, "models": model})
    for dtype in dtypes:
        torch_dtype = {"fp32": "float32", "bf16": "bfloat16"}[dtype]
        cells = CELLS if dtype == "fp32" else {"exp_msb": CELLS["exp_msb"][2:], "sign": CELLS["sign"]}
        for pattern, flips in cells.items():
            hits = sum(f.harmful for f in flips)
            sizing = Sizing("fixed", len(flips), hits, wilson(hits, len(flips)), 0.95)
            cell = CellResult(pattern, pattern in ("exp_msb", "sign", "mantissa_lsb"), dtype, torch_dtype,
                              tuple(flips), sizing)
            _record(store, rid, cell.rows(), model=model)
        for detector, alarms in CLEAN_ALARMS.items():
            checks = CleanChecks(detector, alarms, 3, 2, {"audit": 0.002, "checksum": 0.004, "range": 0.001}[detector],
                                 0.008, {"forward_tokens": 16 if detector == "audit" else 0, "weight_reads": 1,
                                         "reference_bytes": 4096}, dtype, torch_dtype)
            _record(store, rid, checks.rows(), test_id="suites/test_detection.py::test_detection_clean_model",
                    model=model)
    store.finish_run(rid)
    return rid


def _plain_run(store: ResultStore, model: str = "m") -> str:
    """A run without any detection record (one robustness measurement)."""
    rid = store.start_run({"device": "cpu", **OPTIONS, "models": model})
    store.record(run_id=rid, test_id="suites/test_robustness.py::test_noise", suite="robustness", model=model,
                 metric="ppl_ratio", value=1.01, method="gaussian", perturbation={"level": 0.1}, seed=0)
    store.finish_run(rid)
    return rid


def _text(hits: int, n: int) -> str:
    low, high = wilson(hits, n)
    return f"{hits}/{n} = {hits / n:.0%} ({100 * low:.0f}–{high:.0%})"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    d = tmp_path_factory.mktemp("detection") / "results"
    with ResultStore(d) as store:
        rid = _detection_run(store)
    return d, build_report(d, rid)


def test_panel_tables_from_the_records(built):
    d, _ = built
    tables = {t.name: t for t in panel(load_run(d).records)}
    assert list(tables) == ["detection_coverage", "detection_all_flips", "detection_clean"]
    cov = tables["detection_coverage"].table.set_index("bit class")
    assert list(cov.index) == list(CELLS)  # in the order the suite recorded them
    assert list(cov.columns) == ["harmful (harm rate)", "collapsed", "audit", "checksum", "range"]  # one dtype
    assert tables["detection_coverage"].title == "Detection (fp32): harmful flips caught, per bit class and detector"
    assert cov.loc["exp_msb", "harmful (harm rate)"] == _text(3, 4) and cov.loc["exp_msb", "collapsed"] == 2
    assert cov.loc["exp_msb", "audit"] == _text(3, 3) and cov.loc["exp_msb", "range"] == _text(2, 3)
    assert cov.loc["sign", "audit"] == f"{_text(0, 1)}; missed 1 collapse"
    assert cov.loc["sign", "checksum"] == _text(1, 1)
    assert cov.loc["mantissa_lsb", "audit"] == "–" and cov.loc["mantissa_lsb", "harmful (harm rate)"] == _text(0, 3)
    assert tables["detection_coverage"].bad_rows == (1,)  # the sign row: a collapse the audit missed
    every = tables["detection_all_flips"].table.set_index("bit class")
    assert every.loc["exp_msb", "audit"] == _text(3, 4) and every.loc["mantissa_lsb", "checksum"] == _text(3, 3)
    clean = tables["detection_clean"].table.set_index("detector")
    assert clean.loc["range", "false alarms"] == _text(1, 3) and clean.loc["audit", "false alarms"] == _text(0, 3)
    assert clean.loc["checksum", "overhead (x plain forward)"] == pytest.approx(0.5)
    assert clean.loc["audit", "forward tokens"] == 16 and tables["detection_clean"].bad_rows == (2,)


def test_run_page_shows_the_panel_first_in_the_detection_section(built):
    _, out = built
    page = (out / "index.html").read_text()
    section = page[page.index("id='suite-detection'"):]
    section = section[: section.index("</details>")]
    assert section.index("id='detection-panel'") < section.index("<h3>Claims</h3>")
    for text in ("Detection (fp32): harmful flips caught, per bit class and detector", "harmful (harm rate)",
                 f"{_text(0, 1)}; missed 1 collapse", _text(2, 3), "Detection on the clean model",
                 "raises perplexity by 1% or more", "overhead (x plain forward)"):
        assert text in section, text
    assert section.count("<tr class='bad'>") == 2  # the missed collapse, the false alarm
    findings = page[page.index("<section id='findings'>"):]
    assert "Fault detection on m (fp32): 5 of 11 random flips" in findings
    assert "MISSED COLLAPSES: audit 1 of 3 (sign)" in findings
    assert f"FALSE ALARMS on the clean model: range {_text(1, 3)}" in findings
    assert "Harmful flips caught: audit 4 of 5, all of exp_msb 3/3, two_bits_one_weight 1/1, missed some of " \
           "sign 0/1" in findings
    for name in ("detection_coverage", "detection_all_flips", "detection_clean"):
        assert (out / "tables" / f"{name}.csv").is_file(), name


def test_markdown_has_the_panel_and_the_paragraph(built):
    _, out = built
    md = (out / "analysis_report.md").read_text()
    assert md.index("## Fault detection") < md.index("## All claims")
    assert f"| exp_msb | {_text(3, 4)} | 2 | {_text(3, 3)} | {_text(3, 3)} | {_text(2, 3)} |" in md
    summary = (out / "summary.md").read_text()
    assert "- Fault detection on m (fp32):" in summary and "MISSED COLLAPSES: audit 1 of 3 (sign)" in summary


def test_two_dtypes_keep_a_dtype_column(tmp_path):
    """A run of fp32 and bf16 cells shows the dtype in a column, one paragraph per dtype; the comparison's headline
    is the fp32 one."""
    with ResultStore(tmp_path) as store:
        _detection_run(store, dtypes=("bf16", "fp32"))
    records = load_run(tmp_path).records
    tables = {t.name: t for t in panel(records)}
    cov = tables["detection_coverage"].table
    assert list(cov.columns[:2]) == ["bit class", "dtype"] and list(cov["dtype"]) == ["bf16"] * 2 + ["fp32"] * 4
    assert tables["detection_coverage"].title == "Detection: harmful flips caught, per bit class and detector"
    assert list(tables["detection_clean"].table["dtype"]) == ["bf16"] * 3 + ["fp32"] * 3
    assert [line.split(":")[0] for line in findings(records)] == ["Fault detection on m (bf16)",
                                                                  "Fault detection on m (fp32)"]
    assert audit_coverage(records) == f"{_text(3, 4)}, fp32"


def test_recovery_table_and_finding(tmp_path):
    """A run with a ``recovery_ratio`` row shows the recovery table (reload over find + restore) and says it in the
    paragraph; a run without one has no such table."""
    from harness.detection.recovery import Recovery

    recovery = Recovery((FaultSite("w", (0, 1), (30,)),), True, ("w",), 0.2, 0.05, 1.0, 4096, False, (), (), "/m",
                        "fp32", "float32")
    with ResultStore(tmp_path) as store:
        rid = _detection_run(store)
        _record(store, rid, recovery.rows(), test_id="suites/test_detection.py::test_detection_recovery")
    records = load_run(tmp_path).records
    table = {t.name: t for t in panel(records)}["detection_recovery"].table
    assert table.iloc[0]["reload / recovery"] == pytest.approx(4.0) and table.iloc[0]["tensors restored"] == 1
    assert "against 1 s to reload (x4)" in findings(records)[0]
    with ResultStore(tmp_path / "plain") as store:
        _detection_run(store)
    assert "detection_recovery" not in {t.name for t in panel(load_run(tmp_path / "plain").records)}


def test_no_panel_without_detection_records(tmp_path):
    with ResultStore(tmp_path) as store:
        rid = _plain_run(store)
    out = build_report(tmp_path, rid)
    page = (out / "index.html").read_text()
    main = page[page.index("<main>"):]  # (the style sheet names the panel's id)
    assert "detection-panel" not in main and "Fault detection" not in main and "Detection" not in main
    assert "Fault detection" not in (out / "analysis_report.md").read_text()
    assert not list((out / "tables").glob("detection_*"))
    assert panel(load_run(tmp_path).records) == [] and audit_coverage(load_run(tmp_path).records) is None


def test_comparison_headline_column(tmp_path):
    """The audit's coverage of the harmful single-bit flips, pooled over the bit classes (the multi-bit pattern
    left out); blank for a model without detection records, no column when no model has any."""
    with ResultStore(tmp_path / "a") as store:
        _detection_run(store, "m")
    with ResultStore(tmp_path / "b") as store:
        _plain_run(store, "n")
    build_comparison([tmp_path / "a", tmp_path / "b"], tmp_path / "compare")
    heads = pd.read_csv(tmp_path / "compare" / "tables" / "headlines.csv").set_index("model")
    assert heads.loc["m", HEADLINE] == f"{_text(3, 4)}, fp32"  # exp_msb 3/3, sign 0/1, mantissa_lsb none harmful
    assert pd.isna(heads.loc["n", HEADLINE])
    assert HEADLINE in (tmp_path / "compare" / "index.html").read_text()
    build_comparison([tmp_path / "b"], tmp_path / "compare-plain")
    assert HEADLINE not in pd.read_csv(tmp_path / "compare-plain" / "tables" / "headlines.csv").columns


def test_panel_is_readable_at_1280_and_390_px(built, tmp_path):
    """In headless chromium, the detection section unfolded: every column at least 6em, the page never wider than
    the screen (a wide table scrolls inside its box)."""
    layout = pytest.importorskip("tests.test_report_layout")
    if layout.CHROMIUM is None:
        pytest.skip("no chromium installed (apt-get install -y chromium)")
    _, out = built
    browser = layout.Browser(tmp_path / "profile")
    try:
        for width in layout.WIDTHS:
            browser.open((out / "index.html").as_uri() + "#suite-detection", width)
            measured = browser.js(layout.MEASURE + "(false)")
            panel_tables = [t for t in measured["tables"] if t["where"] == "detection-panel"]
            assert len(panel_tables) == 3, measured["tables"]
            assert not layout._problems(measured), layout._problems(measured)
            assert measured["scrollWidth"] <= width + 1
    finally:
        browser.close()
