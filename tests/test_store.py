"""The results store keeps every row: under concurrent writers and after a killed writer."""

from __future__ import annotations

import math
import multiprocessing as mp
import signal
import subprocess
import sys
import textwrap

import pytest

from harness.errors import HarnessError
from harness.records import SCHEMA_VERSION, ResultStore, collect_run_info


def _writer(path: str, run_id: str, worker: int, rows: int) -> None:
    store = ResultStore(path)
    for i in range(rows):
        store.record(run_id=run_id, test_id=f"t{worker}", suite="unit", model="m", metric="x", value=i,
                     extra={"worker": worker})
    store.close()


def test_run_and_record_columns(tmp_path):
    store = ResultStore(tmp_path)
    run_id = store.start_run(collect_run_info("cpu", "float32", command="pytest x"))
    store.record(run_id=run_id, test_id="suites/test_a.py::t[m]", suite="a", model="m", metric="perplexity",
                 value=math.inf, clean_value=10.0, bound=20.0, passed=False, perturbation={"kind": "flip"},
                 seed=3, seconds=0.5, collapsed=True)
    store.record(run_id=run_id, test_id="t", suite="a", model="m", metric="kl", value=math.nan)
    runs, recs = store.runs(), store.records(run_id)
    assert list(runs.run_id) == [run_id]
    assert runs.loc[0, "command"] == "pytest x" and runs.loc[0, "torch"]
    for col in ("run_id", "test_id", "suite", "model", "method", "perturbation", "seed", "metric", "value",
                "clean_value", "bound", "passed", "seconds", "created_at"):
        assert col in recs.columns
    assert recs.loc[0, "value"] == math.inf and recs.loc[0, "passed"] == 0 and recs.loc[0, "collapsed"] == 1
    assert recs.loc[0, "perturbation"] == '{"kind": "flip"}'
    assert recs.loc[1, "value"] is None or math.isnan(recs.loc[1, "value"])
    store.export(tmp_path / "r.csv")
    assert (tmp_path / "r.csv").read_text().count("\n") == 3
    with pytest.raises(HarnessError, match=r"\.csv or \.parquet"):
        store.export(tmp_path / "r.xlsx")


def test_missing_store_is_an_error(tmp_path):
    with pytest.raises(HarnessError, match="no results store"):
        ResultStore(tmp_path / "nothing", create=False)


def test_concurrent_writers_lose_no_row(tmp_path):
    path = str(tmp_path / "results.sqlite")
    run_id = ResultStore(path).start_run({"device": "cpu"})
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(path, run_id, w, 150)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    recs = ResultStore(path).records(run_id)
    assert len(recs) == 600
    assert sorted(recs.groupby("test_id").size().tolist()) == [150] * 4


def test_killed_writer_keeps_what_it_committed(tmp_path):
    path = tmp_path / "results.sqlite"
    run_id = ResultStore(path).start_run({"device": "cpu"})
    code = textwrap.dedent(f"""
        import sys
        from harness.records import ResultStore
        store = ResultStore({str(path)!r})
        i = 0
        while True:
            rid = store.record(run_id={run_id!r}, test_id="k", suite="unit", model="m", metric="x", value=i)
            print(rid, flush=True)
            i += 1
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    committed = [int(proc.stdout.readline()) for _ in range(50)]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ids = set(ResultStore(path).records(run_id).id)
    assert set(committed) <= ids


# -- bad input: one-line errors, the file left as it was ------------------------------------------------


def test_results_dir_that_cannot_be_created_is_one_line_error(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the results directory should go")
    with pytest.raises(HarnessError, match=r"cannot create the results directory .*blocker") as err:
        ResultStore(blocker / "results")
    assert "\n" not in str(err.value)
    assert blocker.read_text() == "a file where the results directory should go"


@pytest.mark.parametrize("readonly", [False, True])
def test_file_that_is_not_sqlite_is_left_untouched(tmp_path, readonly):
    path = tmp_path / "results.sqlite"
    junk = b"not a database\n" * 100
    path.write_bytes(junk)
    with pytest.raises(HarnessError, match=r"not a readable results store .*left as it is") as err:
        ResultStore(tmp_path, readonly=readonly)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == junk
    with pytest.raises(HarnessError):  # a second try does not find a "repaired" store either
        ResultStore(path)
    assert path.read_bytes() == junk


def test_foreign_sqlite_database_gets_no_tables_added(tmp_path):
    import sqlite3

    path = tmp_path / "results.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (x TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(HarnessError, match="not a results store"):
        ResultStore(path)
    assert path.read_bytes() == before


def test_commits_are_synced_and_readonly_opens_write_nothing(tmp_path):
    store = ResultStore(tmp_path)
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    run_id = store.start_run({"device": "cpu"})
    store.record(run_id=run_id, test_id="t", suite="s", model="m", metric="x", value=1.0, outcome="passed")
    store.close()
    with ResultStore(tmp_path, readonly=True) as ro:
        assert list(ro.records().outcome) == ["passed"]
        with pytest.raises(Exception, match="readonly"):
            ro.record(run_id=run_id, test_id="t", suite="s", model="m", metric="x", value=2.0)
    with pytest.raises(HarnessError, match="no results store"):
        ResultStore(tmp_path / "elsewhere", readonly=True)


def test_schema_1_store_is_migrated_with_outcome(tmp_path):
    import sqlite3

    path = tmp_path / "results.sqlite"
    ResultStore(path).close()
    conn = sqlite3.connect(path)  # make it look like a schema-1 store: no outcome column
    conn.execute("ALTER TABLE records DROP COLUMN outcome")
    conn.execute("DROP TABLE tests")
    conn.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    with ResultStore(path) as store:
        run_id = store.start_run({"device": "cpu"})
        store.record(run_id=run_id, test_id="t", suite="s", model="m", metric="x", value=1.0, outcome="failed")
        version = store._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        assert version == str(SCHEMA_VERSION)
        assert list(store.records().outcome) == ["failed"]
        store.finish_test(run_id, "t", "passed")  # schema 3: the migration brought the tests table
        assert store.completed_tests(run_id) == {"t": "passed"}
