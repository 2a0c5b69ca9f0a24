"""The comparison page: several models side by side, from one store or several.

``python -m reports compare-models RESULTS_DIR... [-o DIR]`` writes ``DIR/index.html`` (default
``<first RESULTS_DIR>/report/compare-models``) with

- a model x claim matrix coloured by outcome, the value in the cell and the statement, bound and
  reason on hover;
- a model x headline table (clean perplexity, super weights, bit flips, attacks, pruning, fault detection, lm-eval;
  headlines of suite modules such as ``reports.finetune`` when they define ``HEADLINES``); a blank
  cell is a measurement that is not in the stores;
- figures with one series per model: collapse rate per bit class (grouped bars, Wilson 95%), noise
  curves overlaid, ablation heatmaps in a row on one colour scale, method-similarity matrices side
  by side.

For every (model, suite) the records of the latest run that measured it are used, so a store that
ran the suites in several sessions, or stores merged from several machines, compare as one; when those
runs loaded different weights under one model's name (their digests, ``reports.health``), the page says
"weights changed between the runs" with each digest.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import logging
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure
from matplotlib.image import AxesImage

from harness.errors import HarnessError
from reports import detection, health, tables
from reports.cli import run_cli
from reports.figures import BIT_CLASS_ORDER, COMPONENT_ORDER, DPI, grouped_bars, suite_modules
from reports.html import table
from reports.load import SUPER_WEIGHTS_FILE, open_store, parse_records, pget
from reports.stats import wilson
from reports.views import OUTCOME_LABELS, outcome_label

log = logging.getLogger(__name__)

MAX_NOISE_PANELS = 6


# -- records ---------------------------------------------------------------------------------------


def latest_records(dirs: list[str | Path]) -> pd.DataFrame:
    """Parsed records of the stores in ``dirs``: for each (model, suite) those of the latest run (by start
    time) that measured it. Adds ``store`` (the results directory), ``started_at`` and ``weights`` (the digest of
    the weights the row's run loaded for its model, :func:`reports.health.digests`; None when not recorded).

    Raises:
        HarnessError: no directory given, a directory without a store, no records at all.
    """
    if not dirs:
        raise HarnessError("compare-models needs at least one results directory")
    frames = []
    for d in dirs:
        with open_store(d) as store:
            runs = store.runs()
            recs = store.records()
        if recs.empty:
            log.warning("the store in %s has no records: left out", d)
            continue
        started = dict(zip(runs["run_id"], runs["started_at"], strict=True))
        frames.append(recs.assign(store=str(d), started_at=recs["run_id"].map(started)))
    if not frames:
        raise HarnessError(f"no records in {', '.join(map(str, dirs))} (run the suites first)")
    every = pd.concat(frames, ignore_index=True)
    known = health.digests(every)
    recs = newest_per_suite(every)
    recs["weights"] = [known.get((str(r), str(m))) for r, m in zip(recs["run_id"], recs["model"], strict=True)]
    return parse_records(recs)


def weights_changed(records: pd.DataFrame) -> list[str]:
    """One line per model whose compared records come from runs of different weights (the ``weights`` column of
    :func:`latest_records`): "weights changed between the runs", each digest with its runs."""
    if "weights" not in records:
        return []
    known = {(str(r), str(m)): w for r, m, w in zip(records["run_id"], records["model"], records["weights"],
                                                   strict=True) if isinstance(w, str)}
    runs = records.sort_values("started_at", kind="stable")
    return health.weights_across(known, {m: list(g["run_id"]) for m, g in runs.groupby("model", sort=True)})


def newest_per_suite(records: pd.DataFrame) -> pd.DataFrame:
    """The records of the newest run (by ``started_at``) that measured each (model, suite)."""
    last = records.groupby(["model", "suite"])["started_at"].transform("max")
    return records[records["started_at"] == last].reset_index(drop=True)


# -- claim matrix ----------------------------------------------------------------------------------


def claim_matrix(records: pd.DataFrame) -> pd.DataFrame:
    """One row per (suite, claim, model): outcome, value, op, bound, statement, reason (from
    :func:`reports.tables.claims_table`; a claim recorded several times keeps its worst outcome)."""
    c = tables.claims_table(records)
    if c.empty:
        return c
    return c.drop_duplicates(["suite", "claim", "model"], keep="first").reset_index(drop=True)


def _cell_text(r) -> str:
    if r["outcome"] == "not_applicable":
        return "n/a"
    v = tables.fmt(r["value"])
    return v + ("" if r["outcome"] != "failed" else " ✗") + (" ?" if r["outcome"] == "unverified" else "")


def _tooltip(r) -> str:
    other = "other side" if r["kind"] == "relation" else "bound"
    parts = [f"{r['claim']} on {r['model']}: {outcome_label(r['outcome'], r['reason'])}",
             f"value {tables.fmt(r['value'])} {r['op']} {other} {tables.fmt(r['bound'])}"]
    if r["statement"]:
        parts.append(str(r["statement"]))
    if r["reason"]:
        parts.append(f"reason: {r['reason']}")
    return "\n".join(parts)


def matrix_html(m: pd.DataFrame, models: list[str]) -> str:
    """The claim x model matrix as an HTML table (a row per claim, grouped by suite)."""
    if m.empty:
        return "<p class='muted'>(no claims in these stores)</p>"
    esc = html.escape
    head = "<tr><th>suite</th><th>claim</th>" + "".join(f"<th>{esc(x)}</th>" for x in models) + "</tr>"
    rows = []
    for (suite, claim), g in m.groupby(["suite", "claim"], sort=True):
        by_model = {r["model"]: r for _, r in g.iterrows()}
        cells = []
        for model in models:
            r = by_model.get(model)
            if r is None:
                cells.append("<td class='cell-none' title='not measured'></td>")
            else:
                cells.append(f"<td class='cell c-{esc(r['outcome'])}' title=\"{esc(_tooltip(r))}\">"
                             f"{esc(_cell_text(r))}</td>")
        rows.append(f"<tr><td>{esc(suite)}</td><td>{esc(claim)}</td>{''.join(cells)}</tr>")
    return f"<table class='matrix'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


# -- headlines -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Headline:
    """One column of the headline table: ``value(records of one model)`` -> a number, text or None."""

    name: str
    value: Callable[[pd.DataFrame], object]
    help: str = ""


def _measurements(recs: pd.DataFrame, suite: str, metric: str) -> pd.DataFrame:
    return recs[(recs["suite"] == suite) & (recs["metric"] == metric) & ~recs["is_claim"]]


def _values(g: pd.DataFrame) -> pd.Series:
    """Values with a collapse (NULL or non-finite, ``collapsed``) as +inf."""
    return g["value"].where(g["value"].notna() | ~g["collapsed"], math.inf).astype(float)


def _weights(recs):
    """The digest of the weights the model's compared runs loaded (several: they changed between the runs)."""
    digests = recs["weights"].dropna().unique() if "weights" in recs else []
    return " / ".join(map(str, digests)) or None


def _health(recs):
    """"healthy", or the health claims the model failed (``harness.health``); None when none was judged."""
    c = recs[(recs["suite"] == health.HEALTH_SUITE) & recs["is_claim"]]
    if c.empty:
        return None
    failed = sorted(set(c.loc[c["outcome"] == "failed", "claim"]))
    return f"NOT HEALTHY: {', '.join(failed)} failed" if failed else "healthy"


def _clean_perplexity(recs):
    g = _measurements(recs, "smoke", "perplexity")
    g = g[pget(g, "kind").isin(["clean", None]) | pget(g, "kind").isna()]
    return float(g["value"].median()) if len(g) else None


def _zero_super_weights(recs):
    g = _measurements(recs, "super_weights", "ppl_ratio")
    g = g[(g["method"] == "super_weights") & (pget(g, "kind") == "zero")]
    return float(_values(g).max()) if len(g) else None


def _super_weight_found(recs):
    for store in recs["store"].dropna().unique() if "store" in recs else []:  # the detection the run used
        path = Path(store) / str(recs["model"].iloc[0]) / SUPER_WEIGHTS_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("sites"), list):
            sites = data["sites"]
            return f"yes ({len(sites)}, {data.get('detection', {}).get('detector', '?')})" if sites else "no"
    g = recs[(recs["suite"] == "super_weights") & (recs["method"] == "super_weights") & ~recs["is_claim"]]
    source = pget(g, "target_source").dropna()
    if source.empty:
        return None
    src = str(source.iloc[0])
    count = pd.to_numeric(pget(g, "count"), errors="coerce").dropna()
    n = f", {int(count.iloc[0])}" if len(count) else ""
    return f"yes ({src}{n})" if src.startswith("activation") else f"no ({src} stands in)"


