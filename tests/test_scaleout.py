"""Scale-out: shards and their merge, xdist workers with one GPU each, the merged store equals a serial run."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from fixtures.scaleout import model_scope, parse_shard, shard_indices, visible_devices, worker_device
from harness.errors import HarnessError
from harness.records import ResultStore, merge_stores
from reports.__main__ import main as reports_main

ROOT = Path(__file__).resolve().parents[1]
# a small selection of real suites on two tiny families (one trial per cell)
SELECTION = ["suites/test_smoke.py", "suites/test_robustness.py", "--model", "tiny-llama,tiny-gpt-neox",
             "--trials", "1"]


# -- pure helpers ------------------------------------------------------------------------------


def test_parse_shard():
    assert parse_shard("2/4") == (2, 4) and parse_shard(" 1 / 1 ") == (1, 1)
    for bad in ("0/2", "3/2", "2", "a/b", "1/0", "-1/2"):
        with pytest.raises(HarnessError, match="K/N"):
            parse_shard(bad)


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_shards_partition_the_tests_and_balance_each_model(shards):
    models = ["a"] * 7 + ["b"] * 4 + [None] * 2 + ["a"] * 3
    parts = [shard_indices(models, k, shards) for k in range(1, shards + 1)]
    flat = [i for part in parts for i in part]
    assert sorted(flat) == list(range(len(models)))  # every test once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    for model in ("a", "b", None):
        per = [sum(models[i] == model for i in p) for p in parts]
        assert max(per) - min(per) <= 1, (model, per)
    assert parts == [shard_indices(models, k, shards) for k in range(1, shards + 1)]  # deterministic


def test_worker_devices_come_from_the_users_list():
    env = {"CUDA_VISIBLE_DEVICES": "3, 5,GPU-8a1b"}
    devices = visible_devices(env, count=8)  # the user's list wins over the machine's count
    assert devices == ["3", "5", "GPU-8a1b"]
    assert [worker_device(f"gw{i}", devices) for i in range(4)] == ["3", "5", "GPU-8a1b", "3"]
    assert visible_devices({}, count=2) == ["0", "1"]
    assert visible_devices({"CUDA_VISIBLE_DEVICES": ""}, count=2) == []
    assert worker_device("gw1", []) is None
    with pytest.raises(HarnessError, match="gw0"):
        worker_device("main", devices)


def test_tests_are_scheduled_by_model():
    models = ["tiny-llama", "tiny-llama-2", "opt"]
    scope = [model_scope(n, models) for n in (
        "suites/test_a.py::t[tiny-llama]", "suites/test_b.py::u[tiny-llama-gaussian-mlp]",
        "suites/test_a.py::t[tiny-llama-2-x]", "suites/test_a.py::t[opt-0.5]", "tests/test_x.py::plain",
        "tests/test_x.py::p[3]", "suites/test_a.py::t[opt]@pinned")]
    assert scope == ["model:tiny-llama", "model:tiny-llama", "model:tiny-llama-2", "model:opt",
                     "tests/test_x.py::plain", "tests/test_x.py::p[3]", "pinned"]


# -- merge -------------------------------------------------------------------------------------


def _store(path: Path, commit: str, run_id: str, rows: list[tuple[str, float]], finished: bool = True) -> Path:
    with ResultStore(path) as store:
        store.start_run({"git_commit": commit, "device": "cpu"}, run_id=run_id)
        for metric, value in rows:
            store.record(run_id=run_id, test_id=f"t[{metric}]", suite="s", model="m", metric=metric, value=value,
                         outcome="passed" if metric.endswith("_max") else None)
            store.finish_test(run_id, f"t[{metric}]", "passed")
        if finished:
            store.finish_run(run_id)
    return path


def _rows(path: Path) -> Counter:
    with ResultStore(path, readonly=True) as store:
        df = store.records()
    outcomes = [o if isinstance(o, str) else None for o in df.outcome]  # pandas: an all-NULL column reads NaN
    return Counter(zip(df.run_id, df.metric, df.value, outcomes, strict=True))


def test_merge_keeps_rows_once_and_joins_shards_of_one_run(tmp_path):
    a = _store(tmp_path / "a.sqlite", "c1", "run1", [("x", 1.0), ("x", 1.0), ("y_max", 2.0)])
    b = _store(tmp_path / "b.sqlite", "c1", "run1", [("z", 3.0)])
    out = tmp_path / "merged.sqlite"
    s = merge_stores([a, b, a], out)  # a twice: its rows still once
    assert (s.runs, s.records, s.duplicates) == (1, 4, 3)
    assert _rows(out) == _rows(a) + _rows(b)  # the two equal x rows of a stay two
    again = merge_stores([b, a], out)  # merging again adds nothing
    assert again.records == 0 and _rows(out) == _rows(a) + _rows(b)
    with ResultStore(out, readonly=True) as store:
        runs = store.runs()
    assert list(runs.run_id) == ["run1"] and runs.finished_at[0] is not None
    with ResultStore(out, readonly=True) as store:  # the shards' complete tests, for a later --resume
        assert store.completed_tests("run1") == {"t[x]": "passed", "t[y_max]": "passed", "t[z]": "passed"}


def test_merge_leaves_an_interrupted_shard_unfinished(tmp_path):
    a = _store(tmp_path / "a.sqlite", "c1", "run1", [("x", 1.0)])
    b = _store(tmp_path / "b.sqlite", "c1", "run1", [("z", 3.0)], finished=False)
    merge_stores([a, b], tmp_path / "m.sqlite")
    with ResultStore(tmp_path / "m.sqlite", readonly=True) as store:
        assert store.runs().finished_at[0] is None


def test_merge_refuses_mixed_code_versions_unless_allowed(tmp_path, capsys):
    a = _store(tmp_path / "a.sqlite", "c1", "run1", [("x", 1.0)])
    b = _store(tmp_path / "b.sqlite", "c2", "run2", [("x", 1.0)])
    out = tmp_path / "m.sqlite"
    with pytest.raises(HarnessError, match=r"different code versions .*--allow-mixed"):
        merge_stores([a, b], out)
    assert not out.exists()
    assert reports_main(["merge", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert reports_main(["merge", str(a), str(b), "-o", str(out), "--allow-mixed"]) == 0
    assert sorted(key[0] for key in _rows(out)) == ["run1", "run2"]


def test_merge_of_a_file_that_is_not_a_store_is_a_one_line_error(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"\x00garbage" * 64)
    with pytest.raises(HarnessError, match="not a readable results store"):
        merge_stores([junk], tmp_path / "m.sqlite")
    assert junk.read_bytes() == b"\x00garbage" * 64
    with pytest.raises(HarnessError, match="no results store"):
        merge_stores([tmp_path / "missing"], tmp_path / "m.sqlite")


# -- real runs: shards and xdist workers give the claims of a serial run ----------------------------


def _pytest(results: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", "-p", "fixtures.scaleout", "-p", "no:cacheprovider", *SELECTION,
           "--results-dir", str(results), *args]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                         env={**os.environ, **(env or {})})
    # exit 1 (a failed claim) is a result too: the comparison is about equal claims, not passing ones
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    return res


def _claims(store: Path) -> Counter:
    """(suite, model, metric, value, outcome) of every claim row; value rounded to 12 digits."""
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT suite, model, metric, value, outcome FROM records WHERE outcome IS NOT NULL").fetchall()
    conn.close()
    return Counter((s, m, k, None if v is None else float(f"{v:.12g}"), o) for s, m, k, v, o in rows)


def _measurements(store: Path) -> Counter:
    """Every measurement row but the timings."""
    conn = sqlite3.connect(store)
    rows = conn.execute("SELECT suite, model, metric, value, perturbation FROM records "
                        "WHERE outcome IS NULL AND metric NOT LIKE '%second%'").fetchall()
    conn.close()
    return Counter(rows)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The serial run and the two shards of one run id, at the same time (as a CI matrix runs them; separate
    processes and stores): name -> (store, the run)."""
    root = tmp_path_factory.mktemp("runs")
    args = {"serial": ()} | {f"shard{k}": ("--shard", f"{k}/2", "--run-id", "nightly-42") for k in (1, 2)}
    with ThreadPoolExecutor(len(args)) as pool:
        done = dict(zip(args, pool.map(lambda name: _pytest(root / name, *args[name]), args), strict=True))
    return {name: (root / name / "results.sqlite", res) for name, res in done.items()}


