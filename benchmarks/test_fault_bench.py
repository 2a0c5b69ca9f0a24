"""What a fault trial costs: time against a plain forward pass and against deep-copying the model per
trial, and the peak memory of a campaign against the clean evaluation's.

    pytest benchmarks/test_fault_bench.py --model smollm2-135m            # measure
    pytest benchmarks/ --model smollm2-135m --benchmark-disable           # CI: run each once

A *fault trial* is the per-trial path (``harness.campaign.run_trial``; the suites run ``Campaign.trial``):
flip ``K`` stored bits (``flip_bits``), evaluate on the eval windows against the clean reference
(perplexity, KL, top-1), restore. The *deep-copy trial* is the approach this harness replaces
(pytorchfi, the research code): ``copy.deepcopy`` the model, flip the copy, evaluate, drop it. It
exists here only as the baseline being measured; nothing else in the project copies a model.

The campaign engine (``harness.campaign.Campaign``: prefix reuse, exact early stops, chunked reduction) is
measured against the per-trial path in ``test_sign_trial_engine`` (a uniform one-flip *sign* trial over the
same tokens, with a breakdown: blocks skipped, head, reduction, the rest) and ``test_bitflip_campaign_engine``
(the whole quick bitflip campaign, cell by cell interleaved, both paths' records compared: they must be
identical); ``test_trial_host_work`` times what a uniform one-flip trial does besides the forward (draw the site,
flip, restore, reduce given logits: ``benchmarks.timing.HostWork``), per trial and as a ratio to a plain forward
over the same windows; ``test_campaign_peak_memory`` also measures an engine campaign, its kept block outputs
included.

pytest-benchmark times each approach in group ``fault-trial`` (its table shows them side by side);
``test_fault_trial_overhead`` also times them interleaved round by round — robust to a machine whose
load drifts — and puts the median ratios in ``extra_info``; ``test_inject_restore`` times the fault
alone (build, apply and restore the ``K`` flips, no evaluation); ``test_guard_fingerprint`` times the
parameter guard's whole-model fingerprint against one plain forward. ``test_campaign_peak_memory`` puts the
peak memory of the clean evaluation, of a campaign and of a deep-copy campaign in ``extra_info``
(CPU: peak RSS, reset through ``/proc/self/clear_refs`` or sampled; CUDA: peak allocated). No timing
or memory is asserted; the engine's records are (they must equal the per-trial path's).
"""

from __future__ import annotations

import copy
import gc
import logging
import math
import re
import statistics
import threading
import time
from pathlib import Path

import pytest
import torch

from harness.campaign import Campaign, bitflip_cells, clean_baseline, run_trial, trial_specs
from harness.campaign.bitflip import sample_sites, site_pool
from harness.campaign.prefix import batches
from harness.faults import flip_bits, uniform_sites
from harness.fingerprint import fingerprint
from harness.metrics import evaluate
from harness.metrics.perplexity import default_batch_size
from harness.metrics.reduce import reduce_batch
from harness.models.archmap import arch_map, select
from harness.recipes import super_weight_sites
from harness.stats import trial_seed

from .timing import HostWork, fastest, measure_ratio, plain_forward, rounds_for, sync

pytestmark = pytest.mark.benchmark_only

K = 8  # flips per trial
BIT_CLASS = "mantissa_lsb"  # keeps the evaluation on the finite path, like the clean one
ROUNDS = 5
CAMPAIGN_TRIALS = 5
GROUP = "fault-trial"
SIGN_TRIALS = 8  # uniform one-flip sign trials per round of test_sign_trial_engine
HOST_TRIALS = 50  # trials per round of test_trial_host_work
QUICK = bitflip_cells.PRESETS["quick"]  # suites/test_bitflip.py's quick preset: its grid, windows and trials

log = logging.getLogger(__name__)


