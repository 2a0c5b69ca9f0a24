"""Regression tracking: compare a run with a baseline (another run of a store, or a baseline file).

A baseline file is JSON (``BASELINE_SCHEMA_VERSION``)::

    {"schema_version": 1, "kind": "esa-harness-baseline", "created_at": "...",
     "source": {"results_dir": "...", "run_id": "..."},
     "run": {"run_id", "started_at", "git_commit", "device", "dtype", "torch", "transformers",
             "lm_eval", "python"},
     "models": ["smollm2-135m"],
     "rows": [{"kind": "claim" | "metric", "suite", "model", "test_id", "metric", "claim",
               "method", "perturbation", "value", "n", "bound", "passed", "higher_is_better",
               "dtype"}]}

``perturbation`` is canonical JSON text (sorted keys); ``value`` is a number, or the strings
``"inf"`` / ``"-inf"`` for a collapsed measurement. One row per key: claims are keyed by (suite,
model, test_id, claim), measurements by (suite, model, test_id, metric, method, perturbation);
repeated trials are aggregated with the metric's aggregation.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from harness.errors import HarnessError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib
from reports.comparable import Comparables, differences, run_config, settings
from reports.load import ENV_FIELDS, RunData, aggregation_of, canonical_json, claim_direction, direction_of, load_run
from reports.tables import fmt

log = logging.getLogger(__name__)

BASELINE_SCHEMA_VERSION = 1
BASELINE_KIND = "esa-harness-baseline"
TOLERANCES_FILE = Path(__file__).with_name("tolerances.toml")
KEY = ["kind", "suite", "model", "test_id", "name", "method", "perturbation"]
RUN_FIELDS = ("run_id", "started_at", "git_commit", *ENV_FIELDS)


# -- tolerances ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    abs: float = 0.0
    rel: float = 0.05
    ignore: bool = False

    def allowed(self, base: float) -> float:
        return max(self.abs, self.rel * abs(base)) if math.isfinite(base) else 0.0

    def describe(self) -> str:
        return f"tolerance max({self.abs:g}, {self.rel:.0%} of baseline)"


@dataclass
class Tolerances:
    """Per-metric and per-claim tolerances (``tolerances.toml``)."""

    default: Tolerance = field(default_factory=Tolerance)
    metrics: dict[str, Tolerance] = field(default_factory=dict)
    claims: dict[str, Tolerance] = field(default_factory=dict)

    def for_row(self, metric: str, claim: str | None = None) -> Tolerance:
        """The tolerance of a row: ``[claim."name"]``, else for a claim named ``<what>_<metric>`` that metric's,
        else the row metric's, else ``[default]``."""
        if isinstance(claim, str) and claim:
            if claim in self.claims:
                return self.claims[claim]
            named = [m for m in self.metrics if claim == m or claim.endswith("_" + m)]
            if named:
                return self.metrics[max(named, key=len)]
        return self.metrics.get(metric, self.default)


def load_tolerances(path: str | Path | None = None) -> Tolerances:
    """Read a tolerance table (default: ``reports/tolerances.toml``).

    Raises:
        HarnessError: missing file, bad TOML, unknown keys.
    """
    path = Path(path) if path else TOLERANCES_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise HarnessError(f"tolerance file {path} does not exist") from None
    except tomllib.TOMLDecodeError as err:
        raise HarnessError(f"tolerance file {path} is not valid TOML: {err}") from None

    def tol(d: dict, base: Tolerance, where: str) -> Tolerance:
        unknown = set(d) - {"abs", "rel", "ignore"}
        if unknown:
            raise HarnessError(f"{path}: unknown keys {sorted(unknown)} in [{where}]; allowed: abs, rel, ignore")
        return Tolerance(float(d.get("abs", base.abs)), float(d.get("rel", base.rel)),
                         bool(d.get("ignore", base.ignore)))

    default = tol(data.get("default", {}), Tolerance(), "default")
    return Tolerances(
        default,
        {m: tol(d, default, f"metric.{m}") for m, d in data.get("metric", {}).items()},
        {c: tol(d, default, f'claim."{c}"') for c, d in data.get("claim", {}).items()},
    )


# -- rows ------------------------------------------------------------------------------------------


def _worst(higher_is_better: bool | None) -> float:
    """A collapsed measurement without a value: -inf when higher is better, else +inf."""
    return -math.inf if higher_is_better else math.inf


