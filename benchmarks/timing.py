"""Timing pieces the benchmarks share: fastest-of-N wall time, the plain forward+backward baseline, and
one pytest-benchmark measurement stored as a ratio to a baseline."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import torch

from harness.scoring.grads import grad_on

log = logging.getLogger(__name__)
ROUNDS = 3


def rounds_for(benchmark, rounds: int = ROUNDS) -> int:
    """``rounds``, or 1 when pytest-benchmark is disabled (CI runs each benchmark once)."""
    return 1 if getattr(benchmark, "disabled", False) else rounds


def fastest(fn: Callable[[], object], rounds: int = ROUNDS) -> float:
    """The shortest wall time of ``rounds`` calls of ``fn``, in seconds."""
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_forward_backward(model: torch.nn.Module, windows: torch.Tensor, params: Sequence[torch.nn.Parameter],
                           batch_size: int | None = None) -> None:
    """transformers' ``labels=`` loss and its backward over ``windows`` (in batches of ``batch_size``
    windows, default all), with gradients on ``params`` only."""
    size = batch_size or windows.shape[0]
    with grad_on(model, params):
        for start in range(0, windows.shape[0], size):
            batch = windows[start:start + size]
            model(input_ids=batch, labels=batch, use_cache=False).loss.backward()


def measure_ratio(benchmark, fn: Callable[[], object], baseline: float, key: str, *, group: str, name: str,
                  rounds: int = ROUNDS) -> float:
    """Time ``fn`` with pytest-benchmark (once when disabled); store its fastest time and its ratio to
    ``baseline`` seconds in ``extra_info`` (``key`` names the ratio) and return the ratio."""
    benchmark.group, benchmark.name = group, name
    if getattr(benchmark, "disabled", False):  # runs once; no stats
        seconds = fastest(lambda: benchmark.pedantic(fn, rounds=1, iterations=1), 1)
    else:
        benchmark.pedantic(fn, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)
        seconds = benchmark.stats.stats.min
    ratio = seconds / baseline
    benchmark.extra_info.update({key: ratio, "seconds": seconds, "baseline_seconds": baseline})
    log.warning("%s %s: %.3fs, %.3f x the baseline (%.3fs)", group, name, seconds, ratio, baseline)
    return ratio