@pytest.fixture
def bench(lm, eval_windows, esa, rng):
    """(model, windows, clean baseline, K sites) shared by the benchmarks of one model."""
    model = lm.model
    clean = esa.cached((lm.name, "bench", "clean", tuple(eval_windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, eval_windows))
    sites = uniform_sites(model, select(model, components="linear"), K, generator=rng, bits=BIT_CLASS)
    return model, eval_windows, clean, sites


def _fault_trial(model, windows, clean, sites):
    run_trial(model, windows, clean, flip_bits(model, sites))
    sync(next(model.parameters()).device)


def _inject_restore(model, sites):
    with flip_bits(model, sites):
        sync(next(model.parameters()).device)


def _deepcopy_trial(model, windows, clean, sites):
    twin = copy.deepcopy(model)  # the baseline under measurement, see the module docstring
    with flip_bits(twin, sites):
        evaluate(twin, windows, clean.reference)
    sync(next(twin.parameters()).device)
    del twin


def _rounds(benchmark) -> int:
    return 1 if benchmark.disabled else ROUNDS


def test_plain_forward(benchmark, bench):
    model, windows, _, _ = bench
    benchmark.group = GROUP
    benchmark.extra_info.update(tokens=windows.numel(), windows=list(windows.shape))
    benchmark.pedantic(plain_forward, args=(model, windows), rounds=_rounds(benchmark), warmup_rounds=1)


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


def test_guard_fingerprint(benchmark, bench):
    """The parameter guard's fingerprint of the whole model (taken before and after every test that
    uses the session model), as a ratio to one plain forward over the eval windows (``extra_info``)."""
    model, windows, _, _ = bench
    forward = fastest(lambda: plain_forward(model, windows), 1 if benchmark.disabled else 3)
    benchmark.extra_info.update(weights=sum(p.numel() for p in model.parameters()), tokens=windows.numel())
    measure_ratio(benchmark, lambda: fingerprint(model), forward, "x_plain_forward", group=GROUP + "-guard",
                  name="fingerprint", rounds=7)


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
    fns = {"plain_forward": lambda: plain_forward(model, windows),
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
        with PeakMemory(device) as engine_peak:  # the kept block outputs are made inside: they count
            kept = clean_baseline(model, windows, keep_blocks=True)
            campaign = Campaign(model, windows, kept, trials_per_forward=1)
            for _ in range(CAMPAIGN_TRIALS):
                campaign.trial(flip_bits(model, sites))
            del campaign, kept
        with PeakMemory(device) as deepcopy_peak:  # last: what it frees may stay in the process
            for _ in range(CAMPAIGN_TRIALS):
                _deepcopy_trial(model, windows, clean, sites)
        peaks.update(clean=clean_peak.peak, campaign=campaign_peak.peak, deepcopy=deepcopy_peak.peak,
                     engine=engine_peak.peak,
                     method=clean_peak.method)

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    benchmark.extra_info.update(
        method=peaks["method"], trials=CAMPAIGN_TRIALS, flips=K, weights_bytes=weights,
        peak_clean_bytes=peaks["clean"], peak_campaign_bytes=peaks["campaign"], peak_deepcopy_bytes=peaks["deepcopy"],
        campaign_over_clean=peaks["campaign"] / peaks["clean"],
        peak_engine_bytes=peaks["engine"], engine_over_clean=peaks["engine"] / peaks["clean"],
        deepcopy_over_clean=peaks["deepcopy"] / peaks["clean"],
    )
    log.warning("campaign peak memory: %s",
                {k: v for k, v in benchmark.extra_info.items() if "over" in k or k == "method"})


# -- the campaign engine ---------------------------------------------------------------------------------


def _sign_sites(model, seed: int, n: int) -> list:
    refs = select(model, components="linear")
    return [uniform_sites(model, refs, 1, generator=torch.Generator().manual_seed(trial_seed(seed, t)), bits="sign")
            for t in range(n)]


def _same_result(a, b) -> bool:
    return (a.ratio, a.result.kl, a.result.top1, a.collapsed) == (b.ratio, b.result.kl, b.result.top1, b.collapsed)


def test_sign_trial_engine(benchmark, lm, eval_windows, esa):
    """Uniform one-flip sign trials: engine vs per-trial path vs plain forward (interleaved medians), with
    the engine's breakdown; every engine trial must equal its per-trial twin."""
    model, windows = lm.model, eval_windows
    benchmark.group = GROUP + "-engine"
    clean = esa.cached((lm.name, "bench", "clean-kept", tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows, keep_blocks=True))
    campaign = Campaign(model, windows, clean, trials_per_forward=1)
    site_sets = _sign_sites(model, esa.options.seed, SIGN_TRIALS)
    amap = arch_map(model)
    head = torch.nn.Sequential(model.get_submodule(amap.final_norm), model.get_output_embeddings())
    size = clean.batch_size or default_batch_size(windows)
    with torch.no_grad():
        logits = [model(input_ids=b, use_cache=False).logits for _, b in batches(windows, size)]

    def head_only():
        with torch.no_grad():
            for kept in clean.prefix.outputs:
                head(kept[-1])

    def reduction():
        for (start, batch), lg in zip(batches(windows, size), logits, strict=True):
            reduce_batch(lg, batch, clean.reference, start)

    trials = {"engine": [], "per_trial": []}
    fns = {"plain_forward": lambda: plain_forward(model, windows),
           "clean_evaluate": lambda: evaluate(model, windows, clean.reference),
           "per_trial": lambda: trials["per_trial"].append(
               [run_trial(model, windows, clean, flip_bits(model, s)) for s in site_sets]),
           "engine": lambda: trials["engine"].append([campaign.trial(flip_bits(model, s)) for s in site_sets]),
           "head": head_only, "reduction": reduction}
    per_call = {"per_trial": SIGN_TRIALS, "engine": SIGN_TRIALS}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():  # warm-up
        fn()

    def one_round():
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) / per_call.get(name, 1))

    benchmark.pedantic(one_round, rounds=_rounds(benchmark), warmup_rounds=0)
    engine, full = trials["engine"][-1], trials["per_trial"][-1]
    assert all(_same_result(a, b) for a, b in zip(engine, full, strict=True)), "engine and per-trial results differ"
    med = {name: statistics.median(ts) for name, ts in times.items()}
    n_blocks = clean.prefix.n_blocks
    skipped = statistics.mean(t.start_block for t in engine) / n_blocks
    info = {f"median_s_{name}": value for name, value in med.items()}
    info.update(
        rounds=len(times["engine"]), tokens=windows.numel(), trials_per_round=SIGN_TRIALS,
        engine_over_forward=med["engine"] / med["plain_forward"],
        per_trial_over_forward=med["per_trial"] / med["plain_forward"],
        engine_over_per_trial=med["engine"] / med["per_trial"],
        blocks_skipped_share=skipped, masked=sum(t.masked for t in engine), collapsed=sum(t.collapsed for t in engine),
        head_over_forward=med["head"] / med["plain_forward"],
        reduction_over_forward=med["reduction"] / med["plain_forward"],
        evaluate_reduction_over_forward=(med["clean_evaluate"] - med["plain_forward"]) / med["plain_forward"],
        suffix_over_forward=(med["engine"] - med["head"] - med["reduction"]) / med["plain_forward"],
        kept_bytes=clean.prefix.nbytes,
    )
    benchmark.extra_info.update(info)
    log.warning("sign trial engine: %s", {k: round(v, 4) if isinstance(v, float) else v for k, v in info.items()})


