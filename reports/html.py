"""``index.html``: one static page, usable offline (CSS inline, images embedded as base64 data URIs).

The page sets ``data-images``, ``data-broken-images`` and ``data-loaded`` on ``<body>`` once loaded,
so a headless browser can tell whether every figure decoded.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from reports.markdown import _regression_view, collapse_view, present

if TYPE_CHECKING:
    from reports.build import Report

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#fff}
header{background:#1f3a5f;color:#fff;padding:14px 24px}header h1{margin:0;font-size:20px}
header p{margin:4px 0 0;opacity:.85}nav{padding:8px 24px;background:#eef2f7;position:sticky;top:0;z-index:1}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}
main{padding:8px 24px 40px;max-width:1300px}h2{border-bottom:2px solid #dde3ea;padding-bottom:3px;margin-top:28px}
table{border-collapse:collapse;margin:8px 0 16px;font-size:12.5px}td,th{border:1px solid #d0d7de;padding:3px 7px}
th{background:#f3f5f8;text-align:left}td{font-variant-numeric:tabular-nums}tr.bad td{background:#fde8e8}
tr.good td{background:#e8f6ea}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:24px}.card.bad{border-color:#cf222e;color:#cf222e}
.card.ok{border-color:#1a7f37;color:#1a7f37}.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;
margin:6px 0;border-radius:4px}figure{display:inline-block;margin:10px 18px 18px 0;vertical-align:top;
max-width:100%}figure img{max-width:100%;border:1px solid #e1e4e8}figcaption{font-size:12px;color:#57606a;
max-width:720px}details{margin:6px 0}summary{cursor:pointer;font-weight:600}.muted{color:#57606a}
"""

JS = """
window.addEventListener('load', function () {
  var imgs = document.images, bad = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad++;
  }
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(bad));
  document.body.setAttribute('data-loaded', 'true');
});
"""


def table(df: pd.DataFrame, bad=None, good=None) -> str:
    """An escaped HTML table; rows where ``bad(row)`` / ``good(row)`` get a red / green background."""
    if df.empty:
        return '<p class="muted">(none)</p>'
    shown = present(df)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    rows = []
    for (_, raw), (_, row) in zip(df.iterrows(), shown.iterrows(), strict=False):
        cls = ' class="bad"' if bad and bad(raw) else ' class="good"' if good and good(raw) else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(x))}</td>" for x in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _img(report_dir: Path, rel: str, alt: str) -> str:
    data = base64.b64encode((report_dir / rel).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def page(r: Report, report_dir: Path) -> str:
    run = r.run_info
    c = r.claims
    n_fail = int((c["result"] == "FAIL").sum()) if not c.empty else 0
    moved = r.comparison[r.comparison["status"].isin(["regressed", "changed"])] if r.comparison is not None \
        else pd.DataFrame(columns=["kind"])
    n_reg, n_moved = int((moved["kind"] == "claim").sum()), int((moved["kind"] != "claim").sum())
    esc = html.escape
    env = " · ".join(f"{k} {esc(str(run.get(k)))}" for k in
                     ("device", "dtype", "torch", "transformers", "python") if run.get(k))
    commit = esc(str(run.get("git_commit") or "no commit"))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>ESA report {esc(r.data.run_id)}</title><style>{CSS}</style></head><body>",
             f"<header><h1>ESA analysis report: {esc(', '.join(r.data.models))}</h1>"
             f"<p>run {esc(r.data.run_id)} · started {esc(str(run.get('started_at') or '?'))} · commit {commit}"
             f"</p><p>{env}</p></header>"]
    sections = [("summary", "Summary"), ("claims", "Claims")]
    if r.comparison is not None:
        sections.append(("regression", "Regression"))
    if not r.trend.empty:
        sections.append(("trend", "Trend"))
    if not r.super_weights.empty:
        sections.append(("super-weights", "Super weights"))
    if r.figures:
        sections.append(("figures", "Figures"))
    sections.append(("suites", "Suites"))
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in sections) + "</nav><main>")

    cards = [("records", len(r.data.records), ""), ("claims", len(c), ""),
             ("failed claims", n_fail, "bad" if n_fail else "ok")]
    if r.comparison is not None:
        cards.append(("regressed claims", n_reg, "bad" if n_reg else "ok"))
        cards.append(("metrics beyond tolerance", n_moved, "bad" if n_moved else "ok"))
    cards.append(("figures", len(r.figures), ""))
    parts.append("<h2 id='summary'>Summary</h2><div class='cards'>" + "".join(
        f"<div class='card {cls}'><b>{v}</b>{esc(k)}</div>" for k, v, cls in cards) + "</div>")
    parts += [f"<div class='warn'>{esc(w)}</div>" for w in r.warnings]
    if r.highlights:
        parts.append("<ul>" + "".join(f"<li>{esc(h)}</li>" for h in r.highlights) + "</ul>")
    if not r.sensitive_layers.empty:
        parts.append("<h3>Most sensitive layers (ablation)</h3>" + table(r.sensitive_layers))
    if not r.collapse.empty:
        parts.append("<h3>Collapse rates (Wilson 95% interval)</h3>" + table(collapse_view(r.collapse)))

    parts.append("<h2 id='claims'>Claims</h2>" + table(c, bad=lambda x: x["result"] == "FAIL",
                                                       good=lambda x: x["result"] == "pass"))
    if r.comparison is not None:
        cmp = r.comparison
        moved = cmp[cmp["status"].isin(["regressed", "changed", "improved"])]
        parts.append(f"<h2 id='regression'>Regression against {esc(r.baseline_label)}</h2>"
                     f"<p class='muted'>{esc(r.tolerance_note)}</p>"
                     + table(_regression_view(moved), bad=lambda x: x["status"] in ("regressed", "changed"),
                             good=lambda x: x["status"] == "improved")
                     + f"<p class='muted'>{int((cmp['status'] == 'ok').sum())} within tolerance, "
                       f"{int((cmp['status'] == 'new').sum())} new, {int((cmp['status'] == 'missing').sum())} "
                       f"missing, {int((cmp['status'] == 'ignored').sum())} ignored.</p>")
    if not r.trend.empty:
        parts.append("<h2 id='trend'>Claims across runs</h2><p class='muted'>value per run (date, commit); "
                     "<code>!</code> = failed.</p>" + table(r.trend))
        for f in r.figures:
            if f.section == "trend":
                parts.append(_figure(report_dir, f))
    if not r.super_weights.empty:
        parts.append("<h2 id='super-weights'>Super weights</h2>" + table(r.super_weights))
    figs = [f for f in r.figures if f.section != "trend"]
    if figs:
        parts.append("<h2 id='figures'>Figures</h2>")
        section = None
        for f in figs:
            if f.section != section:
                section = f.section
                parts.append(f"<h3>{esc(section)}</h3>")
            parts.append(_figure(report_dir, f))
    if not r.outputs.empty:
        parts.append("<h2>Generated text, clean vs perturbed</h2>" + table(r.outputs))
    parts.append("<h2 id='suites'>Per-suite summaries</h2>")
    for suite, df in r.summaries.items():
        parts.append(f"<details open><summary>{esc(suite)}</summary>{table(df)}</details>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts)


def _figure(report_dir: Path, f) -> str:
    return (f"<figure id='{html.escape(f.name)}'>{_img(report_dir, f.path, f.title)}"
            f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
