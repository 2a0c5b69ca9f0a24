"""The user's own command, end to end, offline: ``pytest suites/ -k bitflip --model opt-350m``.

A fixture fills a Hugging Face hub cache (the real layout: ``models--owner--name/blobs``,
``snapshots/<commit>/`` of symlinks, ``refs/main``) with the tiny random model of the family saved
under the registered hub id, and the command (both hub models in one run, ``--strict-claims``) runs in a
subprocess with ``HF_HUB_CACHE`` pointing there and ``HF_HUB_OFFLINE=1``: through preflight, the hub
loading code and the suites. What is checked is the code path and the visible outcomes (every claim has
one; a hub model without bounds has unverified ones, and ``--strict-claims`` fails saying how to create
them), not what random weights do.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from harness.models.specs import MODELS

ROOT = Path(__file__).resolve().parents[1]
OUTCOMES = ("passed", "failed", "unverified", "not_applicable")
SUMMARY = re.compile(r"^claims: (\d+) passed, (\d+) failed, (\d+) unverified, (\d+) not applicable\b", re.M)
FAST = ("--trials", "1", "--eval-tokens", "128", "--window", "64", "--calib-tokens", "256")
HUB_MODELS = ("opt-350m", "pythia-70m")  # OPT and GPT-NeoX, each with its tiny random twin


def fill_hub_cache(cache: Path, name: str) -> Path:
    """Save ``tiny-<family>`` of model ``name`` into ``cache`` under ``name``'s hub id, as the hub would.

    Returns:
        The snapshot directory.
    """
    from huggingface_hub.file_download import repo_folder_name

    from harness.models.tiny import build_tiny, byte_tokenizer

    spec = MODELS.get(name)
    staging = cache.parent / f"staging-{name}"
    build_tiny(spec.family).save_pretrained(staging)
    byte_tokenizer().save_pretrained(staging)
    repo = cache / repo_folder_name(repo_id=spec.hub_id, repo_type="model")
    commit = hashlib.sha1(spec.hub_id.encode()).hexdigest()  # any 40-hex revision
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo / "blobs").mkdir()
    for file in sorted(staging.iterdir()):
        data = file.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def hub_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of an offline machine whose hub cache holds the models of ``HUB_MODELS``."""
    root = tmp_path_factory.mktemp("hf")
    for name in HUB_MODELS:
        fill_hub_cache(root / "hub", name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(root / "home"), HF_HUB_CACHE=str(root / "hub"), HF_HUB_OFFLINE="1")
    return env


def _pytest(env: dict[str, str], results: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "suites/", "-k", "bitflip", *args, *FAST, "--results-dir", str(results),
         "-p", "no:cacheprovider", "-q"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800, check=False,
    )


def _check_claims(run: subprocess.CompletedProcess, results: Path, names: set[str]) -> dict[str, dict[str, int]]:
    """The claims section counts every claim row of the store (of the models ``names``), each with one of the
    four outcomes, and names every failed and unverified claim. Returns the counts per model."""
    out = run.stdout + run.stderr
    assert run.returncode in (0, 1), f"pytest did not finish its tests (exit {run.returncode}):\n{out[-3000:]}"
    last = out.strip().splitlines()[-1]
    assert "error" not in last, f"tests errored (setup or loading): {last}\n{out[-3000:]}"
    match = SUMMARY.search(out)
    assert match, f"no claims section in the terminal summary:\n{out[-3000:]}"
    counts = dict(zip(OUTCOMES, map(int, match.groups()), strict=True))
    with sqlite3.connect(results / "results.sqlite") as conn:
        claims = conn.execute("SELECT suite, metric, outcome, model FROM records WHERE outcome IS NOT NULL").fetchall()
        silent = conn.execute("SELECT count(*) FROM records WHERE outcome IS NULL "
                              "AND (bound IS NOT NULL OR passed IS NOT NULL)").fetchone()[0]
    assert silent == 0, "claim rows without an outcome"
    assert claims and {model for *_, model in claims} == names
    assert {outcome for _, _, outcome, _ in claims} <= set(OUTCOMES)
    assert counts == {o: sum(outcome == o for _, _, outcome, _ in claims) for o in OUTCOMES}
    for suite, metric, outcome, model in claims:
        if outcome in ("failed", "unverified"):
            assert f"{outcome.upper()} {suite}.{metric} [{model}]" in out
    return {name: {o: sum(outcome == o and model == name for _, _, outcome, model in claims) for o in OUTCOMES}
            for name in names}


def test_fixture_is_a_real_hub_cache(tmp_path):
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    snapshot = fill_hub_cache(tmp_path / "hub", "opt-350m")
    (repo,) = scan_cache_dir(tmp_path / "hub").repos
    (revision,) = repo.revisions
    assert (repo.repo_id, revision.refs, revision.commit_hash) == ("facebook/opt-350m", {"main"}, snapshot.name)
    assert {f.file_name for f in revision.files} >= {"config.json", "model.safetensors", "tokenizer.json"}
    assert try_to_load_from_cache("facebook/opt-350m", "config.json", cache_dir=tmp_path / "hub") == str(
        snapshot / "config.json")


def test_a_model_missing_from_the_offline_cache_is_one_line(hub_env):
    code = "from harness.models.preflight import preflight; preflight('gpt-neo-125m')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=hub_env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert run.returncode != 0
    assert "OfflineError: model 'gpt-neo-125m' (EleutherAI/gpt-neo-125m) needs the Hugging Face hub and " \
           "HF_HUB_OFFLINE is set" in run.stderr


@pytest.fixture(scope="module")
def strict_run(hub_env, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    """The user's command on both hub models at once, with ``--strict-claims`` (one subprocess: ~4 s of
    imports each saved): the run and its results directory."""
    results = tmp_path_factory.mktemp("strict")
    return _pytest(hub_env, results, "--model", ",".join(HUB_MODELS), "--strict-claims"), results


@pytest.mark.slow
def test_user_command_gives_every_claim_an_outcome(strict_run):
    run, results = strict_run
    per_model = _check_claims(run, results, set(HUB_MODELS))
    for name, counts in per_model.items():  # no regression bounds for these models: never a silent pass
        assert counts["unverified"] > 0, name


@pytest.mark.slow
def test_strict_claims_fails_and_says_how_to_create_bounds(strict_run):
    run, results = strict_run
    unverified = sum(c["unverified"] for c in _check_claims(run, results, set(HUB_MODELS)).values())
    assert run.returncode == 1
    out = run.stdout + run.stderr
    assert f"--strict-claims: {unverified} unverified claim(s)" in out
    assert "python -m reports export-bounds" in out
