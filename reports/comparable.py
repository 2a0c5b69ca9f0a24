"""Which earlier runs a run may be compared with.

A claim's value depends on the model and on the options it was measured under: the seed, and the options a
regression bound depends on (:data:`harness.claims.BOUND_CONFIG`: preset, trials, eval tokens, window,
calibration tokens, dtype, corpus, flip budget), plus the fine-tune mode. "Regressed" and "changed since the
previous run" compare a run only with earlier runs of the same model under the same configuration
(:func:`find`); earlier runs that differ only in the seed give the spread over seeds instead. A run with no
comparable predecessor is compared with nothing, and the report says so and why.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from harness.claims import BOUND_CONFIG, bound_config

CONFIG_FIELDS = (*BOUND_CONFIG, "seed", "finetune")
SEED = "seed"


def settings(row: Mapping) -> dict:
    """A ``runs`` row with its ``extra`` JSON (the plugin's options: seed, preset, ...) merged in."""
    out = {k: v for k, v in row.items() if k != "extra" and not (isinstance(v, float) and math.isnan(v))}
    extra = row.get("extra")
    if isinstance(extra, str) and extra:
        try:
            decoded = json.loads(extra)
        except ValueError:
            decoded = {}
        out.update(decoded if isinstance(decoded, dict) else {})
    elif isinstance(extra, Mapping):
        out.update(extra)
    return out


def run_config(info: Mapping) -> dict[str, str]:
    """The configuration of a run (``CONFIG_FIELDS``, every value as text) from its ``runs`` row or its
    :func:`settings`; an option the run did not record reads as its default (:func:`harness.claims.bound_config`)."""
    info = settings(info)
    config = {**bound_config(info), SEED: info.get(SEED), "finetune": info.get("finetune") or "none"}
    return {k: "" if v is None else str(v) for k, v in config.items()}


def differences(config: Mapping[str, str], other: Mapping[str, str], *, skip: Iterable[str] = ()) -> list[str]:
    """``"<option> <other's value> (this run: <value>)"`` for every option in which ``other`` differs."""
    skip = set(skip)
    return [f"{k} {other.get(k) or '-'} (this run: {config.get(k) or '-'})" for k in CONFIG_FIELDS
            if k not in skip and str(config.get(k, "")) != str(other.get(k, ""))]


def describe(config: Mapping[str, str]) -> str:
    """The configuration in one line: ``seed 0, quick, trials preset, eval_tokens 1024, ...``."""
    return ", ".join(f"{k} {config.get(k) or '-'}" for k in (SEED, *[f for f in CONFIG_FIELDS if f != SEED]))


@dataclass(frozen=True)
class Comparables:
    """The earlier runs a run of one model can be compared with.

    Attributes:
        model: the model.
        run_id: the run compared.
        config: its configuration (:func:`run_config`).
        same: earlier runs of the model at the same configuration, oldest first (the regression baseline).
        seeds: earlier runs of the model at the same configuration except the seed, oldest first (the spread).
        previous: the newest earlier run of the model at any configuration, or None.
        differs: how ``previous`` differs when it is not comparable (:func:`differences`).
    """

    model: str
    run_id: str
    config: dict[str, str]
    same: tuple[str, ...] = ()
    seeds: tuple[str, ...] = ()
    previous: str | None = None
    differs: tuple[str, ...] = field(default_factory=tuple)

    def note(self) -> str:
        """What this run of the model is compared with, in words."""
        if self.same:
            last = self.same[-1]
            more = f" (and {len(self.same) - 1} earlier)" if len(self.same) > 1 else ""
            return f"{self.model}: compared with run {last}{more} at the same configuration ({describe(self.config)})"
        if self.previous is None:
            return f"{self.model}: no earlier run of this model in this store: nothing to compare with"
        return (f"{self.model}: no earlier run at this configuration ({describe(self.config)}); nothing compared. "
                f"The previous run {self.previous} differs in {'; '.join(self.differs)}")


def find(runs: Iterable[Mapping], run_id: str, model: str, models_of: Mapping[str, Iterable[str]]) -> Comparables:
    """The runs ``run_id`` may be compared with for ``model``.

    Args:
        runs: ``runs`` rows (with ``run_id`` and ``extra``), oldest first.
        run_id: the run compared.
        model: the model whose claims are compared.
        models_of: run id -> the models it measured (runs that measured none of them are not considered).

    Raises:
        ValueError: ``run_id`` is not among ``runs``.
    """
    rows = list(runs)
    ids = [r["run_id"] for r in rows]
    if run_id not in ids:
        raise ValueError(f"run {run_id!r} is not among the {len(ids)} runs given")
    configs = {r["run_id"]: run_config(r) for r in rows}
    mine = configs[run_id]
    earlier = [rid for rid in ids[: ids.index(run_id)] if model in set(models_of.get(rid, ()))]
    same = tuple(rid for rid in earlier if configs[rid] == mine)
    seeds = tuple(rid for rid in earlier if configs[rid] != mine and not differences(mine, configs[rid], skip=(SEED,)))
    previous = earlier[-1] if earlier else None
    differs = tuple(differences(mine, configs[previous])) if previous and previous not in same else ()
    return Comparables(model, run_id, mine, same, seeds, previous, differs)
