"""SQLite results store (stdlib ``sqlite3``, WAL mode) at ``<results-dir>/results.sqlite``.

Every record is committed as soon as it is measured, so a run killed midway keeps everything it
measured, and several processes (pytest-xdist workers) can write at once: each write is one short
transaction and writers wait on the database lock (``busy_timeout``) instead of failing.
``synchronous = FULL``: every commit is fsynced, so a committed record also survives a power loss or an
OS crash (NORMAL in WAL mode survives a killed process but may lose the last commits on power loss);
records are a few per test, so the fsync per commit costs little next to a model forward.

A path that cannot hold a store (a results directory that cannot be created, a file that is not a
SQLite database, a SQLite database that is not a results store) raises a one-line HarnessError; such a
file is never written to, overwritten or deleted.

A write that finds the disk full (SQLITE_FULL) is rolled back whole and raises a one-line DiskFullError;
the records committed before it stay readable, and ``--resume`` finishes the run once there is space.
SIGTERM waits for the transaction in progress to commit (``harness.records.signals``); a run stopped by
it is marked interrupted (:meth:`ResultStore.interrupt_run`, :func:`interruption`), not finished.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from harness.errors import DiskFullError, HarnessError
from harness.records.signals import commit_section

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: records.outcome; 3: tests (which tests of a run are complete, for --resume)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    git_commit TEXT,
    device TEXT,
    dtype TEXT,
    torch TEXT,
    transformers TEXT,
    lm_eval TEXT,
    python TEXT,
    hostname TEXT,
    command TEXT,
    extra TEXT
);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    test_id TEXT NOT NULL,
    suite TEXT NOT NULL,
    model TEXT NOT NULL,
    method TEXT,
    perturbation TEXT,
    seed INTEGER,
    metric TEXT NOT NULL,
    value REAL,
    clean_value REAL,
    bound REAL,
    passed INTEGER,
    seconds REAL,
    created_at TEXT NOT NULL,
    dtype TEXT,
    higher_is_better INTEGER,
    collapsed INTEGER NOT NULL DEFAULT 0,
    extra TEXT,
    outcome TEXT
);
CREATE TABLE IF NOT EXISTS tests (
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    test_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    PRIMARY KEY (run_id, test_id)
);
CREATE INDEX IF NOT EXISTS records_run ON records(run_id);
CREATE INDEX IF NOT EXISTS records_suite ON records(suite, model, metric);
"""