def _num(x) -> float:
    if x is None:
        return math.nan
    if isinstance(x, str):
        return float(x)  # "inf", "-inf"
    return float(x)


def _given(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def is_claim_record(record: dict) -> bool:
    """A claim row: it has an ``outcome`` (schema 2), or (rows written before outcomes) a ``bound`` or a
    claim name in ``extra``."""
    return _given(record.get("outcome")) or _given(record.get("bound")) or bool(_extra(record).get("claim"))


def key_of(record: dict) -> tuple:
    """The matching key of one record (a store row or the dict the recorder writes)."""
    extra = record.get("extra")
    if isinstance(extra, str):
        extra = json.loads(extra) if extra else {}
    extra = extra or {}
    if is_claim_record(record):
        name = extra.get("claim") or record["metric"]
        return ("claim", record["suite"], record["model"], record.get("test_id") or "", name, "", "")
    method = record.get("method")
    method = "" if method is None or (isinstance(method, float) and math.isnan(method)) else str(method)
    return ("metric", record["suite"], record["model"], record.get("test_id") or "", record["metric"],
            method, canonical_json(record.get("perturbation")))


def _extra(record: dict) -> dict:
    extra = record.get("extra")
    if isinstance(extra, str):
        extra = json.loads(extra) if extra else {}
    return extra if isinstance(extra, dict) else {}


def record_direction(record: dict) -> bool | None:
    """True when higher is better for this row: a claim by the side of its bound, a measurement by its
    metric (METRICS registry, then the record's ``higher_is_better``), None when unknown (two-sided)."""
    bound = record.get("bound")
    if is_claim_record(record):
        return claim_direction(record["metric"], record.get("value"), bound, record.get("passed"),
                               _extra(record), higher_is_better=record.get("higher_is_better"))
    return direction_of(record["metric"], record.get("higher_is_better"))


def record_value(record: dict) -> float:
    """The comparable value of a record: a collapsed record without a value is the worst value."""
    v = _num(record.get("value"))
    if math.isnan(v) and record.get("collapsed"):
        v = _worst(record_direction(record))
    return v


def aggregate(records: pd.DataFrame) -> pd.DataFrame:
    """One row per key: ``KEY`` columns + metric, claim, value, n, bound, passed, higher_is_better, dtype
    and ``direction`` (see :func:`record_direction`)."""
    cols = [*KEY, "metric", "claim", "value", "n", "bound", "passed", "higher_is_better", "direction", "dtype"]
    if records.empty:
        return pd.DataFrame(columns=cols)
    dicts = records.to_dict("records")
    keyed = pd.DataFrame([key_of(r) for r in dicts], columns=KEY)
    keyed["metric"] = records["metric"].to_numpy()
    keyed["value"] = [record_value(r) for r in dicts]
    keyed["bound"] = records["bound"].to_numpy()
    keyed["passed"] = records["passed"].to_numpy()
    keyed["higher_is_better"] = records["higher_is_better"].to_numpy()
    keyed["dtype"] = records["dtype"].to_numpy()
    keyed["direction"] = [record_direction(r) for r in dicts]
    keyed = keyed[keyed["value"].notna()]
    if keyed.empty:
        return pd.DataFrame(columns=cols)
    agg = keyed.groupby(KEY, sort=True, dropna=False).agg(
        metric=("metric", "first"), mean=("value", "mean"), median=("value", "median"), max=("value", "max"),
        min=("value", "min"), n=("value", "size"), bound=("bound", "last"), passed=("passed", "min"),
        higher_is_better=("higher_is_better", "last"), dtype=("dtype", "last"),
        direction=("direction", "last")).reset_index()
    how = agg["metric"].map({m: aggregation_of(m) for m in agg["metric"].unique()})
    agg["value"] = np.select([how == "median", how == "max", how == "min"],
                             [agg["median"], agg["max"], agg["min"]], agg["mean"]).astype(float)
    agg["claim"] = agg["name"].where(agg["kind"] == "claim", None)
    agg["passed"] = [None if pd.isna(p) else bool(p) for p in agg["passed"]]
    agg["higher_is_better"] = [None if pd.isna(h) else bool(h) for h in agg["higher_is_better"]]
    agg["direction"] = [None if pd.isna(h) else bool(h) for h in agg["direction"]]
    agg["dtype"] = agg["dtype"].astype(object).where(agg["dtype"].notna(), None)
    return agg[cols]


def judge(base: float, value: float, direction: bool | None, tol: Tolerance) -> tuple[str, float]:
    """``(status, allowed)``; status is ``regressed``, ``improved``, ``changed`` (two-sided) or ``ok``."""
    allowed = tol.allowed(base)
    if base == value or (math.isnan(base) and math.isnan(value)):
        return "ok", allowed
    delta = value - base
    if math.isnan(delta):
        return ("changed" if direction is None else "regressed"), allowed
    if direction is None:
        return ("changed" if abs(delta) > allowed else "ok"), allowed
    worse = -delta if direction else delta
    if worse > allowed:
        return "regressed", allowed
    if -worse > allowed:
        return "improved", allowed
    return "ok", allowed


def _fmt(x: float) -> str:
    return fmt(x) + ("" if math.isfinite(x) else " (collapsed)")


def env_differences(a: dict, b: dict, a_name: str = "this run", b_name: str = "baseline") -> list[str]:
    """Labelled warnings for every environment field (device, dtype, library versions) that differs."""
    out = []
    for f in ENV_FIELDS:
        va, vb = a.get(f), b.get(f)
        if va is None or vb is None or (isinstance(va, float) and math.isnan(va)) or \
                (isinstance(vb, float) and math.isnan(vb)):
            continue
        if str(va) != str(vb):
            out.append(f"WARNING (environment differs): {f} is {va!r} in {a_name} but {vb!r} in {b_name}")
    return out


# -- the baseline ----------------------------------------------------------------------------------


@dataclass
class Baseline:
    """Aggregated rows of one run to compare other runs with.

    Attributes:
        rows: one row per key (see :func:`aggregate`).
        run: run info of the baseline run (``RUN_FIELDS``).
        models: the models it measured.
        source: where it came from (file path or ``store:<run_id>``), for messages.
        tolerances: the tolerance table used by :meth:`check` and :meth:`compare`.
    """

    rows: pd.DataFrame
    run: dict
    models: list[str]
    source: str
    tolerances: Tolerances = field(default_factory=load_tolerances)
    config: dict[str, str] = field(default_factory=dict)  # reports.comparable.run_config of the baseline run

    def __post_init__(self) -> None:
        self._index = {tuple(r[k] for k in KEY): r for r in self.rows.to_dict("records")}

    @classmethod
    def from_store(cls, results_dir: str | Path, run_id: str | None = None,
                   tolerances: Tolerances | None = None) -> Baseline:
        """The baseline of run ``run_id`` (default: latest) of the store in ``results_dir``."""
        data = load_run(results_dir, run_id)
        run = {f: data.run.get(f) for f in RUN_FIELDS}
        return cls(aggregate(data.records), run, data.models, f"store:{data.run_id}",
                   tolerances or load_tolerances(), run_config(data.run))

    def _describe(self) -> str:
        commit = (self.run.get("git_commit") or "")[:10]
        return f"baseline {self.source}" + (f" (commit {commit})" if commit else "")

    def check(self, record: dict) -> str | None:
        """A one-line message when ``record`` regressed against this baseline, else None.

        Args:
            record: a record as the recorder writes it (store columns: suite, model, test_id, metric,
                value, method, perturbation, bound, collapsed, higher_is_better, extra; JSON columns as
                dicts or text). Claims (bound not None) match on (suite, model, test_id, claim name
                = ``extra["claim"]`` or the metric); other records on (suite, model, test_id, metric,
                method, perturbation).

        Returns:
            None when there is no matching baseline row, the metric is ignored, it did not regress, or
            the row is one trial of a measurement the baseline aggregated over several trials (those
            are compared as aggregates by :meth:`compare`).
        """
        key = key_of(record)
        base = self._index.get(key)
        if base is None or (key[0] == "metric" and base["n"] > 1):  # one trial vs an aggregate: see compare
            return None
        tol = self.tolerances.for_row(record["metric"], base["claim"])
        if tol.ignore:
            return None
        value = record_value(record)
        direction = record_direction(record)
        if direction is None and base.get("direction") is not None and not pd.isna(base["direction"]):
            direction = bool(base["direction"])
        status, allowed = judge(float(base["value"]), value, direction, tol)
        if status not in ("regressed", "changed"):
            return None
        name = key[4]
        b = float(base["value"])
        rel = f" ({(value - b) / abs(b):+.1%})" if b and math.isfinite(b) and math.isfinite(value) else ""
        way = {True: "higher is better", False: "lower is better", None: "no direction: two-sided"}[direction]
        if key[0] == "claim" and direction is not None:
            bound = base["bound"]
            way = f"{'a lower' if direction else 'an upper'} bound" + (
                f" ({'>=' if direction else '<='} {fmt(bound)})" if bound is not None and pd.notna(bound) else
                " (unverified: no number for this model)")
        return (f"{name} regressed against {self._describe()}: {_fmt(value)} vs {_fmt(b)}{rel}; "
                f"{way}, {tol.describe()} = {fmt(allowed)}")

    def compare(self, records: pd.DataFrame) -> pd.DataFrame:
        """Every key of ``records`` (parsed store rows) next to its baseline row, with a ``status``.

        Status: ``regressed``/``improved``/``changed``/``ok``, ``ignored``, ``new`` (no baseline row),
        ``missing`` (a baseline row of one of these models that the run did not measure).
        """
        cur = aggregate(records)
        base = self.rows
        merged = cur.merge(base[[*KEY, "value", "n", "direction"]], on=KEY, how="outer", suffixes=("", "_base"),
                           indicator=True)
        out = []
        run_models = set(cur["model"])
        for r in merged.to_dict("records"):
            metric = r["metric"] if isinstance(r["metric"], str) else \
                self._index[tuple(r[k] for k in KEY)]["metric"]
            r["metric"] = metric
            if r["_merge"] == "left_only":
                r["status"], r["allowed"] = "new", math.nan
            elif r["_merge"] == "right_only":
                if r["model"] not in run_models:
                    continue
                r["status"], r["allowed"] = "missing", math.nan
            else:
                tol = self.tolerances.for_row(metric, r["claim"])
                d = r["direction"] if r["direction"] is not None and not pd.isna(r["direction"]) else \
                    (None if pd.isna(r["direction_base"]) else bool(r["direction_base"]))
                if tol.ignore:
                    r["status"], r["allowed"] = "ignored", math.nan
                else:
                    r["status"], r["allowed"] = judge(float(r["value_base"]), float(r["value"]), d, tol)
            v, b = r.get("value"), r.get("value_base")
            r["delta"] = v - b if v is not None and b is not None else math.nan
            r["rel"] = r["delta"] / abs(b) if b and math.isfinite(b) and pd.notna(r["delta"]) else math.nan
            out.append(r)
        cols = [*KEY, "metric", "value_base", "value", "delta", "rel", "allowed", "status"]
        order = {"regressed": 0, "changed": 1, "improved": 2, "missing": 3, "new": 4, "ok": 5, "ignored": 6}
        df = pd.DataFrame(out, columns=cols)
        df = df.assign(_o=df["status"].map(order)).sort_values(["kind", "_o", "suite", "name"], kind="stable")
        return df.drop(columns="_o").reset_index(drop=True)

    def compatibility(self, run_info: dict, models) -> list[str]:
        """Labelled warnings about what makes this comparison doubtful (other model, environment)."""
        out = []
        other = sorted(set(models) - set(self.models))
        if other:
            out.append(f"WARNING (baseline from another model): {self.source} measured "
                       f"{', '.join(self.models) or 'no model'}; {', '.join(other)} cannot be compared")
        out += env_differences(run_info, self.run, "this run", self.source)
        if self.config and "seed" in settings(run_info):  # a run's own info (the plugin's options), not env only
            differ = differences(run_config(run_info), self.config)
            if differ:
                out.append(f"WARNING (baseline of another configuration): {self.source} was measured under "
                           f"{'; '.join(differ)}: values differ by the draw, not only by a change of the model")
        return out

    def to_json(self) -> dict:
        rows = []
        for r in self.rows.to_dict("records"):
            v = float(r["value"])
            rows.append({
                "kind": r["kind"], "suite": r["suite"], "model": r["model"], "test_id": r["test_id"],
                "metric": r["metric"], "claim": r["claim"], "method": r["method"] or None,
                "perturbation": r["perturbation"] or None,
                "value": v if math.isfinite(v) else ("inf" if v > 0 else "-inf"), "n": int(r["n"]),
                "bound": None if pd.isna(r["bound"]) else float(r["bound"]),
                "passed": None if r["passed"] is None or pd.isna(r["passed"]) else bool(r["passed"]),
                "higher_is_better": None if r["higher_is_better"] is None or pd.isna(r["higher_is_better"])
                else bool(r["higher_is_better"]),
                "direction": None if r["direction"] is None or pd.isna(r["direction"]) else bool(r["direction"]),
                "dtype": r["dtype"],
            })
        run = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in self.run.items()}
        return {"schema_version": BASELINE_SCHEMA_VERSION, "kind": BASELINE_KIND,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "source": self.source, "run": run, "config": self.config, "models": self.models, "rows": rows}


