"""What a fault trial costs: time against a plain forward pass and against deep-copying the model per
trial, and the peak memory of a campaign against the clean evaluation's.

    pytest benchmarks/test_fault_bench.py --model smollm2-135m            # measure
    pytest benchmarks/ --model smollm2-135m --benchmark-disable           # CI: run each once

A *fault trial* is what ``suites/test_bitflip.py`` runs per trial (``harness.faults.campaign.run_trial``):
flip ``K`` stored bits (``flip_bits``), evaluate on the eval windows against the clean reference
(perplexity, KL, top-1), restore. The *deep-copy trial* is the approach this harness replaces
(pytorchfi, the research code): ``copy.deepcopy`` the model, flip the copy, evaluate, drop it. It
exists here only as the baseline being measured; nothing else in the project copies a model.

pytest-benchmark times each approach in group ``fault-trial`` (its table shows them side by side);
``test_fault_trial_overhead`` also times them interleaved round by round — robust to a machine whose
load drifts — and puts the median ratios in ``extra_info``; ``test_inject_restore`` times the fault
alone (build, apply and restore the ``K`` flips, no evaluation). ``test_campaign_peak_memory`` puts the
peak memory of the clean evaluation, of a campaign and of a deep-copy campaign in ``extra_info``
(CPU: peak RSS, reset through ``/proc/self/clear_refs`` or sampled; CUDA: peak allocated). No timing
or memory is asserted.
"""

from __future__ import annotations

import copy
import gc
import re
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.faults import flip_bits, uniform_sites
from harness.faults.campaign import clean_baseline, run_trial
from harness.metrics import evaluate
from harness.metrics.perplexity import default_batch_size
from harness.models.archmap import select

pytestmark = pytest.mark.benchmark_only

K = 8  # flips per trial
BIT_CLASS = "mantissa_lsb"  # keeps the evaluation on the finite path, like the clean one
ROUNDS = 5
CAMPAIGN_TRIALS = 5
GROUP = "fault-trial"


@pytest.fixture
def bench(lm, eval_windows, esa, rng):
    """(model, windows, clean baseline, K sites) shared by the benchmarks of one model."""
    model = lm.model
    clean = esa.cached((lm.name, "bench", "clean", tuple(eval_windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, eval_windows))
    sites = uniform_sites(model, select(model, components="linear"), K, generator=rng, bits=BIT_CLASS)
    return model, eval_windows, clean, sites


def _plain_forward(model, windows):
    """The model's forward over the same windows in the same batches as ``evaluate``, nothing else."""
    size = default_batch_size(windows)
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, windows.shape[0], size):
            model(input_ids=windows[start:start + size].to(device), use_cache=False)
    _sync(device)


def _fault_trial(model, windows, clean, sites):
    run_trial(model, windows, clean, flip_bits(model, sites))
    _sync(next(model.parameters()).device)


def _inject_restore(model, sites):
    with flip_bits(model, sites):
        _sync(next(model.parameters()).device)


def _deepcopy_trial(model, windows, clean, sites):
    twin = copy.deepcopy(model)  # the baseline under measurement, see the module docstring
    with flip_bits(twin, sites):
        evaluate(twin, windows, clean.reference)
    _sync(next(twin.parameters()).device)
    del twin


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rounds(benchmark) -> int:
    return 1 if benchmark.disabled else ROUNDS


def test_plain_forward(benchmark, bench):
    model, windows, _, _ = bench
    benchmark.group = GROUP
    benchmark.extra_info.update(tokens=windows.numel(), windows=list(windows.shape))
    benchmark.pedantic(_plain_forward, args=(model, windows), rounds=_rounds(benchmark), warmup_rounds=1)


def test_clean_evaluate(benchmark, bench):
    model, windows, clean, _ = bench
    benchmark.group = GROUP
    benchmark.extra_info.update(tokens=windows.numel())
    benchmark.pedantic(evaluate, args=(model, windows, clean.reference), rounds=_rounds(benchmark), warmup_rounds=1)


def test_fault_trial(benchmark, bench):
    model, windows, clean, sites = bench
    benchmark.group = GROUP
    benchmark.extra_info.update(tokens=windows.numel(), flips=K, bit_class=BIT_CLASS)
    benchmark.pedantic(_fault_trial, args=(model, windows, clean, sites), rounds=_rounds(benchmark),
                       warmup_rounds=1)


