"""Build ``<results-dir>/report/<run_id>/`` from the store, atomically (temp dir, then rename)."""

from __future__ import annotations

import logging
import math
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from harness.records.store import interruption
from reports import detection, figures, health, html, latest, markdown, store_index, tables, trend
from reports.comparable import Comparables
from reports.load import RunData, load_run, pget
from reports.regression import Baseline, comparable_baseline, env_differences, load_baseline
from reports.views import Report

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"(hf_[A-Za-z0-9]{8,}|(?i:token)=\S+)")


def _clean_run_info(run: dict) -> dict:
    out = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in run.items()}
    if out.get("command"):
        out["command"] = _TOKEN.sub("<redacted>", str(out["command"]))
    return out


def _baseline_for(data: RunData, baseline, comparables: list[Comparables]) -> Baseline | None:
    """The baseline given (a :class:`Baseline` or a file), else the run's comparable earlier runs."""
    if isinstance(baseline, Baseline):
        return baseline
    if baseline is not None:
        return load_baseline(baseline)
    return comparable_baseline(data, comparables)


def _highlights(r: Report) -> list[str]:
    out = []
    recs = r.data.records
    for model, g in r.super_weights.groupby("model"):
        top = g.iloc[0]
        out.append(f"Top super weight of {model} ({top['method']}): {top['module']}[{tables.fmt(top['row'])}, "
                   f"{tables.fmt(top['col'])}] = {tables.fmt(top['value'])}, score {tables.fmt(top['score'])}; "
                   f"{len(g)} super weights in {g['layer'].nunique()} layers.")
    sw = recs[(recs["suite"] == "super_weights") & (recs["metric"] == "ppl_ratio") & ~recs["is_claim"]]
    if not sw.empty:
        sw = sw.assign(target=pget(sw, "target").fillna(sw["method"]))
        for (model, target), g in sw.groupby(["model", "target"]):
            out.append(f"Zeroing {target} weights in {model} multiplies perplexity by "
                       f"{tables.fmt(g['value'].max())}.")
    layers = r.sensitive_layers.groupby("model").head(1) if not r.sensitive_layers.empty else []
    for row in getattr(layers, "itertuples", lambda: [])():
        out.append(f"Most sensitive layer of {row.model}: layer {row.layer} ({row._4}, {row.metric} "
                   f"{tables.fmt(row.value)} after '{row.method}' ablation).")
    if not r.collapse.empty:
        worst = r.collapse.sort_values("collapse_rate", ascending=False).groupby("suite").head(1)
        for c in worst.itertuples():
            out.append(f"Highest collapse rate in {c.suite} ({c.model}, {c.series}, x={tables.fmt(c.x)}): "
                       f"{c.collapsed}/{c.trials} = {c.collapse_rate:.0%} (95% CI {c.collapse_low:.0%}–"
                       f"{c.collapse_high:.0%}).")
    out += detection.findings(recs)
    for c in r.claims[r.claims["outcome"] == "failed"].itertuples():
        out.append(f"Claim failed: {c.claim} ({c.suite}, {c.model}): {tables.fmt(c.value)} {c.op} "
                   f"{tables.fmt(c.bound)} does not hold.")
    return out


def _tables(data: RunData, **extra) -> Report:
    """The report's tables of ``data.records`` (no comparison, no history), with the model's health."""
    claims = tables.claims_table(data.records)
    return Report(data=data, run_info=_clean_run_info(data.run), claims=claims,
                  summaries=tables.suite_summaries(data.records), collapse=tables.collapse_rates(data.records),
                  sensitive_layers=tables.sensitive_layers(data.records),
                  super_weights=tables.super_weight_table(data.super_weights),
                  outputs=tables.output_comparisons(data.records), identity=health.identity_table(data.records),
                  unhealthy=health.unhealthy(data.records), weights_differ=health.weights_differ(data.records), **extra)


def collect(data: RunData, baseline=None) -> Report:
    """Compute every table of the report (no files written)."""
    comparables = data.comparables()
    hist = trend.claim_history(data, {c.model: c.same for c in comparables})
    r = _tables(data, trend=trend.trend_table(hist), history=hist, changes=trend.changes(hist),
                comparables=comparables, spread=trend.seed_spread(data, comparables))
    r.weights_changed = health.weights_changed(  # against the run each model is compared with, else its previous
        data.history, data.run_id, {c.model: c.same[-1] if c.same else c.previous for c in comparables})
    if r.interrupted:
        r.warnings.append(f"Interrupted ({r.interrupted}): the tests it did not finish have no claims here; finish "
                          f"the run with its pytest command and --resume {data.run_id}")
    base = _baseline_for(data, baseline, comparables)
    if base is not None:
        r.comparison = base.compare(data.records)
        r.baseline_label = base.source
        r.baseline_given = baseline is not None
        r.warnings += base.compatibility(r.run_info, data.models)
        t = base.tolerances.default
        r.tolerance_note = (f"A change in the worse direction beyond max(abs, rel x |baseline|) is a regression "
                            f"(default abs {t.abs:g}, rel {t.rel:.0%}; per metric in reports/tolerances.toml); "
                            f"metrics without a direction are compared two-sided ('changed').")
    else:
        prev = [c.previous for c in comparables if c.previous] or \
            [rid for rid in data.runs["run_id"] if rid != data.run_id][-1:]
        if prev:  # earlier runs at other configurations or of other models: still say what differs
            r.warnings += env_differences(r.run_info, data.run_info(prev[-1]), "this run", f"run {prev[-1]}")
    r.highlights = _highlights(r)
    return r