@pytest.fixture(scope="module")
def serial(runs) -> Path:
    store = runs["serial"][0]
    assert _claims(store), "the serial run recorded no claims"
    return store


@pytest.mark.slow
def test_two_shards_merged_equal_an_unsharded_run(serial, runs, tmp_path):
    stores = []
    for k in (1, 2):
        store, res = runs[f"shard{k}"]
        assert re.search(r"\d+ passed|\d+ failed", res.stdout)
        stores.append(store)
    per_shard = [_claims(s) for s in stores]
    tests = [Counter({k: n for k, n in c.items() if k[0] != "model"}) for c in per_shard]  # each judged the model
    assert all(tests) and not (tests[0] & tests[1])  # both shards did work, none twice
    out = tmp_path / "merged.sqlite"
    assert reports_main(["merge", *map(str, stores), "-o", str(out)]) == 0
    assert _claims(out) == _claims(serial)
    assert _measurements(out) == _measurements(serial)
    with ResultStore(out, readonly=True) as store:
        runs = store.runs()
    assert list(runs.run_id) == ["nightly-42"] and runs.finished_at[0] is not None


@pytest.mark.slow
def test_two_xdist_workers_equal_a_serial_run(serial, tmp_path):
    pytest.importorskip("xdist")
    results = tmp_path / "xdist"
    res = _pytest(results, "-n", "2", "-v", "--report", env={"CUDA_VISIBLE_DEVICES": "7,3"})
    store = results / "results.sqlite"
    assert _claims(store) == _claims(serial)
    assert _measurements(store) == _measurements(serial)
    # loadgroup by model: all tests of a model ran on one worker
    workers: dict[str, set[str]] = {}
    for gw, model in re.findall(r"\[(gw\d+)\][^\n]*?(tiny-llama|tiny-gpt-neox)", res.stdout):
        workers.setdefault(model, set()).add(gw)
    assert set(workers) == {"tiny-llama", "tiny-gpt-neox"} and all(len(w) == 1 for w in workers.values()), workers
    with ResultStore(store, readonly=True) as s:
        runs = s.runs()
    assert len(runs) == 1 and runs.finished_at[0] is not None  # one run id for every worker
    run_id = runs.run_id[0]
    assert (results / "report" / run_id).is_dir(), "--report under xdist built no report on the controller"


