"""Trend of every claim across the runs of a store (value by date and commit)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure as MplFigure

from reports.figures import Figure, _save
from reports.load import RunData

MAX_RUNS = 10
MAX_PANELS = 12


def run_label(run: dict) -> str:
    date = str(run.get("started_at") or "")[:16].replace("T", " ")
    commit = run.get("git_commit")
    commit = commit[:7] if isinstance(commit, str) and commit else "no commit"
    return f"{date} {commit}"


def claim_history(data: RunData) -> pd.DataFrame:
    """Claims of the runs up to this one (at most ``MAX_RUNS``): suite, model, claim, run_id, label,
    value, bound, passed."""
    ids = list(data.runs["run_id"])
    ids = ids[: ids.index(data.run_id) + 1][-MAX_RUNS:]
    h = data.history[data.history["run_id"].isin(ids) & data.history["is_claim"]]
    if h.empty:
        return pd.DataFrame()
    labels = {rid: run_label(data.run_info(rid)) for rid in ids}
    value = h["value"].where(h["value"].notna() | ~h["collapsed"], math.inf)
    out = pd.DataFrame({"suite": h["suite"], "model": h["model"], "claim": h["claim"], "run_id": h["run_id"],
                        "run": h["run_id"].map(labels), "order": h["run_id"].map(ids.index),
                        "value": value, "bound": h["bound"], "passed": h["passed"]})
    return out.groupby(["suite", "model", "claim", "run_id", "run", "order"], as_index=False).agg(
        value=("value", "mean"), bound=("bound", "last"), passed=("passed", "min"))


def trend_table(hist: pd.DataFrame) -> pd.DataFrame:
    """One row per claim, one column per run (oldest first), cells ``value`` (``value !`` when failed)."""
    if hist.empty or hist["run_id"].nunique() < 2:
        return pd.DataFrame()
    cols = hist.sort_values("order").drop_duplicates("run_id")["run"].tolist()
    cell = [("inf" if math.isinf(v) else f"{v:.4g}") + ("" if p == 1 else " !") for v, p in
            zip(hist["value"], hist["passed"], strict=False)]
    piv = hist.assign(cell=cell).pivot_table(index=["suite", "model", "claim"], columns="run", values="cell",
                                             aggfunc="last")
    return piv.reindex(columns=cols).fillna("").reset_index()


def trend_figure(data: RunData, hist: pd.DataFrame, outdir) -> list[Figure]:
    """Small multiples: value (line) and bound (dashed) per claim across runs; claims that moved most first."""
    if hist.empty or hist["run_id"].nunique() < 2:
        return []
    runs = hist.sort_values("order").drop_duplicates("run_id")
    groups = []
    for key, g in hist.groupby(["suite", "model", "claim"]):
        v = g["value"].to_numpy(dtype=float)
        fv = v[np.isfinite(v)]
        spread = (fv.max() - fv.min()) / (abs(fv.mean()) or 1) if fv.size else 0.0
        moved = spread + (10.0 if (~np.isfinite(v)).any() or (g["passed"] != 1).any() else 0.0)
        groups.append((moved, key, g))
    groups.sort(key=lambda t: -t[0])
    groups = groups[:MAX_PANELS]
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig = MplFigure(figsize=(4.0 * ncols, 2.7 * nrows))
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (_, (suite, model, claim), group) in zip(axes, groups, strict=False):
        g = group.sort_values("order")
        x = g["order"].to_numpy()
        y = g["value"].to_numpy(dtype=float)
        ax.plot(x, np.where(np.isfinite(y), y, np.nan), marker="o", ms=4)
        bad = g["passed"].to_numpy() != 1
        ax.plot(x[bad], np.where(np.isfinite(y[bad]), y[bad], np.nan), "x", color="#b2182b", ms=8, mew=2)
        ax.plot(x, g["bound"], ls="--", color="grey", lw=1)
        ax.set_title(f"{claim}\n{suite}, {model}", fontsize=8)
        ax.set_xticks(range(len(runs)), [f"{r[5:10]}\n{r.split(' ')[-1]}" for r in runs["run"]], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Claims across runs (x: commit; dashed: bound; red x: failed)", fontsize=10)
    fig.tight_layout()
    name = "claim_trend"
    return [Figure(name, "trend", "Claims across runs", f"Value of each claim in the last {len(runs)} runs "
                   "of this store (the claims that moved most first).", _save(fig, outdir, name))]
