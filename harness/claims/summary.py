"""The session's claims summary: counts by outcome and suite, the unchecked tests, an unhealthy model first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from harness.records.store import HEALTH_SUITE

OUTCOMES = ("passed", "failed", "unverified", "not_applicable")


@dataclass
class Summary:
    """The claims of one run: counts by outcome and suite, and the selected tests that checked none.

    Attributes:
        rows: the run's claim rows (``suite``, ``model``, ``metric``, ``outcome``, ``value``, ``bound``,
            ``test_id``, ``extra``); the model-health rows once per model and claim (xdist workers each judge it).
        unchecked: test ids of selected tests of claim-declaring suites that ended skipped, errored or
            failed without writing a single claim row: their claims were never decided.
        store_error: why the store could not be read ("" when it was): then nothing is known.
        skipped_unhealthy: selected tests skipped because their model failed its health claims.
    """

    rows: list[dict]
    unchecked: list[str] = field(default_factory=list)
    store_error: str = ""
    skipped_unhealthy: int = 0

    def __post_init__(self) -> None:
        seen: set[tuple] = set()
        kept = []
        for r in self.rows:
            key = (r["model"], r["metric"])
            if r["suite"] == HEALTH_SUITE:
                if key in seen:
                    continue
                seen.add(key)
            kept.append(r)
        self.rows = kept

    @property
    def counts(self) -> dict[str, int]:
        out = {o: sum(r["outcome"] == o for r in self.rows) for o in OUTCOMES}
        out["unchecked"] = len(self.unchecked)
        return out

    def by_suite(self) -> dict[str, dict[str, int]]:
        """Counts per suite, the model-health claims first."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r["suite"], dict.fromkeys((*OUTCOMES, "unchecked"), 0))[r["outcome"]] += 1
        for test_id in self.unchecked:
            suite = Path(test_id.split("::")[0]).stem.removeprefix("test_")
            out.setdefault(suite, dict.fromkeys((*OUTCOMES, "unchecked"), 0))["unchecked"] += 1
        return dict(sorted(out.items(), key=lambda kv: (kv[0] != HEALTH_SUITE, kv[0])))

    def unhealthy(self) -> list[str]:
        """One line per model that failed a health claim (its value and bound): each fails the session."""
        failed: dict[str, list[str]] = {}
        for r in self.rows:
            if r["suite"] == HEALTH_SUITE and r["outcome"] == "failed":
                failed.setdefault(r["model"], []).append(health_failure(r))
        skipped = f"; {self.skipped_unhealthy} test(s) skipped" if self.skipped_unhealthy else ""
        return [f"model {m} is not healthy: {'; '.join(lines)}{skipped}" for m, lines in failed.items()]

    def strict_failures(self) -> list[str]:
        """Why ``--strict-claims`` fails this run (empty: it does not)."""
        c = self.counts
        out = []
        if self.store_error:
            out.append(f"the results store could not be read ({self.store_error}): no claim can be confirmed")
        if c["unverified"]:
            out.append(f"{c['unverified']} unverified claim(s)")
        if c["unchecked"]:
            out.append(f"{c['unchecked']} selected test(s) checked none of their claims (skipped or errored)")
        return out

    def lines(self, *, verbose: bool = False) -> list[str]:
        """The terminal's "claims" section: an unhealthy model first."""
        c = self.counts
        if self.store_error:
            return [f"claims: the results store could not be read: {self.store_error}"]
        decided = sum(c[o] for o in OUTCOMES)
        share = c["not_applicable"] / decided if decided else 0.0
        out = [f"UNHEALTHY {line}" for line in self.unhealthy()]
        out.append(f"claims: {c['passed']} passed, {c['failed']} failed, {c['unverified']} unverified, "
                   f"{c['not_applicable']} not applicable ({share:.0%}), {c['unchecked']} unchecked")
        for suite, n in self.by_suite().items():
            total = sum(n[o] for o in OUTCOMES)
            out.append(f"  {suite}: {n['passed']} passed, {n['failed']} failed, {n['unverified']} unverified, "
                       f"{n['not_applicable']} n/a ({n['not_applicable'] / total if total else 0:.0%}), "
                       f"{n['unchecked']} unchecked")
        for outcome in ("failed", "unverified"):
            for r in sorted(self.rows, key=lambda r: r["suite"] != HEALTH_SUITE):
                if r["outcome"] == outcome:
                    reason = _reason(r) if outcome == "unverified" else ""
                    out.append(f"{outcome.upper()} {r['suite']}.{r['metric']} [{r['model']}] value={r['value']}"
                               + (f" bound={r['bound']}" if r["bound"] is not None and outcome == "failed" else "")
                               + (f": {reason}" if reason else ""))
        for test_id in self.unchecked:
            out.append(f"UNCHECKED {test_id}: ended without deciding any claim")
        if verbose:
            out += [f"NOT APPLICABLE {r['suite']}.{r['metric']} [{r['model']}]: {_reason(r)}"
                    for r in self.rows if r["outcome"] == "not_applicable"]
        return out


def health_failure(row: dict) -> str:
    """A failed health claim's row in a few words: the line it was recorded with (``harness.health.failure``)."""
    import json

    extra = row.get("extra")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    return extra.get("failure") or f"{row['metric']} {row['value']} vs {row['bound']}"


def _reason(row: dict) -> str:
    import json

    extra = row.get("extra")
    return (json.loads(extra) if isinstance(extra, str) else dict(extra or {})).get("reason", "")
