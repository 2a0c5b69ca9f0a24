"""Tables of a run (pandas): claims, per-suite summaries, sweeps with collapse rates, sensitive layers,
super weights and generated-text comparisons. Each returns an empty frame when its data is absent."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.claims import HEALTH_SUITE
from reports.load import OUTCOMES, claim_direction, direction_of, pget, xget
from reports.stats import wilson


@dataclass(frozen=True)
class Sweep:
    """How a suite's records make a curve: the x value (a ``perturbation`` key, or an ``extra`` key with
    ``x_in_extra``; the first key present), the keys whose values name a series, the axis label."""

    x: tuple[str, ...]
    series: tuple[str, ...]
    xlabel: str
    x_in_extra: bool = False


# suite -> its sweep; see docs/RECORDS.md for what each suite writes
SWEEPS = {
    "robustness": Sweep(("level",), ("method", "target"), "noise std (relative to each weight's std)"),
    "bitflip": Sweep(("n_flips", "level"), ("bit_class", "method", "dtype"), "bits flipped"),
    "attack": Sweep(("flips",), ("method", "dtype", "defense"), "bits flipped by the attack", x_in_extra=True),
    "targeted_perturbation": Sweep(("fraction", "level"), ("method", "action"), "fraction of weights perturbed"),
    "pruning": Sweep(("sparsity", "level"), ("method", "granularity"), "sparsity"),
    "selective_pruning": Sweep(("sparsity", "level"), ("method", "component"), "sparsity of the selected weights"),
}
PRIMARY_METRICS = ("ppl_ratio", "perplexity", "kl", "top1", "accuracy")


def fmt(x) -> str:
    """A number as every page, table and message of the reports shows it: 4 significant digits, scientific
    notation with a short exponent outside [1e-4, 1e4) (``4.098e4``, ``2.5e-5``), ``inf``, empty for missing;
    integers in full."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        x = float(x)
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        text = f"{x:.4g}"
        if "e" in text:
            mantissa, exp = text.split("e")
            text = f"{mantissa}e{int(exp)}"
        return text
    return str(x)


CLAIM_COLUMNS = ["suite", "model", "claim", "kind", "outcome", "value", "op", "bound", "statement", "reason",
                 "metric", "test_id"]


def claims_table(records: pd.DataFrame) -> pd.DataFrame:
    """Every claim row, in attention order (failed, unverified, passed, not applicable; then suite, claim); a
    model-health claim once per model (its worst row, as :class:`harness.claims.Summary` counts it).

    Columns ``CLAIM_COLUMNS``: ``kind`` is ``bound`` or ``relation``; for a bound ``value op bound``, for a
    relation ``value`` is the side that must be larger and ``bound`` the other side; ``statement`` is the
    claim in words and ``reason`` why it is not applicable or unverified. A collapsed value is ``inf``.
    """
    c = records[records["is_claim"]]
    if c.empty:
        return pd.DataFrame(columns=CLAIM_COLUMNS)
    ops = []
    for m, v, b, p, x, h in zip(c["metric"], c["value"], c["bound"], c["passed"], c["xtra"], c["higher_is_better"],
                                strict=True):
        d = claim_direction(m, v, b, p, x, higher_is_better=h)
        # an inclusive relation ("every", "at least") that held with equal sides
        tie = bool(p == 1) and pd.notna(v) and pd.notna(b) and v == b
        ops.append(("vs" if d is None else (">=" if tie else ">") if d else ("<=" if tie else "<"))
                   if x.get("kind") == "relation" else {True: ">=", False: "<=", None: "vs"}[d])
    value = [math.inf if (pd.isna(v) and col) else v for v, col in zip(c["value"], c["collapsed"], strict=False)]
    kind = xget(c, "kind").fillna("bound")
    out = pd.DataFrame({"suite": c["suite"], "model": c["model"], "claim": c["claim"], "kind": kind,
                        "outcome": c["outcome"], "value": value, "op": ops, "bound": c["bound"],
                        "statement": xget(c, "statement").fillna(""), "reason": xget(c, "reason").fillna(""),
                        "metric": c["metric"], "test_id": c["test_id"]})
    rank = out["outcome"].map({o: i for i, o in enumerate(OUTCOMES)}).fillna(len(OUTCOMES))
    out = out.assign(_r=rank).sort_values(["_r", "suite", "claim", "model"], kind="stable").drop(columns="_r")
    # the model-health claims are judged once per model and session, recorded by each shard of a merged run
    health = out["suite"] == HEALTH_SUITE
    again = health & out.duplicated(["suite", "model", "claim", "test_id"], keep="first")
    return out[~again].reset_index(drop=True)


