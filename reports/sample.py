"""Real sample stores, for the report's tests and for trying the report: a small subset of the suites run
on a tiny random-weight model (``pytest suites ...`` in a subprocess), and a replay of a run with some claim
values scaled (a deliberately worsened run, for regression tracking).

    python -m reports.sample DIR [--model tiny-llama]     # run the sample suites into DIR, print the run id

Nothing here writes a record the suites would not write: every row comes from a suite run, and a replay
copies those rows, changing only the values it is told to.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd

from harness.errors import HarnessError
from harness.records import ResultStore
from reports.cli import run_cli
from reports.comparable import settings

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
# every suite the report draws a section for that runs in seconds on a tiny model: clean perplexity,
# ablation heatmap, bit-flip bars (one flip), two cheap attacks, two cheap input attacks
SAMPLE_K = "smoke or ablation or bitflip or attack or adversarial or robustness"
SAMPLE_ARGS = ("--trials", "1", "--attacks", "progressive,random", "--attack-dtypes", "fp32", "--defenses", "none",
               "--flip-budget", "4", "--input-attacks", "typo,insertion")


def run_suites(results_dir: str | Path, model: str = "tiny-llama", *, k: str | None = SAMPLE_K,
               args: tuple[str, ...] = SAMPLE_ARGS, rootdir: str | Path | None = None,
               files: tuple[str, ...] = ("suites",), timeout: float = 900.0) -> str:
    """Run ``pytest suites`` on ``model`` into ``results_dir`` and return the id of the run it stored.

    Args:
        results_dir: the results directory (created).
        model: a registry name (a tiny model keeps this to seconds).
        k: the ``-k`` expression selecting suites (None: every suite).
        args: further pytest options.
        rootdir: pytest's ``--rootdir``; the suites read their bounds from ``<rootdir>/suites/bounds``.
        files: what pytest collects, relative to the repository root.
        timeout: seconds before the run is abandoned.

    Raises:
        HarnessError: the run stored no records (its pytest output tail is in the message).
    """
    results_dir = Path(results_dir)
    cmd = [sys.executable, "-m", "pytest", *files, "--model", model, "--results-dir", str(results_dir),
           "-q", "-p", "no:cacheprovider", *args]
    if k:
        cmd += ["-k", k]
    if rootdir is not None:
        cmd += ["--rootdir", str(rootdir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    log.info("%s: exit %s", " ".join(cmd), proc.returncode)
    if not (results_dir / "results.sqlite").is_file():
        raise HarnessError(f"the sample run stored nothing (exit {proc.returncode}): {proc.stdout[-600:]}")
    with ResultStore(results_dir, create=False) as store:
        runs = store.runs()
        recs = store.records()
    ids = [r for r in runs["run_id"] if r in set(recs["run_id"])]
    if not ids:
        raise HarnessError(f"the sample run stored no records (exit {proc.returncode}): {proc.stdout[-600:]}")
    return ids[-1]


# The sample's deliberately failing claim: a regression bound tiny-llama is judged on in the sample selection (the
# model-health claims are not applicable on random weights, the smoke suite declares none). Noise of 0.001 x std on
# the MLP weights leaves a model's perplexity where it was (ratio 1.0000 on tiny-llama); a bound of 0.99 asks it
# to lower perplexity by 1%, which no noise does.
FAILING_SUITE, FAILING_CLAIM, FAILING_BOUND = "robustness", "gaussian_mlp_low_noise_ppl_ratio", 0.99


def sample_store(base: str | Path, model: str = "tiny-llama") -> tuple[Path, str]:
    """``(results dir, run id)`` of the sample suites run on ``model`` under ``base``, run once and then reused
    (under a file lock: the xdist workers of one session share ``base`` and the first one builds it).

    The run reads its bounds from a copy of ``suites/bounds`` in which the model's ``FAILING_CLAIM`` bound is
    ``FAILING_BOUND``, which no model meets: the store then holds a real failed claim beside unverified ones
    (bounds the model has no number for), passed and not-applicable ones.
    """
    from reports.bounds import replace_table

    d = Path(base) / f"sample-{model}"
    marker = d / "run_id"
    d.mkdir(parents=True, exist_ok=True)
    with open(d.parent / f".sample-{model}.lock", "w") as lock:  # processes sharing ``base`` build it once
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not marker.is_file():
            bounds = d / "root" / "suites" / "bounds"
            shutil.copytree(ROOT / "suites" / "bounds", bounds, dirs_exist_ok=True)
            path = bounds / f"{FAILING_SUITE}.toml"
            path.write_text(replace_table(path.read_text() if path.is_file() else "", model,
                                          f"{FAILING_CLAIM} = {FAILING_BOUND!r}\n"))
            marker.write_text(run_suites(d, model, rootdir=d / "root"))
    return d, marker.read_text()


def _finite(x) -> bool:
    return x is not None and not (isinstance(x, float) and not math.isfinite(x))


def replay_run(results_dir: str | Path, run_id: str, *, scale: dict[str, float] | None = None,
               info: dict | None = None) -> str:
    """Copy run ``run_id`` of the store into a new run, multiplying the value of each claim named in ``scale``
    by its factor (and judging a bound claim with a bound again), and return the new run id.

    Args:
        results_dir: the results directory.
        run_id: the run to copy.
        scale: claim name -> factor.
        info: ``runs`` columns and options of the new run (git_commit, device, seed, ...) over the copied ones.
    """
    scale = scale or {}
    with ResultStore(results_dir, create=False) as store:
        runs = store.runs()
        row = runs[runs["run_id"] == run_id]
        if row.empty:
            raise HarnessError(f"unknown run id {run_id!r} in {results_dir}")
        run = {k: v for k, v in settings(row.iloc[0].to_dict()).items()  # the run's options (seed, preset, ...) too
               if k not in ("run_id", "started_at", "finished_at", "interrupted") and v is not None
               and not (isinstance(v, float) and pd.isna(v))}
        new = store.start_run({**run, **(info or {})})
        for row in store.records(run_id).to_dict("records"):
            rec = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
            extra = json.loads(rec["extra"]) if rec["extra"] else {}
            name = extra.get("claim") or rec["metric"]
            if name in scale and _finite(rec["value"]) and (rec["outcome"] or extra.get("claim")):
                rec["value"] = rec["value"] * scale[name]
                if rec["bound"] is not None and extra.get("kind", "bound") == "bound":
                    side = extra.get("side", "max")
                    ok = rec["value"] <= rec["bound"] if side == "max" else rec["value"] >= rec["bound"]
                    rec["passed"] = ok
                    if rec["outcome"] is not None:
                        rec["outcome"] = "passed" if ok else "failed"
            for k in ("id", "created_at"):
                rec.pop(k, None)
            store.record(**{**rec, "run_id": new, "passed": None if rec["passed"] is None else bool(rec["passed"]),
                            "collapsed": bool(rec["collapsed"]),
                            "higher_is_better": None if rec["higher_is_better"] is None
                            else bool(rec["higher_is_better"])})
        store.finish_run(new)
    return new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reports.sample",
                                description="Run the sample suites on a tiny model into a results directory.")
    p.add_argument("results_dir")
    p.add_argument("--model", default="tiny-llama")
    return run_cli(p, argv, lambda a: run_suites(a.results_dir, a.model))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(main())
