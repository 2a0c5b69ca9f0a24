"""Claims over the runs of a store: value by run (date, commit), a sparkline per claim with its bound
drawn, and what changed since the previous run."""

from __future__ import annotations

import html
import math

import numpy as np
import pandas as pd

from reports.comparable import Comparables, run_config
from reports.load import RunData
from reports.tables import fmt

MAX_RUNS = 10
KEYS = ["suite", "model", "claim"]


def run_label(run: dict) -> str:
    date = str(run.get("started_at") or "")[:16].replace("T", " ")
    commit = run.get("git_commit")
    commit = commit[:7] if isinstance(commit, str) and commit else "no commit"
    return f"{date} {commit}"


def _claim_values(data: RunData, run_ids: dict[str, list[str]], order: dict[str, int]) -> pd.DataFrame:
    """Claim rows of ``run_ids[model]`` per model: suite, model, claim, run_id, run (label), order, value
    (collapsed = inf), bound, outcome (the worst when a claim was recorded more than once)."""
    cols = [*KEYS, "run_id", "run", "order", "value", "bound", "outcome"]
    hist = data.history
    wanted = pd.Series([rid in set(run_ids.get(m, ())) for rid, m in zip(hist["run_id"], hist["model"],
                                                                           strict=True)], index=hist.index, dtype=bool)
    h = hist[wanted & hist["is_claim"]] if len(hist) else hist
    if h.empty:
        return pd.DataFrame(columns=cols)
    labels = {rid: run_label(data.run_info(rid)) for rid in set(h["run_id"])}
    value = h["value"].where(h["value"].notna() | ~h["collapsed"], math.inf)
    rank = {"failed": 0, "unverified": 1, "passed": 2, "not_applicable": 3}
    out = pd.DataFrame({"suite": h["suite"], "model": h["model"], "claim": h["claim"], "run_id": h["run_id"],
                        "run": h["run_id"].map(labels), "order": h["run_id"].map(order),
                        "value": value, "bound": h["bound"], "rank": h["outcome"].map(rank)})
    out = out.groupby([*KEYS, "run_id", "run", "order"], as_index=False).agg(
        value=("value", "mean"), bound=("bound", "last"), rank=("rank", "min"))
    out["outcome"] = out["rank"].map({v: k for k, v in rank.items()})
    return out.drop(columns="rank")[cols]


def claim_history(data: RunData, earlier: dict[str, tuple[str, ...]], max_runs: int = MAX_RUNS) -> pd.DataFrame:
    """Claims of this run and of the last ``max_runs - 1`` runs in ``earlier[model]`` (the model's comparable
    earlier runs, :attr:`reports.comparable.Comparables.same`): suite, model, claim, run_id, run (label),
    order (0 = the oldest run shown), value (collapsed = inf), bound, outcome."""
    run_ids = {m: [*list(earlier.get(m, ()))[-(max_runs - 1):], data.run_id] if max_runs > 1 else [data.run_id]
               for m in data.models}
    shown = {rid for ids in run_ids.values() for rid in ids}
    ids = [rid for rid in data.runs["run_id"] if rid in shown]
    return _claim_values(data, run_ids, {rid: i for i, rid in enumerate(ids)})


def _cell(value: float, outcome: str) -> str:
    text = fmt(value)
    return text + {"failed": " !", "unverified": " ?", "not_applicable": " n/a"}.get(outcome, "")


def trend_table(hist: pd.DataFrame) -> pd.DataFrame:
    """One row per claim, one column per run (oldest first); a cell is the value, with ``!`` when failed,
    ``?`` when unverified and ``n/a`` when not applicable."""
    if hist.empty or hist["run_id"].nunique() < 2:
        return pd.DataFrame()
    cols = hist.sort_values("order").drop_duplicates("run_id")["run"].tolist()
    cell = [_cell(v, o) for v, o in zip(hist["value"], hist["outcome"], strict=True)]
    piv = hist.assign(cell=cell).pivot_table(index=KEYS, columns="run", values="cell", aggfunc="last")
    return piv.reindex(columns=cols).fillna("").reset_index()


def _moved(v: float, b: float, rel: float) -> bool:
    if pd.isna(v) or pd.isna(b):
        return pd.isna(v) != pd.isna(b)
    if math.isinf(v) or math.isinf(b) or b == 0:
        return v != b
    return abs(v - b) / abs(b) > rel


