"""``<report dir>/index.html``: the first page of a results store.

First the whole analysis of each model (its latest-per-suite page, :mod:`reports.latest`), then every run of
the store by model, newest first: seed, configuration (each distinct configuration spelled out once and named
A, B, ...), the digest of the weights it loaded (``reports.health``), suites, outcome counts, whether it finished
or was interrupted, and a link to its run page where one has been built.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from harness.records.store import interruption
from reports.comparable import SEED, describe, run_config
from reports.figures import slug
from reports.health import digests
from reports.html import CSS, badges, table
from reports.latest import page_name
from reports.load import OUTCOMES, RunData

esc = html.escape
INDEX = "index.html"


def _counts(claims: pd.DataFrame) -> dict[str, int]:
    c = claims["outcome"].value_counts()
    return {o: int(c.get(o, 0)) for o in OUTCOMES}


def _config_names(configs: list[dict[str, str]]) -> dict[str, str]:
    """The configuration without the seed (text) -> a short name (A, B, ...), in order of first use."""
    names: dict[str, str] = {}
    for c in configs:
        text = describe({**c, SEED: ""}).removeprefix("seed -, ")
        if text not in names:
            i = len(names)
            names[text] = chr(ord("A") + i) if i < 26 else f"C{i}"
    return names


def runs_table(data: RunData, parent: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """One row per (run, model), newest first: model, run (its page's href in ``href``), started, seed,
    config (a name from the returned text -> name map), weights (their digest, "" when not recorded), suites,
    failed, unverified, passed, not applicable, state, commit."""
    hist = data.history
    known = digests(hist)
    rows, configs = [], []
    for rid in list(data.runs["run_id"])[::-1]:
        info = data.run_info(rid)
        config = run_config(info)
        configs.append(config)
        why = interruption(info)
        state = f"interrupted ({why})" if why else "finished" if isinstance(info.get("finished_at"), str) else \
            "not finished"
        mine = hist[hist["run_id"] == rid]
        for model, g in mine.groupby("model", sort=True):
            page = parent / slug(rid) / INDEX
            n = _counts(g[g["is_claim"]])
            rows.append({"model": model, "run": rid, "href": f"{slug(rid)}/{INDEX}" if page.is_file() else "",
                         "started": str(info.get("started_at") or "")[:16].replace("T", " "),
                         "seed": config[SEED], "config": describe({**config, SEED: ""}).removeprefix("seed -, "),
                         "weights": known.get((rid, model), ""),
                         "suites": ", ".join(sorted(g["suite"].unique())), "failed": n["failed"],
                         "unverified": n["unverified"], "passed": n["passed"], "not applicable": n["not_applicable"],
                         "state": state, "commit": str(info.get("git_commit") or "")[:10]})
    names = _config_names(configs)
    df = pd.DataFrame(rows)
    if not df.empty:
        df["config"] = df["config"].map(names)
    return df, names


def _run_cell(row) -> str:
    return f"<a href='{esc(row['href'])}'>{esc(row['run'])}</a>" if row["href"] else \
        f"{esc(row['run'])} <span class='muted'>(no page: python -m reports DIR --run {esc(row['run'])})</span>"


def _whole_analysis(data: RunData, parent: Path) -> list[str]:
    out = ["<section id='whole'><h2>Whole analysis, by model</h2><p class='muted'>For each model, the newest "
           "result of every suite in this store, on one page (each suite names the run it came from).</p><ul>"]
    hist = data.history
    for model in sorted(hist["model"].dropna().unique()):
        mine = hist[hist["model"] == model]
        suites = sorted(mine["suite"].unique())
        href = f"{page_name(model)}/{INDEX}"
        link = f"<a href='{esc(href)}'>{esc(model)}</a>" if (parent / href).is_file() else esc(model)
        out.append(f"<li>{link}: {len(suites)} suites ({esc(', '.join(suites))}); {mine['run_id'].nunique()} "
                   "runs of it in this store</li>")
    return [*out, "</ul></section>"]


def page(data: RunData, parent: Path) -> str:
    """The store index as one HTML page (links relative to ``parent``, the report directory)."""
    runs, names = runs_table(data, parent)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>ESA results {esc(str(data.results_dir))}</title><style>{CSS}</style></head><body>",
             f"<header><h1>ESA results store: {esc(data.results_dir.name)}</h1><p>{len(data.runs)} runs of "
             f"{esc(', '.join(sorted(data.history['model'].dropna().unique())))} · newest "
             f"{esc(str(data.runs['started_at'].iloc[-1])[:16])}</p></header><main>"]
    parts += _whole_analysis(data, parent)
    parts.append("<section id='runs'><h2>Runs, newest first</h2><p class='muted'>Configurations:</p><ul>"
                 + "".join(f"<li><b>{esc(n)}</b>: {esc(text)}</li>" for text, n in names.items()) + "</ul>")
    for model, g in runs.groupby("model", sort=True):
        view = g.drop(columns=["model", "href"]).copy()
        view["run"] = [_run_cell(r) for r in g.to_dict("records")]
        counts = {o: int(g[o.replace("_", " ")].sum()) for o in OUTCOMES}
        parts.append(f"<h3 id='runs-{esc(slug(model))}'>{esc(model)} {badges(counts)}</h3>"
                     + table(view, raw_html=("run",), row_class=lambda x: "bad" if x["failed"] else
                             "warnrow" if str(x["state"]).startswith("interrupted") else ""))
    parts.append("</section></main></body></html>")
    return "\n".join(parts)


def write(data: RunData, parent: Path) -> Path:
    """Write ``parent/index.html`` (atomically) and return it."""
    parent.mkdir(parents=True, exist_ok=True)
    path = parent / INDEX
    tmp = path.with_name(f".{INDEX}.tmp")
    tmp.write_text(page(data, parent))
    tmp.replace(path)
    return path