def _bitflip_rate(recs, bit_class: str = "exp_msb", target: str = "uniform"):
    g = _measurements(recs, "bitflip", "ppl_ratio")
    g = g[(pget(g, "bit_class") == bit_class) & (g["method"] == target)]
    flips = pd.to_numeric(pget(g, "n_flips"), errors="coerce")
    g = g[flips == flips.min()]
    if g.empty:
        return None
    k, n = int(g["collapsed"].sum()), len(g)
    low, high = wilson(k, n)
    return f"{k}/{n} = {k / n:.0%} ({low:.0%}–{high:.0%})"


def _flips_to_collapse(attack: str):
    def value(recs):
        g = _measurements(recs, "attack", "flips_to_collapse")
        g = g[(pget(g, "attack").fillna(g["method"]) == attack) & (pget(g, "defense").fillna("none") == "none")]
        dtype = pget(g, "dtype")
        g = g[dtype == ("fp32" if (dtype == "fp32").any() else dtype.iloc[0])] if len(g) else g
        if g.empty:
            return None
        v = _values(g)
        budget = pd.to_numeric(pget(g, "budget"), errors="coerce").max()
        med = float(v.median())
        return f"> {budget:g} (held)" if math.isinf(med) and pd.notna(budget) else med
    return value


def _pruning_ratio(recs, sparsity: float = 0.5):
    g = _measurements(recs, "pruning", "perplexity")
    g = g[np.isclose(pd.to_numeric(pget(g, "sparsity"), errors="coerce").astype(float), sparsity)]
    gran = pget(g, "granularity")
    if gran.notna().any():
        g = g[gran == ("unstructured" if (gran == "unstructured").any() else gran.dropna().iloc[0])]
    w, m = _values(g[g["method"] == "wanda"]), _values(g[g["method"] == "magnitude"])
    if w.empty or m.empty:
        return None
    wv, mv = float(w.median()), float(m.median())
    if math.isinf(mv):
        return "magnitude collapsed"
    return wv / mv


