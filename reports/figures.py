"""Figures (matplotlib, PNG) drawn only from the data present: a suite that did not run leaves none.

Uses ``matplotlib.figure.Figure`` directly (Agg canvas, no pyplot state, no display needed).
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure as MplFigure

from reports import tables
from reports.load import RunData, direction_of, pget

log = logging.getLogger(__name__)

COMPONENT_ORDER = ("query", "key", "value", "attn_out", "mlp_up", "mlp_gate", "mlp_down", "attn_norm",
                   "mlp_norm", "attention", "mlp", "all")
CONTROL_METHODS = ("random",)
SWEEP_TITLES = {
    "robustness": "Noise degradation",
    "bitflip": "Bit-flip degradation by bit class",
    "attack": "Bit-flip attacks: perplexity ratio after each flip",
    "targeted_perturbation": "Targeted perturbation impact (methods vs random)",
    "pruning": "Pruning: sparsity vs perplexity",
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


def _titled(fig: MplFigure, ax, outdir: Path, *, name: str, section: str, title: str, caption: str) -> Figure:
    """Title ``ax``, save ``fig`` as ``figures/<name>.png`` under ``outdir`` and return it as a :class:`Figure`."""
    ax.set_title(title, fontsize=10)
    return Figure(name, section, title, caption, _save(fig, outdir, name))


def _groups(table: pd.DataFrame, by: str | list[str]) -> Iterable[tuple[Any, pd.DataFrame]]:
    """``(key, rows)`` of ``table`` grouped ``by``; nothing when it is empty (it may then lack the columns)."""
    return () if table.empty else table.groupby(by)


def _finite(values) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def ablation_heatmaps(data: RunData, outdir: Path) -> list[Figure]:
    out = []
    for (model, method, metric), g in _groups(tables.ablation_grid(data.records), ["model", "method", "metric"]):
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
        out.append(_titled(fig, ax, outdir, name=f"ablation_heatmap__{slug(model)}__{slug(method)}",
                           section="ablation", title=f"Ablation sensitivity, {model} ({method})",
                           caption=f"{metric} after ablating each (layer, component) with '{method}'; darker is "
                                   f"more sensitive{', log colour scale' if pos else ''}."))
    return out


def ablation_bars(data: RunData, outdir: Path, top: int = 20) -> list[Figure]:
    out = []
    for (model, metric), group in _groups(tables.ablation_grid(data.records), ["model", "metric"]):
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
        out.append(_titled(fig, ax, outdir, name=f"ablation_bars__{slug(model)}", section="ablation",
                           title=f"Most damaging ablations, {model}",
                           caption=f"The {len(g)} (layer, component) ablations with the worst {metric}; red bars "
                                   "collapsed (inf)."))
    return out


BIT_CLASS_ORDER = ("sign", "exp_msb", "exponent", "mantissa_msb", "mantissa_lsb")


def sweep_curves(data: RunData, outdir: Path) -> list[Figure]:
    """One figure per swept suite and model: a curve over x, or grouped bars when x has a single value."""
    out = []
    for suite in tables.SWEEPS:
        df, metric, xlabel = tables.sweep(data.records, suite)
        for model, g in _groups(df, "model"):
            if g["x"].nunique() == 1:
                out.append(_sweep_bars(suite, model, g, metric=metric, xlabel=xlabel, outdir=outdir))
            else:
                out.append(_sweep_figure(suite, model, g, metric=metric, xlabel=xlabel, outdir=outdir))
    return out


def _order(values, known=BIT_CLASS_ORDER) -> list:
    return sorted(set(values), key=lambda v: (known.index(v) if v in known else len(known), str(v)))


def grouped_bars(ax, groups: list, hues: list, value, low=None, high=None, *, colors=None) -> list:
    """Bars of ``value(group, hue)`` in groups along x, one colour per hue, with error bars from
    ``low``/``high`` (absolute limits); a missing value leaves a gap. Returns ``(x, width, group, hue)`` of
    every bar."""
    width = 0.8 / max(len(hues), 1)
    placed = []
    for j, hue in enumerate(hues):
        xs = np.arange(len(groups)) + (j - (len(hues) - 1) / 2) * width
        ys = np.array([value(gr, hue) for gr in groups], dtype=float)
        placed += [(x, width, gr, hue) for x, gr in zip(xs, groups, strict=True)]
        kw = {"color": colors[j]} if colors else {}
        ax.bar(xs, np.nan_to_num(ys, nan=0.0, posinf=0.0), width * 0.92, label=str(hue), **kw)
        if low is not None:
            lo = np.array([low(gr, hue) for gr in groups], dtype=float)
            hi = np.array([high(gr, hue) for gr in groups], dtype=float)
            ok = np.isfinite(ys) & np.isfinite(lo) & np.isfinite(hi)
            ax.errorbar(xs[ok], ys[ok], yerr=[ys[ok] - lo[ok], hi[ok] - ys[ok]], fmt="none", ecolor="black",
                         elinewidth=0.9, capsize=2.5)
    ax.set_xticks(range(len(groups)), [str(g) for g in groups], fontsize=8)
    return placed


def _sweep_bars(suite: str, model: str, g: pd.DataFrame, *, metric: str, xlabel: str, outdir: Path) -> Figure:
    """A sweep measured at one x only (the quick bit-flip preset: 1 flip): grouped bars of the metric
    (median, IQR) and of the collapse rate (Wilson 95%), grouped by the first series key."""
    spec = tables.SWEEPS[suite]
    first, rest = spec.series[0], [k for k in spec.series[1:] if k in g and g[k].nunique() > 1]
    g = g.assign(_group=g[first], _hue=[" / ".join(str(r[k]) for k in rest) or suite for _, r in g.iterrows()])
    groups, hues = _order(g["_group"]), sorted(g["_hue"].unique())
    cell = {(r["_group"], r["_hue"]): r for _, r in g.iterrows()}

    def get(col):
        return lambda gr, hue: float(cell[(gr, hue)][col]) if (gr, hue) in cell else np.nan

    fig = MplFigure(figsize=(max(6.5, 1.2 + 0.35 * len(groups) * len(hues)), 6.0))
    ax, ax2 = fig.subplots(2, 1, sharex=True)
    shown = _finite(np.concatenate([g["median_all"], g["q75"]]))
    log = shown.size and shown.min() > 0 and shown.max() / shown.min() > 20
    top = (shown.max() * (4.0 if log else 1.25)) if shown.size else 2.0  # where a collapse is drawn

    def at_top(col):
        return lambda gr, hue: min(get(col)(gr, hue), top)

    placed = grouped_bars(ax, groups, hues, at_top("median_all"))
    for x, width, gr, hue in placed:
        c = cell.get((gr, hue))
        if c is None or not c["collapsed"]:
            continue
        share = c["collapsed"] / c["trials"]
        collapsed_median = not np.isfinite(c["median_all"])
        ax.bar(x, top, width * 0.92, fill=False, hatch="///" if collapsed_median else None, edgecolor="#b2182b",
               lw=0.8)
        ax.plot([x], [top], marker="v", color="#b2182b", ms=5, clip_on=False)
        ax.text(x, top, f"{share:.0%}", ha="center", va="bottom", fontsize=7, color="#b2182b")
    if log:
        ax.set_yscale("log")
    ax.set_ylim(top=top * (1.6 if log else 1.08))
    if metric == "ppl_ratio":
        ax.axhline(1.0, color="black", lw=0.7, ls=":")
    ax.set_ylabel(f"{metric}, median of all trials")
    ax.legend(fontsize=7, title=" / ".join(rest).replace("method", "target" if suite == "bitflip" else "method")
              or None, title_fontsize=7, loc="upper right", ncol=min(len(hues), 4))
    ax.grid(alpha=0.3, axis="y")
    grouped_bars(ax2, groups, hues, get("collapse_rate"), get("collapse_low"), get("collapse_high"))
    ax2.set_ylim(0, 1.03)
    ax2.set_ylabel("collapse rate")
    ax2.set_xlabel(first.replace("_", " "))
    ax2.grid(alpha=0.3, axis="y")
    x = float(g["x"].iloc[0])
    trials = int(g["trials"].max())
    return _titled(fig, ax, outdir, name=f"{suite}_bars__{slug(model)}", section=suite,
                   title=f"{SWEEP_TITLES[suite]}, {model} ({xlabel}: {x:g})",
                   caption=f"Measured at one x only ({xlabel} = {x:g}): above, {metric} (median over all trials, a "
                           "collapse counted as the worst value; a cell with collapses gets a red frame up to the top "
                           "edge, where a red mark gives its collapse share; hatched: more than half of its trials "
                           "collapsed, so its median is a collapse); below, the collapse rate with its Wilson 95% "
                           f"interval (at most {trials} trials per bar).")


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
    if g["series"].nunique() > 8:
        ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
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
    band = "interquartile range over trials (or the suite's own ci_low/ci_high)"
    caption = f"{metric} (median over non-collapsed trials, band: {band})"
    if with_collapse:
        caption += ("; below, collapse rate with Wilson 95% interval (band drawn for series with at least one "
                    "collapse)")
    return _titled(fig, ax, outdir, name=f"{suite}_curve__{slug(model)}", section=suite,
                   title=f"{SWEEP_TITLES[suite]}, {model}", caption=caption + ".")


def method_similarity(data: RunData, outdir: Path) -> list[Figure]:
    out = []
    for model, g in _groups(tables.jaccard_pairs(data.records), "model"):
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
        out.append(_titled(fig, ax, outdir, name=f"method_similarity__{slug(model)}", section="compare",
                           title=f"Method similarity (Jaccard of top weights), {model}",
                           caption="Jaccard similarity of the weight sets each method ranks highest; 1 = identical "
                                   "sets."))
    return out


def execution_times(data: RunData, outdir: Path) -> list[Figure]:
    out = []
    for model, group in _groups(tables.timings(data.records), "model"):
        g = group.sort_values("seconds")
        labels = g["method"] if g["suite"].nunique() == 1 else g["suite"] + ": " + g["method"]
        fig = MplFigure(figsize=(6.5, 1.0 + 0.3 * len(g)))
        ax = fig.subplots()
        ax.barh(range(len(g)), g["seconds"], color="#4d9221")
        ax.set_yticks(range(len(g)), labels, fontsize=8)
        for i, v in enumerate(g["seconds"]):
            ax.text(v, i, f" {v:.3g} s", va="center", fontsize=7)
        ax.set_xlabel("seconds (mean)")
        out.append(_titled(fig, ax, outdir, name=f"execution_time__{slug(model)}", section="compare",
                           title=f"Execution time by method, {model}",
                           caption="Mean wall time of each method's measured work ('seconds' records)."))
    return out


def super_weight_layers(data: RunData, outdir: Path) -> list[Figure]:
    out = []
    for model, g in _groups(data.super_weights.dropna(subset=["layer"]), "model"):
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
        out.append(_titled(fig, ax, outdir, name=f"super_weights_per_layer__{slug(model)}", section="super_weights",
                           title=f"Super weights per layer, {model}",
                           caption=f"Where the {len(g)} super weights found lie, by scoring method (records and "
                                   "super_weights.json)."))
    return out


def attack_flips(data: RunData, outdir: Path) -> list[Figure]:
    """Flips to collapse per attack cell (median over seeds); a cell that never collapsed within its
    budget is drawn hatched at the budget."""
    out = []
    for model, unsorted in _groups(tables.attack_cells(data.records), "model"):
        g = unsorted.sort_values(["dtype", "defense", "attack"])
        labels = [f"{r.attack}\n{r.dtype} {r.defense}" for r in g.itertuples()]
        ftc = g["flips_to_collapse"].to_numpy(dtype=float)
        held = ~np.isfinite(ftc)
        height = np.where(held, g["budget"].to_numpy(dtype=float), ftc)
        fig = MplFigure(figsize=(max(6.0, 0.6 * len(g) + 1.5), 4.4))
        ax = fig.subplots()
        colors = ["grey" if a == "random" else "#2166ac" for a in g["attack"]]
        bars = ax.bar(range(len(g)), np.nan_to_num(height), color=colors)
        for b, h, n, k in zip(bars, held, g["seeds"], g["collapsed"], strict=True):
            if h:
                b.set_hatch("//")
                b.set_alpha(0.45)
            ax.text(b.get_x() + b.get_width() / 2, b.get_height(), f"{k}/{n}", ha="center", va="bottom", fontsize=7)
        ax.set_ylim(top=float(np.nanmax(height)) * 1.12 if np.isfinite(height).any() else None)
        ax.set_xticks(range(len(g)), labels, fontsize=7, rotation=45, ha="right")
        ax.set_ylabel("flips to collapse (median over seeds)")
        ax.grid(alpha=0.3, axis="y")
        out.append(_titled(fig, ax, outdir, name=f"attack_flips__{slug(model)}", section="attack",
                           title=f"Bit-flip attacks: flips to collapse, {model}",
                           caption="Flips each attack needed to collapse the model (x10 perplexity or non-finite), "
                                   "per weight dtype and defense; grey: random flips; hatched: no collapse within "
                                   "the flip budget (bar height = budget); above each bar: seeds that collapsed / "
                                   "seeds run."))
    return out


def adversarial_bars(data: RunData, outdir: Path) -> list[Figure]:
    """Input attacks: change of the target continuation's log-probability per attack (mean, every prompt
    as a dot) and how often the greedy continuation changed (Wilson 95% interval)."""
    out = []
    recs = data.records[(data.records["suite"] == "adversarial") &
                        (data.records["metric"] == "target_logprob_delta") & ~data.records["is_claim"]]
    for model, g in _groups(tables.adversarial_cells(data.records), "model"):
        attacks = list(g["attack"])
        fig = MplFigure(figsize=(max(6.0, 1.1 * len(attacks) + 2), 5.4))
        ax, ax2 = fig.subplots(2, 1, sharex=True)
        ax.bar(range(len(g)), g["mean_logprob_delta"], color="#b2182b", alpha=0.75)
        mine = recs[recs["model"] == model]
        for i, a in enumerate(attacks):
            pts = mine.loc[pget(mine, "attack").fillna(mine["method"]) == a, "value"].astype(float)
            ax.plot(np.full(len(pts), i), pts, "o", color="black", ms=3)
        ax.axhline(0, color="black", lw=0.7)
        ax.set_ylabel("target log-prob change (nats)")
        ax.grid(alpha=0.3, axis="y")
        rate = g["changed_rate"].to_numpy(dtype=float)
        ax2.bar(range(len(g)), rate, color="#4d4d4d", alpha=0.7)
        ax2.errorbar(range(len(g)), rate, yerr=[rate - g["changed_low"], g["changed_high"] - rate], fmt="none",
                     ecolor="black", capsize=3, elinewidth=0.9)
        ax2.set_ylim(0, 1.03)
        ax2.set_ylabel("greedy output changed")
        ax2.set_xticks(range(len(g)), attacks)
        ax2.grid(alpha=0.3, axis="y")
        out.append(_titled(fig, ax, outdir, name=f"adversarial_bars__{slug(model)}", section="adversarial",
                           title=f"Input attacks, {model}",
                           caption="Above: how far each attack lowered the log-probability of the text that really "
                                   "follows the prompt (bar: mean, dots: prompts; below 0 = damage). Below: share of "
                                   "prompts whose greedy continuation changed, Wilson 95% interval."))
    return out


FIGURES = (ablation_heatmaps, ablation_bars, sweep_curves, attack_flips, adversarial_bars, method_similarity,
           execution_times, super_weight_layers)

# Suites whose figures live in their own module: ``reports.<module>`` is imported when it exists and its
# ``draw(data: RunData, outdir: Path) -> list[Figure]`` is called; a Figure whose ``section`` is the suite
# name shows in that suite's section of the run page.
SUITE_FIGURE_MODULES = ("finetune", "attribution")


def suite_modules():
    """``(name, module)`` of each suite in ``SUITE_FIGURE_MODULES`` whose ``reports.<name>`` module exists."""
    for name in SUITE_FIGURE_MODULES:
        try:
            module = importlib.import_module(f"reports.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"reports.{name}":
                raise
            continue
        yield name, module


def suite_module_figures(data: RunData, outdir: Path) -> list[Figure]:
    """Figures of the suites in ``SUITE_FIGURE_MODULES`` whose module exists and whose records are in the run."""
    out = []
    suites = set(data.records["suite"])
    for name, module in suite_modules():
        if name not in suites:
            continue
        draw = getattr(module, "draw", None)
        if draw is None:
            log.warning("reports.%s has no draw(data, outdir): its figures are left out", name)
            continue
        out += list(draw(data, outdir))
    return out


def draw_all(data: RunData, outdir: Path) -> list[Figure]:
    """Every figure the run's data supports, in report order."""
    out = []
    for draw in FIGURES:
        out += draw(data, outdir)
    return out + suite_module_figures(data, outdir)
