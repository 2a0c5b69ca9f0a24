"""``index.html``, the run page: one static page, usable offline (CSS inline, figures embedded as base64
data URIs, sparklines as inline SVG).

Attention first: the page opens with what needs attention (an unhealthy model, failed, regressed and
unverified claims), then the model under test (its health claims and the identity of its weights), then one
folded section per suite (``<details>``) holding its claims beside its figures (the detection suite's opens with
its coverage panel, ``reports.detection``), then the claims over time (a sparkline per claim, what changed since
the previous run).

The page sets ``data-images``, ``data-broken-images`` and ``data-loaded`` on ``<body>`` once loaded,
so a headless browser can tell whether every figure decoded.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from harness.claims import HEALTH_SUITE
from reports import detection, tables
from reports.comparable import describe, run_config
from reports.figures import slug
from reports.health import health_claims
from reports.views import (
    ATTENTION,
    OUTCOME_LABELS,
    Report,
    collapse_view,
    outcome_label,
    present,
    regression_view,
)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24;background:#fff;
-webkit-text-size-adjust:100%;text-size-adjust:100%}
header{background:#1f3a5f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:3px 0 0;opacity:.85;font-size:13px}nav{padding:7px 24px;background:#eef2f7;position:sticky;top:0;
z-index:1}nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}
main{padding:4px 24px 40px;max-width:1500px}h2{border-bottom:2px solid #dde3ea;padding-bottom:3px;margin:22px 0 8px}
h3{margin:14px 0 6px;font-size:15px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:12.5px}td,th{border:1px solid #d0d7de;padding:3px 7px;
vertical-align:top;min-width:6em;line-height:1.35;overflow-wrap:anywhere}th{background:#f3f5f8;text-align:left}
td{font-variant-numeric:tabular-nums}.scroll{overflow-x:auto;max-width:100%}
table.claims{width:100%}table.claims td.num{text-align:right;white-space:nowrap}table.claims td.o{white-space:nowrap}
table.claims .vb{display:none}table.claims td.claim{overflow-wrap:normal}
table.claims td.claim details{margin:0}table.claims td.claim summary{font-weight:400;cursor:pointer}
table.claims td.claim summary::marker{color:#8c959f}table.claims tr.why{display:none}
table.claims tr.why td{background:#f6f8fa;color:#1b1f24;font-size:12px;white-space:normal}
table.claims tr:has(details[open])+tr.why{display:table-row}table.claims tr.why p{margin:2px 0}
.note{background:#eef2f7;border:1px solid #c8d1dc;padding:6px 10px;margin:6px 0;border-radius:4px}
.note ul{margin:2px 0;padding-left:18px}
@media (max-width:640px){main{padding:4px 8px 30px}header{padding:10px 8px}nav{padding:6px 8px}
.suite-body>div{flex-basis:100%}
table.claims .bound{display:none}table.claims .vb{display:inline}.card{min-width:80px;padding:6px 10px}
details.suite{padding:0 6px}}
tr.bad td,tr.o-failed td{background:#fde8e8}tr.good td{background:#e8f6ea}
tr.o-unverified td,tr.warnrow td{background:#fff4d6}tr.o-not_applicable td{color:#57606a}
.badge{display:inline-block;border-radius:10px;padding:0 8px;margin-left:6px;font-size:12px;font-weight:600;
border:1px solid}.b-failed{color:#cf222e;border-color:#cf222e;background:#fde8e8}
.b-unverified{color:#7d4e00;border-color:#bf8700;background:#fff4d6}.b-passed{color:#1a7f37;border-color:#1a7f37}
.b-not_applicable{color:#57606a;border-color:#8c959f}.b-regressed{color:#cf222e;border-color:#cf222e}
.cards{display:flex;gap:10px;flex-wrap:wrap;margin:10px 0}
.card{border:1px solid #d0d7de;border-radius:6px;padding:8px 14px;min-width:110px}
.card b{display:block;font-size:22px}.card.bad{border-color:#cf222e;color:#cf222e;background:#fde8e8}
.card.warnc{border-color:#bf8700;color:#7d4e00;background:#fff4d6}.card.ok{border-color:#1a7f37;color:#1a7f37}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:6px 0;border-radius:4px}
.allgood{background:#e8f6ea;border:1px solid #1a7f37;padding:6px 10px;border-radius:4px}
.unhealthy{background:#fde8e8;border:1px solid #cf222e;color:#82071e;padding:6px 10px;margin:6px 0;
border-radius:4px;font-weight:600}.healthy{color:#1a7f37;font-weight:600}
tr.digest td{white-space:nowrap;overflow-wrap:normal;font-family:ui-monospace,monospace;font-size:12px}
figure{margin:6px 0 14px;max-width:100%}figure img{max-width:100%;border:1px solid #e1e4e8}
figcaption{font-size:12px;color:#57606a;max-width:720px}
details.suite{border:1px solid #d0d7de;border-radius:6px;margin:8px 0;padding:0 12px}
details.suite>summary{font-size:16px;padding:8px 0}details{margin:4px 0}summary{cursor:pointer;font-weight:600}
.suite-body{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}.suite-body>div{flex:1 1 560px;min-width:0;
overflow-x:auto}.muted{color:#57606a}ul.compact{margin:4px 0;padding-left:20px}ul.compact li{margin:2px 0}
svg.spark{vertical-align:middle}code{font-size:12px}.suite-body td:first-child{white-space:nowrap}
#detection-panel td{white-space:nowrap;overflow-wrap:normal}
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
function openTarget() {  // a link or URL to #suite-x unfolds that suite
  var el = location.hash && document.getElementById(location.hash.slice(1));
  if (el && el.tagName === 'DETAILS') { el.open = true; }
}
window.addEventListener('hashchange', openTarget);
window.addEventListener('DOMContentLoaded', openTarget);
"""

