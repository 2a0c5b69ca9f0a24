"""Merge results stores (shards of one run, runs from several machines) into one store.

Rows are merged as a multiset union: a row (every column but the row id) that several sources hold is
kept as many times as the source holding it most often holds it, so merging a store with itself, with a
copy, or twice gives the same store, while two equal measurements of one test stay two rows. A run
(``runs`` row) that several sources hold (shards started with one ``--run-id``) is one run in the output:
the earliest ``started_at``, and ``finished_at`` only when every source finished it (the latest), since a
run with an interrupted shard is an interrupted run.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError
from harness.records.store import HEALTH_SUITE, RECORD_COLUMNS, ResultStore

log = logging.getLogger(__name__)

RUN_COLUMNS = ("run_id", "started_at", "finished_at", "git_commit", "device", "dtype", "torch", "transformers",
               "lm_eval", "python", "hostname", "command", "extra")


@dataclass(frozen=True)
class MergeSummary:
    """What :func:`merge_stores` did."""

    output: Path
    runs: int  # distinct runs in the sources
    records: int  # rows added to the output
    duplicates: int  # source rows the output already held
    commits: tuple[str, ...]  # distinct runs.git_commit of the sources


def _store_path(path: str | Path) -> Path:
    path = Path(path)
    return path if path.suffix == ".sqlite" else path / "results.sqlite"


def _read(path: Path) -> tuple[list[dict], list[tuple], list[tuple]]:
    """(runs as dicts, records as tuples in RECORD_COLUMNS order, completed tests) of one store, read-only."""
    with ResultStore(path, create=False, readonly=True) as store:
        conn = store._conn
        run_cols = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
        rec_cols = {row[1] for row in conn.execute("PRAGMA table_info(records)")}
        runs = [dict(zip(RUN_COLUMNS, row, strict=True)) for row in conn.execute(
            f"SELECT {', '.join(c if c in run_cols else 'NULL' for c in RUN_COLUMNS)} FROM runs")]
        records = [tuple(row) for row in conn.execute(
            f"SELECT {', '.join(c if c in rec_cols else 'NULL' for c in RECORD_COLUMNS)} FROM records ORDER BY id")]
        has_tests = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'tests'").fetchone()
        tests = [tuple(row) for row in conn.execute(
            "SELECT run_id, test_id, outcome, finished_at FROM tests")] if has_tests else []
    return runs, records, tests


def _code_versions(runs: Sequence[dict]) -> tuple[str, ...]:
    return tuple(sorted({str(r["git_commit"]) for r in runs}))


_RUN, _TEST, _SUITE, _METRIC = (RECORD_COLUMNS.index(c) for c in ("run_id", "test_id", "suite", "metric"))


def _health_key(row: tuple) -> tuple | None:
    """(run, test, metric) of a model-health row (suite ``model``, ``fixtures.health``), else None."""
    return (row[_RUN], row[_TEST], row[_METRIC]) if row[_SUITE] == HEALTH_SUITE else None


def merge_stores(sources: Sequence[str | Path], output: str | Path, allow_mixed: bool = False) -> MergeSummary:
    """Merge the stores ``sources`` into ``output`` (created when missing; an existing store is added to).

    Args:
        sources: results stores (``.sqlite`` files or results directories); they are only read.
        output: the store to write (``.sqlite`` file or results directory); it may be one of ``sources``.
        allow_mixed: merge runs of different code versions (``runs.git_commit``); refused by default, since
            claims measured on different code are not one result.

    Returns:
        What was merged (runs, rows added, duplicates skipped, code versions).

    Raises:
        HarnessError: no sources, a source that is not a results store, or sources of different code
            versions without ``allow_mixed``.
    """
    if not sources:
        raise HarnessError("merge needs at least one source store")
    out_path = _store_path(output)
    read = [(Path(src), *_read(_store_path(src))) for src in sources]
    all_runs = [run for _, runs, _, _ in read for run in runs]
    commits = _code_versions(all_runs)
    if len(commits) > 1 and not allow_mixed:
        by_commit = {c: sorted({str(src) for src, runs, _, _ in read for r in runs if str(r["git_commit"]) == c})
                     for c in commits}
        listing = "; ".join(f"{c}: {', '.join(paths)}" for c, paths in by_commit.items())
        raise HarnessError(f"stores of different code versions (runs.git_commit) ({listing}): "
                           "merge stores of one commit, or pass --allow-mixed")

    merged_runs: dict[str, dict] = {}
    unfinished: dict[str, list[str]] = {}
    for src, runs, _, _ in read:
        for run in runs:
            rid = run["run_id"]
            if run["finished_at"] is None:
                unfinished.setdefault(rid, []).append(str(src))
            if rid not in merged_runs:
                merged_runs[rid] = dict(run)
                continue
            seen = merged_runs[rid]
            seen["started_at"] = min(seen["started_at"], run["started_at"])
            if seen["finished_at"] is not None and run["finished_at"] is not None:
                seen["finished_at"] = max(seen["finished_at"], run["finished_at"])
    for rid, where in unfinished.items():
        merged_runs[rid]["finished_at"] = None
        log.warning("run %s is unfinished in %s: the merged run is unfinished", rid, ", ".join(where))

    added = duplicates = 0
    with ResultStore(out_path) as out:
        conn = out._conn
        have = {row[0]: row for row in conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs")}
        present = Counter(tuple(row) for row in conn.execute(
            f"SELECT {', '.join(RECORD_COLUMNS)} FROM records ORDER BY id"))
        for rid, run in merged_runs.items():
            old = dict(zip(RUN_COLUMNS, have[rid], strict=True)) if rid in have else None
            if old is None:
                out._write(f"INSERT INTO runs ({', '.join(RUN_COLUMNS)}) VALUES ({', '.join('?' * len(RUN_COLUMNS))})",
                           tuple(run[c] for c in RUN_COLUMNS))
                continue
            # finished only when every part is: the output's own row counts as one more part
            finished = (None if old["finished_at"] is None or run["finished_at"] is None
                        else max(old["finished_at"], run["finished_at"]))
            out._write("UPDATE runs SET started_at = ?, finished_at = ? WHERE run_id = ?",
                       (min(old["started_at"], run["started_at"]), finished, rid))
        insert = f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * len(RECORD_COLUMNS))})"
        for _, _, _, tests in read:  # completed tests (for --resume): a test is complete when any part says so
            if tests:
                out._write_many("INSERT OR IGNORE INTO tests (run_id, test_id, outcome, finished_at) "
                                "VALUES (?, ?, ?, ?)", tests)
        health = {_health_key(row) for row in present if _health_key(row)}
        for _, _, records, _ in read:
            counts = Counter(records)
            new_rows: list[tuple] = []
            emitted: Counter = Counter()
            for row in records:  # keep the source's order
                key = _health_key(row)
                if key in health:  # each shard judged the model's health: one judgement per run and model
                    continue
                if present[row] + emitted[row] < counts[row]:
                    new_rows.append(row)
                    emitted[row] += 1
            duplicates += len(records) - len(new_rows)
            present.update(emitted)
            health.update(k for k in map(_health_key, new_rows) if k)
            added += len(new_rows)
            if new_rows:
                out._write_many(insert, new_rows)
    summary = MergeSummary(out_path, len(merged_runs), added, duplicates, commits)
    log.info("merged %d run(s) from %d store(s) into %s: %d rows added, %d duplicates skipped",
             summary.runs, len(sources), out_path, added, duplicates)
    return summary
