"""The harness under its own faults (docs/RELIABILITY.md has the table): broken model files, a half-written
cache entry, a full disk, a cancelled nightly (SIGTERM), two runs on one store, a broken bounds file and
memory over a long campaign. Each test provokes the fault on a tiny model and checks what the user gets:
one line that names the file and says what to do, and nothing committed to the store lost."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.models import gguf, load_model
from harness.models.preflight import preflight
from harness.models.specs import ModelSpec
from harness.models.tiny import saved_tiny
from harness.records.store import interruption

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[1]
SUITE = "suites/test_ablation.py"  # four tests on tiny-llama, 8-9 records each
FAST = ("--model", "tiny-llama", "--trials", "1", "--eval-tokens", "128", "--window", "64", "--calib-tokens", "256")
# the model's health first (6 rows: its identity and 5 claims, fixtures/health.py), then the tests' records
TERM_AT = 18  # SIGTERM inside the commit of the 18th record: the second test's
FULL_AFTER = 18  # the store may not grow past its size at the 18th record
CLAIMS = ("SELECT test_id, suite, model, metric, outcome, round(value, 9), round(bound, 9) FROM records "
          "WHERE outcome IS NOT NULL AND run_id = ?")
EVERY = "SELECT test_id, metric FROM records WHERE run_id = ?"

# -p esa_faults: SIGTERM sent inside a record's transaction (between its INSERT and COMMIT), or a store
# whose database may not grow (SQLite's own "database or disk is full", SQLITE_FULL) after N records; and
# two runs on one store that wait, after their first suite record, for the other's first (so they overlap).
FAULTS = '''
import os, signal, sqlite3, time
from harness.records.store import ResultStore

TERM_AT = int(os.environ.get("ESA_TERM_AT_RECORD", "0"))
FULL_AFTER = int(os.environ.get("ESA_FULL_AFTER_RECORD", "0"))
MEET = os.environ.get("ESA_MEET_RUN")


class Faulty(sqlite3.Connection):
    inserts = 0
    suite_inserts = 0  # the suite's own records: the model's health rows are written under the results
    # directory's health lock, and a run that waited inside it would hold the other run out of its first record

    def execute(self, sql, *args):
        insert = sql.startswith("INSERT INTO records")
        if insert and FULL_AFTER and Faulty.inserts == FULL_AFTER:
            pages = super().execute("PRAGMA page_count").fetchone()[0]
            super().execute(f"PRAGMA max_page_count = {pages}")
        cursor = super().execute(sql, *args)
        if insert:
            Faulty.inserts += 1
            Faulty.suite_inserts += not any(str(a).startswith("model::") for a in (args[0] if args else ()))
            if Faulty.inserts == TERM_AT:
                os.kill(os.getpid(), signal.SIGTERM)
        if sql == "COMMIT" and MEET and Faulty.suite_inserts == 1:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not super().execute(
                    "SELECT count(*) FROM records WHERE run_id = ? AND test_id NOT LIKE 'model::%'",
                    (MEET,)).fetchone()[0]:
                time.sleep(0.05)
        return cursor


ResultStore._connect = lambda self: sqlite3.connect(self.path, timeout=60.0, isolation_level=None, factory=Faulty)
'''


def _rows(store: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(store / "results.sqlite") as conn:
        return conn.execute(sql, params).fetchall()


def _one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1


# -- 1. broken model files ------------------------------------------------------------------------------


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _split_in_two_shards(model: Path) -> None:
    """model.safetensors -> an index naming two shards, the second of which is missing."""
    from safetensors import safe_open

    single = model / "model.safetensors"
    with safe_open(single, "pt") as fh:
        names = list(fh.keys())
    single.rename(model / "model-00001-of-00002.safetensors")
    shards = {n: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, n in enumerate(names)}
    (model / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": shards}))


BREAKAGES = {  # what breaks -> (how, the file the message names)
    "truncated-weights": (lambda d: _truncate(d / "model.safetensors"), "model.safetensors"),
    "truncated-header": (lambda d: _truncate(d / "model.safetensors", 0.0001), "model.safetensors"),
    "corrupt-weights": (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 4096), "model.safetensors"),
    "missing-shard": (_split_in_two_shards, "model-00002-of-00002.safetensors"),
    "config-not-json": (lambda d: (d / "config.json").write_text("{'model_type': llama"), "config.json"),
    "broken-tokenizer": (lambda d: (d / "tokenizer.json").write_text('{"version": "1.0"}'), "tokenizer.json"),
}


@pytest.mark.parametrize("breakage", BREAKAGES)
def test_broken_model_files_are_one_line_naming_the_file(tmp_path: Path, breakage: str) -> None:
    model = tmp_path / "model"
    shutil.copytree(saved_tiny("llama"), model)
    load_model(model)  # whole, it loads
    breaking, name = BREAKAGES[breakage]
    breaking(model)
    for attempt in (lambda: preflight(model), lambda: load_model(model)):  # before any test, and at load
        with pytest.raises(HarnessError) as err:
            attempt()
        message = str(err.value)
        assert message.startswith(f"{model / name}:") and _one_line(message), message
        assert "replace it with a complete copy" in message, message


def test_truncated_weights_at_the_command_line_end_in_one_line(pytester: pytest.Pytester) -> None:
    model = pytester.path / "model"
    shutil.copytree(saved_tiny("llama"), model)
    _truncate(model / "model.safetensors")
    pytester.makepyfile(test_smoke="def test_smoke(lm):\n    pass\n")
    result = pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider", "--model", str(model))
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert not "".join(result.outlines).strip() and _one_line("\n".join(result.errlines)), result.errlines
    assert result.errlines[0].startswith(f"ERROR: {model / 'model.safetensors'}: truncated: its header describes ")


# -- 2. the GGUF cache: written whole or rebuilt --------------------------------------------------------

CACHED = ModelSpec("tiny-cached", family="llama", source="gguf-package", package="none", gguf_file="tiny.gguf",
                   sha256="0" * 64)

# a conversion killed by SIGKILL after writing half its weights (what a cancelled nightly leaves)
KILLED_CONVERSION = '''
import os, shutil, signal, sys
from pathlib import Path
from harness.models import gguf
from harness.models.specs import ModelSpec

def killed(spec, root, out):
    source = Path(sys.argv[1])
    shutil.copy(source / "config.json", out)
    weights = (source / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    os.kill(os.getpid(), signal.SIGKILL)

gguf._convert = killed
gguf.ensure_converted(ModelSpec(**eval(sys.argv[2])), cache_dir=sys.argv[3])
'''


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Patch the dequantization to copy tiny-llama's files; the list gets each conversion's directory."""
    done: list[Path] = []

    def convert(spec, root, out: Path) -> dict:
        for path in saved_tiny("llama").iterdir():
            shutil.copy(path, out)
        done.append(out)
        return {}

    monkeypatch.setattr(gguf, "_convert", convert)
    return done