def _campaign_cells(lm, esa) -> list[tuple[str, str, int]]:
    return [(c.target, c.bit_class, esa.trials(lm.name, c.trials_in(QUICK))) for c in bitflip_cells.grid("quick")]


def test_bitflip_campaign_engine(benchmark, lm, eval_windows, esa):
    """The whole quick bitflip campaign (every target x campaign bit class, 1 flip, first 2 windows), per-trial
    path vs engine, cell by cell interleaved; both clean baselines included; records must be identical.
    The ``list`` target's sites are the session's super weights (the detector's candidate on a random model)."""
    model = lm.model
    windows = eval_windows[:QUICK.windows]
    benchmark.group = GROUP + "-campaign"
    cells = _campaign_cells(lm, esa)
    seconds = {"per_trial": 0.0, "engine": 0.0}
    records: dict[str, list] = {"per_trial": [], "engine": []}
    listed, _ = super_weight_sites(esa.detection(lm))
    pools = {t: site_pool(model, t, listed) for t in dict.fromkeys(c[0] for c in cells)}

    def sample(target, bit_class, g):
        return sample_sites(model, target, bit_class, 1, generator=g, pool=pools[target][0])

    def measure():
        start = time.perf_counter()
        clean_old = clean_baseline(model, windows)
        seconds["per_trial"] += time.perf_counter() - start
        start = time.perf_counter()
        clean_new = clean_baseline(model, windows, keep_blocks=True)
        campaign = Campaign(model, windows, clean_new)
        seconds["engine"] += time.perf_counter() - start
        for target, bit_class, n in cells:
            start = time.perf_counter()
            for spec in trial_specs(esa.options.seed, n):
                sites = sample(target, bit_class, torch.Generator().manual_seed(spec.seed))
                t = run_trial(model, windows, clean_old, flip_bits(model, sites))
                records["per_trial"].append((target, bit_class, spec.trial, sites, t.ratio, t.result.kl, t.collapsed))
            seconds["per_trial"] += time.perf_counter() - start
            start = time.perf_counter()
            for rec in campaign.run(trial_specs(esa.options.seed, n),
                                    lambda spec, g, t=target, b=bit_class: flip_bits(model, sample(t, b, g)),
                                    cell=f"{target}-{bit_class}"):
                t = rec.trial
                records["engine"].append((target, bit_class, rec.spec.trial, list(rec.perturbation.sites), t.ratio,
                                          t.result.kl, t.collapsed))
            seconds["engine"] += time.perf_counter() - start

    benchmark.pedantic(measure, rounds=1, warmup_rounds=0)
    n_trials = len(records["engine"])
    identical = records["engine"] == records["per_trial"]
    info = dict(cells=len(cells), trials=n_trials, identical_records=identical,
                seconds_per_trial_path=seconds["per_trial"], seconds_engine=seconds["engine"],
                trials_per_s_per_trial_path=n_trials / seconds["per_trial"],
                trials_per_s_engine=n_trials / seconds["engine"],
                engine_over_per_trial=seconds["engine"] / seconds["per_trial"])
    benchmark.extra_info.update(info)
    log.warning("bitflip campaign engine: %s", info)
    assert identical, "the engine's campaign records differ from the per-trial path's"