HEALTH_SUITE = "model"  # the suite of the session's model-health rows (harness.health, fixtures.health): one
# judgement per run and model, test_id ``model::NAME``
HEALTH_IDENTITY = "weights"  # the health row of the weights' identity (value: the parameter count; extra: the identity)
RECORD_COLUMNS = (
    "run_id", "test_id", "suite", "model", "method", "perturbation", "seed", "metric", "value",
    "clean_value", "bound", "passed", "seconds", "created_at", "dtype", "higher_is_better",
    "collapsed", "extra", "outcome",
)
# outcome of a claim row: passed, failed, unverified, not_applicable (harness.claims.Outcome); NULL on a
# measurement row.
# tests: one row per test of a run that ran to its end (outcome passed, failed or skipped), written after the
# test's last record; a test killed midway has records but no row here (``--resume`` discards and reruns it).


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _real(x: float | None) -> float | None:
    """SQLite stores inf but not NaN; NaN is stored as NULL (and ``collapsed`` says why)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def interruption(run: Mapping[str, Any]) -> str | None:
    """Why and when a run was interrupted (``"SIGTERM at <time>"``), or None when it was not or has been
    resumed to its end. ``run``: a ``runs`` row with ``extra`` as JSON text, or :meth:`ResultStore.run_info`."""
    if isinstance(run.get("finished_at"), str):  # an unfinished run reads as None, or NaN through pandas
        return None
    extra = json.loads(run["extra"]) if isinstance(run.get("extra"), str) else run
    return extra.get("interrupted") or None


def _json(obj: Any) -> str | None:
    if obj is None:
        return None
    if isinstance(obj, str):
        return obj
    return json.dumps(obj, sort_keys=True, default=str)


class ResultStore:
    """Runs and records in one SQLite file.

    Args:
        path: the database file, or a results directory (then ``results.sqlite`` inside it).
        create: create the file and schema when missing; with False a missing store is an error.
        readonly: open an existing store for reading only (no schema update, nothing written, even to
            the ``-wal``/``-shm`` files' owner directory beyond what SQLite needs to read).

    Raises:
        HarnessError: when there is no store at ``path`` and ``create`` is False or ``readonly`` is True;
            when the results directory cannot be created; when the file is not a SQLite database or a
            SQLite database that is not a results store (the file is left untouched); or when the store
            was written by a newer schema version.
    """

    def __init__(self, path: str | Path, create: bool = True, readonly: bool = False) -> None:
        path = Path(path)
        if path.suffix != ".sqlite":
            path = path / "results.sqlite"
        self.path = path
        self.readonly = readonly
        if not path.exists() and (readonly or not create):
            raise HarnessError(f"no results store at {path} (run the suites first, or pass --results-dir)")
        if path.exists() and not path.is_file():
            raise HarnessError(f"{path} is not a file: move it away or pass another --results-dir")
        if not readonly:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise HarnessError(f"cannot create the results directory {path.parent}: "
                                   f"{err.strerror or err}; pass a writable --results-dir") from None
        try:
            self._conn = self._connect()
        except sqlite3.Error as err:
            raise HarnessError(f"cannot open the results store {path}: {err}; it was left as it is: move it away "
                               "or pass another --results-dir") from None
        try:
            self._open()
        except sqlite3.DatabaseError as err:
            self._conn.close()
            raise HarnessError(f"{path} is not a readable results store ({err}); it was left as it is: "
                               "move it away or pass another --results-dir") from None
        except HarnessError:
            self._conn.close()
            raise

    def _connect(self) -> sqlite3.Connection:
        if self.readonly:
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60.0,
                                   isolation_level=None)
        return sqlite3.connect(self.path, timeout=60.0, isolation_level=None)

    def _open(self) -> None:
        """Check that the file is a results store (or empty), then set it up for writing."""
        self._conn.execute("PRAGMA busy_timeout = 60000")
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and "meta" not in tables:  # someone else's database: never add our tables to it
            raise HarnessError(f"{self.path} is a SQLite database but not a results store (tables: "
                               f"{', '.join(sorted(tables)[:5])}); it was left as it is: pass another --results-dir")
        if self.readonly:
            self._check_schema()
            return
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._write_script(_SCHEMA)
        self._migrate()
        self._check_schema()

    # -- writing -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole or rolled back; SIGTERM waits for its end
        (:mod:`harness.records.signals`); a full disk is a one-line :class:`DiskFullError`."""
        try:
            with commit_section():
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                    self._conn.execute("COMMIT")
                except BaseException:
                    if self._conn.in_transaction:  # SQLITE_FULL may have rolled it back already
                        self._conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as err:
            if getattr(err, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL and "disk is full" not in str(err):
                raise
            raise DiskFullError(f"{self.path}: disk full ({err}); every record committed before is kept: free "
                                f"space on {self.path.parent} and finish the run with --resume") from None

    def _write(self, sql: str, params: tuple | Mapping = ()) -> sqlite3.Cursor:
        for attempt in range(20):
            try:
                with self._transaction() as conn:
                    return conn.execute(sql, params)
            except sqlite3.OperationalError as err:  # "database is locked" beyond busy_timeout
                if "locked" not in str(err) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _write_many(self, sql: str, rows: list[tuple]) -> None:
        """``executemany`` in one transaction (all rows or none)."""
        with self._transaction() as conn:
            conn.executemany(sql, rows)

    def _write_script(self, script: str) -> None:
        for stmt in filter(str.strip, script.split(";")):
            self._write(stmt)

    def _migrate(self) -> None:
        """Bring a store of an older schema up to date in place (columns are only ever added)."""
        columns = {row[1] for row in self._conn.execute("PRAGMA table_info(records)")}
        if "outcome" not in columns:
            self._write("ALTER TABLE records ADD COLUMN outcome TEXT")
        self._write("UPDATE meta SET value = ? WHERE key = 'schema_version' AND CAST(value AS INTEGER) < ?",
                    (str(SCHEMA_VERSION), SCHEMA_VERSION))

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None and self.readonly:
            raise HarnessError(f"{self.path} has no schema version: not a results store")
        if row is None:
            self._write("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise HarnessError(
                f"{self.path} has schema version {row[0]}; this harness reads up to {SCHEMA_VERSION}"
            )

    def start_run(self, info: Mapping[str, Any], run_id: str | None = None) -> str:
        """Insert a row into ``runs`` and return its id.

        Args:
            info: columns of ``runs`` (see :func:`harness.records.collect_run_info`); unknown keys
                go to ``extra`` as JSON.
            run_id: an id to use (an existing id is reused, so xdist workers share one run).
        """
        run_id = run_id or datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]
        cols = ("git_commit", "device", "dtype", "torch", "transformers", "lm_eval", "python",
                "hostname", "command")
        extra = {k: v for k, v in info.items() if k not in cols}
        self._write(
            f"INSERT OR IGNORE INTO runs (run_id, started_at, {', '.join(cols)}, extra) "
            f"VALUES (?, ?, {', '.join('?' * len(cols))}, ?)",
            (run_id, _now(), *(info.get(c) for c in cols), _json(extra) if extra else None),
        )
        return run_id

    def finish_run(self, run_id: str) -> None:
        """Stamp ``finished_at`` on a run (an interrupted run keeps it NULL) and drop its interruption mark."""
        self._write("UPDATE runs SET finished_at = ?, extra = json_remove(extra, '$.interrupted') WHERE run_id = ?",
                    (_now(), run_id))

    def interrupt_run(self, run_id: str, reason: str) -> None:
        """Mark a run interrupted (``extra.interrupted``: the reason and when, see :func:`interruption`);
        ``--resume`` finishes it."""
        self._write("UPDATE runs SET finished_at = NULL, extra = json_set(coalesce(extra, '{}'), '$.interrupted', ?) "
                    "WHERE run_id = ?", (f"{reason} at {_now()}", run_id))

    def record(
        self,
        *,
        run_id: str,
        test_id: str,
        suite: str,
        model: str,
        metric: str,
        value: float | None,
        method: str | None = None,
        perturbation: Mapping | str | None = None,
        seed: int | None = None,
        clean_value: float | None = None,
        bound: float | None = None,
        passed: bool | None = None,
        seconds: float | None = None,
        dtype: str | None = None,
        higher_is_better: bool | None = None,
        collapsed: bool = False,
        extra: Mapping | None = None,
        outcome: str | None = None,
    ) -> int:
        """Commit one measured value and return its row id.

        A record with an ``outcome`` is a *claim* (``bound`` then holds its bound, or the other side of a
        relation); without one it is a measurement.
        A non-finite ``value`` should come with ``collapsed=True``.
        """
        row = (
            run_id, test_id, suite, model, method, _json(perturbation), seed, metric, _real(value),
            _real(clean_value), _real(bound), None if passed is None else int(bool(passed)),
            seconds, _now(), dtype, None if higher_is_better is None else int(higher_is_better),
            int(bool(collapsed)), _json(extra), None if outcome is None else str(outcome),
        )
        cur = self._write(
            f"INSERT INTO records ({', '.join(RECORD_COLUMNS)}) VALUES ({', '.join('?' * len(row))})", row
        )
        return int(cur.lastrowid)

    def finish_test(self, run_id: str, test_id: str, outcome: str) -> None:
        """Mark one test of a run as complete (its records are all written)."""
        self._write("INSERT OR REPLACE INTO tests (run_id, test_id, outcome, finished_at) VALUES (?, ?, ?, ?)",
                    (run_id, test_id, outcome, _now()))

    def completed_tests(self, run_id: str) -> dict[str, str]:
        """test id -> outcome of the tests of ``run_id`` that ran to their end."""
        rows = self._conn.execute("SELECT test_id, outcome FROM tests WHERE run_id = ?", (run_id,))
        return dict(rows.fetchall())

    def discard_incomplete(self, run_id: str, keep: set[str]) -> int:
        """Delete the records of ``run_id`` whose test is not in ``keep`` (and those tests' completion
        rows), in one transaction; return how many records went. Used by ``--resume`` before a test reruns."""
        with self._transaction() as conn:
            conn.execute("CREATE TEMP TABLE IF NOT EXISTS _keep (test_id TEXT PRIMARY KEY)")
            conn.execute("DELETE FROM _keep")
            conn.executemany("INSERT OR IGNORE INTO _keep VALUES (?)", [(t,) for t in keep])
            cur = conn.execute(
                "DELETE FROM records WHERE run_id = ? AND test_id NOT IN (SELECT test_id FROM _keep)", (run_id,))
            conn.execute("DELETE FROM tests WHERE run_id = ? AND test_id NOT IN (SELECT test_id FROM _keep)",
                         (run_id,))
            conn.execute("UPDATE runs SET finished_at = NULL WHERE run_id = ?", (run_id,))
        return cur.rowcount

    def run_info(self, run_id: str) -> dict | None:
        """The ``runs`` row of ``run_id`` (its ``extra`` decoded), or None when the store has no such run."""
        cur = self._conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,))
        row = cur.fetchone()
        if row is None:
            return None
        info = dict(zip([d[0] for d in cur.description], row, strict=True))
        info.update(json.loads(info.pop("extra") or "{}"))
        return info

    # -- reading -------------------------------------------------------------------------------

    def runs(self):
        """All runs as a pandas DataFrame, oldest first."""
        import pandas as pd

        return pd.read_sql_query("SELECT * FROM runs ORDER BY started_at", self._conn)

    def records(self, run_id: str | None = None, suite: str | None = None):
        """Records as a pandas DataFrame (``perturbation`` and ``extra`` stay JSON text)."""
        import pandas as pd

        where, params = [], []
        if run_id is not None:
            where.append("run_id = ?")
            params.append(run_id)
        if suite is not None:
            where.append("suite = ?")
            params.append(suite)
        sql = "SELECT * FROM records" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id"
        return pd.read_sql_query(sql, self._conn, params=params)

    def export(self, path: str | Path, run_id: str | None = None) -> Path:
        """Write records to ``.csv`` or ``.parquet`` (chosen by the suffix) and return the path."""
        path = Path(path)
        df = self.records(run_id)
        if path.suffix == ".csv":
            df.to_csv(path, index=False)
        elif path.suffix == ".parquet":
            df.to_parquet(path, index=False)
        else:
            raise HarnessError(f"cannot export to {path.name!r}: use a .csv or .parquet file name")
        return path

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