def suite_summaries(records: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per suite: one row per (model, method, metric) with counts and the spread of the values."""
    out = {}
    for suite, g in records.groupby("suite", sort=True):
        rows = []
        for (model, method, metric), h in g.groupby(["model", g["method"].fillna("-"), "metric"], sort=True):
            v = h["value"].where(~h["collapsed"] | h["value"].notna(), math.inf)
            d = direction_of(metric, h["higher_is_better"].iloc[0])
            rows.append({"model": model, "method": method, "metric": metric,
                         "better": {True: "higher", False: "lower", None: "?"}[d],
                         "records": len(h), "conditions": h["perturbation"].fillna("").nunique(),
                         "collapsed": int(h["collapsed"].sum()), "claims": int(h["is_claim"].sum()),
                         "min": v.min(), "median": v.median(), "max": v.max()})
        out[suite] = pd.DataFrame(rows)
    return out


def primary_metric(records: pd.DataFrame) -> str | None:
    present = set(records["metric"])
    return next((m for m in PRIMARY_METRICS if m in present), None)


def sweep(records: pd.DataFrame, suite: str) -> tuple[pd.DataFrame, str | None, str]:
    """Per (model, series, x): trials, median/IQR of the primary metric over the trials that did not collapse,
    ``median_all`` over every trial (a collapse counts as inf), collapse rate + Wilson 95%.

    Returns:
        (frame, metric, x label); the frame is empty when the suite has no swept records.
    """
    spec = SWEEPS[suite]
    g = records[(records["suite"] == suite) & ~records["is_claim"]]
    if g.empty:
        return pd.DataFrame(), None, spec.xlabel
    x = pd.to_numeric((xget if spec.x_in_extra else pget)(g, *spec.x), errors="coerce")
    g = g.assign(x=x)[x.notna()]
    metric = primary_metric(g)
    if metric is None:
        return pd.DataFrame(), None, spec.xlabel
    g = g[g["metric"] == metric]
    parts = []
    for k in spec.series:
        col = g["method"] if k == "method" else pget(g, k)
        parts.append(col.fillna("").astype(str))
    series = [" / ".join(p for p in ps if p) or suite for ps in zip(*parts, strict=True)]
    g = g.assign(series=series, **{f"key_{k}": p for k, p in zip(spec.series, parts, strict=True)})
    finite = g["value"].where(~g["collapsed"] & np.isfinite(g["value"].fillna(np.nan)))
    every = g["value"].where(~g["collapsed"], np.inf)  # every trial, a collapse as the worst value
    g = g.assign(finite=finite, every=every, ci_low=pd.to_numeric(xget(g, "ci_low"), errors="coerce"),
                 ci_high=pd.to_numeric(xget(g, "ci_high"), errors="coerce"), collapsed=g["collapsed"].astype(int))
    keys = [f"key_{k}" for k in spec.series]
    grouped = g.groupby(["model", "series", "x"], sort=True)
    df = grouped.agg(trials=("value", "size"), median=("finite", "median"), collapsed=("collapsed", "sum"),
                     clean_value=("clean_value", "first"), ci_low=("ci_low", "first"),
                     ci_high=("ci_high", "first"), **{k: (k, "first") for k in keys})
    df["q25"] = grouped["finite"].quantile(0.25)
    df["q75"] = grouped["finite"].quantile(0.75)
    df["median_all"] = grouped["every"].median()
    own_ci = (df["trials"] == 1) & df["ci_low"].notna() & df["ci_high"].notna()
    df.loc[own_ci, "q25"] = df.loc[own_ci, "ci_low"]
    df.loc[own_ci, "q75"] = df.loc[own_ci, "ci_high"]
    df["collapse_rate"] = df["collapsed"] / df["trials"]
    ci = [wilson(int(k), int(n)) for k, n in zip(df["collapsed"], df["trials"], strict=False)]
    df["collapse_low"] = [c[0] for c in ci]
    df["collapse_high"] = [c[1] for c in ci]
    df = df.drop(columns=["ci_low", "ci_high"]).reset_index()
    return df.rename(columns={k: k.removeprefix("key_") for k in keys}), metric, spec.xlabel


def collapse_rates(records: pd.DataFrame) -> pd.DataFrame:
    """Collapse rates with Wilson 95% intervals for every swept condition that had a collapse."""
    frames = []
    for suite in SWEEPS:
        df, _metric, _ = sweep(records, suite)
        if df.empty:
            continue
        frames.append(df.assign(suite=suite)[df["collapsed"] > 0])
    if not frames:
        return pd.DataFrame()
    out = pd.concat(frames, ignore_index=True)
    return out[["suite", "model", "series", "x", "trials", "collapsed", "collapse_rate", "collapse_low",
                "collapse_high"]].reset_index(drop=True)


def ablation_grid(records: pd.DataFrame) -> pd.DataFrame:
    """Ablation records of the primary metric: model, method, layer, component, value (mean of trials)."""
    g = records[(records["suite"] == "ablation") & ~records["is_claim"]]
    if g.empty:
        return pd.DataFrame()
    metric = primary_metric(g)
    g = g[g["metric"] == metric]
    g = g.assign(layer=pd.to_numeric(pget(g, "layer"), errors="coerce"), component=pget(g, "component"))
    g = g[g["layer"].notna() & g["component"].notna()]
    if g.empty:
        return pd.DataFrame()
    v = g["value"].where(g["value"].notna() | ~g["collapsed"], math.inf)
    g = g.assign(value=v, method=g["method"].fillna("ablation"), metric=metric)
    return (g.groupby(["model", "method", "metric", "layer", "component"], as_index=False)["value"].mean())


def sensitive_layers(records: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per model, the layers whose ablation hurt most (max over components), most sensitive first."""
    grid = ablation_grid(records)
    if grid.empty:
        return grid
    rows = []
    for (model, method, metric), g in grid.groupby(["model", "method", "metric"]):
        d = direction_of(metric)
        worst = g.sort_values("value", ascending=bool(d)).groupby("layer").head(1)
        worst = worst.sort_values("value", ascending=bool(d)).head(top)
        for _, r in worst.iterrows():
            rows.append({"model": model, "method": method, "layer": int(r["layer"]),
                         "worst component": r["component"], "metric": metric, "value": r["value"]})
    return pd.DataFrame(rows)


def jaccard_pairs(records: pd.DataFrame) -> pd.DataFrame:
    """``jaccard`` records as model, method_a, method_b, value."""
    g = records[records["metric"] == "jaccard"]
    if g.empty:
        return pd.DataFrame()
    a, b = xget(g, "method_a"), xget(g, "method_b")
    split = g["method"].fillna("").str.split("|")
    a = a.where(a.notna(), split.str[0])
    b = b.where(b.notna(), split.str[1])
    out = pd.DataFrame({"model": g["model"], "method_a": a, "method_b": b, "value": g["value"]}).dropna()
    return out.groupby(["model", "method_a", "method_b"], as_index=False)["value"].mean()


def timings(records: pd.DataFrame) -> pd.DataFrame:
    """``seconds`` records by (model, suite, method): mean and count."""
    g = records[(records["metric"] == "seconds") & records["method"].notna()]
    if g.empty:
        return pd.DataFrame()
    return g.groupby(["model", "suite", "method"], as_index=False).agg(seconds=("value", "mean"),
                                                                        n=("value", "size"))


def output_comparisons(records: pd.DataFrame) -> pd.DataFrame:
    """Records carrying generated text (``extra.clean_output`` and ``extra.perturbed_output``)."""
    if records.empty:
        return pd.DataFrame()
    clean, pert = xget(records, "clean_output"), xget(records, "perturbed_output")
    mask = clean.notna() & pert.notna()
    if not mask.any():
        return pd.DataFrame()
    g = records[mask]
    out = pd.DataFrame({"suite": g["suite"], "model": g["model"], "method": g["method"],
                        "perturbation": g["perturbation"], "prompt": xget(g, "prompt"),
                        "clean output": clean[mask], "perturbed output": pert[mask]})
    return out.drop_duplicates(subset=["suite", "model", "method", "perturbation"]).reset_index(drop=True)


def super_weight_table(sw: pd.DataFrame, top: int = 10) -> pd.DataFrame:
    """The highest-scoring super weights per model and method."""
    if sw.empty:
        return sw
    return (sw.sort_values("score", ascending=False).groupby(["model", "method"], dropna=False).head(top)
            .sort_values(["model", "method", "score"], ascending=[True, True, False]).reset_index(drop=True))


def attack_cells(records: pd.DataFrame) -> pd.DataFrame:
    """Bit-flip attack cells (suite ``attack``): per (model, attack, dtype, defense) the seeds run, the flip
    budget, how many seeds collapsed the model within it and the median flips to collapse (``inf`` when
    fewer than half did), and the largest perplexity ratio reached."""
    g = records[(records["suite"] == "attack") & ~records["is_claim"]]
    if g.empty:
        return pd.DataFrame()
    g = g.assign(attack=pget(g, "attack").fillna(g["method"]), dtype_=pget(g, "dtype").fillna(""),
                 defense=pget(g, "defense").fillna("none"), budget=pd.to_numeric(pget(g, "budget"), errors="coerce"))
    rows = []
    for (model, attack, dtype, defense), h in g.groupby(["model", "attack", "dtype_", "defense"], sort=True):
        ftc = h[h["metric"] == "flips_to_collapse"]["value"].astype(float)
        ratio = h[h["metric"] == "ppl_ratio"]["value"].astype(float)
        if ftc.empty and ratio.empty:
            continue
        rows.append({"model": model, "attack": attack, "dtype": dtype, "defense": defense,
                     "seeds": int(ftc.size), "budget": h["budget"].max(),
                     "collapsed": int(np.isfinite(ftc).sum()),
                     "flips_to_collapse": float(ftc.median()) if ftc.size else math.nan,
                     "max_ppl_ratio": float(ratio.max()) if ratio.size else math.nan})
    return pd.DataFrame(rows)


def adversarial_cells(records: pd.DataFrame) -> pd.DataFrame:
    """Input attacks (suite ``adversarial``): per (model, attack) the prompts attacked, the mean and worst
    change of the target's log-probability (nats; negative = damage), how often the greedy continuation
    changed (with its Wilson 95% interval), the mean greedy agreement, and the attack's options."""
    g = records[(records["suite"] == "adversarial") & ~records["is_claim"]]
    if g.empty:
        return pd.DataFrame()
    g = g.assign(attack=pget(g, "attack").fillna(g["method"]))
    rows = []
    for (model, attack), h in g.groupby(["model", "attack"], sort=True):
        delta = h[h["metric"] == "target_logprob_delta"]["value"].astype(float)
        changed = h[h["metric"] == "greedy_changed"]["value"].astype(float)
        agree = h[h["metric"] == "greedy_agreement"]["value"].astype(float)
        if delta.empty and changed.empty:
            continue
        k, n = int(changed.sum()), int(changed.size)
        low, high = wilson(k, n)
        options = pget(h, "options").dropna()
        rows.append({"model": model, "attack": attack, "prompts": int(max(delta.size, n)),
                     "mean_logprob_delta": float(delta.mean()) if delta.size else math.nan,
                     "worst_logprob_delta": float(delta.min()) if delta.size else math.nan,
                     "greedy_changed": k, "changed_rate": k / n if n else math.nan,
                     "changed_low": low, "changed_high": high,
                     "greedy_agreement": float(agree.mean()) if agree.size else math.nan,
                     "options": ", ".join(f"{a}={b}" for a, b in sorted(options.iloc[0].items()))
                     if len(options) and isinstance(options.iloc[0], dict) else ""})
    return pd.DataFrame(rows)
