"""``python -m reports export-bounds``: a model's regression bounds, derived from its measured runs.

For every bound claim (``extra.kind == "bound"``) the store holds for the model, take the latest
finished-or-not run of each seed, derive the number with :func:`harness.claims.derive_bound` (at least
five seeds; rates by their Wilson interval at the preset's trial count; never a censored or collapsed
value) and write it into ``suites/bounds/<suite>.toml`` under ``[model]``, each number with a comment
that says how it was derived. Other models' tables in the file are kept as they are. ``suites/bounds/config.toml``
gets the configuration of those runs and the digest of the weights they loaded (``weights = "w1:..."``, from their
``weights`` rows): a run on other weights gets the bounds unverified (:func:`harness.claims.config_mismatch`).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from harness.claims import Claim, derive_bound
from harness.errors import HarnessError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exported:
    suite: str
    claim: str
    value: float | tuple[float, float] | None
    how: str
    seeds: tuple[int, ...]


def _claim_values(results_dir: str | Path, model: str) -> dict[tuple[str, str], dict]:
    """(suite, claim) -> {"claim": Claim, "by_seed": {seed: value}, "trials": n, "censored": [...]}."""
    from harness.records import ResultStore

    with ResultStore(results_dir, create=False) as store:
        df = store.records()
        runs = store.runs()
    if df.empty:
        raise HarnessError(f"the store in {results_dir} holds no records")
    df = df[(df["model"] == model) & df["outcome"].notna()]
    if df.empty:
        known = ", ".join(store_models(results_dir)) or "none"
        raise HarnessError(f"no claim rows for model {model!r} in {results_dir}; models there: {known}")
    order = {r: i for i, r in enumerate(runs["run_id"])}  # oldest first
    out: dict[tuple[str, str], dict] = {}
    for row in sorted(df.to_dict("records"), key=lambda r: (order.get(r["run_id"], -1), r["id"])):
        extra = json.loads(row["extra"] or "{}")
        if extra.get("kind") != "bound":
            continue
        key = (row["suite"], row["metric"])
        claim = Claim(row["suite"], row["metric"], extra.get("statement", ""), "bound",
                      extra.get("statistic", row["metric"]), extra.get("side", "max"), seeded=extra.get("seeded", True),
                      null=extra.get("null"))
        entry = out.setdefault(key, {"by_seed": {}, "trials": None, "censored": set()})
        entry["claim"] = claim  # rows oldest first: the newest run's declaration wins
        value = row["value"]
        entry["by_seed"][int(row["seed"])] = math.inf if value is None and row["collapsed"] else value
        if "trials" in extra and "rate" in entry["claim"].statistic:
            entry["trials"] = int(extra["trials"])
        entry["censored"].update(float(c) for c in extra.get("censored", ()))
    return out


def store_models(results_dir: str | Path) -> list[str]:
    from harness.records import ResultStore

    with ResultStore(results_dir, create=False) as store:
        return sorted(set(store.records()["model"]))


def derive_bounds(results_dir: str | Path, model: str, *, min_seeds: int = 5) -> list[Exported]:
    """The bounds of ``model`` derivable from the store (one per bound claim found)."""
    out = []
    for (suite, name), entry in sorted(_claim_values(results_dir, model).items()):
        seeds = tuple(sorted(entry["by_seed"]))
        values = [entry["by_seed"][s] for s in seeds]
        values = [math.nan if v is None else float(v) for v in values]
        derived = derive_bound(entry["claim"], values, rate_trials=entry["trials"], min_seeds=min_seeds,
                               censored=sorted(entry["censored"]))
        out.append(Exported(suite, name, derived.value, derived.how, seeds))
    return out


_TABLE = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$", re.M)


def replace_table(text: str, model: str, body: str) -> str:
    """``text`` (a TOML file of ``[model]`` tables) with the ``[model]`` table, up to the next table header,
    replaced by ``body`` (appended when there is none)."""
    header = f'["{model}"]' if not re.fullmatch(r"[A-Za-z0-9_-]+", model) else f"[{model}]"
    matches = list(_TABLE.finditer(text))
    for i, m in enumerate(matches):
        if m.group("name").strip('"') == model:
            end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
            return text[: m.start()] + header + "\n" + body + ("\n" if i + 1 < len(matches) else "") + text[end:]
    sep = "" if text.endswith("\n\n") or not text else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + header + "\n" + body


def write_bounds(exported: list[Exported], model: str, bounds_dir: str | Path, command: str) -> list[Path]:
    """Write each suite's ``[model]`` table; returns the files written."""
    bounds_dir = Path(bounds_dir)
    written = []
    today = datetime.now(UTC).date().isoformat()
    by_suite: dict[str, list[Exported]] = {}
    for e in exported:
        by_suite.setdefault(e.suite, []).append(e)
    for suite, items in sorted(by_suite.items()):
        lines = [f"# Exported {today} by `{command}`"]
        for e in items:
            key = e.claim if re.fullmatch(r"[A-Za-z0-9_-]+", e.claim) else json.dumps(e.claim)
            seeds = f"seeds {','.join(map(str, e.seeds))}"
            if e.value is None:
                lines.append(f"# {key}: no bound ({e.how}; {seeds})")
            else:
                value = f"[{e.value[0]!r}, {e.value[1]!r}]" if isinstance(e.value, tuple) else repr(e.value)
                lines.append(f"{key} = {value}  # {e.how}; {seeds}")
        path = bounds_dir / f"{suite}.toml"
        text = path.read_text() if path.exists() else (
            f"# Regression bounds of suite {suite} (suites/test_{suite}.py): `[model] claim = number`.\n"
            "# The claims (statement, side) are declared in the suite file.\n\n")
        path.write_text(replace_table(text, model, "\n".join(lines) + "\n"))
        written.append(path)
    return written


