"""``--resume``: a run killed with SIGKILL midway, resumed, holds the same claims as an uninterrupted run."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITES = ("suites/test_ablation.py", "suites/test_robustness.py")
FAST = ("--model", "tiny-llama", "--trials", "1", "--eval-tokens", "128", "--window", "64", "--calib-tokens", "256")
KILL_AFTER = 3  # SIGKILL right after the third test's body: its records are written, it is not complete

KILLER = '''
import os, signal
seen = 0
def pytest_runtest_logreport(report):
    global seen
    if report.when == "call":
        seen += 1
        if seen == int(os.environ["ESA_KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
'''


def _pytest(results: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "pytest", *SUITES, *FAST, "--results-dir", str(results), "-p", "no:cacheprovider",
           "-rs", *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
                          env={**os.environ, **(env or {})})


def _rows(results: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(results / "results.sqlite") as conn:
        return conn.execute(sql).fetchall()


CLAIMS = ("SELECT test_id, suite, model, metric, outcome, round(value, 9), round(bound, 9) FROM records "
          "WHERE outcome IS NOT NULL")


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_uninterrupted_claims(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "esa_killer.py").write_text(KILLER)
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    kill = {"PYTHONPATH": str(tmp_path / "plugins"), "ESA_KILL_AFTER": str(KILL_AFTER)}
    with ThreadPoolExecutor(2) as pool:  # the uninterrupted run and the killed one at once (separate stores)
        uninterrupted = pool.submit(_pytest, whole)
        first = pool.submit(_pytest, killed, "-p", "esa_killer", env=kill).result()
        assert uninterrupted.result().returncode == 0
    assert first.returncode == -9, first.stdout[-2000:]
    partial = {t for (t,) in _rows(killed, "SELECT DISTINCT test_id FROM records")}
    complete = {t for (t,) in _rows(killed, "SELECT test_id FROM tests")}
    health = {t for t in complete if t.startswith("model::")}  # the model judged before its first test: kept
    assert health == {"model::tiny-llama"} and health <= partial
    partial, complete = partial - health, complete - health
    assert len(complete) == KILL_AFTER - 1 and len(partial) == KILL_AFTER  # the third test: records, not complete
    (run_id,), = _rows(killed, "SELECT run_id FROM runs")

    resumed = _pytest(killed, "--resume")
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"complete in run {run_id} (--resume)" in resumed.stdout
    assert f"{KILL_AFTER - 1} skipped" in resumed.stdout

    assert _rows(killed, "SELECT run_id FROM runs") == [(run_id,)]  # one run, now finished
    assert _rows(killed, "SELECT finished_at IS NOT NULL FROM runs") == [(1,)]
    assert Counter(_rows(killed, CLAIMS)) == Counter(_rows(whole, CLAIMS))
    every = "SELECT test_id, metric FROM records"
    assert Counter(_rows(killed, every)) == Counter(_rows(whole, every))  # the partial test's rows are not doubled
    assert len(_rows(killed, "SELECT * FROM tests")) == len(_rows(whole, "SELECT * FROM tests"))


def test_resume_errors_are_one_line(tmp_path: Path) -> None:
    store = tmp_path / "store"
    with ThreadPoolExecutor(3) as pool:  # the runs of each step at once: none writes what another reads
        nothing = pool.submit(_pytest, tmp_path / "none", "--resume", "--collect-only")
        assert _pytest(store, "-k", "zero-all").returncode == 0
        out = nothing.result()
        assert out.returncode == 4 and "nothing to resume" in out.stderr, out.stderr
        (run_id,), = _rows(store, "SELECT run_id FROM runs")
        bad = [("nope",), ("--seed", "3"), ("--run-id", "x")]
        nope, seed, both = pool.map(lambda args: _pytest(store, "--resume", *args, "--collect-only"), bad)
    assert nope.returncode == 4 and "no run 'nope'" in nope.stderr and run_id in nope.stderr, nope.stderr
    assert seed.returncode == 4 and "seed 0 (now 3)" in seed.stderr, seed.stderr
    assert both.returncode == 4 and "--resume and --run-id" in both.stderr, both.stderr