def _lmeval_acc(clean: bool):
    def value(recs):
        g = recs[(recs["suite"] == "evaluate") & recs["metric"].isin(["acc", "accuracy"]) & ~recs["is_claim"]]
        kind = pget(g, "kind")
        g = g[(kind.isna() | (kind == "clean")) == clean]
        return float(g["value"].mean()) if len(g) else None
    return value


HEADLINES = [
    Headline("health", _health, "the model-health claims, judged once per session"),
    Headline("weights", _weights, "digest of the weights as loaded"),
    Headline("clean perplexity", _clean_perplexity, "smoke suite, evaluation windows"),
    Headline("zero super weights: ppl ratio", _zero_super_weights, "perplexity x after zeroing them"),
    Headline("super weight found", _super_weight_found, "activation scan, round 0"),
    Headline("uniform exp-MSB collapse", _bitflip_rate, "1 flip, collapsed/trials (Wilson 95%)"),
    Headline("flips to collapse: progressive", _flips_to_collapse("progressive"), "fp32, no defense"),
    Headline("flips to collapse: random", _flips_to_collapse("random"), "fp32, no defense, median of seeds"),
    Headline("Wanda / magnitude at 50%", _pruning_ratio, "perplexity ratio; < 1: Wanda better"),
    Headline("harmful flips caught by the audit", detection.audit_coverage,
             "detection suite: test-vector audit, harmful single-bit flips pooled over bit classes (Wilson 95%)"),
    Headline("lm-eval acc clean", _lmeval_acc(True), "mean over tasks"),
    Headline("lm-eval acc perturbed", _lmeval_acc(False), "mean over tasks and perturbations"),
]


