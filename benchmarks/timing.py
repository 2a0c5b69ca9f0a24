"""Timing pieces the benchmarks share: fastest-of-N wall time, the plain forward and forward+backward
baselines, a timed pytest subprocess, and one pytest-benchmark measurement stored as a ratio to a baseline."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from harness.metrics.perplexity import default_batch_size
from harness.scoring.grads import grad_on

log = logging.getLogger(__name__)
ROUNDS = 3
ROOT = Path(__file__).resolve().parents[1]


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


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall time includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def plain_forward(model: torch.nn.Module, windows: torch.Tensor) -> None:
    """The model's forward over ``windows`` in the batches ``evaluate`` uses, nothing else."""
    size = default_batch_size(windows)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, windows.shape[0], size):
            model(input_ids=windows[start:start + size].to(device), use_cache=False)
    sync(device)


def run_pytest(args: Sequence[str], *, timeout: float | None = None,
               env: dict[str, str] | None = None) -> tuple[float, subprocess.CompletedProcess]:
    """``python -m pytest *args`` in a subprocess from the repository root: its wall seconds (start-up, imports
    and model loading included) and the finished process (output captured)."""
    start = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "pytest", *args], cwd=ROOT, capture_output=True, text=True,
                         timeout=timeout, check=False, env={**os.environ, **(env or {})})
    return time.perf_counter() - start, res


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
