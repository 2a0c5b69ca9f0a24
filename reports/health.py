"""The model under test in the reports: its health claims and the identity of its weights, per run and model.

Every session judges each model once before any suite's claims (``harness.health``, ``fixtures.health``): claim
rows with suite ``model`` (``clean_perplexity`` against its bound, the relations ``output_finite``,
``below_uniform``, ``below_unigram``, ``top1_above_chance``), and one ``weights`` row (value: the parameter
count; extra: the digest of the weights as loaded, their dtype and where they came from,
``harness.models.identity``). A model that fails a health claim has every test skipped.

The run page shows them before the suites (an unhealthy model first in "Needs attention"), ``analysis_report.md``
the same lines; a bound left unverified because the weights differ from those it was measured on says so, and
two compared runs whose weights differ say "weights changed between the runs" with both digests.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

import pandas as pd

from harness.claims import HEALTH_SUITE, WEIGHTS_DIFFER, Summary
from harness.records.store import HEALTH_IDENTITY
from reports.load import json_object, xget

WEIGHTS_CHANGED = "weights changed between the runs"
# identity field -> its label; source fields (harness.models.identity.weights_source) after the digest's own
IDENTITY_FIELDS = {"digest": "digest", "dtype": "dtype", "parameters": "parameters", "source": "source",
                   "hub_id": "hub id", "revision": "revision", "directory": "directory", "gguf_file": "GGUF file",
                   "gguf_sha256": "GGUF SHA-256", "package_version": "package version",
                   "converted_by_transformers": "converted by transformers", "transformers": "transformers",
                   "torch": "torch"}
_DIGESTS = re.compile(r"\(bounds: (?P<bounds>[^,;)]+), this run: (?P<run>[^;)]+)")


def _extra(row: Mapping) -> dict:
    """A record's extra as a dict (a parsed record's ``xtra``, else its ``extra`` JSON)."""
    x = row.get("xtra")
    return x if isinstance(x, dict) else json_object(row.get("extra"))


def _identity_rows(records: pd.DataFrame) -> pd.DataFrame:
    if records.empty:
        return records
    return records[(records["suite"] == HEALTH_SUITE) & (records["metric"] == HEALTH_IDENTITY)
                   & records["outcome"].isna()]


def digests(records: pd.DataFrame) -> dict[tuple[str, str], str]:
    """``(run_id, model) -> digest`` of the weights each run loaded, from its ``weights`` rows (raw or parsed
    records); a run that recorded no identity (before the health claims) has no entry."""
    out = {}
    for row in _identity_rows(records).to_dict("records"):
        digest = _extra(row).get("digest")
        if digest:
            out[(str(row["run_id"]), str(row["model"]))] = str(digest)
    return out


def identity_table(records: pd.DataFrame) -> pd.DataFrame:
    """The weights' identity of each model of ``records`` (one run's), one row per field (``IDENTITY_FIELDS``
    present for some model) and one column per model: digest, dtype, parameters, where they came from and the
    library versions that loaded (and converted) them. Empty when no ``weights`` row is there."""
    by_model: dict[str, dict] = {}
    for row in _identity_rows(records).to_dict("records"):
        x = _extra(row)
        source = x.get("source") if isinstance(x.get("source"), dict) else {}
        by_model.setdefault(str(row["model"]), {**source, **{k: x.get(k) for k in ("digest", "dtype", "parameters")}})
    if not by_model:
        return pd.DataFrame()
    models = sorted(by_model)
    fields = [f for f in IDENTITY_FIELDS if any(by_model[m].get(f) not in (None, "") for m in models)]
    return pd.DataFrame({"weights": [IDENTITY_FIELDS[f] for f in fields],
                         **{m: ["" if by_model[m].get(f) is None else str(by_model[m][f]) for f in fields]
                            for m in models}})


def health_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """The model-health rows of a claims table (:func:`reports.tables.claims_table`), by model, each in the
    table's attention order."""
    if claims.empty:
        return claims
    return claims[claims["suite"] == HEALTH_SUITE].sort_values("model", kind="stable")