def export_baseline(results_dir: str | Path, path: str | Path, run_id: str | None = None) -> Path:
    """Write the baseline of a run (default: latest) to a JSON file and return its path."""
    baseline = Baseline.from_store(results_dir, run_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(baseline.to_json(), indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_baseline(path: str | Path, tolerances: str | Path | Tolerances | None = None) -> Baseline:
    """Read a baseline file written by :func:`export_baseline`.

    Args:
        path: the JSON file.
        tolerances: a tolerance table or TOML path (default: ``reports/tolerances.toml``).

    Raises:
        HarnessError: missing file, not a baseline, another schema version.
    """
    path = Path(path)
    if not path.is_file():
        raise HarnessError(f"baseline file {path} does not exist (write one with "
                           f"python -m reports export-baseline <results-dir> -o {path})")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise HarnessError(f"baseline file {path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("kind") != BASELINE_KIND:
        raise HarnessError(f"{path} is not an esa-harness baseline (expected \"kind\": \"{BASELINE_KIND}\")")
    if data.get("schema_version") != BASELINE_SCHEMA_VERSION:
        raise HarnessError(f"baseline {path} has schema version {data.get('schema_version')!r}; this harness "
                           f"reads version {BASELINE_SCHEMA_VERSION} (re-export it with python -m reports "
                           f"export-baseline)")
    rows = pd.DataFrame(data.get("rows", []))
    for col in ("kind", "suite", "model", "test_id", "metric", "claim", "method", "perturbation", "value",
                "n", "bound", "passed", "higher_is_better", "direction", "dtype"):
        if col not in rows:
            rows[col] = None
    rows["name"] = [c if k == "claim" else m
                    for k, c, m in zip(rows["kind"], rows["claim"], rows["metric"], strict=True)]
    rows["method"] = rows["method"].fillna("")
    rows["perturbation"] = [canonical_json(p) if k == "metric" else "" for k, p in
                            zip(rows["kind"], rows["perturbation"], strict=False)]
    rows["test_id"] = rows["test_id"].fillna("")
    rows.loc[rows["kind"] == "claim", "method"] = ""
    rows["value"] = [_num(v) for v in rows["value"]]
    if isinstance(tolerances, Tolerances):
        tol = tolerances
    else:
        tol = load_tolerances(tolerances)
    config = data.get("config") if isinstance(data.get("config"), dict) else {}
    return Baseline(rows, data.get("run") or {}, list(data.get("models") or []), str(path), tol,
                    {k: str(v) for k, v in config.items()})


def comparable_baseline(data: RunData, comparables: list[Comparables],
                        tolerances: Tolerances | None = None) -> Baseline | None:
    """The baseline of a run from its earlier runs at the same configuration (``Comparables.same``): for each
    model and key the value of the newest such run that measured it, in the suites this run measured for that
    model; None when no model of the run has a comparable earlier run."""
    order = {rid: i for i, rid in enumerate(data.runs["run_id"])}
    hist = data.history
    frames, used = [], []
    for c in comparables:
        suites = set(data.records.loc[data.records["model"] == c.model, "suite"])
        for rid in c.same:
            recs = hist[(hist["run_id"] == rid) & (hist["model"] == c.model) & hist["suite"].isin(suites)]
            if not recs.empty:
                frames.append(aggregate(recs).assign(_order=order[rid]))
                used.append(rid)
    if not frames:
        return None
    rows = pd.concat(frames, ignore_index=True).sort_values("_order", kind="stable")
    rows = rows.drop_duplicates(KEY, keep="last").drop(columns="_order").reset_index(drop=True)
    newest = max(used, key=order.__getitem__)
    info = data.run_info(newest)
    ids = sorted(set(used), key=order.__getitem__)
    source = (f"previous run at the same configuration ({newest})" if len(ids) == 1 else
              f"previous runs at the same configuration ({', '.join(ids[-3:])}{' ...' if len(ids) > 3 else ''})")
    return Baseline(rows, {f: info.get(f) for f in RUN_FIELDS}, sorted({c.model for c in comparables if c.same}),
                    source, tolerances or load_tolerances(), run_config(info))

