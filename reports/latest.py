"""The whole analysis of one model as one run-like page: the newest result of every suite in the store.

``make test`` writes every suite at seed 0 and then the seeded suites again at seed 5: the newest run alone is
a fragment. :func:`latest_data` takes, per suite, the records of the newest run that measured it (the same
rule as the comparison page, :func:`reports.compare.newest_per_suite`), so the page reads as the whole analysis
and says which run each suite came from.
"""

from __future__ import annotations

import logging

from reports.compare import newest_per_suite
from reports.figures import slug
from reports.load import RunData, load_super_weights, open_store, unchecked_tests

log = logging.getLogger(__name__)

PREFIX = "latest-"


def page_name(model: str) -> str:
    """The directory of a model's latest-per-suite page under the report directory."""
    return PREFIX + slug(model)


def latest_data(data: RunData, model: str) -> tuple[RunData, dict[str, str]]:
    """The newest records of every suite ``model`` has in the store, as a :class:`RunData`, and suite -> the
    run they came from.

    Raises:
        ValueError: the store has no records of ``model``.
    """
    hist = data.history[data.history["model"] == model]
    if hist.empty:
        raise ValueError(f"no records of {model!r} in {data.results_dir}")
    started = dict(zip(data.runs["run_id"], data.runs["started_at"], strict=True))
    recs = newest_per_suite(hist.assign(started_at=hist["run_id"].map(started))).drop(columns="started_at")
    sources = {str(suite): str(g["run_id"].iloc[0]) for suite, g in recs.groupby("suite", sort=True)}
    order = {rid: i for i, rid in enumerate(data.runs["run_id"])}
    newest = max(sources.values(), key=order.__getitem__)
    run = {**data.run_info(newest), "run_id": page_name(model)}
    unchecked = []
    with open_store(data.results_dir) as store:
        for rid in sorted(set(sources.values()), key=order.__getitem__):
            mine = [s for s, r in sources.items() if r == rid]
            ended = {t: o for t, o in store.completed_tests(rid).items()
                     if any(f"test_{s}.py" in t for s in mine)}
            unchecked += unchecked_tests(ended, recs[recs["run_id"] == rid])
    out = RunData(data.results_dir, page_name(model), run, data.runs, recs.reset_index(drop=True), data.history,
                  unchecked=sorted(unchecked))
    out.super_weights = load_super_weights(data.results_dir, out.records)
    return out, sources