def test_conversion_killed_midway_is_never_loaded_and_is_rebuilt(tmp_path: Path, conversions: list) -> None:
    spec = {f: getattr(CACHED, f) for f in ("name", "family", "source", "package", "gguf_file", "sha256")}
    out = subprocess.run([sys.executable, "-c", KILLED_CONVERSION, str(saved_tiny("llama")), repr(spec),
                          str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == -signal.SIGKILL, out.stderr
    models = tmp_path / "models"
    assert not (models / CACHED.name).exists() and not gguf.is_converted(CACHED, tmp_path)
    assert [p.name.startswith(".tiny-cached.tmp-") for p in models.iterdir() if p.is_dir()] == [True]

    path = gguf.ensure_converted(CACHED, tmp_path)
    assert len(conversions) == 1 and gguf.is_converted(CACHED, tmp_path)
    assert sorted(p.name for p in models.iterdir() if p.is_dir()) == [CACHED.name]  # the half-written one went
    marker = json.loads((path / gguf.SOURCE_FILE).read_text())
    assert marker["files"]["model.safetensors"] == (path / "model.safetensors").stat().st_size
    assert load_model(path).family == "llama"


@pytest.mark.parametrize("half_written", ["no-marker", "truncated-weights", "truncated-tokenizer"])
def test_incomplete_cache_entry_is_rebuilt_not_loaded(tmp_path: Path, conversions: list, half_written: str) -> None:
    path = gguf.ensure_converted(CACHED, tmp_path)
    assert gguf.ensure_converted(CACHED, tmp_path) == path and len(conversions) == 1  # complete: reused
    if half_written == "no-marker":
        (path / gguf.SOURCE_FILE).unlink()
    else:
        _truncate(path / ("model.safetensors" if half_written == "truncated-weights" else "tokenizer.json"))
    assert not gguf.is_converted(CACHED, tmp_path)
    assert gguf.ensure_converted(CACHED, tmp_path) == path and len(conversions) == 2
    assert gguf.is_converted(CACHED, tmp_path)
    load_model(path)


# -- 3-5. SIGTERM, a full disk, two runs on one store: real suite runs in subprocesses ------------------------


@dataclass
class Runs:
    """Suite runs of tiny-llama in subprocesses, three at once, then two resumes at once. ``whole`` and ``term``
    write one store at the same time (each waits after its first record for the other's); ``term`` gets SIGTERM
    inside the commit of its TERM_AT-th record; ``full`` has a store that may not grow after its FULL_AFTER-th
    record."""

    shared: Path  # the store of whole and term
    full: Path
    stopped: dict[str, Path]  # term, full: a copy of the store as the fault left it, before --resume
    first: dict[str, subprocess.CompletedProcess]  # whole, term, full
    resumed: dict[str, subprocess.CompletedProcess]  # term, full


def _start(results: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pytest", SUITE, *FAST, "--results-dir", str(results), "-p", "no:cacheprovider",
           "-p", "no:hypothesispytest", "-p", "no:benchmark", "-rs", *args]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})  # three at once, two cores