def export_config(results_dir: str | Path, model: str) -> dict:
    """The one configuration (:func:`harness.claims.bound_config`) of the runs of ``model`` in the store, with the
    digest of the weights they loaded (``weights``, :data:`harness.claims.WEIGHTS_KEY`) when they recorded it.

    Raises:
        HarnessError: the runs differ in an option a bound depends on, or in their weights (their bounds cannot
            be pooled).
    """
    from harness.claims import WEIGHTS_KEY, bound_config
    from harness.records import ResultStore
    from reports.health import digests

    with ResultStore(results_dir, create=False) as store:
        records = store.records().query("model == @model")
        run_ids = sorted(set(records["run_id"]))
        configs = {json.dumps(bound_config(store.run_info(r) or {}), sort_keys=True): r for r in run_ids}
    if len(configs) > 1:
        shown = "; ".join(f"{r}: {c}" for c, r in configs.items())
        raise HarnessError(f"the runs of {model} in {results_dir} differ in their configuration ({shown}): export "
                           "the bounds of one configuration at a time")
    runs_of: dict[str, list[str]] = {}
    for (rid, _), digest in sorted(digests(records).items()):
        runs_of.setdefault(digest, []).append(rid)
    if len(runs_of) > 1:
        shown = "; ".join(f"{d}: {', '.join(r)}" for d, r in runs_of.items())
        raise HarnessError(f"the runs of {model} in {results_dir} differ in their weights ({shown}): export the "
                           "bounds of one model's weights at a time")
    config = json.loads(next(iter(configs))) if configs else {}
    return {**config, WEIGHTS_KEY: next(iter(runs_of))} if runs_of else config


def write_config(bounds_dir: Path, model: str, config: dict) -> Path:
    """Write ``model``'s table of ``suites/bounds/config.toml`` (the options its bounds were derived under and the
    digest of the weights they were measured on)."""
    from harness.claims import CONFIG_FILE, WEIGHTS_KEY

    path = bounds_dir / CONFIG_FILE
    lines = [f"{k} = {json.dumps(v)}" for k, v in config.items() if k != WEIGHTS_KEY]
    if config.get(WEIGHTS_KEY):
        lines += ["# the weights the bounds were measured on (harness.models.identity: their runs' weights rows)",
                  f"{WEIGHTS_KEY} = {json.dumps(config[WEIGHTS_KEY])}"]
    body = "\n".join(lines) + "\n"
    text = path.read_text() if path.exists() else "# The configuration each model's bounds were derived under.\n\n"
    path.write_text(replace_table(text, model, body))
    return path


def export_bounds(results_dir: str | Path, model: str, bounds_dir: str | Path = "suites/bounds", *,
                  min_seeds: int = 5) -> tuple[list[Exported], list[Path]]:
    """Derive ``model``'s bounds from the store in ``results_dir`` and write them into ``bounds_dir``, with
    the configuration they hold for (``config.toml``)."""
    bounds_dir = Path(bounds_dir)
    if not bounds_dir.is_dir():
        raise HarnessError(f"no bounds directory at {bounds_dir} (run from the repository root or pass --bounds-dir)")
    config = export_config(results_dir, model)
    exported = derive_bounds(results_dir, model, min_seeds=min_seeds)
    command = f"python -m reports export-bounds {results_dir} --model {model}"
    written = write_bounds(exported, model, bounds_dir, command)
    return exported, written + ([write_config(bounds_dir, model, config)] if config else [])