esc = html.escape


def table(df: pd.DataFrame, bad=None, good=None, row_class=None, raw_html: tuple[str, ...] = ()) -> str:
    """An escaped HTML table; rows where ``bad(row)`` / ``good(row)`` get a red / green background, or the
    class ``row_class(row)``; columns in ``raw_html`` hold markup (inline SVG) and are not escaped."""
    if df.empty:
        return '<p class="muted">(none)</p>'
    shown = present(df.drop(columns=list(raw_html)))
    cols = list(df.columns)
    head = "".join(f"<th>{esc(str(c))}</th>" for c in cols)
    rows = []
    for (_, raw), (_, row) in zip(df.iterrows(), shown.iterrows(), strict=True):
        cls = row_class(raw) if row_class else ("bad" if bad and bad(raw) else "good" if good and good(raw) else "")
        cells = "".join(f"<td>{raw[c] if c in raw_html else esc(str(row[c]))}</td>" for c in cols)
        rows.append(f"<tr class='{cls}'>{cells}</tr>" if cls else f"<tr>{cells}</tr>")
    return f"<div class='scroll'><table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"


SHORT_LABELS = {"failed": "FAILED", "unverified": "UNVERIFIED", "passed": "passed", "not_applicable": "n/a"}


def _breakable(name: str) -> str:
    """An escaped claim name that may wrap after its underscores (narrow screens)."""
    return "_<wbr>".join(esc(part) for part in str(name).split("_"))


def claims_table(claims: pd.DataFrame, *, suite: bool = True) -> str:
    """The claims, one line each: claim, outcome, value, bound (or the relation's other side) [, model, suite];
    the statement and the reason fold beneath the row (click the claim's name) and show on hover."""
    if claims.empty:
        return '<p class="muted">(no claims)</p>'
    show_model = claims["model"].nunique() > 1
    heads = ["claim", *(["suite"] if suite else []), *(["model"] if show_model else []), "outcome", "value",
             "bound"]
    rows = []
    for r in claims.to_dict("records"):
        why = [f"<p>{esc(r['statement'])}</p>"] if r.get("statement") else []
        if r.get("reason"):
            why.append(f"<p><b>{'why not applicable' if r['outcome'] == 'not_applicable' else 'reason'}:</b> "
                       f"{esc(str(r['reason']))}</p>")
        if r.get("kind") == "relation":
            why.append("<p class='muted'>A relation: the value must exceed the other side shown as the bound "
                       "(or reach it where the relation is inclusive, shown &gt;=).</p>")
        tip = esc(" | ".join(str(x) for x in (r.get("statement"), r.get("reason")) if x))
        name = _breakable(r["claim"])
        cell = f"<details><summary>{name}</summary></details>" if why else name
        bound = "" if pd.isna(r["bound"]) else f"{esc(str(r['op']))}&nbsp;{esc(tables.fmt(r['bound']))}"
        label = SHORT_LABELS.get(r["outcome"], str(r["outcome"]))
        cells = [f"<td class='claim' title=\"{tip}\">{cell}</td>",
                 *([f"<td>{esc(str(r['suite']))}</td>"] if suite else []),
                 *([f"<td>{esc(str(r['model']))}</td>"] if show_model else []),
                 f"<td class='o' title='{esc(outcome_label(r['outcome'], r.get('reason')))}'>{esc(label)}</td>",
                 f"<td class='num'>{esc(tables.fmt(r['value']))}<span class='vb'> {bound}</span></td>",
                 f"<td class='num bound'>{bound}</td>"]
        rows.append(f"<tr class='o-{esc(str(r['outcome']))}'>{''.join(cells)}</tr>")
        if why:
            rows.append(f"<tr class='why'><td colspan='{len(heads)}'>{''.join(why)}</td></tr>")
    head = "".join(f"<th class='bound'>{h}</th>" if h == "bound" else f"<th>{h}</th>" for h in heads)
    return (f"<div class='scroll'><table class='claims'><thead><tr>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>")


