"""Report views of the detection suite (suites/test_detection.py): which detector catches the random bit flips that
harm the model, per bit class, and what watching costs.

Read only from store records (suite ``detection``, ``harness.detection.outcomes``): per flip ``ppl_ratio``
(method ``flip``; ``collapsed``; extra ``harmful`` and ``fired``: detector -> fired); per cell (perturbation
``pattern``, a bit class or a multi-bit pattern, and ``dtype``) ``harm_rate`` (method ``flip``) and per detector
(method) ``detection_rate`` among ``harmful`` flips and among ``all`` (perturbation ``among``); per detector and
dtype ``false_alarm_rate`` on the clean model and ``overhead_ratio`` (a check's seconds over a plain forward of one
window; its cost in extra). Each rate's extra holds ``hits``, ``n`` and its Wilson interval.

:func:`panel` gives the run page's tables (HTML and Markdown), :func:`findings` its lines in the findings,
:func:`audit_coverage` the model comparison's headline column. Everything is empty when the run has no detection
records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from reports.load import pget, xget
from reports.stats import wilson
from reports.tables import fmt

SUITE = "detection"
FLIP = "flip"  # the method of the per-flip and harm-rate rows
AUDIT = "audit"
NONE = "–"  # a rate over no flip (no harmful flip in the cell)


@dataclass(frozen=True)
class PanelTable:
    """One table of the detection panel: its title, what it shows, the frame, the rows to mark as bad."""

    name: str  # the CSV name under tables/
    title: str
    note: str
    table: pd.DataFrame
    bad_rows: tuple = ()


def _measured(records: pd.DataFrame) -> pd.DataFrame:
    if records.empty or "suite" not in records:
        return records.iloc[0:0]
    g = records[(records["suite"] == SUITE) & ~records["is_claim"]]
    return g.assign(pattern=pget(g, "pattern"), dtype_=pget(g, "dtype").fillna(g["dtype"]).fillna(""),
                    among=pget(g, "among"))


def has_detection(records: pd.DataFrame) -> bool:
    """Whether the records hold any measured detection row."""
    return not _measured(records).empty


def _int(x) -> int:
    try:
        return 0 if x is None or (isinstance(x, float) and math.isnan(x)) else int(x)
    except (TypeError, ValueError):
        return 0


def rate_text(hits: int, n: int, low=None, high=None) -> str:
    """``3/4 = 75% (30–95%)``: hits of n with its Wilson interval (the record's own, else the 95% one); ``–`` when
    ``n`` is 0."""
    if n <= 0:
        return NONE
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        low, high = wilson(hits, n)
    return f"{hits}/{n} = {hits / n:.0%} ({100 * low:.0f}–{high:.0%})"


def _rate(row) -> tuple[int, int, str]:
    x = row["xtra"]
    hits, n = _int(x.get("hits")), _int(x.get("n"))
    return hits, n, rate_text(hits, n, x.get("ci_low"), x.get("ci_high"))


def _last(g: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """The last row of each key (a resumed or merged run may hold a cell twice)."""
    return g.drop_duplicates(keys, keep="last")


def _order(values) -> list:
    return list(dict.fromkeys(v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))))


@dataclass(frozen=True)
class Cell:
    """One (model, dtype, pattern) cell: its flips, which were harmful and collapsed, each detector's rates."""

    model: str
    dtype: str
    pattern: str
    flips: int
    harm: tuple[int, int, str]  # hits, n, text
    collapsed: int
    harmful: dict[str, tuple[int, int, str]]  # detector -> its rate among harmful flips
    every: dict[str, tuple[int, int, str]]  # detector -> its rate among all flips
    missed_collapses: dict[str, int]  # detector -> collapsing flips it did not flag
    single_bit: bool


def cells(records: pd.DataFrame) -> list[Cell]:
    """Every measured detection cell of ``records``, in the order the suite recorded them."""
    g = _measured(records)
    if g.empty:
        return []
    flips = _last(g[(g["metric"] == "ppl_ratio") & (g["method"] == FLIP)].assign(
        trial=xget(g, "trial")), ["model", "dtype_", "pattern", "trial"])
    harm = _last(g[g["metric"] == "harm_rate"], ["model", "dtype_", "pattern"])
    rates = _last(g[g["metric"] == "detection_rate"], ["model", "dtype_", "pattern", "method", "among"])
    out = []
    for key in _order(zip(rates["model"], rates["dtype_"], rates["pattern"], strict=True)):
        model, dtype, pattern = key

        def of(frame, key=key):
            return frame[(frame["model"] == key[0]) & (frame["dtype_"] == key[1]) & (frame["pattern"] == key[2])]

        mine, h, f = of(rates), of(harm), of(flips)
        harmful, every = {}, {}
        for _, row in mine.iterrows():
            (harmful if row["among"] == "harmful" else every)[row["method"]] = _rate(row)
        fired = [x.get("fired") or {} for x in f["xtra"]]
        collapsed = [bool(c) for c in f["collapsed"]]
        missed = {d: sum(c and not fr.get(d, False) for c, fr in zip(collapsed, fired, strict=True))
                  for d in _order(mine["method"])}
        sites = [p.get("sites") for p in f["pert"]]
        single = bool(sites) and all(isinstance(s, list) and len(s) == 1 and isinstance(s[0], dict)
                                     and len(s[0].get("bits", [])) == 1 for s in sites)
        n_flips = len(f) or (_rate(h.iloc[-1])[1] if len(h) else 0)
        out.append(Cell(model, dtype, pattern, n_flips, _rate(h.iloc[-1]) if len(h) else (0, 0, NONE),
                        sum(collapsed), harmful, every, missed, single))
    return out


def _detectors(cs: list[Cell]) -> list[str]:
    return _order(d for c in cs for d in (*c.harmful, *c.every))


def _lead(cs: list[Cell], c: Cell) -> dict:
    """The key columns of a cell's row (the model only when the run has several)."""
    lead = {"model": c.model} if len({x.model for x in cs}) > 1 else {}
    return {"bit class": c.pattern, **lead, "dtype": c.dtype}


def coverage_table(records: pd.DataFrame) -> tuple[pd.DataFrame, tuple]:
    """Per (model, dtype, bit class): the harmful flips among all (harm rate) and the collapsing ones, and per
    detector the harmful flips it flagged (``hits/n = rate (Wilson 95%)``; a missed collapse said); with the rows
    where a detector missed a collapsing flip."""
    cs = cells(records)
    dets = _detectors(cs)
    rows, bad = [], []
    for i, c in enumerate(cs):
        row = {**_lead(cs, c), "harmful (harm rate)": c.harm[2], "collapsed": c.collapsed,
               **{d: _cell_text(c, d) for d in dets}}
        if any(c.missed_collapses.values()):
            bad.append(i)
        rows.append(row)
    return pd.DataFrame(rows), tuple(bad)


def _cell_text(c: Cell, detector: str) -> str:
    text = c.harmful.get(detector, (0, 0, NONE))[2]
    missed = c.missed_collapses.get(detector, 0)
    return text + (f"; missed {missed} collapse{'s' if missed > 1 else ''}" if missed else "")


def all_flips_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dtype, bit class): per detector the share of all the cell's flips it flagged (harmless ones
    too: what an operator would be alerted to)."""
    cs = cells(records)
    dets = _detectors(cs)
    return pd.DataFrame([{**_lead(cs, c), "flips": c.flips, **{d: c.every.get(d, (0, 0, NONE))[2] for d in dets}}
                         for c in cs])


def clean_table(records: pd.DataFrame) -> tuple[pd.DataFrame, tuple]:
    """Per (model, dtype, detector) on the clean model: false alarms (repeated checks and one at another batch
    size), the overhead of one check as a ratio to a plain forward of one window, the seconds, and its cost; with
    the rows that raised a false alarm."""
    g = _measured(records)
    g = g[g["metric"].isin(["false_alarm_rate", "overhead_ratio"])]
    if g.empty:
        return pd.DataFrame(), ()
    several = g["model"].nunique() > 1
    rows, bad = [], []
    for key in _order(zip(g["model"], g["dtype_"], g["method"], strict=True)):
        mine = g[(g["model"] == key[0]) & (g["dtype_"] == key[1]) & (g["method"] == key[2])]
        alarm = mine[mine["metric"] == "false_alarm_rate"]
        over = mine[mine["metric"] == "overhead_ratio"]
        hits, _, text = _rate(alarm.iloc[-1]) if len(alarm) else (0, 0, NONE)
        x = over.iloc[-1]["xtra"] if len(over) else {}
        row = {**({"model": key[0]} if several else {}), "dtype": key[1], "detector": key[2],
               "false alarms": text,
               "overhead (x plain forward)": float(over.iloc[-1]["value"]) if len(over) else math.nan,
               "seconds per check": x.get("seconds"), "forward tokens": x.get("forward_tokens"),
               "weight reads": x.get("weight_reads"), "reference bytes": x.get("reference_bytes")}
        if hits:
            bad.append(len(rows))
        rows.append(row)
    return pd.DataFrame(rows), tuple(bad)


def recovery_table(records: pd.DataFrame) -> pd.DataFrame:
    """Per (model, dtype): after one seeded flip, the seconds to recover (find the changed tensors by their checksums,
    restore only those from the weights files) against reloading the model, and the ratio (``recovery_ratio``)."""
    g = _measured(records)
    g = g[g["metric"] == "recovery_ratio"]
    if g.empty:
        return pd.DataFrame()
    rows = []
    for key in _order(zip(g["model"], g["dtype_"], strict=True)):
        r = g[(g["model"] == key[0]) & (g["dtype_"] == key[1])].iloc[-1]
        x = r["xtra"]
        rows.append({"model": key[0], "dtype": key[1], "reload / recovery": float(r["value"]),
                     "recovery s (find + restore)": x.get("recovery_seconds"), "find s": x.get("locate_seconds"),
                     "restore s": x.get("restore_seconds"), "reload s": x.get("reload_seconds"),
                     "tensors restored": x.get("tensors_restored"), "bytes read": x.get("bytes_read")})
    return pd.DataFrame(rows)


def _harm_note(records: pd.DataFrame) -> tuple[str, str]:
    """The harm rule as the records state it, and the confidence of their Wilson intervals."""
    harm = _measured(records).query("metric == 'harm_rate'")
    ratio = pd.to_numeric(xget(harm, "harm_ratio"), errors="coerce").dropna()
    confidence = pd.to_numeric(xget(harm, "ci_confidence"), errors="coerce").dropna()
    level = f"{ratio.iloc[0] - 1:.0%}" if len(ratio) else "a set share"
    return (f"A flip is harmful when it collapses the model (non-finite output or perplexity x10) or raises perplexity "
            f"by {level} or more.", f"{confidence.iloc[0] if len(confidence) else 0.95:.0%}")


def panel(records: pd.DataFrame) -> list[PanelTable]:
    """The detection panel's tables of ``records`` (one run's, parsed); empty without detection records. A run of
    one dtype names it in the titles instead of a column (narrow screens see the rates first)."""
    if not has_detection(records):
        return []
    coverage, missed = coverage_table(records)
    clean, alarms = clean_table(records)
    every = all_flips_table(records)
    harm, confidence = _harm_note(records)
    dtypes = _order(_measured(records)["dtype_"])
    on = ""
    if len(dtypes) == 1:
        on = f" ({dtypes[0]})"
        coverage, every, clean = (t.drop(columns="dtype", errors="ignore") for t in (coverage, every, clean))
    out = []
    if not coverage.empty:
        out.append(PanelTable(
            "detection_coverage", f"Detection{on}: harmful flips caught, per bit class and detector",
            f"Seeded random flips of stored weights. {harm} Each detector column: the harmful flips it flagged, "
            f"hits/n = rate (Wilson {confidence} interval); {NONE}: no harmful flip in the cell; 'missed N "
            "collapses': collapsing flips the detector did not flag (the row is marked).", coverage, missed))
        out.append(PanelTable(
            "detection_all_flips", f"Detection{on}: all flips flagged, harmless ones too",
            "What an operator would be alerted to: the share of every flip (harmful or not) each detector flagged.",
            every))
    if not clean.empty:
        out.append(PanelTable(
            "detection_clean", f"Detection on the clean model{on}: false alarms and overhead",
            "False alarms: checks of the clean model in which the detector fired (repeated checks and one at another "
            "batch size; a row with any is marked). Overhead: seconds of one check over a plain forward of one "
            "evaluation window (measured, never asserted); its cost: tokens run, full reads of the weights, bytes of "
            "references.",
            clean, alarms))
    recovery = recovery_table(records)
    if not recovery.empty:
        out.append(PanelTable(
            "detection_recovery", "Recovery after a detected flip: restore the flagged tensors against reloading",
            "One seeded flip; recovery = find the changed tensors by their checksums and read only those back from "
            "the weights files on disk; reload = load the whole model again as the session does (measured, never "
            "asserted; a model with no weights file on disk has no row).", recovery))
    return out


# -- findings ------------------------------------------------------------------------------------------------------


def _covers(detector: str, group: list[Cell]) -> str:
    """How ``detector`` covers the harmful flips of the cells: all of them, or which bit classes it covers and
    which it misses."""
    pairs = [(c.pattern, *c.harmful.get(detector, (0, 0, NONE))[:2]) for c in group]
    pairs = [(p, k, n) for p, k, n in pairs if n]
    hits, n = sum(k for _, k, _ in pairs), sum(n for _, _, n in pairs)
    if not n:
        return f"{detector} none to catch"
    each = ", ".join(f"{p} {k}/{m}" for p, k, m in pairs)
    if hits == n:
        return f"{detector} all {n} ({each})"
    full = [f"{p} {k}/{m}" for p, k, m in pairs if k == m]
    part = [f"{p} {k}/{m}" for p, k, m in pairs if k < m]
    return (f"{detector} {hits} of {n}" + (f", all of {', '.join(full)}" if full else "")
            + f", missed some of {', '.join(part)}")


def findings(records: pd.DataFrame) -> list[str]:
    """One paragraph per (model, dtype) of ``records``: how many flips were harmful, which detector covers the
    harmful flips of which bit classes, any collapse missed, false alarms and overhead."""
    cs = cells(records)
    if not cs:
        return []
    clean, alarms = clean_table(records)
    out = []
    for key in _order((c.model, c.dtype) for c in cs):
        group = [c for c in cs if (c.model, c.dtype) == key]
        dets = _detectors(group)
        flips, harmful = sum(c.flips for c in group), sum(c.harm[0] for c in group)
        collapsed = sum(c.collapsed for c in group)
        parts = [f"Fault detection on {key[0]} ({key[1]}): {harmful} of {flips} random flips over {len(group)} bit "
                 f"classes and patterns were harmful, {collapsed} of them collapsed the model"]
        if harmful:
            parts.append("Harmful flips caught: " + "; ".join(_covers(d, group) for d in dets))
        missed = {d: sum(c.missed_collapses.get(d, 0) for c in group) for d in dets}
        if collapsed and any(missed.values()):
            parts.append("MISSED COLLAPSES: " + "; ".join(
                f"{d} {m} of {collapsed} ({', '.join(c.pattern for c in group if c.missed_collapses.get(d))})"
                for d, m in missed.items() if m))
        elif collapsed:
            parts.append(f"Every collapsing flip was caught by {', '.join(dets)}")
        mine = clean[clean["dtype"] == key[1]] if not clean.empty else clean
        if "model" in mine:
            mine = mine[mine["model"] == key[0]]
        if not mine.empty:
            loud = [f"{r['detector']} {r['false alarms']}" for i, r in mine.iterrows() if i in alarms]
            parts.append("FALSE ALARMS on the clean model: " + "; ".join(loud) if loud else
                         "No false alarm on the clean model")
            over = [f"{r['detector']} x{fmt(r['overhead (x plain forward)'])}" for _, r in mine.iterrows()
                    if pd.notna(r["overhead (x plain forward)"])]
            if over:
                parts.append(f"Overhead per check: {', '.join(over)} a plain forward")
        rec = recovery_table(records)
        if not rec.empty:
            mine_rec = rec[(rec["model"] == key[0]) & (rec["dtype"] == key[1])]
            for _, r in mine_rec.iterrows():
                parts.append(f"Recovery from a detected flip: {fmt(r['recovery s (find + restore)'])} s to find and "
                             f"restore {r['tensors restored']} tensor(s) against {fmt(r['reload s'])} s to reload "
                             f"(x{fmt(r['reload / recovery'])})")
        out.append(". ".join(parts) + ".")
    return out


# -- the model comparison ------------------------------------------------------------------------------------------


def audit_coverage(records: pd.DataFrame):
    """The model comparison's headline: the audit's coverage of the harmful single-bit flips, pooled over the bit
    classes, in fp32 where measured (else the first dtype): ``hits/n = rate (Wilson 95%)``; None without detection
    records."""
    cs = [c for c in cells(records) if c.single_bit and AUDIT in c.harmful]
    if not cs:
        return None
    dtypes = _order(c.dtype for c in cs)
    dtype = "fp32" if "fp32" in dtypes else dtypes[0]
    mine = [c for c in cs if c.dtype == dtype]
    hits, n = sum(c.harmful[AUDIT][0] for c in mine), sum(c.harmful[AUDIT][1] for c in mine)
    if not n:
        return f"no harmful flip (of {sum(c.flips for c in mine)}, {dtype})"
    return f"{rate_text(hits, n)}, {dtype}"
