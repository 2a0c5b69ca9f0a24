"""Read a run out of the results store into pandas frames (read-only; the schema is store.py's)."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.records import ResultStore
from reports import comparable
from reports.comparable import Comparables

log = logging.getLogger(__name__)

SUPER_WEIGHTS_FILE = "super_weights.json"
SUPER_WEIGHT_METRIC = "super_weight_score"
SW_COLUMNS = ["model", "method", "module", "layer", "row", "col", "value", "score", "source"]
ENV_FIELDS = ("device", "dtype", "torch", "transformers", "lm_eval", "python")


def json_object(text) -> dict:
    """A JSON column (extra, perturbation) as a dict: {} when empty, {"raw": text} when not JSON, {"value": x} when
    not an object."""
    if text is None or (isinstance(text, float) and math.isnan(text)) or text == "":
        return {}
    try:
        obj = json.loads(text)
    except (TypeError, ValueError):
        return {"raw": str(text)}
    return obj if isinstance(obj, dict) else {"value": obj}


def canonical_json(obj) -> str:
    """The JSON text used as a matching key (sorted keys, no spaces); a missing perturbation (None, NaN) is
    ``{}``."""
    if isinstance(obj, str):
        obj = json_object(obj)
    elif obj is None or (isinstance(obj, float) and math.isnan(obj)):
        obj = {}
    return json.dumps(obj or {}, sort_keys=True, separators=(",", ":"), default=str)


def direction_of(metric: str, higher_is_better=None) -> bool | None:
    """Direction of a metric: the METRICS registry first, then the record's own column, else None."""
    from harness.metrics import direction  # imports torch: keep it out of module import time

    d = direction(metric)
    if d is None and higher_is_better is not None and not pd.isna(higher_is_better):
        d = bool(higher_is_better)
    return d


def claim_direction(metric: str, value, bound, passed, extra: dict | None = None, *,
                    higher_is_better=None) -> bool | None:
    """Which way a claim gets *safer*: True when it is a lower bound (``value >= bound``).

    The side is the declared claim's (``extra["side"]``, written with every claim row by the recorder),
    else it is inferred from value, bound and passed, and as a last resort the metric's direction is used.
    A claim "zeroing the super weight gives ppl_ratio >= 10" is a lower bound on a lower-is-better metric:
    for regression tracking the claim's side counts, not the metric's.
    """
    extra = extra or {}
    side = extra.get("side")  # a declared claim (harness.claims): "min" means value >= bound / other side
    if side in ("min", "max"):
        return side == "min"
    try:
        v, b = float(value), float(bound)
    except (TypeError, ValueError):
        v = b = math.nan
    if passed is not None and not pd.isna(passed) and not math.isnan(v) and not math.isnan(b) and v != b:
        return (v > b) == bool(passed)
    return direction_of(metric, higher_is_better)


def aggregation_of(metric: str) -> str:
    from harness.metrics import METRICS

    return METRICS.get(metric).aggregation if metric in METRICS else "mean"


OUTCOMES = ("failed", "unverified", "passed", "not_applicable")  # attention order


def outcomes_of(df: pd.DataFrame) -> pd.Series:
    """The outcome of each row: the ``outcome`` column, or for a row written before it existed (schema 1)
    ``passed``/``failed`` from ``passed`` where it has a bound, ``unverified`` where it names a claim
    (``extra.claim``) but has no bound; None for a measurement."""
    named = [bool(json_object(x).get("claim")) for x in df["extra"]]  # a claim row written without a bound
    legacy = pd.Series([("passed" if p == 1 else "failed") if pd.notna(b) else "unverified" if n else None
                        for b, p, n in zip(df["bound"], df["passed"], named, strict=True)], index=df.index,
                       dtype=object)
    if "outcome" not in df:
        return legacy
    own = df["outcome"].astype(object).where(df["outcome"].notna(), None)
    return own.where(own.notna(), legacy)


def parse_records(df: pd.DataFrame) -> pd.DataFrame:
    """Add parsed columns: ``pert`` / ``xtra`` (dicts), ``outcome`` (see :func:`outcomes_of`), ``is_claim``,
    ``claim`` (claim name)."""
    df = df.copy()
    df["pert"] = [json_object(t) for t in df["perturbation"]] if len(df) else []
    df["xtra"] = [json_object(t) for t in df["extra"]] if len(df) else []
    df["outcome"] = outcomes_of(df) if len(df) else pd.Series(dtype=object)
    df["is_claim"] = df["outcome"].notna()
    df["claim"] = [
        (x.get("claim") or m) if c else None for x, m, c in zip(df["xtra"], df["metric"], df["is_claim"], strict=False)
    ]
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype(float)
    df["collapsed"] = df["collapsed"].fillna(0).astype(bool)
    return df


def pget(df: pd.DataFrame, key: str, *fallbacks: str) -> pd.Series:
    """``perturbation[key]`` per row (the first of ``key, *fallbacks`` present), None when absent."""
    keys = (key, *fallbacks)
    return pd.Series([next((p[k] for k in keys if k in p), None) for p in df["pert"]], index=df.index,
                     dtype=object)


def xget(df: pd.DataFrame, key: str, *fallbacks: str) -> pd.Series:
    """``extra[key]`` per row (the first of ``key, *fallbacks`` present), None when absent."""
    keys = (key, *fallbacks)
    return pd.Series([next((x[k] for k in keys if k in x), None) for x in df["xtra"]], index=df.index,
                     dtype=object)