def _finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, _ = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("runs")
    (root / "plugins").mkdir()
    (root / "plugins" / "esa_faults.py").write_text(FAULTS)
    faults, env = ("-p", "esa_faults"), {"PYTHONPATH": str(root / "plugins")}
    shared, full = root / "shared", root / "full"
    started = {"whole": _start(shared, "--run-id", "whole", *faults, env={**env, "ESA_MEET_RUN": "term"}),
               "term": _start(shared, "--run-id", "term", *faults,
                              env={**env, "ESA_TERM_AT_RECORD": str(TERM_AT), "ESA_MEET_RUN": "whole"}),
               "full": _start(full, "--run-id", "full", *faults, env={**env, "ESA_FULL_AFTER_RECORD": str(FULL_AFTER)})}
    first = {name: _finish(proc) for name, proc in started.items()}
    stopped = {name: shutil.copytree(store, root / f"{name}-stopped") for name, store in (("term", shared),
                                                                                      ("full", full))}
    resumed = {name: _start(store, "--resume", name) for name, store in (("term", shared), ("full", full))}
    return Runs(shared, full, stopped, first, {name: _finish(proc) for name, proc in resumed.items()})


def _state(results: Path, run_id: str) -> dict:
    (finished, extra), = _rows(results, "SELECT finished_at, extra FROM runs WHERE run_id = ?", run_id)
    return {"interrupted": interruption({"finished_at": finished, "extra": extra}), "finished": finished,
            "records": _rows(results, "SELECT test_id FROM records WHERE run_id = ? ORDER BY id", run_id),
            "complete": {t for (t,) in _rows(results, "SELECT test_id FROM tests WHERE run_id = ? AND "
                                                      "outcome = 'passed' AND test_id NOT LIKE 'model::%'", run_id)}}


def _assert_stopped(out: subprocess.CompletedProcess, results: Path, run_id: str, reason: str) -> dict:
    """Exit status 2, no traceback, the run marked interrupted with its complete tests kept; the stopped state."""
    assert out.returncode == pytest.ExitCode.INTERRUPTED, out.stdout[-3000:]
    assert "Traceback" not in out.stdout
    assert f"run {run_id} interrupted ({reason}): its complete tests are kept; finish it with the same command " \
           f"and --resume {run_id}" in out.stdout
    state = _state(results, run_id)
    assert state["interrupted"].startswith(f"{reason} at ") and state["finished"] is None
    assert state["complete"] and state["complete"] < {t for (t,) in state["records"]}
    return state