def _write(r: Report, out: Path) -> None:
    (out / "tables").mkdir(parents=True)
    r.figures = figures.draw_all(r.data, out)
    named = {"claims": r.claims, "collapse_rates": r.collapse, "sensitive_layers": r.sensitive_layers,
             "super_weights": r.super_weights, "trend": r.trend, "changes": r.changes,
             "output_comparison": r.outputs, "attack_cells": tables.attack_cells(r.data.records),
             "adversarial_cells": tables.adversarial_cells(r.data.records)}
    if r.comparison is not None:
        named["regression"] = r.comparison
    named.update({t.name: t.table for t in detection.panel(r.data.records)})
    named.update({f"summary_{suite}": df for suite, df in r.summaries.items()})
    for name, df in named.items():
        if name == "claims" or not df.empty:
            df.to_csv(out / "tables" / f"{name}.csv", index=False)
            (out / "tables" / f"{name}.md").write_text(markdown.to_markdown(df))
    (out / "analysis_report.md").write_text(markdown.analysis_report(r))
    (out / "summary.md").write_text(markdown.summary(r))
    (out / "index.html").write_text(html.page(r, out))


def collect_latest(data: RunData, sources: dict[str, str]) -> Report:
    """The tables of a latest-per-suite view (:func:`reports.latest.latest_data`): no comparison, no history;
    each suite says which run it came from."""
    r = _tables(data, trend=pd.DataFrame(), sources=sources)
    order = {rid: i for i, rid in enumerate(data.runs["run_id"])}
    r.weights_changed = health.weights_across(
        health.digests(data.history), {m: sorted(set(sources.values()), key=order.__getitem__) for m in data.models})
    for rid in sorted(set(sources.values())):
        why = interruption(data.run_info(rid))
        if why:
            suites = ", ".join(s for s, x in sources.items() if x == rid)
            r.warnings.append(f"Run {rid} ({suites}) was interrupted ({why}): finish it with its pytest command "
                              f"and --resume {rid}")
    r.highlights = _highlights(r)
    return r


def _publish(report: Report, parent: Path, name: str) -> Path:
    """Write ``report`` into ``parent/name`` atomically (a temp dir, then a rename) and return it."""
    parent.mkdir(parents=True, exist_ok=True)
    final = parent / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=parent))
    try:
        _write(report, tmp)
        tmp.chmod(0o755)
        old = None
        if final.exists():
            old = parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
            final.rename(old)
        tmp.rename(final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def build_report(results_dir: str | Path, run_id: str | None = None, baseline=None,
                 out_dir: str | Path | None = None, *, links: bool = False) -> Path:
    """Build the report of a run and return its directory.

    Args:
        results_dir: the results directory (holds ``results.sqlite``).
        run_id: the run (default: the latest run with records).
        baseline: a :class:`Baseline`, a baseline file path, or None for the previous run in the store.
        out_dir: parent of the report directory (default ``<results-dir>/report``).

    Raises:
        HarnessError: missing/empty store, unknown run id, unreadable baseline.
    """
    data = load_run(results_dir, run_id)
    report = collect(data, baseline)
    if links:
        report.links = store_links(data.models)
    parent = Path(out_dir) if out_dir else data.results_dir / "report"
    final = _publish(report, parent, figures.slug(data.run_id))
    log.info("report of run %s written to %s", data.run_id, final)
    return final


def store_links(models: list[str], up: str = "../") -> list[tuple[str, str]]:
    """Links from a page one level below the report directory to the store index and the latest pages."""
    return [("all runs of this store", f"{up}index.html"),
            *((f"whole analysis of {m}", f"{up}{latest.page_name(m)}/index.html") for m in models)]


@dataclass(frozen=True)
class StoreReport:
    """What :func:`build_store` wrote: the run page, the store index, one latest-per-suite page per model."""

    run_page: Path
    index: Path
    latest: dict[str, Path]
    run_pages: dict[str, Path]


def build_store(results_dir: str | Path, run_id: str | None = None, baseline=None,
                out_dir: str | Path | None = None, *, pages: int = 10) -> StoreReport:
    """The run page of a run (default: the latest), a latest-per-suite page per model, the run pages of the
    ``pages`` newest runs that have none yet, and the store index linking them all (``<out>/index.html``).

    Args:
        results_dir: the results directory.
        run_id: the run whose page is (re)built.
        baseline: as in :func:`build_report`.
        out_dir: the report directory (default ``<results-dir>/report``).
        pages: how many of the newest runs get a run page when they have none.

    Raises:
        HarnessError: missing/empty store, unknown run id, unreadable baseline.
    """
    data = load_run(results_dir, run_id)
    parent = Path(out_dir) if out_dir else data.results_dir / "report"
    run_page = build_report(results_dir, data.run_id, baseline, parent, links=True)
    run_pages = {data.run_id: run_page}
    for rid in list(data.runs["run_id"])[::-1][:pages]:
        page = parent / figures.slug(rid)
        if rid not in run_pages and not (page / "index.html").is_file():
            run_pages[rid] = build_report(results_dir, rid, None, parent, links=True)
    latest_pages = {}
    for model in sorted(data.history["model"].dropna().unique()):
        view, sources = latest.latest_data(data, model)
        r = collect_latest(view, sources)
        r.links = store_links([model])[:1]
        latest_pages[model] = _publish(r, parent, latest.page_name(model))
    index = store_index.write(data, parent)
    log.info("store index of %s written to %s", data.results_dir, index)
    return StoreReport(run_page, index, latest_pages, run_pages)