def test_each_worker_sees_its_own_gpu_before_plugins_configure(tmp_path):
    """The worker's CUDA_VISIBLE_DEVICES is its own entry of the user's list by the time other plugins'
    pytest_configure runs (where the esa plugin first asks torch about CUDA)."""
    pytest.importorskip("xdist")
    (tmp_path / "conftest.py").write_text(textwrap.dedent("""
        import os

        def pytest_configure(config):
            wid = getattr(config, "workerinput", {}).get("workerid")
            if wid:
                path = os.path.join(os.environ["PROBE_DIR"], wid)
                with open(path, "w") as fh:
                    fh.write(os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>"))
    """))
    (tmp_path / "test_probe.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    res = subprocess.run([sys.executable, "-m", "pytest", "-p", "fixtures.scaleout", "-p", "no:cacheprovider",
                          "-n", "3", "-q", str(tmp_path)], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300, check=False,
                         env={**os.environ, "CUDA_VISIBLE_DEVICES": "6,2", "PROBE_DIR": str(tmp_path)})
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    seen = {w: (tmp_path / w).read_text() for w in ("gw0", "gw1", "gw2")}
    assert seen == {"gw0": "6", "gw1": "2", "gw2": "6"}


@pytest.mark.slow
def test_submit_runs_two_local_tasks_and_merges_their_stores(serial, tmp_path):
    pytest.importorskip("submitit")
    cmd = [sys.executable, "-m", "harness.submit", "--executor", "local", "--model", "tiny-llama,tiny-gpt-neox",
           "--shards", "1", "--gpus-per-task", "0", "--max-parallel", "2", "--timeout-min", "20",
           "--run-id", "slurm-7", "--results-dir", str(tmp_path), "--",
           "suites/test_smoke.py", "-p", "no:cacheprovider"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500, check=False)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
    tasks = sorted(p.name for p in (tmp_path / "tasks").iterdir())
    assert tasks == ["tiny-gpt-neox-1of1", "tiny-llama-1of1"]
    merged = tmp_path / "results.sqlite"
    health = Counter({k: n for k, n in _claims(serial).items() if k[0] == "model"})  # the smoke suite's session
    assert health and _claims(merged) == health
    with ResultStore(merged, readonly=True) as store:
        runs = store.runs()
    assert list(runs.run_id) == ["slurm-7"] and runs.finished_at[0] is not None


def test_submit_rejects_options_it_sets_itself(capsys):
    from harness.submit import main

    assert main(["--executor", "local", "--model", "tiny-llama", "--", "suites", "--model", "x"]) == 2
    assert "--model is set by submit" in capsys.readouterr().err