def badges(counts: dict[str, int]) -> str:
    return "".join(f"<span class='badge b-{o}'>{n} {esc(OUTCOME_LABELS.get(o, o).split(' (')[0].lower())}</span>"
                   for o, n in counts.items() if n)


def _img(report_dir: Path, rel: str, alt: str) -> str:
    data = base64.b64encode((report_dir / rel).read_bytes()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def figure(report_dir: Path, f) -> str:
    return (f"<figure id='{esc(f.name)}'>{_img(report_dir, f.path, f.title)}"
            f"<figcaption>{esc(f.caption)}</figcaption></figure>")


MAX_NA_SHARE = 0.25  # the top banner is green only when at most this share of the checked claims is n/a


def _attention(r: Report) -> list[str]:
    n = r.outcome_counts()
    regressed = r.regressed()
    c = r.claims
    cards = [("failed", n["failed"], "bad" if n["failed"] else "ok"),
             ("unverified", n["unverified"], "warnc" if n["unverified"] else "ok")]
    if r.comparison is not None:
        cards.append(("regressed", len(regressed), "bad" if len(regressed) else "ok"))
    checked = sum(n.values())
    na_share = n["not_applicable"] / checked if checked else 0.0
    unchecked = r.data.unchecked
    cards += [("unchecked", len(unchecked), "warnc" if unchecked else "ok"), ("passed", n["passed"], ""),
              ("not applicable", n["not_applicable"], "warnc" if na_share > MAX_NA_SHARE else ""),
              ("records", len(r.data.records), "")]
    out = ["<section id='attention'><h2>Needs attention</h2>"]
    out += [f"<div class='unhealthy'>{esc(line)}: its suite tests were skipped (<a href='#model'>Model</a>)</div>"
            for line in r.unhealthy]
    out.append("<div class='cards'>" + "".join(
        f"<div class='card {cls}' data-count='{k}'><b>{v}</b>{esc(k)}</div>" for k, v, cls in cards) + "</div>")
    out += [f"<div class='warn'>{esc(w)}</div>" for w in (*r.weights_changed, *r.weights_differ, *r.warnings)]
    out.append("<div class='note' id='compared-with'><b>Compared with</b> (only earlier runs of the same model, seed "
               "and options count):<ul>" + "".join(f"<li>{esc(line)}</li>" for line in r.compared_with())
               + "</ul>" + _spread_note(r) + "</div>")
    if not checked:
        out.append("<div class='warn'>No claim was checked in this run: a green run here confirms nothing.</div>")
    elif na_share > MAX_NA_SHARE:
        out.append(f"<div class='warn'>{n['not_applicable']} of {checked} claims ({na_share:.0%}) were not "
                   f"applicable, more than {MAX_NA_SHARE:.0%}: most of what the suites claim was not checked "
                   "on this model.</div>")
    if unchecked:
        out.append(f"<div class='warn'>{len(unchecked)} suite test(s) ended skipped or failed without deciding "
                   f"any claim: {esc(', '.join(unchecked[:5]))}{' ...' if len(unchecked) > 5 else ''}</div>")
    if (checked and na_share <= MAX_NA_SHARE and not unchecked and not n["failed"] and not n["unverified"]
            and regressed.empty and not r.interrupted and not r.weights_differ and not r.weights_changed):
        out.append(f"<p class='allgood'>Nothing needs attention: {n['passed']} claims passed, "
                   f"{n['not_applicable']} not applicable"
                   + (f", none regressed against {esc(r.baseline_label)}" if r.comparison is not None else "")
                   + ".</p>")
    if n["failed"]:
        out.append("<h3 id='failed'>Failed claims</h3>" + claims_table(c[c["outcome"] == "failed"]))
    if not regressed.empty:
        out.append(f"<h3 id='regressed'>Regressed against {esc(r.baseline_label)}</h3>"
                   + table(regression_view(regressed), bad=lambda x: True))
    if n["unverified"]:
        un = c[c["outcome"] == "unverified"]
        items = "".join(f"<li><a href='{_anchor(s)}'>{esc(s)}</a> ({esc(', '.join(sorted(g['model'].unique())))})"
                        f": {esc(', '.join(g['claim']))}</li>" for s, g in un.groupby("suite", sort=True))
        title = "Unverified claims" + ("" if r.weights_differ else ": no bound for this model")
        out.append(f"<h3 id='unverified'>{title}</h3>"
                   f"<p class='muted'>A regression bound is checked only where <code>suites/bounds/&lt;suite&gt;"
                   f".toml</code> has a number for the model (create them with <code>python -m reports "
                   f"export-bounds</code>), measured on the same weights and configuration.</p>"
                   f"<ul class='compact'>{items}</ul>")
    return [*out, "</section>"]


def _anchor(suite: str) -> str:
    """The link to a suite's section (the model-health claims: the Model panel)."""
    return "#model" if suite == HEALTH_SUITE else f"#suite-{esc(suite)}"


def _model(r: Report) -> list[str]:
    """The model under test, before the suites: per model its health claims (judged once per session; a failed
    one skips every test of the model) and the identity of its weights (digest, source, library versions)."""
    mine = health_claims(r.claims)
    out = ["<section id='model'><h2>Model</h2><p class='muted'>Judged once per session before any suite: is it a "
           "healthy trained model (<code>harness/health.py</code>)? A failed health claim skips every test of the "
           "model. The digest covers every parameter as loaded; other weights under the same name (a new "
           "conversion, a fine-tune) get another digest.</p>"]
    if mine.empty and r.identity.empty:
        return [*out, "<p class='muted'>No model-health rows in this run (recorded by runs since the health "
                      "claims, issue 35).</p></section>"]
    out += [f"<div class='unhealthy'>{esc(line)}</div>" for line in r.unhealthy]
    out += [f"<div class='warn'>{esc(line)}</div>" for line in (*r.weights_changed, *r.weights_differ)]
    healthy = [m for m in sorted(mine["model"].unique()) if not (mine[mine["model"] == m]["outcome"] == "failed").any()]
    if healthy and not mine.empty:
        out.append(f"<p class='healthy'>Healthy: {esc(', '.join(healthy))} (no health claim failed)</p>")
    identity = table(r.identity, row_class=lambda x: "digest" if x["weights"] == "digest" else "")
    out.append("<div class='suite-body'><div><h3>Health claims</h3>" + claims_table(mine, suite=False) + "</div>"
               f"<div><h3>Weights</h3>{identity}</div></div>")
    return [*out, "</section>"]


def _spread_note(r: Report) -> str:
    if r.spread.empty:
        return ""
    out = r.outside_seeds()
    seeds = ", ".join(sorted(set(", ".join(r.spread["seeds"]).split(", "))))
    return (f"<p>Against the other seeds at this configuration (seeds {esc(seeds)}): {len(r.spread) - len(out)} of "
            f"{len(r.spread)} claims inside their range, <a href='#seeds'>{len(out)} outside</a> (another draw, "
            f"not a regression).</p>")


def _suite_extras(r: Report, suite: str) -> list[str]:
    """Tables that belong to one suite's section besides its claims."""
    recs = r.data.records
    out = []
    if suite == "attack":
        cells = tables.attack_cells(recs)
        if not cells.empty:
            out.append("<h3>Attack cells</h3>" + table(cells))
    elif suite == "adversarial":
        cells = tables.adversarial_cells(recs)
        if not cells.empty:
            out.append("<h3>Input attacks</h3>" + table(cells.drop(columns=["changed_low", "changed_high"])))
    elif suite == "ablation" and not r.sensitive_layers.empty:
        out.append("<h3>Most sensitive layers</h3>" + table(r.sensitive_layers))
    elif suite == "super_weights" and not r.super_weights.empty:
        out.append("<h3>Super weights</h3>" + table(r.super_weights))
    if not r.collapse.empty and suite in set(r.collapse["suite"]):
        out.append("<h3>Collapse rates (Wilson 95% interval)</h3>"
                   + table(collapse_view(r.collapse[r.collapse["suite"] == suite]).drop(columns="suite")))
    if not r.outputs.empty and suite in set(r.outputs["suite"]):
        out.append("<h3>Generated text, clean vs perturbed</h3>" + table(r.outputs[r.outputs["suite"] == suite]))
    return out


def _suite_lead(r: Report, suite: str) -> list[str]:
    """Panels that open a suite's section, before its claims: the detection suite's coverage panel."""
    panel = detection.panel(r.data.records) if suite == detection.SUITE else []
    if not panel:
        return []
    body = "".join(f"<h3>{esc(t.title)}</h3><p class='muted'>{esc(t.note)}</p>"
                   + table(t.table, bad=lambda x, bad=t.bad_rows: x.name in bad) for t in panel)
    return [f"<div id='detection-panel'>{body}</div>"]


def _suites(r: Report, report_dir: Path) -> list[str]:
    c = r.claims
    regressed = r.regressed()
    by_section: dict[str, list] = {}
    for f in r.figures:
        by_section.setdefault(f.section, []).append(f)
    suites = r.suites()
    out = ["<section id='suites'><h2>Suites</h2><p class='muted'>One section per suite, the ones with failed, "
           "regressed or unverified claims first and open; each holds its claims beside its figures.</p>"]
    for suite in suites:
        mine = c[c["suite"] == suite] if not c.empty else c
        counts = {o: int((mine["outcome"] == o).sum()) for o in ("failed", "unverified", "passed",
                                                                  "not_applicable")} if not mine.empty else {}
        n_reg = int((regressed["suite"] == suite).sum()) if not regressed.empty else 0
        is_open = " open" if counts.get("failed") or n_reg else ""
        head = (f"<details class='suite' id='suite-{esc(suite)}'{is_open}><summary>{esc(suite)}{badges(counts)}"
                + (f"<span class='badge b-regressed'>{n_reg} regressed</span>" if n_reg else "") + "</summary>")
        left = [_source(r, suite), *_suite_lead(r, suite), "<h3>Claims</h3>" + claims_table(mine, suite=False),
                *_suite_extras(r, suite)]
        summary = r.summaries.get(suite)
        if summary is not None and not summary.empty:
            left.append(f"<details><summary>Measurements ({int(summary['records'].sum())} records)</summary>"
                        f"{table(summary)}</details>")
        figs = by_section.pop(suite, [])
        right = [figure(report_dir, f) for f in figs]
        body = f"<div class='suite-body'><div>{''.join(left)}</div>" + (
            f"<div>{''.join(right)}</div>" if right else "") + "</div>"
        out.append(head + body + "</details>")
    rest = [f for fs in by_section.values() for f in fs]
    if rest:
        out.append("<details class='suite' id='suite-other'><summary>Across suites</summary>"
                   + "".join(figure(report_dir, f) for f in rest) + "</details>")
    return [*out, "</section>"]


def _seeds(r: Report) -> str:
    if r.spread.empty:
        return ""
    view = r.spread.rename(columns={"low": "seeds' low", "high": "seeds' high"})
    return ("<h3 id='seeds'>Against the other seeds</h3><p class='muted'>The newest run of each other seed at this "
            "configuration otherwise; a value outside their range is another draw to look at, not a "
            "regression.</p>" + table(view, row_class=lambda x: "" if x["where"] == "inside" else "warnrow"))


def _over_time(r: Report) -> list[str]:
    from reports.trend import sparklines

    if r.history.empty or r.history["run_id"].nunique() < 2:
        return ["<section id='over-time'><h2>Claims over time</h2><p class='muted'>No earlier run of these claims "
                "at this configuration in this store: nothing to compare over time.</p>" + _seeds(r) + "</section>"]
    n_runs = r.history["run_id"].nunique()
    out = [f"<section id='over-time'><h2>Claims over time</h2><p class='muted'>This run and the earlier runs of the "
           f"same model at the same configuration: {n_runs} runs (oldest left). Line: the value; dashed: its bound "
           f"or other side; dots coloured by outcome (red failed, "
           f"amber unverified, green passed); a triangle at the top: collapsed (inf).</p>",
           "<h3 id='changes'>Changed since the previous run at this configuration</h3>"]
    ch = r.changes
    if ch.empty:
        out.append("<p class='allgood'>No claim changed outcome or value since the previous run.</p>")
    else:
        view = ch.assign(rel=ch["rel"].map(lambda x: "" if pd.isna(x) else f"{x:+.1%}"))
        out.append(table(view, row_class=lambda x: "bad" if x["outcome"] in ATTENTION and x["change"] in
                         ("outcome", "new") else ""))
    sp = sparklines(r.history)
    view = sp[["suite", "model", "claim", "svg", "value", "bound", "outcome", "runs"]].rename(
        columns={"svg": "last runs"})
    out.append(f"<details><summary>Every claim ({len(sp)}), the ones that moved most first</summary>"
               + table(view, raw_html=("last runs",), row_class=lambda x: f"o-{x['outcome']}") + "</details>")
    return [*out, _seeds(r), "</section>"]


def _source(r: Report, suite: str) -> str:
    """In a latest-per-suite view: the run a suite came from, linked to its page."""
    rid = r.sources.get(suite)
    if not rid:
        return ""
    info = r.data.run_info(rid)
    href = f"../{slug(rid)}/index.html"
    return (f"<p class='muted'>From run <a href='{esc(href)}'>{esc(rid)}</a> (seed "
            f"{esc(run_config(info)['seed'] or '?')}, started {esc(str(info.get('started_at') or '?')[:16])})</p>")


def page(r: Report, report_dir: Path) -> str:
    """The whole run page (or a latest-per-suite view, when ``r.sources`` is set)."""
    run = r.run_info
    env = " · ".join(f"{k} {esc(str(run.get(k)))}" for k in
                     ("device", "dtype", "torch", "transformers", "python") if run.get(k))
    commit = esc(str(run.get("git_commit") or "no commit"))
    links = " · ".join(f"<a href='{esc(h)}' style='color:#fff'>{esc(t)}</a>" for t, h in r.links)
    if r.sources:
        n_runs = len(set(r.sources.values()))
        title = f"ESA analysis: {esc(', '.join(r.data.models))}, newest result of every suite"
        line = (f"{len(r.sources)} suites from {n_runs} run{'s' if n_runs > 1 else ''} of this store; the newest "
                f"started {esc(str(run.get('started_at') or '?'))}")
    else:
        title = f"ESA analysis report: {esc(', '.join(r.data.models))}"
        line = (f"run {esc(r.data.run_id)} · started {esc(str(run.get('started_at') or '?'))} · commit {commit}"
                f"</p><p>{esc(describe(run_config(run)))}")
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>ESA report {esc(r.data.run_id)}</title><style>{CSS}</style></head><body>",
             f"<header><h1>{title}</h1><p>{line}</p><p>{env}</p>"
             + (f"<p>{links}</p>" if links else "") + "</header>"]
    sections = [("attention", "Needs attention"), ("model", "Model"), ("suites", "Suites"), ("over-time", "Over time")]
    if r.comparison is not None:
        sections.append(("regression", "Regression"))
    if r.highlights:
        sections.append(("findings", "Findings"))
    parts.append("<nav>" + "".join(f"<a href='#{a}'>{t}</a>" for a, t in sections) + "</nav><main>")
    parts += _attention(r)
    parts += _model(r)
    parts += _suites(r, report_dir)
    parts += _over_time(r)
    if r.comparison is not None:
        cmp = r.comparison
        moved = cmp[cmp["status"].isin(["regressed", "changed", "improved"])]
        parts.append(f"<section id='regression'><h2>Regression against {esc(r.baseline_label)}</h2>"
                     f"<p class='muted'>{esc(r.tolerance_note)} {int((cmp['status'] == 'ok').sum())} within "
                     f"tolerance, {int((cmp['status'] == 'new').sum())} new, "
                     f"{int((cmp['status'] == 'missing').sum())} missing, {int((cmp['status'] == 'ignored').sum())} "
                     f"ignored.</p><details><summary>Claims and measurements that moved ({len(moved)})</summary>"
                     + table(regression_view(moved), bad=lambda x: x["status"] in ("regressed", "changed"),
                             good=lambda x: x["status"] == "improved") + "</details></section>")
    if r.highlights:
        parts.append("<section id='findings'><h2>Findings</h2><ul>"
                     + "".join(f"<li>{esc(h)}</li>" for h in r.highlights) + "</ul></section>")
    parts.append(f"</main><script>{JS}</script></body></html>")
    return "\n".join(parts)