def test_inject_restore(benchmark, bench):
    """The fault trial minus the evaluation: build, apply and restore ``K`` flips."""
    model, _, _, sites = bench
    benchmark.group = GROUP + "-inject"
    benchmark.extra_info.update(flips=K, bit_class=BIT_CLASS)
    benchmark.pedantic(_inject_restore, args=(model, sites), rounds=1 if benchmark.disabled else 50,
                       warmup_rounds=1)


def test_deepcopy_trial(benchmark, bench):
    model, windows, clean, sites = bench
    benchmark.group = GROUP
    benchmark.extra_info.update(tokens=windows.numel(), flips=K, bit_class=BIT_CLASS)
    benchmark.pedantic(_deepcopy_trial, args=(model, windows, clean, sites), rounds=_rounds(benchmark),
                       warmup_rounds=1)


def test_fault_trial_overhead(benchmark, bench):
    """Interleaved rounds of plain forward / fault trial / deep-copy trial; median ratios in extra_info."""
    model, windows, clean, sites = bench
    benchmark.group = GROUP + "-interleaved"
    fns = {"plain_forward": lambda: _plain_forward(model, windows),
           "clean_evaluate": lambda: evaluate(model, windows, clean.reference),
           "fault_trial": lambda: _fault_trial(model, windows, clean, sites),
           "inject_restore": lambda: _inject_restore(model, sites),
           "deepcopy_trial": lambda: _deepcopy_trial(model, windows, clean, sites)}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()

    def one_round():
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=_rounds(benchmark), warmup_rounds=0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    benchmark.extra_info.update(
        {f"median_s_{name}": value for name, value in med.items()},
        rounds=len(times["fault_trial"]), tokens=windows.numel(), flips=K,
        trial_over_forward=med["fault_trial"] / med["plain_forward"],
        trial_over_clean_evaluate=med["fault_trial"] / med["clean_evaluate"],
        inject_restore_over_forward=med["inject_restore"] / med["plain_forward"],
        deepcopy_over_trial=med["deepcopy_trial"] / med["fault_trial"],
    )


class PeakMemory:
    """Peak memory of the enclosed block, in bytes: CUDA peak allocated on a CUDA device; on the CPU the
    process's peak RSS (VmHWM, reset through ``/proc/self/clear_refs``), or RSS sampled every 2 ms
    where that reset is not allowed."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0
        self.method = ""

    def __enter__(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.method = "cuda.max_memory_allocated"
        elif _reset_hwm():
            self.method = "VmHWM"
        else:
            self.method = "sampled RSS"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while not self._stop.is_set():
            self.peak = max(self.peak, proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.method == "cuda.max_memory_allocated":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "VmHWM":
            self.peak = _status_kib("VmHWM") * 1024
        else:
            self._stop.set()
            self._thread.join()


def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text())[1])


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def test_campaign_peak_memory(benchmark, bench):
    """Peak memory: clean evaluation, a campaign of fault trials, a campaign of deep-copy trials."""
    model, windows, clean, sites = bench
    device = next(model.parameters()).device
    benchmark.group = GROUP + "-memory"
    peaks = {}

    def measure():
        with PeakMemory(device) as clean_peak:
            evaluate(model, windows, clean.reference)
        with PeakMemory(device) as campaign_peak:
            for _ in range(CAMPAIGN_TRIALS):
                _fault_trial(model, windows, clean, sites)
        with PeakMemory(device) as deepcopy_peak:  # last: what it frees may stay in the process
            for _ in range(CAMPAIGN_TRIALS):
                _deepcopy_trial(model, windows, clean, sites)
        peaks.update(clean=clean_peak.peak, campaign=campaign_peak.peak, deepcopy=deepcopy_peak.peak,
                     method=clean_peak.method)

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    benchmark.extra_info.update(
        method=peaks["method"], trials=CAMPAIGN_TRIALS, flips=K, weights_bytes=weights,
        peak_clean_bytes=peaks["clean"], peak_campaign_bytes=peaks["campaign"], peak_deepcopy_bytes=peaks["deepcopy"],
        campaign_over_clean=peaks["campaign"] / peaks["clean"],
        deepcopy_over_clean=peaks["deepcopy"] / peaks["clean"],
    )
