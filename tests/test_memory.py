"""Memory at real matrix sizes: the shape-alike family (llama-2-7b's matrices, 2 blocks, 2.67 GB in fp32) stays
within its stated multiples of the model's weight bytes (issue 36).

One probed pytest subprocess (``benchmarks/test_memory.py``'s :class:`MemoryProbe`, one thread) runs the clean
perplexity and the gradient scorer's cell on ``shape-llama-7b`` with 128 evaluation tokens: peak RSS over the
resident size after loading, divided by the weight bytes. Memory is deterministic enough to assert; time is not.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.test_memory import run_probed
from harness import plan as planmod

MODEL = "shape-llama-7b"
TOKENS = 128
# The stated multiple of this selection: the gradient scorer holds one gradient per weight (1x the model) plus
# a forward's activations and logits, and the guard's copy of the largest matrix; measured 1.096x (issue 36).
STATED = 1.25
SELECTION = ["suites/test_smoke.py", "suites/test_compare_sensitivity.py", "-k",
             "test_clean_perplexity or (test_method_cost and gradient)"]


def test_shape_alike_suites_stay_within_their_stated_multiple(tmp_path: Path):
    args = [*SELECTION, "--model", MODEL, "--eval-tokens", str(TOKENS), "--window", str(TOKENS),
            "--calib-tokens", str(2 * TOKENS), "--results-dir", str(tmp_path / "results"), "-q",
            "-p", "no:cacheprovider"]
    measured, res = run_probed(args, tmp_path / "probe.json", timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "2 passed" in res.stdout, res.stdout[-2000:]
    assert abs(measured["weight_bytes"] - 4 * planmod.model_shape(MODEL).params) < 2**20  # + rotary buffers
    # the gradients are there (the probe measures what the suite holds) and nothing beyond the stated multiple
    assert 0.9 < measured["x_model_bytes"] <= STATED, measured
    assert measured["grad_passes"] > 0 and measured["forward_passes"] >= 1, measured
