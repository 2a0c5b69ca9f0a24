"""Claim power, measured: each sabotage of the harness or the model turns a strict run of a few cells of
smollm2-135m red, and the test names the claim that catches it (docs/MEASUREMENTS.md, "Claim power").

Each case runs ``pytest suites/... --model smollm2-135m --strict-claims -p tests.sabotage`` in a subprocess
with ``ESA_SABOTAGE`` set (``tests/sabotage.py`` holds the patches) and reads the run's claim rows back
from its store. The same cells pass in ``make test``'s unsabotaged strict run of smollm2-135m.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

from harness.records import ResultStore

ROOT = Path(__file__).resolve().parents[1]

# sabotage -> (suite selection and options, claims of which one must fail, strict)
CASES = {
    "flips_do_nothing": (["suites/test_bitflip.py", "-k", "uniform-exp_msb-native or exp_msb_damages"],
                         {"fp32_uniform_exp_msb_has_effect", "exp_msb_damages_more_than_mantissa_lsb",
                          "fp32_uniform_exp_msb_collapse_rate"}, True),
    "noise_1000x_weaker": (["suites/test_robustness.py", "-k", "gaussian-mlp"],
                           {"gaussian_mlp_high_noise_ppl_ratio", "gaussian_mlp_damage_grows"}, True),
    # one granularity: the 2:4 case measures the same no-op again (and scores Wanda a second time)
    "pruning_removes_nothing": (["suites/test_pruning.py", "-k", "test_wanda_beats_magnitude and row"],
                                {"wanda_beats_magnitude_row"}, True),
    "defenses_repair_nothing": (["suites/test_attack.py", "-k", "progressive-fp32-checksum"],
                                {"checksum_defends_search_flips"}, True),
    # one trial per noise/flip cell: the fine-tune itself is what is sabotaged (not strict: --trials 1 is not the
    # configuration the bounds were derived under)
    "finetune_lr_0": (["suites/test_finetune.py", "-k", "test_finetune_trains and plain", "--trials", "1"],
                      {"finetune_lowers_training_perplexity"}, False),
    "attack_gives_up": (["suites/test_adversarial.py", "-k", "typo"], {"typo_lowers_target"}, True),
    # a model without its super weights is a broken model: the health claims catch it before the suite runs
    "super_weight_scaled_down": (["suites/test_super_weights.py", "-k", "zero_super_weights or known"],
                                 {"clean_perplexity", "zero_super_weights_ppl_ratio", "zero_top_super_weight_ppl_ratio",
                                  "zero_super_weights_vs_random"}, True),
    # the main job on a model that loads without an error but is wrong: red through the model-health claims, judged
    # whatever -k selects, and the selected suites skipped (from gross to +9-12% clean perplexity; each through
    # one of the selections that never ran the smoke suite)
    "model_layout_scrambled": (["suites/test_bitflip.py"],
                               {"clean_perplexity", "below_unigram", "below_uniform", "top1_above_chance"}, True),
    "model_rope_base_misread": (["suites/test_robustness.py"], {"clean_perplexity"}, True),
    "model_final_norm_scaled": (["suites/test_compare_sensitivity.py"], {"clean_perplexity"}, True),
    # protection that keeps nothing, where the mask covers every super weight
    "protection_keeps_nothing": (["suites/test_pruning.py", "-k", "protecting_super_weights_the_mask_covers"],
                                 {"protection_keeps_covered_super_weights"}, True),
    # a new user's model on day one: no bound has a number for it, so relations alone must catch the sabotage
    "no_bounds": (["suites/test_bitflip.py", "-k", "uniform-exp_msb-native or exp_msb_damages"],
                  {"fp32_uniform_exp_msb_has_effect", "exp_msb_damages_more_than_mantissa_lsb"}, False),
    # detectors that never fire / always fire: the detection claims over one flip per cell (exp-MSB collapses at
    # trial 0, so every claim applies; not strict: --trials 1 is not the configuration the bounds were derived
    # under) and the clean model's checks
    "detector_never_fires": (["suites/test_detection.py", "-k", "test_detection_claim", "--trials", "1"],
                             {"checksum_detects_every_flip", "audit_detects_every_collapse",
                              "range_covers_exp_msb_share"}, False),
    "detector_always_fires": (["suites/test_detection.py", "-k", "test_detection_clean_model"],
                              {"audit_silent_on_clean_model", "checksum_silent_on_clean_model",
                               "range_silent_on_clean_model"}, True),
}


def run_sabotaged(name: str, out: Path) -> tuple[int, list[dict], str]:
    """Run the case's cells under sabotage ``name`` on one thread; (exit code, claim rows, output)."""
    selection, _, strict = CASES[name]
    cmd = [sys.executable, "-m", "pytest", *selection, "--model", "smollm2-135m", "--preset", "quick",
           "--results-dir", str(out), "-p", "tests.sabotage", "-q", "-p", "no:cacheprovider", "--no-header"]
    cmd += ["--strict-claims"] if strict else []
    env = {**os.environ, "ESA_SABOTAGE": name, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    rows = []
    if (out / "results.sqlite").exists():
        with ResultStore(out, create=False) as store:
            df = store.records()
        rows = df[df["outcome"].notna()].to_dict("records")
    return proc.returncode, rows, proc.stdout[-4000:] + proc.stderr[-2000:]


@pytest.fixture(scope="module")
def sabotaged(tmp_path_factory) -> dict[str, Future]:
    """Every case started at once, on one thread each: two at a time on the machine's two cores, one at a time
    inside an xdist worker (the other worker has the rest of the tests; a third busy process slows all three)."""
    alone = not os.environ.get("PYTEST_XDIST_WORKER")
    pool = ThreadPoolExecutor(max_workers=max(1, min(2 if alone else 1, os.cpu_count() or 1)))
    out = tmp_path_factory.mktemp("power")
    futures = {name: pool.submit(run_sabotaged, name, out / name) for name in CASES}
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", list(CASES))
def test_sabotage_turns_the_run_red(name, sabotaged, tmp_path):
    expected = CASES[name][1]
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
    if name == "no_bounds":  # relations alone: no bound had a number, so every failure is a relation
        kinds = {json.loads(r["extra"])["kind"] for r in rows if r["outcome"] == "failed"}
        assert kinds == {"relation"}, kinds