def _module_headlines() -> list[Headline]:
    """``HEADLINES`` of the suite modules (``reports.finetune``, ...) that exist: a list of Headline or of
    (name, function) pairs."""
    out = []
    for _, module in suite_modules():
        for h in getattr(module, "HEADLINES", ()):
            out.append(h if isinstance(h, Headline) else Headline(*h))
    return out


def headline_table(records: pd.DataFrame, models: list[str]) -> pd.DataFrame:
    """A row per model, a column per headline whose data is in the stores (blank where a model lacks it)."""
    heads = HEADLINES + _module_headlines()
    rows = []
    for model in models:
        recs = records[records["model"] == model]
        row = {"model": model}
        for h in heads:
            try:
                row[h.name] = h.value(recs)
            except (KeyError, ValueError, IndexError) as err:  # a record shaped otherwise: leave the cell blank
                log.warning("headline %r of %s: %s", h.name, model, err)
                row[h.name] = None
        rows.append(row)
    df = pd.DataFrame(rows)
    keep = ["model"] + [h.name for h in heads if df[h.name].notna().any()]
    return df[keep]


# -- figures ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompareFigure:
    name: str
    title: str
    caption: str
    png: bytes


def _png(fig: MplFigure) -> bytes:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _heatmap_row(name: str, title: str, caption: str, models: list[str], rows: pd.DataFrame,
                 draw: Callable[[Axes, str], AxesImage], *, panel_width: float, height: float, label: str,
                 ylabel: str | None = None) -> list[CompareFigure]:
    """A row of one panel per model of ``models`` in ``rows`` (``draw(ax, model)``) sharing one colour bar."""
    have = [m for m in models if m in set(rows["model"])]
    fig = MplFigure(figsize=(0.9 + panel_width * len(have), height))
    axes = np.atleast_1d(fig.subplots(1, len(have), squeeze=False)).ravel()
    im = None
    for ax, model in zip(axes, have, strict=True):
        im = draw(ax, model)
    if ylabel is not None:
        axes[0].set_ylabel(ylabel, fontsize=8)
    fig.colorbar(im, ax=list(axes), label=label, shrink=0.9)
    return [CompareFigure(name, title, caption, _png(fig))]


def collapse_by_bit_class(records: pd.DataFrame, models: list[str]) -> list[CompareFigure]:
    """Collapse rate per bit class, one bar per model, Wilson 95% intervals; a panel per target."""
    g = _measurements(records, "bitflip", "ppl_ratio")
    if g.empty:
        return []
    flips = pd.to_numeric(pget(g, "n_flips"), errors="coerce")
    g = g.assign(bit_class=pget(g, "bit_class"), target=g["method"], flips=flips)
    g = g[g["flips"] == g.groupby("model")["flips"].transform("min")]
    targets = sorted(g["target"].dropna().unique(), key=lambda t: (t != "uniform", t))
    fig = MplFigure(figsize=(max(6.5, 1.0 + 0.9 * g["bit_class"].nunique() * max(len(models), 1) / 2),
                             2.6 * len(targets) + 0.6))
    axes = np.atleast_1d(fig.subplots(len(targets), 1, sharex=True, squeeze=False)).ravel()
    for ax, target in zip(axes, targets, strict=True):
        t = g[g["target"] == target]
        stats = t.groupby(["bit_class", "model"])["collapsed"].agg(["sum", "size"])
        present = set(t["bit_class"])
        groups = [c for c in BIT_CLASS_ORDER if c in present] + sorted(present - set(BIT_CLASS_ORDER))

        def get(i, stats=stats):
            def f(bit_class, model):
                if (bit_class, model) not in stats.index:
                    return np.nan
                k, n = stats.loc[(bit_class, model)]
                return (k / n, *wilson(int(k), int(n)))[i]
            return f

        grouped_bars(ax, groups, models, get(0), get(1), get(2))
        ax.set_ylim(0, 1.05)
        ax.set_ylabel(f"collapse rate\n({target})")
        ax.grid(alpha=0.3, axis="y")
    axes[0].legend(fontsize=7, ncol=min(len(models), 4), loc="upper right")
    axes[-1].set_xlabel("bit class")
    n = int(g.groupby(["model", "bit_class", "target"]).size().max())
    title = "Bit flips: collapse rate per bit class"
    axes[0].set_title(title, fontsize=10)
    return [CompareFigure("collapse_by_bit_class", title, f"One bar per model, Wilson 95% interval (up to {n} trials "
                          "per bar, the fewest flips measured); one panel per target.", _png(fig))]


