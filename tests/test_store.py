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
from harness.records import ResultStore, collect_run_info


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
