"""The report's shared views: the :class:`Report` every writer shows, and the display frames that the
Markdown and HTML writers both use (outcome labels, claims, collapse rates, regressions).

Writers (``markdown``, ``html``, ``compare``) import this module; it imports none of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pandas as pd

from harness.claims import HEALTH_SUITE
from harness.records.store import interruption
from reports.comparable import Comparables
from reports.figures import Figure
from reports.health import is_weights_differ
from reports.load import OUTCOMES, RunData
from reports.tables import fmt

# outcome -> how a table cell shows it; "unverified" is marked so it never reads as a pass
OUTCOME_LABELS = {"failed": "FAILED", "unverified": "UNVERIFIED (no bound)", "passed": "passed",
                  "not_applicable": "not applicable"}
WEIGHTS_DIFFER_LABEL = "UNVERIFIED (weights differ)"  # a bound measured on other weights than the run's
ATTENTION = ("failed", "unverified")  # outcomes the run page lists first


def outcome_label(outcome, reason=None) -> str:
    """How a claim's outcome reads in a table: :data:`OUTCOME_LABELS`, and a bound left unverified because the
    run's weights differ from those it was measured on says so."""
    if outcome == "unverified" and is_weights_differ(reason):
        return WEIGHTS_DIFFER_LABEL
    return OUTCOME_LABELS.get(outcome, str(outcome))


@dataclass
class Report:
    """Everything the Markdown and HTML writers show."""

    data: RunData
    run_info: dict
    claims: pd.DataFrame
    summaries: dict[str, pd.DataFrame]
    collapse: pd.DataFrame
    sensitive_layers: pd.DataFrame
    super_weights: pd.DataFrame
    outputs: pd.DataFrame
    trend: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    changes: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparables: list[Comparables] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # a latest-per-suite view: suite -> its run
    links: list[tuple[str, str]] = field(default_factory=list)  # (text, href) shown in the page header
    spread: pd.DataFrame = field(default_factory=pd.DataFrame)
    comparison: pd.DataFrame | None = None
    baseline_label: str = ""
    baseline_given: bool = False  # --baseline FILE (else: the comparable earlier runs of the store)
    tolerance_note: str = ""
    warnings: list[str] = field(default_factory=list)
    highlights: list[str] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    identity: pd.DataFrame = field(default_factory=pd.DataFrame)  # reports.health.identity_table of the run
    unhealthy: list[str] = field(default_factory=list)  # a line per model that failed a health claim
    weights_differ: list[str] = field(default_factory=list)  # bounds unverified: measured on other weights
    weights_changed: list[str] = field(default_factory=list)  # weights differ from the compared run's

    @property
    def interrupted(self) -> str | None:
        """Why and when the run was stopped before its end (SIGTERM, disk full), None when it was not."""
        return interruption(self.run_info)

    def outcome_counts(self) -> dict[str, int]:
        """Claims per outcome (every outcome present, 0 when none)."""
        counts = self.claims["outcome"].value_counts() if not self.claims.empty else {}
        return {o: int(counts.get(o, 0)) for o in OUTCOMES}

    def compared_with(self) -> list[str]:
        """What the run was compared with, one line per model (or the baseline file given)."""
        if self.baseline_given:
            return [f"compared with the baseline {self.baseline_label}"]
        return [c.note() for c in self.comparables]

    def outside_seeds(self) -> pd.DataFrame:
        """Claims whose value lies outside the range the other seeds showed at this configuration."""
        s = self.spread
        return s[s["where"] != "inside"] if not s.empty else s

    def regressed(self) -> pd.DataFrame:
        """Claims that moved the worse way beyond tolerance against the baseline (empty without one)."""
        if self.comparison is None:
            return pd.DataFrame()
        cmp = self.comparison
        return cmp[(cmp["kind"] == "claim") & cmp["status"].isin(["regressed", "changed"])]

    def suites(self) -> list[str]:
        """Suites of the run: those with failed or regressed claims first, then those with unverified ones (the
        model-health claims, shown before every suite, are not among them)."""
        names = sorted(set(self.data.records["suite"].dropna()) - {HEALTH_SUITE})
        c = self.claims
        failed = set(c.loc[c["outcome"] == "failed", "suite"]) | set(self.regressed().get("suite", []))
        unverified = set(c.loc[c["outcome"] == "unverified", "suite"])
        return sorted(names, key=lambda s: (s not in failed, s not in unverified, s))


def present(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as display text (numbers via :func:`reports.tables.fmt`)."""
    return df.map(fmt) if not df.empty else df


def claims_view(claims: pd.DataFrame, *, suite: bool = True) -> pd.DataFrame:
    """Claims for display: outcome label first, the two sides, the statement or the reason."""
    if claims.empty:
        return claims
    out = pd.DataFrame({
        "outcome": [outcome_label(o, r) for o, r in zip(claims["outcome"], claims["reason"], strict=True)],
        "suite": claims["suite"], "model": claims["model"], "claim": claims["claim"],
        "value": claims["value"], "op": claims["op"], "bound / other side": claims["bound"],
        "statement or reason": [r if isinstance(r, str) and r and (o == "not_applicable" or is_weights_differ(r))
                                else (s or "")
                                for s, r, o in zip(claims["statement"], claims["reason"], claims["outcome"],
                                                   strict=True)],
    })
    return out.drop(columns="suite") if not suite else out


def short_json(text, limit: int = 90) -> str:
    """A perturbation for display: without per-trial site lists, cut at ``limit`` characters."""
    if not isinstance(text, str) or not text:
        return ""
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        obj.pop("sites", None)
        text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _pct(x) -> str:
    return "" if x is None or pd.isna(x) or abs(x) == float("inf") else f"{x:+.1%}"


def regression_view(df: pd.DataFrame) -> pd.DataFrame:
    """Regression rows for display: status, where, baseline and current value, relative change."""
    if df.empty:
        return df
    out = df[["status", "suite", "model", "name", "method", "perturbation", "value_base", "value", "rel"]].rename(
        columns={"name": "claim / metric", "value_base": "baseline", "rel": "change"})
    return out.assign(change=out["change"].map(_pct), perturbation=out["perturbation"].map(short_json))


def collapse_view(df: pd.DataFrame) -> pd.DataFrame:
    """Collapse rates as percentages with their Wilson 95% interval."""
    if df.empty:
        return df
    return pd.DataFrame({"suite": df["suite"], "model": df["model"], "series": df["series"], "x": df["x"],
                         "collapsed": [f"{k}/{n}" for k, n in zip(df["collapsed"], df["trials"], strict=True)],
                         "rate": df["collapse_rate"].map(lambda v: f"{v:.0%}"),
                         "95% CI": [f"{lo:.0%}–{hi:.0%}"
                                    for lo, hi in zip(df["collapse_low"], df["collapse_high"], strict=True)]})
