"""Markdown: tables, ``analysis_report.md`` and the short ``summary.md`` (for a CI job summary)."""

from __future__ import annotations

import pandas as pd

from reports import detection
from reports.health import health_claims
from reports.tables import fmt
from reports.views import Report, claims_view, collapse_view, present, regression_view


def to_markdown(df: pd.DataFrame, max_rows: int | None = None) -> str:
    """A GitHub-flavoured Markdown table (pipes and newlines in cells escaped)."""
    if df.empty:
        return "_(none)_\n"
    shown = present(df if max_rows is None else df.head(max_rows))

    def cell(x) -> str:
        return str(x).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")

    lines = ["| " + " | ".join(cell(c) for c in shown.columns) + " |",
             "| " + " | ".join("---" for _ in shown.columns) + " |"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in shown.itertuples(index=False)]
    if max_rows is not None and len(df) > max_rows:
        lines.append(f"\n_({len(df) - max_rows} more rows in the CSV)_")
    return "\n".join(lines) + "\n"


def _header(r: Report) -> list[str]:
    run = r.run_info
    out = [f"# ESA analysis report: {', '.join(r.data.models)}", "",
           f"Run `{r.data.run_id}`, started {run.get('started_at') or '?'}"
           + (f", finished {run['finished_at']}" if run.get("finished_at") else
              f" (interrupted: {r.interrupted})" if r.interrupted else " (not finished)") + ".", "",
           "| commit | device | dtype | torch | transformers | lm_eval | python |",
           "| --- | --- | --- | --- | --- | --- | --- |",
           "| " + " | ".join(fmt(run.get(k)) or "-" for k in
                            ("git_commit", "device", "dtype", "torch", "transformers", "lm_eval", "python")) + " |",
           ""]
    return out


def _findings(r: Report) -> list[str]:
    n = r.outcome_counts()
    out = ["## Summary", "", *(f"- **UNHEALTHY {line}: its suite tests were skipped.**" for line in r.unhealthy),
           f"- Suites: {', '.join(sorted(r.data.records['suite'].unique()))}; {len(r.data.records)} records.",
           f"- Claims: {len(r.claims)} checked: **{n['failed']} failed**, **{n['unverified']} unverified** "
           f"(no bound for this model), {n['passed']} passed, {n['not_applicable']} not applicable."]
    out += [f"- Compared with: {line}." for line in r.compared_with()]
    if not r.spread.empty:
        out.append(f"- Against the other seeds at this configuration: {len(r.outside_seeds())} of {len(r.spread)} "
                   "claims outside the range those seeds showed (another draw, not a regression).")
    if r.comparison is not None:
        cmp = r.comparison
        claims = cmp[cmp["kind"] == "claim"]["status"].value_counts()
        counts = cmp[cmp["kind"] != "claim"]["status"].value_counts()
        out.append(f"- Regression against {r.baseline_label}: **{claims.get('regressed', 0) + claims.get('changed', 0)}"
                   f" claims regressed** ({claims.get('improved', 0)} improved, {claims.get('ok', 0)} within "
                   f"tolerance); measurements: {counts.get('regressed', 0)} regressed, {counts.get('changed', 0)} "
                   f"changed (no direction), {counts.get('improved', 0)} improved, {counts.get('ok', 0)} within "
                   f"tolerance, {counts.get('new', 0)} new, {counts.get('missing', 0)} missing.")
    for w in (*r.weights_changed, *r.weights_differ, *r.warnings):
        out.append(f"- **{w}**")
    for line in r.highlights:
        out.append(f"- {line}")
    return [*out, ""]


def _failed_and_regressed(r: Report) -> list[str]:
    c = r.claims
    out = []
    for outcome, title in (("failed", "Failed claims"), ("unverified", "Unverified claims (no bound for this model)")):
        out += [f"## {title}", ""]
        out.append(to_markdown(claims_view(c[c["outcome"] == outcome])) if not c.empty
                   else "_(no claims in this run)_\n")
    if r.comparison is not None:
        bad = r.comparison[r.comparison["status"].isin(["regressed", "changed"])]
        out += [f"## Regressions against {r.baseline_label}", "", to_markdown(regression_view(bad), 40)]
    return out


def _model(r: Report) -> list[str]:
    """The model under test: its health claims (judged once per session) and the identity of its weights."""
    mine = health_claims(r.claims)
    out = ["## Model", ""]
    if mine.empty and r.identity.empty:
        return [*out, "_No model-health rows in this run (recorded by runs since the health claims)._", ""]
    out += [f"- **UNHEALTHY {line}**" for line in r.unhealthy]
    out += [f"- **{line}**" for line in (*r.weights_changed, *r.weights_differ)]
    if r.unhealthy or r.weights_changed or r.weights_differ:
        out.append("")
    out += ["### Health claims", "", to_markdown(claims_view(mine, suite=False)), "### Weights", "",
            to_markdown(r.identity)]
    return out


def _detection(r: Report) -> list[str]:
    """The detection panel (``reports.detection``): nothing when the run has no detection records."""
    panel = detection.panel(r.data.records)
    if not panel:
        return []
    out = ["## Fault detection", ""]
    for t in panel:
        out += [f"### {t.title}", "", t.note, "", to_markdown(t.table)]
    return out


def analysis_report(r: Report) -> str:
    """The whole analysis in Markdown: summary, the model's health and weights, failed and regressed claims,
    tables, figures and per-suite summaries."""
    out = _header(r) + _findings(r) + _model(r) + _failed_and_regressed(r)
    if not r.super_weights.empty:
        out += ["## Super weights", "", to_markdown(r.super_weights.drop(columns=["source"]), 30)]
    if not r.sensitive_layers.empty:
        out += ["## Most sensitive layers (ablation)", "", to_markdown(r.sensitive_layers)]
    if not r.collapse.empty:
        out += ["## Collapse rates (Wilson 95% interval)", "", to_markdown(collapse_view(r.collapse), 40)]
    out += _detection(r)
    out += ["## All claims", "", to_markdown(claims_view(r.claims))]
    if not r.changes.empty:
        out += ["## Changed since the previous run", "", to_markdown(r.changes, 60)]
    if not r.trend.empty:
        out += ["## Claims across runs (`!` failed, `?` unverified)", "", to_markdown(r.trend, 60)]
    if not r.outputs.empty:
        out += ["## Generated text, clean vs perturbed", "", to_markdown(r.outputs, 10)]
    if r.figures:
        out += ["## Figures", ""]
        out += [f"### {f.title}\n\n![{f.title}]({f.path})\n\n{f.caption}\n" for f in r.figures]
    out += ["## Per-suite summaries", ""]
    for suite, df in r.summaries.items():
        out += [f"### {suite}", "", to_markdown(df)]
    return "\n".join(out)


def summary(r: Report) -> str:
    """The short version: header, findings, failed claims and regressions (no figures)."""
    return "\n".join(_header(r) + _findings(r) + _failed_and_regressed(r))
