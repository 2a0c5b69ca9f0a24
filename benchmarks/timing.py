"""Timing pieces the benchmarks share: fastest-of-N wall time, the plain forward and forward+backward
baselines, a timed pytest subprocess, one pytest-benchmark measurement stored as a ratio to a baseline, and a
fault trial's host work (:class:`HostWork`: everything a campaign trial does but the forward)."""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.campaign.engine import touched_params
from harness.campaign.prefix import batches, fault_blocks
from harness.campaign.trial import Clean, Trial
from harness.faults import FaultSite, flip_bits
from harness.metrics.perplexity import default_batch_size
from harness.metrics.reduce import combine, reduce_batch
from harness.scoring.grads import grad_on
from harness.stats import trial_seed

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


@dataclass(frozen=True)
class HostTimes:
    """Seconds per trial of a fault trial's host work, by part (fastest round of :meth:`HostWork.measure`)."""

    draw: float  # draw the sites (the trial's seeded generator made)
    inject: float  # build the flip, apply it and restore it bit-exactly (the prefix span included)
    reduce: float  # reduce the given logits of every window batch, combine, judge the trial
    trials: int  # trials per round

    @property
    def total(self) -> float:
        return self.draw + self.inject + self.reduce


class HostWork:
    """What a campaign trial does besides the model's forward, timed alone: draw the trial's sites from its
    seeded generator, build the bit flip, find its first faulted block, apply it, reduce the given logits of
    every window batch against the clean reference (``reduce_batch``, ``combine``, ``Trial.against``: what
    ``Campaign.trial`` runs), restore. The logits are one clean forward's, made once here.

    Args:
        model: the model flipped in place (restored after each trial).
        windows: (count, length) eval windows, the ones ``clean`` was measured on.
        clean: the clean baseline of ``model`` on ``windows`` (``keep_blocks=True``: the prefix span is timed).
        draw: ``draw(generator) -> sites`` of one trial (``harness.campaign.bitflip.sample_sites``, ...).
        seed: trial t's generator is seeded with ``trial_seed(seed, t)``.
    """

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, clean: Clean,
                 draw: Callable[[torch.Generator], Sequence[FaultSite]], seed: int = 0) -> None:
        self.model, self.clean, self.draw, self.seed = model, clean, draw, seed
        self.batch_size = clean.batch_size or default_batch_size(windows)
        self.n_tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.device = next(model.parameters()).device
        with torch.no_grad():
            self.logits = [(first, batch, model(input_ids=batch.to(self.device), use_cache=False).logits)
                           for first, batch in batches(windows, self.batch_size)]

    def sites(self, t: int) -> Sequence[FaultSite]:
        """Trial ``t``'s sites."""
        return self.draw(torch.Generator().manual_seed(trial_seed(self.seed, t)))

    def measure(self, trials: int, rounds: int = ROUNDS) -> HostTimes:
        """Time ``trials`` trials per round, part by part, and keep each part's fastest round.

        The reduction is timed on its own (the flip applied and restored around it is the inject part).
        """
        best = {"draw": math.inf, "inject": math.inf, "reduce": math.inf}
        reference = self.clean.reference
        for _ in range(rounds):
            start = time.perf_counter()
            site_sets = [self.sites(t) for t in range(trials)]
            draw = time.perf_counter() - start
            start = time.perf_counter()
            for sites in site_sets:
                flip = flip_bits(self.model, sites)
                if self.clean.prefix is not None:
                    fault_blocks(self.clean.prefix.blocks_path, touched_params(flip))
                with flip:
                    pass
            sync(self.device)
            inject = time.perf_counter() - start
            start = time.perf_counter()
            for _ in site_sets:
                stats = [reduce_batch(logits, batch, reference, first) for first, batch, logits in self.logits]
                Trial.against(combine(stats, self.n_tokens, reference), self.clean.result)
            sync(self.device)
            reduce = time.perf_counter() - start
            for part, seconds in (("draw", draw), ("inject", inject), ("reduce", reduce)):
                best[part] = min(best[part], seconds / trials)
        return HostTimes(best["draw"], best["inject"], best["reduce"], trials)
