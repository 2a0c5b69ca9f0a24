"""Figures (matplotlib, PNG) drawn only from the data present: a suite that did not run leaves none.

Uses ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state, no display needed).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure

from reports import tables
from reports.load import RunData, direction_of

log = logging.getLogger(__name__)

COMPONENT_ORDER = ("query", "key", "value", "attn_out", "mlp_up", "mlp_gate", "mlp_down", "attn_norm",
                   "mlp_norm", "attention", "mlp", "all")
CONTROL_METHODS = ("random",)
SWEEP_TITLES = {
    "robustness": "Noise degradation",
    "bitflip": "Bit-flip degradation by bit class",
    "attack": "Bit-flip attacks",
    "adversarial": "Input attacks",
    "targeted": "Targeted perturbation impact (methods vs random)",
    "pruning": "Pruning: sparsity vs perplexity",
    "selective": "Selective pruning: sparsity vs degradation",
    "selective_pruning": "Selective pruning: sparsity vs degradation",
}
DPI = 110


@dataclass(frozen=True)
class Figure:
    """A written figure: ``path`` is relative to the report directory."""

    name: str
    section: str
    title: str
    caption: str
    path: str


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("_") or "x"


def _save(fig: MplFigure, outdir: Path, name: str) -> str:
    rel = f"figures/{name}.png"
    (outdir / "figures").mkdir(parents=True, exist_ok=True)
    fig.savefig(outdir / rel, dpi=DPI, bbox_inches="tight")
    return rel


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def ablation_heatmaps(data: RunData, outdir: Path) -> list[Figure]:
    grid = tables.ablation_grid(data.records)
    out = []
    if grid.empty:
        return out
    for (model, method, metric), g in grid.groupby(["model", "method", "metric"]):
        comps = sorted(g["component"].unique(), key=lambda c: (COMPONENT_ORDER.index(c)
                                                               if c in COMPONENT_ORDER else 99, c))
        piv = g.pivot_table(index="layer", columns="component", values="value", aggfunc="mean")
        piv = piv.reindex(columns=comps).sort_index()
        vals = piv.to_numpy(dtype=float)
        finite = _finite(vals)
        top = (finite.max() * (10 if np.isinf(vals).any() else 1)) if finite.size else 1.0
        shown = np.where(np.isposinf(vals), top, vals)
        pos = finite.size and finite.min() > 0 and finite.max() / finite.min() > 20
        norm = LogNorm(vmin=finite.min(), vmax=top) if pos else Normalize()
        fig = MplFigure(figsize=(1.0 + 0.8 * len(comps), 1.2 + 0.38 * len(piv)))
        ax = fig.subplots()
        im = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap="magma_r", norm=norm)
        ax.set_xticks(range(len(comps)), comps, rotation=30, ha="right")
        ax.set_yticks(range(len(piv)), [int(i) for i in piv.index])
        ax.set_xlabel("component")
        ax.set_ylabel("layer")
        if vals.size <= 200:
            for (i, j), v in np.ndenumerate(vals):
                if not np.isnan(v):
                    ax.text(j, i, "inf" if np.isinf(v) else f"{v:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if norm(shown[i, j]) > 0.6 else "black")
        fig.colorbar(im, ax=ax, label=metric)
        title = f"Ablation sensitivity, {model} ({method})"
        ax.set_title(title, fontsize=10)
        name = f"ablation_heatmap__{slug(model)}__{slug(method)}"
        out.append(Figure(name, "ablation", title,
                          f"{metric} after ablating each (layer, component) with '{method}'; darker is more "
                          f"sensitive{', log colour scale' if pos else ''}.", _save(fig, outdir, name)))
    return out


def ablation_bars(data: RunData, outdir: Path, top: int = 20) -> list[Figure]:
    grid = tables.ablation_grid(data.records)
    out = []
    if grid.empty:
        return out
    for (model, metric), group in grid.groupby(["model", "metric"]):
        d = direction_of(metric)
        g = group.sort_values("value", ascending=bool(d)).head(top).iloc[::-1]
        labels = [f"L{int(r.layer)} {r.component}" + (f" ({r.method})" if g["method"].nunique() > 1 else "")
                  for r in g.itertuples()]
        vals = g["value"].to_numpy(dtype=float)
        finite = _finite(vals)
        shown = np.where(np.isinf(vals), (finite.max() if finite.size else 1) * 10, vals)
        fig = MplFigure(figsize=(6.5, 0.9 + 0.26 * len(g)))
        ax = fig.subplots()
        ax.barh(range(len(g)), shown, color=["#b2182b" if np.isinf(v) else "#2166ac" for v in vals])
        ax.set_yticks(range(len(g)), labels, fontsize=8)
        if finite.size and finite.min() > 0 and shown.max() / finite.min() > 20:
            ax.set_xscale("log")
        if metric == "ppl_ratio":
            ax.axvline(1.0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(metric + (" (lower is better)" if d is False else " (higher is better)" if d else ""))
        title = f"Most damaging ablations, {model}"
        ax.set_title(title, fontsize=10)
        name = f"ablation_bars__{slug(model)}"
        out.append(Figure(name, "ablation", title, f"The {len(g)} (layer, component) ablations with the worst "
                          f"{metric}; red bars collapsed (inf).", _save(fig, outdir, name)))
    return out


def sweep_curves(data: RunData, outdir: Path) -> list[Figure]:
    out = []
    for suite in tables.SWEEPS:
        df, metric, xlabel = tables.sweep(data.records, suite)
        if df.empty:
            continue
        for model, g in df.groupby("model"):
            out.append(_sweep_figure(suite, model, g, metric=metric, xlabel=xlabel, outdir=outdir))
    return out


def _sweep_figure(suite: str, model: str, g: pd.DataFrame, *, metric: str, xlabel: str, outdir: Path) -> Figure:
    with_collapse = bool((g["collapsed"] > 0).any())
    fig = MplFigure(figsize=(7, 6.2 if with_collapse else 4.2))
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 2]) if with_collapse else [fig.subplots()]
    ax = axes[0]
    xs_all = g["x"].to_numpy(dtype=float)
    logx = (xs_all > 0).all() and xs_all.max() / max(xs_all.min(), 1e-300) >= 20
    for series, unsorted in g.groupby("series", sort=True):
        s = unsorted.sort_values("x")
        control = any(series.split(" / ")[0] == c for c in CONTROL_METHODS)
        style = {"color": "grey", "ls": "--"} if control else {}
        line, = ax.plot(s["x"], s["median"], marker="o", ms=3.5, label=series, **style)
        if (s["q25"] != s["q75"]).any():
            ax.fill_between(s["x"], s["q25"], s["q75"], alpha=0.2, color=line.get_color(), lw=0)
        if with_collapse:
            axes[1].plot(s["x"], s["collapse_rate"], marker="o", ms=3.5, color=line.get_color(),
                         ls=line.get_linestyle())
            if (s["collapsed"] > 0).any():  # zero-collapse series: line only, the bands would pile up
                axes[1].fill_between(s["x"], s["collapse_low"], s["collapse_high"], alpha=0.15,
                                     color=line.get_color(), lw=0)
    med = _finite(g["median"])
    if med.size and med.min() > 0 and med.max() / med.min() > 20:
        ax.set_yscale("log")
    clean = g["clean_value"].dropna()
    if metric == "ppl_ratio":
        ax.axhline(1.0, color="black", lw=0.7, ls=":")
    elif metric == "perplexity" and len(clean):
        ax.axhline(float(clean.iloc[0]), color="black", lw=0.7, ls=":", label="clean")
    d = direction_of(metric)
    ax.set_ylabel(f"{metric}, median" + (" (lower is better)" if d is False else ""))
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    if with_collapse:
        axes[1].set_ylabel("collapse rate")
        axes[1].set_ylim(-0.03, 1.03)
        axes[1].grid(alpha=0.3)
    for a in axes:
        if logx:
            a.set_xscale("log")
    axes[-1].set_xlabel(xlabel)
    title = f"{SWEEP_TITLES[suite]}, {model}"
    ax.set_title(title, fontsize=10)
    name = f"{suite}_curve__{slug(model)}"
    band = "interquartile range over trials (or the suite's own ci_low/ci_high)"
    caption = f"{metric} (median over non-collapsed trials, band: {band})"
    if with_collapse:
        caption += ("; below, collapse rate with Wilson 95% interval (band drawn for series with at least one "
                    "collapse)")
    return Figure(name, suite, title, caption + ".", _save(fig, outdir, name))


def method_similarity(data: RunData, outdir: Path) -> list[Figure]:
    pairs = tables.jaccard_pairs(data.records)
    out = []
    if pairs.empty:
        return out
    for model, g in pairs.groupby("model"):
        methods = sorted(set(g["method_a"]) | set(g["method_b"]))
        m = pd.DataFrame(np.eye(len(methods)), index=methods, columns=methods)
        for r in g.itertuples():
            m.loc[r.method_a, r.method_b] = m.loc[r.method_b, r.method_a] = r.value
        fig = MplFigure(figsize=(1.6 + 0.75 * len(methods), 1.2 + 0.65 * len(methods)))
        ax = fig.subplots()
        im = ax.imshow(m.to_numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_yticks(range(len(methods)), methods)
        for (i, j), v in np.ndenumerate(m.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black")
        fig.colorbar(im, ax=ax, label="Jaccard similarity")
        title = f"Method similarity (Jaccard of top weights), {model}"
        ax.set_title(title, fontsize=10)
        name = f"method_similarity__{slug(model)}"
        out.append(Figure(name, "compare", title, "Jaccard similarity of the weight sets each method ranks "
                          "highest; 1 = identical sets.", _save(fig, outdir, name)))
    return out


def execution_times(data: RunData, outdir: Path) -> list[Figure]:
    t = tables.timings(data.records)
    out = []
    if t.empty:
        return out
    for model, group in t.groupby("model"):
        g = group.sort_values("seconds")
        labels = g["method"] if g["suite"].nunique() == 1 else g["suite"] + ": " + g["method"]
        fig = MplFigure(figsize=(6.5, 1.0 + 0.3 * len(g)))
        ax = fig.subplots()
        ax.barh(range(len(g)), g["seconds"], color="#4d9221")
        ax.set_yticks(range(len(g)), labels, fontsize=8)
        for i, v in enumerate(g["seconds"]):
            ax.text(v, i, f" {v:.3g} s", va="center", fontsize=7)
        ax.set_xlabel("seconds (mean)")
        title = f"Execution time by method, {model}"
        ax.set_title(title, fontsize=10)
        name = f"execution_time__{slug(model)}"
        out.append(Figure(name, "compare", title, "Mean wall time of each method's measured work "
                          "('seconds' records).", _save(fig, outdir, name)))
    return out


def super_weight_layers(data: RunData, outdir: Path) -> list[Figure]:
    sw = data.super_weights.dropna(subset=["layer"])
    out = []
    if sw.empty:
        return out
    for model, g in sw.groupby("model"):
        counts = g.assign(method=g["method"].fillna("?")).pivot_table(
            index="layer", columns="method", values="score", aggfunc="size", fill_value=0)
        layers = range(int(counts.index.min()), int(counts.index.max()) + 1)
        counts = counts.reindex(layers, fill_value=0)
        fig = MplFigure(figsize=(max(5.0, 0.45 * len(counts) + 2), 3.6))
        ax = fig.subplots()
        bottom = np.zeros(len(counts))
        for method in counts.columns:
            ax.bar(counts.index, counts[method], bottom=bottom, label=method)
            bottom += counts[method].to_numpy()
        ax.set_xlabel("layer")
        ax.set_ylabel("super weights found")
        ax.legend(fontsize=7, title="method", title_fontsize=7)
        ax.grid(alpha=0.3, axis="y")
        title = f"Super weights per layer, {model}"
        ax.set_title(title, fontsize=10)
        name = f"super_weights_per_layer__{slug(model)}"
        out.append(Figure(name, "super_weights", title, f"Where the {len(g)} super weights found lie, by "
                          "scoring method (records and super_weights.json).", _save(fig, outdir, name)))
    return out


FIGURES = (ablation_heatmaps, ablation_bars, sweep_curves, method_similarity, execution_times,
           super_weight_layers)


def draw_all(data: RunData, outdir: Path) -> list[Figure]:
    """Every figure the run's data supports, in report order."""
    out = []
    for draw in FIGURES:
        out += draw(data, outdir)
    return out
