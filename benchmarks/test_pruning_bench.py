"""Wanda pruning of a model at 50% (per output row) against one forward pass over the calibration set.

The pruning round is what a suite cell pays: Wanda scores (one forward pass over the calibration
windows with input-norm hooks), masks for every linear matrix, the in-place edit with the originals
saved, and the bit-exact restore. No model copy is made. ``extra_info`` holds the forward-pass
baseline, the ratio (pruning round / forward pass, best of the rounds each) and the phases.
"""

from __future__ import annotations

import time

import pytest
import torch

from .timing import fastest

pytestmark = pytest.mark.benchmark_only


def test_wanda_prune_vs_calibration_forward(benchmark, lm, calib_windows):
    from harness.pruning import prune
    from harness.scoring import score

    batch = max(1, 1024 // calib_windows.shape[1])  # the scorer's batching: about 1024 tokens per call

    @torch.no_grad()
    def forward() -> None:
        for start in range(0, calib_windows.shape[0], batch):
            lm.model(input_ids=calib_windows[start:start + batch].to(lm.device), use_cache=False)

    phases: dict[str, float] = {}

    def prune_round() -> None:
        t0 = time.perf_counter()
        scores = score(lm, "wanda", windows=calib_windows)
        t1 = time.perf_counter()
        pruning = prune(lm, scores, 0.5, granularity="row")
        with pruning:
            t2 = time.perf_counter()
        t3 = time.perf_counter()
        phases.update(score=t1 - t0, mask_and_edit=t2 - t1, restore=t3 - t2)

    forward()  # warm-up
    forward_seconds = fastest(forward)
    benchmark.pedantic(prune_round, rounds=3, iterations=1, warmup_rounds=0)
    info = benchmark.extra_info
    info["forward_seconds"] = forward_seconds
    info["calibration_tokens"] = calib_windows.numel()
    info.update({f"{k}_seconds": v for k, v in phases.items()})
    if benchmark.stats is not None and not getattr(benchmark, "disabled", False):
        info["ratio_to_forward"] = benchmark.stats.stats.min / forward_seconds
