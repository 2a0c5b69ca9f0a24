"""Claim power, measured: each sabotage of the harness or the model turns a strict run of a few cells of
smollm2-135m red, and the test names the claim that catches it (docs/MEASUREMENTS.md, "Claim power").

Each case's cells run as ``pytest suites/... --model smollm2-135m --strict-claims -p tests.sabotage`` in a
subprocess with ``ESA_SABOTAGE`` set (``tests/sabotage.py`` holds the patches); cases whose patches and suites are
disjoint share one subprocess (:data:`RUNS`). Each case reads its run's claim rows back from the store. The same
cells pass in ``make test``'s unsabotaged strict run of smollm2-135m (the fine-tuning case's, which that run does not
hold, pass unsabotaged at the case's budget).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness.records import ResultStore

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    """One sabotage's cells: suite files, a ``-k`` expression and options; the claims of which one must fail; strict."""

    files: tuple[str, ...]
    k: str | None
    expected: frozenset[str]
    strict: bool = True
    options: tuple[str, ...] = ()


CASES = {
    # with the bounds' numbers or without them (a new user's model on day one): a relation must catch it, and
    # relations are judged without any bound (the test asserts that one of the failed claims is a relation)
    "flips_do_nothing": Case(("suites/test_bitflip.py",), "uniform-exp_msb-native or exp_msb_damages",
                             frozenset({"fp32_uniform_exp_msb_has_effect", "exp_msb_damages_more_than_mantissa_lsb",
                                        "fp32_uniform_exp_msb_collapse_rate"})),
    "noise_1000x_weaker": Case(("suites/test_robustness.py",), "gaussian-mlp",
                               frozenset({"gaussian_mlp_high_noise_ppl_ratio", "gaussian_mlp_damage_grows"})),
    # one granularity: the 2:4 case measures the same no-op again (and scores Wanda a second time)
    "pruning_removes_nothing": Case(("suites/test_pruning.py",), "test_wanda_beats_magnitude and row",
                                    frozenset({"wanda_beats_magnitude_row"})),
    "defenses_repair_nothing": Case(("suites/test_attack.py",), "progressive-fp32-checksum",
                                    frozenset({"checksum_defends_search_flips"})),
    # the fine-tune itself is what is sabotaged, over one step (512 tokens: the unsabotaged fine-tune passes the claim
    # at that budget too); not strict: neither --trials 1 nor that budget is the configuration of the bounds
    "finetune_lr_0": Case(("suites/test_finetune.py",), "test_finetune_trains and plain",
                          frozenset({"finetune_lowers_training_perplexity"}), False,
                          ("--trials", "1", "--finetune-tokens", "512")),
    "attack_gives_up": Case(("suites/test_adversarial.py",), "typo", frozenset({"typo_lowers_target"})),
    # a model without its super weights is a broken model: the health claims catch it before the suite runs
    "super_weight_scaled_down": Case(("suites/test_super_weights.py",), "zero_super_weights or known",
                                     frozenset({"clean_perplexity", "zero_super_weights_ppl_ratio",
                                                "zero_top_super_weight_ppl_ratio", "zero_super_weights_vs_random"})),
    # the main job on a model that loads without an error but is wrong: red through the model-health claims, judged
    # whatever -k selects, and the selected suites skipped (from gross to +9-12% clean perplexity; each through
    # one of the selections that never ran the smoke suite)
    "model_layout_scrambled": Case(("suites/test_bitflip.py",), None,
                                   frozenset({"clean_perplexity", "below_unigram", "below_uniform",
                                              "top1_above_chance"})),
    "model_rope_base_misread": Case(("suites/test_robustness.py",), None, frozenset({"clean_perplexity"})),
    "model_final_norm_scaled": Case(("suites/test_compare_sensitivity.py",), None, frozenset({"clean_perplexity"})),
    # protection that keeps nothing, where the mask covers every super weight
    "protection_keeps_nothing": Case(("suites/test_pruning.py",), "protecting_super_weights_the_mask_covers",
                                     frozenset({"protection_keeps_covered_super_weights"})),
    # detectors that never fire / always fire: the detection claims over one flip per cell (exp-MSB collapses at
    # trial 0, so every claim applies; not strict: --trials 1 is not the configuration the bounds were derived
    # under) and the clean model's checks
    "detector_never_fires": Case(("suites/test_detection.py",), "test_detection_claim",
                                 frozenset({"checksum_detects_every_flip", "audit_detects_every_collapse",
                                            "range_covers_exp_msb_share"}), False, ("--trials", "1")),
    "detector_always_fires": Case(("suites/test_detection.py",), "test_detection_clean_model",
                                  frozenset({"audit_silent_on_clean_model", "checksum_silent_on_clean_model",
                                             "range_silent_on_clean_model"})),
}