def changes(hist: pd.DataFrame, rel: float = 1e-6) -> pd.DataFrame:
    """What changed since the previous comparable run, claim by claim (``hist`` from :func:`claim_history`:
    its last run is this one, the others are comparable earlier runs): each claim of this run against its newest
    earlier value; ``change`` is ``outcome`` (the outcome differs), ``value`` (beyond ``rel``), ``new`` (no
    earlier value) or ``gone`` (in the model's previous comparable run, not in this one). Outcome changes first."""
    cols = [*KEYS, "change", "outcome_before", "outcome", "value_before", "value", "rel"]
    if hist.empty or hist["run_id"].nunique() < 2:
        return pd.DataFrame(columns=cols)
    last = hist["order"].max()
    now = hist[hist["order"] == last]
    earlier = hist[hist["order"] < last].sort_values("order")
    before = earlier.drop_duplicates(KEYS, keep="last")
    prev_run = earlier.groupby("model")["order"].max()
    gone_ok = before["order"].to_numpy() == before["model"].map(prev_run).to_numpy()
    before = before[gone_ok | before.set_index(KEYS).index.isin(now.set_index(KEYS).index)]
    m = now.merge(before, on=KEYS, how="outer", suffixes=("", "_before"), indicator=True)
    m = m[m["model"].isin(set(now["model"]))]
    rows = []
    for r in m.to_dict("records"):
        v, b = r.get("value"), r.get("value_before")
        both = r["_merge"] == "both"
        change = {"left_only": "new", "right_only": "gone"}.get(r["_merge"])
        ratio = (v - b) / abs(b) if both and pd.notna(v) and pd.notna(b) and b and math.isfinite(b) and \
            math.isfinite(v) else math.nan
        if change is None and r["outcome"] != r["outcome_before"]:
            change = "outcome"
        elif change is None:
            change = "value" if _moved(v, b, rel) else None
        if change:
            rows.append({**{k: r[k] for k in KEYS}, "change": change, "outcome_before": r.get("outcome_before"),
                         "outcome": r.get("outcome"), "value_before": b, "value": v, "rel": ratio})
    out = pd.DataFrame(rows, columns=cols)
    order = {"outcome": 0, "new": 1, "gone": 2, "value": 3}
    return (out.assign(_o=out["change"].map(order), _a=-out["rel"].abs().fillna(0))
            .sort_values(["_o", "_a", *KEYS]).drop(columns=["_o", "_a"]).reset_index(drop=True))


def seed_spread(data: RunData, comparables: list[Comparables]) -> pd.DataFrame:
    """This run's claims against what the other seeds showed at the same configuration otherwise
    (:attr:`reports.comparable.Comparables.seeds`, the newest run of each seed): suite, model, claim, value,
    seeds (``"0, 1"``), low, high (the range of those seeds' values) and ``where`` the value lies:
    ``inside``, ``above`` or ``below`` the range (a collapse is inf; an equal value is inside)."""
    cols = [*KEYS, "value", "seeds", "low", "high", "where"]
    order = {rid: i for i, rid in enumerate(data.runs["run_id"])}
    newest_per_seed: dict[str, list[str]] = {}
    for c in comparables:
        by_seed: dict[str, str] = {}
        for rid in c.seeds:  # oldest first: the newest run of each seed wins
            by_seed[run_config(data.run_info(rid))["seed"]] = rid
        newest_per_seed[c.model] = list(by_seed.values())
    if not any(newest_per_seed.values()):
        return pd.DataFrame(columns=cols)
    others = _claim_values(data, newest_per_seed, order)
    mine = _claim_values(data, {m: [data.run_id] for m in data.models}, order)
    seed_of = {rid: run_config(data.run_info(rid))["seed"] for rid in set(others["run_id"])}
    rows = []
    for key, g in others.groupby(KEYS, sort=True):
        cur = mine[(mine["suite"] == key[0]) & (mine["model"] == key[1]) & (mine["claim"] == key[2])]
        vals = g["value"].dropna().astype(float)
        if cur.empty or vals.empty or pd.isna(cur["value"].iloc[0]):
            continue
        v, low, high = float(cur["value"].iloc[0]), float(vals.min()), float(vals.max())
        where = "below" if v < low else "above" if v > high else "inside"
        rows.append({**dict(zip(KEYS, key, strict=True)), "value": v,
                     "seeds": ", ".join(sorted((seed_of[r] for r in g["run_id"]), key=_seed_key)),
                     "low": low, "high": high, "where": where})
    out = pd.DataFrame(rows, columns=cols)
    return (out.assign(_o=(out["where"] == "inside").astype(int)).sort_values(["_o", *KEYS], kind="stable")
            .drop(columns="_o").reset_index(drop=True))