def _num(x) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def unhealthy(records: pd.DataFrame) -> list[str]:
    """One line per model that failed a health claim in ``records`` (one run's, parsed), each claim as it was
    recorded with its value and what it was held to (:meth:`harness.claims.Summary.unhealthy`): ``model M is not
    healthy: clean perplexity 5.59e+04 is not <= 18.35, its bound``."""
    if records.empty:
        return []
    failed = records[(records["suite"] == HEALTH_SUITE) & (records["outcome"] == "failed")]
    rows = [{"suite": HEALTH_SUITE, "model": r["model"], "metric": r["metric"], "outcome": "failed",
             "value": _num(r["value"]), "bound": _num(r["bound"]), "extra": _extra(r)}
            for r in failed.to_dict("records")]
    return Summary(rows).unhealthy()


def weights_differ(records: pd.DataFrame) -> list[str]:
    """One line per model of ``records`` (one run's, parsed) whose weights differ from those its bounds were
    measured on (:data:`harness.claims.WEIGHTS_DIFFER`: the reason of the bounds left unverified, and the
    ``weights_differ`` the health rows carry), with both digests and the bounds concerned."""
    if records.empty:
        return []
    reasons = xget(records, "reason")
    unverified = records[(records["outcome"] == "unverified") & reasons.map(is_weights_differ)]
    noted = records[(records["suite"] == HEALTH_SUITE) & xget(records, "weights_differ").map(is_weights_differ)]
    out = []
    for model in sorted(set(unverified["model"]) | set(noted["model"])):
        mine = unverified[unverified["model"] == model]
        whys = reasons[mine.index] if len(mine) else xget(noted[noted["model"] == model], "weights_differ")
        why = str(whys.iloc[0])
        m = _DIGESTS.search(why)
        line = f"{model}: {WEIGHTS_DIFFER}" + (f" (bounds: {m['bounds']}, this run: {m['run']})" if m else "")
        if len(mine):
            suites = ", ".join(f"{'model health' if s == HEALTH_SUITE else s} ({n})"
                               for s, n in mine["suite"].value_counts().sort_index().items())
            line += f": {len(mine)} bound(s) unverified in {suites}"
        out.append(line)
    return out


def is_weights_differ(reason) -> bool:
    """Whether an unverified claim's reason is that the weights differ from those its bound was measured on."""
    return isinstance(reason, str) and reason.startswith(WEIGHTS_DIFFER)


def weights_changed(history: pd.DataFrame, run_id: str, earlier: Mapping[str, str | None]) -> list[str]:
    """One line per model whose weights differ between run ``run_id`` and the run it is compared with.

    Args:
        history: records of (at least) the runs concerned.
        run_id: the run reported on.
        earlier: model -> the run it is compared with (None: none).
    """
    known = digests(history)
    out = []
    for model, other in sorted(earlier.items()):
        now, then = known.get((run_id, model)), known.get((str(other), model))
        if other and now and then and now != then:
            out.append(f"{model}: {WEIGHTS_CHANGED}: {then} in run {other}, {now} in this run ({run_id})")
    return out


def weights_across(known: Mapping[tuple[str, str], str], runs_of: Mapping[str, Iterable[str]]) -> list[str]:
    """One line per model whose weights differ among the runs a view draws on (a latest-per-suite page, the
    model comparison), with each digest and its runs.

    Args:
        known: ``(run_id, model) -> digest`` (:func:`digests`).
        runs_of: model -> the runs its shown records come from, oldest first.
    """
    out = []
    for model, runs in sorted(runs_of.items()):
        by_digest: dict[str, list[str]] = {}
        for rid in dict.fromkeys(runs):
            if (rid, model) in known:
                by_digest.setdefault(known[(rid, model)], []).append(rid)
        if len(by_digest) > 1:
            shown = "; ".join(f"{d} in run{'s' if len(r) > 1 else ''} {', '.join(r)}" for d, r in by_digest.items())
            out.append(f"{model}: {WEIGHTS_CHANGED}: {shown}")
    return out