def noise_curves(records: pd.DataFrame, models: list[str]) -> list[CompareFigure]:
    """Noise degradation curves with one line per model; a panel per noise kind and target."""
    df, metric, xlabel = tables.sweep(records, "robustness")
    if df.empty:
        return []
    series = sorted(df["series"].unique())[:MAX_NOISE_PANELS]
    ncols = min(3, len(series))
    nrows = math.ceil(len(series) / ncols)
    fig = MplFigure(figsize=(4.3 * ncols, 3.2 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, s in zip(axes, series, strict=False):
        for model in models:
            d = df[(df["series"] == s) & (df["model"] == model)].sort_values("x")
            if d.empty:
                continue
            color = f"C{models.index(model) % 10}"  # the model's colour in every figure of the page
            ax.plot(d["x"], d["median"], marker="o", ms=3, label=model, color=color)
            if (d["q25"] != d["q75"]).any():
                ax.fill_between(d["x"], d["q25"], d["q75"], alpha=0.15, lw=0, color=color)
        xs = df["x"].to_numpy(dtype=float)
        if (xs > 0).all() and xs.max() / xs.min() >= 20:
            ax.set_xscale("log")
        med = df.loc[df["series"] == s, "median"].to_numpy(dtype=float)
        med = med[np.isfinite(med)]
        if med.size and med.min() > 0 and med.max() / med.min() > 20:
            ax.set_yscale("log")
        ax.set_title(s, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(f"{metric}, median", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(series):]:
        ax.set_visible(False)
    fig.tight_layout()
    return [CompareFigure("noise_curves", "Noise degradation, models overlaid",
                          f"{metric} (median over non-collapsed trials, band: interquartile range) against the noise "
                          f"level; one line per model, a panel per noise kind / target.", _png(fig))]


def ablation_row(records: pd.DataFrame, models: list[str]) -> list[CompareFigure]:
    """Ablation heatmaps (layer x component) of every model in a row, on one shared colour scale."""
    grid = tables.ablation_grid(records)
    if grid.empty:
        return []
    method = grid["method"].mode().iloc[0]
    grid = grid[grid["method"] == method]
    vals = grid["value"].to_numpy(dtype=float)
    finite = vals[np.isfinite(vals)]
    if not finite.size:
        return []
    top = finite.max() * (10 if np.isinf(vals).any() else 1)
    log_scale = finite.min() > 0 and top / finite.min() > 20
    norm = LogNorm(vmin=finite.min(), vmax=top) if log_scale else Normalize(vmin=finite.min(), vmax=top)
    comps = sorted(grid["component"].unique(), key=lambda c: (COMPONENT_ORDER.index(c)
                                                               if c in COMPONENT_ORDER else 99, c))
    max_layers = int(grid.groupby("model")["layer"].nunique().max())
    metric = grid["metric"].iloc[0]

    def draw(ax: Axes, model: str) -> AxesImage:
        piv = grid[grid["model"] == model].pivot_table(index="layer", columns="component", values="value",
                                                       aggfunc="mean").reindex(columns=comps).sort_index()
        shown = np.where(np.isposinf(piv.to_numpy(dtype=float)), top, piv.to_numpy(dtype=float))
        im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r", norm=norm)
        ax.set_xticks(range(len(comps)), comps, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(piv)), [int(i) for i in piv.index], fontsize=7)
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("component", fontsize=8)
        return im

    return _heatmap_row("ablation_row", f"Ablation sensitivity ({method}), one colour scale",
                        f"{metric} after ablating each (layer, component) with '{method}'; darker is more "
                        f"sensitive; the same colour means the same value in every panel"
                        f"{' (log scale)' if log_scale else ''}.", models, grid, draw,
                        panel_width=0.7 * len(comps) + 0.8, height=1.4 + 0.3 * max_layers, label=metric, ylabel="layer")


def similarity_row(records: pd.DataFrame, models: list[str]) -> list[CompareFigure]:
    """Method-similarity (Jaccard) matrices of every model side by side."""
    pairs = tables.jaccard_pairs(records)
    if pairs.empty:
        return []
    methods = sorted(set(pairs["method_a"]) | set(pairs["method_b"]))

    def draw(ax: Axes, model: str) -> AxesImage:
        m = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
        for r in pairs[pairs["model"] == model].itertuples():
            m.loc[r.method_a, r.method_b] = m.loc[r.method_b, r.method_a] = r.value
        im = ax.imshow(m.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right", fontsize=7)
        ax.set_yticks(range(len(methods)), methods, fontsize=7)
        for (i, j), v in np.ndenumerate(m.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
        ax.set_title(model, fontsize=9)
        return im

    return _heatmap_row("method_similarity", "Method similarity (Jaccard of top weights)",
                        "Jaccard similarity of the weight sets each scoring method ranks highest, per model.",
                        models, pairs, draw, panel_width=0.6 * len(methods) + 1.0, height=1.2 + 0.55 * len(methods),
                        label="Jaccard similarity")


COMPARE_FIGURES = (collapse_by_bit_class, noise_curves, ablation_row, similarity_row)


# -- page ------------------------------------------------------------------------------------------

CSS = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;color:#1b1f24}
header{background:#1f3a5f;color:#fff;padding:12px 24px}header h1{margin:0;font-size:20px}
header p{margin:3px 0 0;opacity:.85;font-size:13px}nav{padding:7px 24px;background:#eef2f7;position:sticky;top:0}
nav a{margin-right:14px;color:#1f3a5f;text-decoration:none;font-weight:600}main{padding:4px 24px 40px}
h2{border-bottom:2px solid #dde3ea;padding-bottom:3px;margin:22px 0 8px}
table{border-collapse:collapse;margin:6px 0 14px;font-size:12.5px}td,th{border:1px solid #d0d7de;padding:3px 7px}
th{background:#f3f5f8;text-align:left}td{font-variant-numeric:tabular-nums}
td.cell{text-align:right;cursor:help;min-width:70px}.c-passed{background:#d8f0dd}.c-failed{background:#f8c9c9;
font-weight:600}.c-unverified{background:#fff0c2;font-style:italic}.c-not_applicable{background:#eceff2;
color:#6e7781}td.cell-none{background:repeating-linear-gradient(45deg,#fff,#fff 4px,#f3f5f8 4px,#f3f5f8 8px)}
.legend span{display:inline-block;padding:1px 8px;margin-right:8px;border:1px solid #d0d7de}
figure{margin:8px 0 18px}figure img{max-width:100%;border:1px solid #e1e4e8}
figcaption{font-size:12px;color:#57606a;max-width:820px}.muted{color:#57606a}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:6px 10px;margin:6px 0;border-radius:4px}
"""


def page(records: pd.DataFrame, dirs: list[str | Path]) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    """The comparison page and its two tables (claim matrix rows, headlines)."""
    esc = html.escape
    models = sorted(records["model"].dropna().unique())
    m = claim_matrix(records)
    heads = headline_table(records, models)
    figs = []
    for draw in COMPARE_FIGURES:
        try:
            figs += draw(records, models)
        except (KeyError, ValueError) as err:
            log.warning("comparison figure %s left out: %s", draw.__name__, err)
    counts = m.groupby(["model", "outcome"]).size().unstack(fill_value=0) if not m.empty else pd.DataFrame()
    summary = pd.DataFrame({"model": models, **{OUTCOME_LABELS[o]: [int(counts.loc[mod, o]) if o in counts and
                                                                     mod in counts.index else 0 for mod in models]
                                                 for o in OUTCOME_LABELS}})
    runs = records.groupby("model").agg(runs=("run_id", "nunique"), stores=("store", "nunique"),
                                        suites=("suite", "nunique"), latest=("started_at", "max")).reset_index()
    legend = "".join(f"<span class='c-{o}'>{esc(OUTCOME_LABELS[o])}</span>" for o in OUTCOME_LABELS)
    parts = ["<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width,initial-scale=1'>"
             f"<title>ESA model comparison: {esc(', '.join(models))}</title><style>{CSS}</style></head><body>",
             f"<header><h1>ESA model comparison: {esc(', '.join(models))}</h1>"
             f"<p>stores: {esc(', '.join(map(str, dirs)))}</p></header>",
             "<nav><a href='#headlines'>Headlines</a><a href='#claims'>Claims</a><a href='#figures'>Figures</a></nav>"
             "<main>",
             "<section id='headlines'><h2>Headlines</h2>"
             + "".join(f"<div class='warn'>{esc(line)}</div>" for line in weights_changed(records))
             + "<p class='muted'>Blank: not measured for that model in these stores.</p>" + table(heads)
             + table(summary.merge(runs, on="model")) + "</section>",
             f"<section id='claims'><h2>Claims</h2><p class='legend'>{legend}</p><p class='muted'>The value of each "
             f"claim per model (hover for the statement, the bound or other side, and the reason); ✗ failed, "
             f"? unverified (no bound for that model).</p>" + matrix_html(m, models) + "</section>",
             "<section id='figures'><h2>Figures</h2>"]
    for f in figs:
        data = base64.b64encode(f.png).decode("ascii")
        parts.append(f"<figure id='{esc(f.name)}'><img alt='{esc(f.title)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>")
    if not figs:
        parts.append("<p class='muted'>(no figure: none of these suites ran on two models)</p>")
    parts.append("</section></main></body></html>")
    return "\n".join(parts), m, heads


def build_comparison(dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """Write the comparison page of the models in the stores ``dirs`` and return its ``index.html``.

    Args:
        dirs: results directories (each holds ``results.sqlite``).
        out: the directory to write (default ``<dirs[0]>/report/compare-models``).

    Raises:
        HarnessError: no directory, a missing store, no records.
    """
    records = latest_records(list(dirs))
    out = Path(out) if out else Path(dirs[0]) / "report" / "compare-models"
    text, matrix, heads = page(records, dirs)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    matrix.to_csv(out / "tables" / "claim_matrix.csv", index=False)
    heads.to_csv(out / "tables" / "headlines.csv", index=False)
    path = out / "index.html"
    tmp = path.with_name(".index.html.tmp")
    tmp.write_text(text)
    tmp.replace(path)
    log.info("comparison of %s written to %s", ", ".join(sorted(records["model"].unique())), path)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python -m reports compare-models RESULTS_DIR... [-o DIR]``; a user mistake is one line, exit 2."""
    p = argparse.ArgumentParser(prog="python -m reports compare-models",
                                description="Write a page comparing the models of one or more results stores.")
    p.add_argument("results_dirs", nargs="+", help="results directories (each holds results.sqlite)")
    p.add_argument("-o", "--out", default=None,
                   help="directory to write (default: <first RESULTS_DIR>/report/compare-models)")
    return run_cli(p, argv, lambda args: build_comparison(args.results_dirs, args.out))


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