def test_trial_host_work(benchmark, lm, eval_windows, esa):
    """A uniform one-flip sign trial's host work (``HostWork``: draw the site, flip, restore, reduce the given
    logits of the quick preset's windows: all but the forward), per trial by part and as a ratio to a plain
    forward over the same windows, in ``extra_info``."""
    model = lm.model
    windows = eval_windows[:QUICK.windows]
    benchmark.group = GROUP + "-host"
    clean = esa.cached((lm.name, "bench", "clean-kept", tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows, keep_blocks=True))
    work = HostWork(model, windows, clean,
                    lambda g: sample_sites(model, "uniform", "sign", 1, generator=g, pool=None), esa.options.seed)
    work.measure(2, rounds=1)  # warm-up: the sampler's sizes, first calls
    forward = fastest(lambda: plain_forward(model, windows), rounds_for(benchmark))
    times = []
    benchmark.pedantic(lambda: times.append(work.measure(HOST_TRIALS, rounds_for(benchmark))), rounds=1)
    t = times[-1]
    info = dict(trials_per_round=t.trials, host_s_per_trial=t.total, draw_s_per_trial=t.draw,
                inject_restore_s_per_trial=t.inject, reduce_s_per_trial=t.reduce, plain_forward_s=forward,
                host_over_forward=t.total / forward, draw_over_forward=t.draw / forward, tokens=windows.numel())
    benchmark.extra_info.update(info)
    log.warning("trial host work: %s", {k: f"{v:.3g}" if isinstance(v, float) else v for k, v in info.items()})


@pytest.mark.parametrize("per_forward", [4, 8])
def test_batched_trials(benchmark, lm, eval_windows, esa, per_forward):
    """Trials/s of ``per_forward`` one-flip sign trials in one forward vs the engine one trial at a time (same
    sites, first 2 windows), and the largest relative ratio difference between the two."""
    model = lm.model
    windows = eval_windows[:QUICK.windows]
    benchmark.group = GROUP + "-batched"
    clean = esa.cached((lm.name, "bench", "clean-kept", tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows, keep_blocks=True))
    site_sets = _sign_sites(model, esa.options.seed, per_forward)
    single = Campaign(model, windows, clean, trials_per_forward=1)
    batched = Campaign(model, windows, clean, trials_per_forward=per_forward)
    times: dict[str, list[float]] = {"single": [], "batched": []}
    results = {}

    def one_round():
        for name, campaign in (("single", single), ("batched", batched)):
            start = time.perf_counter()
            results[name] = campaign.trials([flip_bits(model, s) for s in site_sets])
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=_rounds(benchmark), warmup_rounds=1 if not benchmark.disabled else 0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    diff = max((abs(a.ratio - b.ratio) / b.ratio for a, b in zip(results["batched"], results["single"], strict=True)
                if math.isfinite(b.ratio)), default=0.0)
    info = dict(per_forward=per_forward, trials_per_s_single=per_forward / med["single"],
                trials_per_s_batched=per_forward / med["batched"], batched_speedup=med["single"] / med["batched"],
                max_rel_ratio_diff=diff, device=str(next(model.parameters()).device))
    benchmark.extra_info.update(info)
    log.warning("batched trials: %s", info)