def _seed_key(seed: str) -> tuple[int, str]:
    return (int(seed), "") if seed.lstrip("-").isdigit() else (0, seed)


OUTCOME_COLORS = {"passed": "#1a7f37", "failed": "#cf222e", "unverified": "#bf8700", "not_applicable": "#8c959f"}


def sparkline(g: pd.DataFrame, n_runs: int, width: int = 150, height: int = 30) -> str:
    """An inline SVG of one claim across runs: the value (line, a dot per run coloured by outcome, a
    collapse drawn as a triangle at the top) and its bound (dashed), on a shared y scale."""
    g = g.sort_values("order")
    x0 = int(g["order"].min()) if n_runs <= 1 else 0
    span = max(n_runs - 1, 1)
    ys = [float(v) for v in g["value"] if pd.notna(v) and math.isfinite(v)]
    ys += [float(b) for b in g["bound"] if pd.notna(b) and math.isfinite(b)]
    if not ys:
        lo, hi = 0.0, 1.0
    else:
        lo, hi = min(ys), max(ys)
        if hi == lo:
            lo, hi = lo - (abs(lo) * 0.1 or 1.0), hi + (abs(hi) * 0.1 or 1.0)
    pad = 4

    def px(order) -> float:
        return pad + (order - x0) / span * (width - 2 * pad)

    def py(v) -> float:
        return pad + (hi - v) / (hi - lo) * (height - 2 * pad)

    parts = [f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img">']
    bound = g["bound"].astype(float)
    if bound.notna().any():
        pts = " ".join(f"{px(o):.1f},{py(b):.1f}" for o, b in zip(g["order"], bound, strict=True)
                       if pd.notna(b) and math.isfinite(b))
        if pts.count(",") == 1:
            pts = f"{pad},{pts.split(',')[1]} {width - pad},{pts.split(',')[1]}"
        parts.append(f'<polyline points="{pts}" fill="none" stroke="#6e7781" stroke-dasharray="3,2"/>')
    line = " ".join(f"{px(o):.1f},{py(v):.1f}" for o, v in zip(g["order"], g["value"], strict=True)
                    if pd.notna(v) and math.isfinite(v))
    if line.count(",") > 1:
        parts.append(f'<polyline points="{line}" fill="none" stroke="#1f3a5f" stroke-width="1.3"/>')
    for o, v, out, run in zip(g["order"], g["value"], g["outcome"], g["run"], strict=True):
        color = OUTCOME_COLORS.get(out, "#1f3a5f")
        tip = html.escape(f"{run}: {fmt(v)} ({out})")
        if pd.notna(v) and math.isinf(v):
            x = px(o)
            parts.append(f'<path d="M{x - 3:.1f},{pad + 3} L{x + 3:.1f},{pad + 3} L{x:.1f},{pad - 2}Z" '
                         f'fill="{color}"><title>{tip}</title></path>')
        elif pd.notna(v):
            parts.append(f'<circle cx="{px(o):.1f}" cy="{py(v):.1f}" r="2.4" fill="{color}"><title>{tip}</title>'
                         f'</circle>')
    parts.append("</svg>")
    return "".join(parts)


def sparklines(hist: pd.DataFrame) -> pd.DataFrame:
    """One row per claim seen in the last run: suite, model, claim, outcome, value, bound, runs (how many
    runs recorded it) and ``svg`` (see :func:`sparkline`); claims that moved most first."""
    cols = [*KEYS, "outcome", "value", "bound", "runs", "svg"]
    if hist.empty:
        return pd.DataFrame(columns=cols)
    n_runs = int(hist["order"].max()) + 1
    last = hist["order"].max()
    rows = []
    for key, g in hist.groupby(KEYS, sort=True):
        cur = g[g["order"] == last]
        if cur.empty:
            continue
        v = g["value"].to_numpy(dtype=float)
        fv = v[np.isfinite(v)]
        spread = (fv.max() - fv.min()) / (abs(fv.mean()) or 1) if fv.size else 0.0
        moved = spread + (10.0 if g["outcome"].nunique() > 1 else 0.0)
        c = cur.iloc[-1]
        rows.append({**dict(zip(KEYS, key, strict=True)), "outcome": c["outcome"], "value": c["value"],
                     "bound": c["bound"], "runs": len(g), "svg": sparkline(g, n_runs), "_m": moved})
    out = pd.DataFrame(rows)
    return out.sort_values(["_m", "suite", "claim"], ascending=[False, True, True]).drop(columns="_m")[cols] \
        .reset_index(drop=True)