# Cases that share one subprocess (one start, model load and health judgement, ~12 s each): their patches touch
# disjoint code, their cells are of different suites, and each case's expected claims are its own suite's, so no other
# case's patch can fail them; strictness agrees, and an option given twice has one value.
RUNS = [
    ("noise_1000x_weaker", "attack_gives_up", "detector_always_fires", "pruning_removes_nothing"),
    ("defenses_repair_nothing", "protection_keeps_nothing"),
    ("finetune_lr_0", "detector_never_fires"),
    ("flips_do_nothing",),  # the attack's flips are bit flips too
    ("super_weight_scaled_down",),
    ("model_layout_scrambled",), ("model_rope_base_misread",), ("model_final_norm_scaled",),
]


def selection(names: tuple[str, ...]) -> tuple[list[str], bool]:
    """The pytest arguments of the cases ``names`` run together, and whether the run is strict."""
    cases = [CASES[n] for n in names]
    options: dict[str, str] = {}
    for c in cases:
        for flag, value in zip(c.options[::2], c.options[1::2], strict=True):
            if options.setdefault(flag, value) != value:
                raise ValueError(f"cases {names} give {flag} two values: they cannot share a run")
    if len({c.strict for c in cases}) > 1:
        raise ValueError(f"cases {names} differ in strictness: they cannot share a run")
    files = list(dict.fromkeys(f for c in cases for f in c.files))
    ks = [c.k for c in cases if c.k]
    if ks and len(ks) < len(cases):
        raise ValueError(f"cases {names}: a case without -k selects whole files; it runs alone")
    args = [*files, *(["-k", " or ".join(f"({k})" for k in ks)] if ks else [])]
    return [*args, *(x for pair in options.items() for x in pair)], cases[0].strict


def run_sabotaged(names: tuple[str, ...], out: Path) -> tuple[int, list[dict], str]:
    """Run the cells of cases ``names`` under their sabotages on one thread; (exit code, claim rows, output)."""
    args, strict = selection(names)
    cmd = [sys.executable, "-m", "pytest", *args, "--model", "smollm2-135m", "--preset", "quick",
           "--results-dir", str(out), "-p", "tests.sabotage", "-q", "-p", "no:cacheprovider", "--no-header"]
    cmd += ["--strict-claims"] if strict else []
    env = {**os.environ, "ESA_SABOTAGE": ",".join(names), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    rows = []
    if (out / "results.sqlite").exists():
        with ResultStore(out, create=False) as store:
            df = store.records()
        rows = df[df["outcome"].notna()].to_dict("records")
    return proc.returncode, rows, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory) -> dict[str, Future]:
    """Every run started at once, on one thread each: two at a time on the machine's two cores, one at a time
    inside an xdist worker (the other worker has the rest of the tests; a third busy process slows all three).
    Each case's future is its run's."""
    alone = not os.environ.get("PYTEST_XDIST_WORKER")
    pool = ThreadPoolExecutor(max_workers=max(1, min(2 if alone else 1, os.cpu_count() or 1)))
    out = tmp_path_factory.mktemp("power")
    futures = {}
    for names in RUNS:
        future = pool.submit(run_sabotaged, names, out / "+".join(names))
        futures.update(dict.fromkeys(names, future))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def test_every_case_runs_once():
    assert sorted(n for names in RUNS for n in names) == sorted(CASES)
    for names in RUNS:
        selection(names)


@pytest.mark.parametrize("name", list(CASES))
def test_sabotage_turns_the_run_red(name, sabotaged, tmp_path):
    expected = CASES[name].expected
    rc, rows, output = sabotaged[name].result()
    failed = {r["metric"] for r in rows if r["outcome"] == "failed"}
    caught = sorted(failed & expected)
    (tmp_path / "power.json").write_text(json.dumps({"sabotage": name, "failed": sorted(failed)}))
    assert rc == 1, f"sabotage {name}: the run did not fail (exit {rc})\n{output}"
    assert caught, f"sabotage {name}: none of {sorted(expected)} failed; failed: {sorted(failed)}\n{output}"
    if name.startswith("model_"):  # one line names the model, its value and its bound; nothing ran on it
        assert "UNHEALTHY model smollm2-135m is not healthy: " in output, output
        assert re.search(r"^\d+ skipped(, \d+ deselected)? in ", output, re.M), output  # every selected test
        assert {r["suite"] for r in rows if r["outcome"] == "failed"} == {"model"}
    if name == "flips_do_nothing":  # a model with no bounds yet is caught too: a relation failed
        kinds = {json.loads(r["extra"])["kind"] for r in rows if r["outcome"] == "failed" and r["metric"] in expected}
        assert "relation" in kinds, kinds