def _assert_resumed_like_uninterrupted(out: subprocess.CompletedProcess, results: Path, run_id: str,
                                       complete: set[str], whole: Path) -> None:
    assert out.returncode == 0, out.stdout[-3000:]
    assert f"{len(complete)} skipped" in out.stdout
    state = _state(results, run_id)
    assert state["interrupted"] is None and state["finished"] is not None
    for sql in (CLAIMS, EVERY):
        assert Counter(_rows(results, sql, run_id)) == Counter(_rows(whole, sql, "whole")) != Counter()


@pytest.mark.slow
def test_sigterm_commits_the_record_marks_the_run_interrupted_and_resumes(runs: Runs) -> None:
    out = runs.first["term"]
    state = _assert_stopped(out, runs.stopped["term"], "term", "SIGTERM")
    assert ("harness.records.signals.Terminated: SIGTERM: the run stopped after its last committed record; finish "
            "it with the same command and --resume") in out.stdout
    assert len(state["records"]) == TERM_AT  # the record being written when SIGTERM came is committed

    from reports.build import collect
    from reports.html import page
    from reports.load import load_run
    from reports.markdown import analysis_report

    report = collect(load_run(runs.stopped["term"], "term"))
    assert report.interrupted == state["interrupted"]
    assert "Interrupted (SIGTERM at " in page(report, runs.stopped["term"])
    assert "Nothing needs attention" not in page(report, runs.stopped["term"])
    assert "(interrupted: SIGTERM at " in analysis_report(report)

    _assert_resumed_like_uninterrupted(runs.resumed["term"], runs.shared, "term", state["complete"], runs.shared)


@pytest.mark.slow
def test_disk_full_stops_in_one_line_keeps_the_committed_rows_and_resumes(runs: Runs) -> None:
    out, stopped = runs.first["full"], runs.stopped["full"]
    state = _assert_stopped(out, stopped, "full", "disk full")
    store = runs.full / "results.sqlite"
    assert (f"Interrupted: {store}: disk full (database or disk is full); every record committed before is kept: "
            f"free space on {store.parent} and finish the run with --resume") in out.stdout
    assert len(state["records"]) >= FULL_AFTER
    for test in state["complete"]:  # readable, and as an uninterrupted run has them
        kept = [r for r in _rows(stopped, CLAIMS, "full") if r[0] == test]
        assert kept and kept == [r for r in _rows(runs.shared, CLAIMS, "whole") if r[0] == test]
    _assert_resumed_like_uninterrupted(runs.resumed["full"], runs.full, "full", state["complete"], runs.shared)


@pytest.mark.slow
def test_two_concurrent_runs_on_one_store_keep_their_rows_apart(runs: Runs) -> None:
    assert runs.first["whole"].returncode == 0, runs.first["whole"].stdout[-3000:]
    times = "SELECT min(created_at), max(created_at) FROM records WHERE run_id = ?"
    (whole_first, whole_last), = _rows(runs.stopped["term"], times, "whole")
    (term_first, term_last), = _rows(runs.stopped["term"], times, "term")
    assert whole_first < term_last and term_first < whole_last  # they wrote at the same time (ESA_MEET_RUN)
    assert _rows(runs.shared, "PRAGMA integrity_check") == [("ok",)]
    assert _rows(runs.shared, "SELECT run_id FROM runs WHERE finished_at IS NOT NULL ORDER BY run_id") == [
        ("term",), ("whole",)]
    for sql in (CLAIMS, EVERY):  # each run's rows whole, under its own id (term's after its resume)
        assert Counter(_rows(runs.shared, sql, "term")) == Counter(_rows(runs.shared, sql, "whole")) != Counter()
    assert _rows(runs.shared, "SELECT run_id, count(*) FROM tests GROUP BY run_id ORDER BY run_id") == [
        ("term", 5), ("whole", 5)]  # four tests and the model's health