@dataclass
class RunData:
    """One run of the store and what the report needs around it.

    Attributes:
        results_dir: the results directory.
        run_id: the run reported on.
        run: its ``runs`` row as a dict (device, dtype, versions, git_commit, started_at, ...).
        runs: every run of the store with records, oldest first.
        records: the run's records, parsed (see :func:`parse_records`).
        history: every record of every run, parsed (for trends).
        super_weights: one row per super weight (``SW_COLUMNS``), from records and files.
    """

    results_dir: Path
    run_id: str
    run: dict
    runs: pd.DataFrame
    records: pd.DataFrame
    history: pd.DataFrame
    super_weights: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=SW_COLUMNS))
    unchecked: list[str] = field(default_factory=list)  # suite tests that ended skipped or failed with no claim row

    @property
    def models(self) -> list[str]:
        return sorted(self.records["model"].dropna().unique())

    def run_info(self, run_id: str) -> dict:
        row = self.runs[self.runs["run_id"] == run_id]
        return row.iloc[0].to_dict() if len(row) else {}

    def models_by_run(self) -> dict[str, set[str]]:
        """Run id -> the models it has records of."""
        return {rid: set(g.dropna()) for rid, g in self.history.groupby("run_id")["model"]}

    def comparables(self) -> list[Comparables]:
        """For each model of this run, the earlier runs it may be compared with (:func:`reports.comparable.find`)."""
        rows = self.runs.to_dict("records")
        by_run = self.models_by_run()
        return [comparable.find(rows, self.run_id, m, by_run) for m in self.models]


def open_store(results_dir: str | Path) -> ResultStore:
    """Open an existing store (never creates one).

    Raises:
        HarnessError: no store there.
    """
    results_dir = Path(results_dir)
    if not results_dir.exists():
        raise HarnessError(f"results directory {results_dir} does not exist (run the suites first)")
    return ResultStore(results_dir, create=False)


def unchecked_tests(ended: dict[str, str], records: pd.DataFrame) -> list[str]:
    """Suite tests of a run that ended skipped or failed without writing a claim row (their claims undecided)."""
    claimed = set(records.loc[records["outcome"].notna(), "test_id"]) if "outcome" in records else set()
    return sorted(t for t, outcome in ended.items()
                  if outcome in ("skipped", "failed") and t.startswith("suites/") and t not in claimed)


def load_run(results_dir: str | Path, run_id: str | None = None) -> RunData:
    """Load ``run_id`` (default: the latest run that has records) from ``results_dir``.

    Raises:
        HarnessError: missing or empty store, unknown run id, a run without records.
    """
    results_dir = Path(results_dir)
    with open_store(results_dir) as store:
        runs = store.runs()
        history = parse_records(store.records())
    if runs.empty:
        raise HarnessError(f"the results store in {results_dir} has no runs (run the suites first)")
    with_records = set(history["run_id"])
    if run_id is None:
        ids = [r for r in runs["run_id"] if r in with_records]
        if not ids:
            raise HarnessError(f"the results store in {results_dir} has no records (run the suites first)")
        run_id = ids[-1]
    elif run_id not in set(runs["run_id"]):
        known = ", ".join(list(runs["run_id"])[-5:])
        raise HarnessError(f"unknown run id {run_id!r} in {results_dir}; latest runs: {known}")
    elif run_id not in with_records:
        raise HarnessError(f"run {run_id!r} in {results_dir} has no records")
    runs = runs[runs["run_id"].isin(with_records)].reset_index(drop=True)
    records = history[history["run_id"] == run_id].reset_index(drop=True)
    data = RunData(results_dir, run_id, runs[runs["run_id"] == run_id].iloc[0].to_dict(), runs, records,
                   history)
    with open_store(results_dir) as store:  # only the reported run's test outcomes
        data.unchecked = unchecked_tests(store.completed_tests(run_id), records)
    data.super_weights = load_super_weights(results_dir, records)
    return data


def load_super_weights(results_dir: Path, records: pd.DataFrame) -> pd.DataFrame:
    """Super weights of the run's models: ``super_weight_score`` records, then the sites of
    ``<results-dir>/<model>/super_weights.json`` (a detection ``{"detection", "sites"}``, or a plain list)
    not already among them."""
    rows = []
    sw = records[records["metric"] == SUPER_WEIGHT_METRIC]
    for _, r in sw.iterrows():
        x = r["xtra"]
        rows.append({"model": r["model"], "method": r["method"], "module": x.get("module"),
                     "layer": x.get("layer"), "row": x.get("row"), "col": x.get("col"),
                     "value": x.get("weight_value"), "score": r["value"], "source": "records"})
    for model in sorted(records["model"].dropna().unique()):
        path = results_dir / model / SUPER_WEIGHTS_FILE
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text())
        except ValueError as err:
            log.warning("ignoring %s: not JSON (%s)", path, err)
            continue
        if isinstance(entries, dict) and isinstance(entries.get("sites"), list):  # a detection (harness.scoring)
            entries = entries["sites"]
        if not isinstance(entries, list):
            log.warning("ignoring %s: expected a detection object with 'sites' or a list of objects", path)
            continue
        for e in entries:
            if isinstance(e, dict):
                rows.append({"model": model, **{k: e.get(k) for k in SW_COLUMNS[1:-1]}, "source": "file"})
    df = pd.DataFrame(rows, columns=SW_COLUMNS)
    if df.empty:
        return df
    df = df.drop_duplicates(subset=["model", "method", "module", "row", "col"], keep="first")
    df["layer"] = pd.to_numeric(df["layer"], errors="coerce")
    df["score"] = pd.to_numeric(df["score"], errors="coerce")
    return df.sort_values(["model", "score"], ascending=[True, False]).reset_index(drop=True)