def test_disk_full_in_a_test_stops_the_session_in_one_line(pytester: pytest.Pytester) -> None:
    """Any ENOSPC a test meets (an artifact, a fine-tuned model) ends the session in one line naming the file."""
    pytester.makepyfile(test_full="""
        import errno

        def test_writes():
            raise OSError(errno.ENOSPC, "No space left on device", "results/figures/heatmap.png")

        def test_never_runs():
            pass
    """)
    result = pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "fixtures.interrupt", "-p",
                                          "no:cacheprovider", "--model", "tiny-llama")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["results/figures/heatmap.png: no space left on device; every record committed "
                                 "before is kept: free space and finish the run with --resume",
                                 "*! Interrupted: results/figures/heatmap.png: no space left on device*"])
    assert "Traceback" not in result.stdout.str()


# -- 6. a broken bounds file --------------------------------------------------------------------------------

DEMO = """
from harness.claims import ClaimSet

CLAIMS = ClaimSet("reliable")
PPL = CLAIMS.bound("clean_perplexity", "perplexity stays low", side="max", statistic="perplexity")

def test_nothing():
    pass
"""


@pytest.mark.parametrize(("text", "message"), [
    ("[tiny-llama]\nclean_perplexity = 30\n[tiny-opt]\nclean_perplexity = \n",
     "reliable.toml:4: not valid TOML (Invalid value); fix that line"),
    ('[tiny-llama]\n\n"clean_perplexity" = "30"\n',
     "reliable.toml:3: [tiny-llama] clean_perplexity = '30' must be a number, or [low, high] for a 'within' bound"),
    ("clean_perplexity = 30\n", "reliable.toml:1: top-level key 'clean_perplexity' must be a [model] table"),
])
def test_broken_bounds_file_is_one_line_naming_file_and_line(pytester: pytest.Pytester, text: str,
                                                             message: str) -> None:
    pytester.makepyfile(test_reliable=DEMO)
    (pytester.path / "suites" / "bounds").mkdir(parents=True)
    (pytester.path / "suites" / "bounds" / "reliable.toml").write_text(text)
    result = pytester.runpytest_inprocess("-p", "fixtures.plugin", "-p", "no:cacheprovider", "--model", "tiny-llama")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line for line in result.errlines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("ERROR: ") and message in errors[0], result.errlines
    assert str(pytester.path / "suites" / "bounds" / "reliable.toml") in errors[0]


# -- 7. memory over a long campaign ---------------------------------------------------------------------------


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident set size from /proc")
def test_campaign_memory_does_not_grow(tmp_path: Path) -> None:
    """200 bit-flip trials on tiny-llama, each recorded: resident memory after trial 200 is within 5% of that
    after trial 50 (smollm2-135m at 1,000 trials: docs/RELIABILITY.md)."""
    import torch
    from campaign_memory import measure

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model gains nothing from threads, and two busy cores lose much
    try:
        out = measure("tiny-llama", trials=200, warmup=50, results_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert out["growth"] <= 0.05, out


def test_conversion_needs_the_checked_transformers(tmp_path: Path, conversions: list,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A transformers older than the spec's ``min_transformers`` is refused in one line before converting, and a
    copy it converted earlier is converted again (a wrong dequantization loads without an error)."""
    import dataclasses

    import transformers

    copy = gguf._convert  # the fixture's copy of tiny-llama, marked with the version that made it, as _convert does
    monkeypatch.setattr(gguf, "_convert", lambda *a: {**copy(*a), "transformers": transformers.__version__})
    spec = dataclasses.replace(CACHED, min_transformers="5.25.0")
    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(HarnessError, match=r"transformers 5\.17\.0 is older than 5\.25\.0.*pip install"):
        gguf.ensure_converted(spec, tmp_path)
    assert conversions == []
    monkeypatch.setattr(transformers, "__version__", "5.25.0")
    path = gguf.ensure_converted(spec, tmp_path)
    assert gguf.ensure_converted(spec, tmp_path) == path and len(conversions) == 1  # reused at 5.25
    marker = json.loads((path / gguf.SOURCE_FILE).read_text())
    (path / gguf.SOURCE_FILE).write_text(json.dumps({**marker, "transformers": "5.17.0"}))
    assert not gguf.is_converted(spec, tmp_path)  # an old conversion is not trusted
    assert gguf.ensure_converted(spec, tmp_path) == path and len(conversions) == 2
