"""A plan before loading: per suite the passes its preset makes, its estimated peak memory and its projected time.

``python -m harness plan --model M --preset P --device D`` reads the model's config only (registry, local
directory or hub ``config.json``; no weights) and prints one row per suite. The numbers:

- **passes**: forwards over the evaluation tokens (``forward``) and, of those, the ones made with autograd on,
  each followed by a backward (``grad``), as ``benchmarks/test_memory.py`` counted them on smollm2-135m
  (:data:`COSTS`). A suite's passes are taken as independent of the model (its grid of cells, trials and windows
  is the preset's), except a grid with a cell per block (ablation), scaled to the model's blocks.
- **memory**: the peak beyond the loaded model is ``x_model`` x the weight bytes + ``x_logits`` x eval tokens x
  vocabulary x 4 bytes (the fp32 clean reference: log-probabilities and probabilities, and one batch's logits and
  log-softmax; 4 arrays), ``x_model`` fitted to the measured peak (:data:`COSTS`); the estimated peak adds the
  weights and, on the CPU, the process's own :data:`CPU_PROCESS_BYTES`. ``x_model`` is measured in fp32 and
  applied to the weight bytes in the session's dtype (gradients and copies follow the model's dtype; float32
  scores of a bf16 model are twice their matrix's bytes, so a bf16 estimate of a scoring suite is low).
- **time**: (forward + 2 x grad) x one forward over the evaluation tokens, timed on the device with a random
  model of the same config (built in memory, never the weights; skipped when the weights do not fit). It counts
  the model's passes only: start-up, loading and the harness's host work per trial (site drawing) come on top.

:func:`check_fits` is the part a session calls before loading: it raises one line naming ``--device-map`` /
``--max-memory`` when the largest selected suite's estimate exceeds the device's free memory.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, replace
from typing import Any

import torch

from harness.errors import HarnessError, OfflineError

log = logging.getLogger(__name__)

GB = 1e9
CPU_PROCESS_BYTES = 1.0e9  # resident after loading, beyond the weights (interpreter, torch, tokenizer): smollm2 1.01 GB
CUDA_RESERVE_BYTES = 1.0e9  # the CUDA context and the allocator's slack, beyond what tensors hold
DEFAULT_EVAL_TOKENS = 1024


@dataclass(frozen=True)
class SuiteCost:
    """What one suite's preset costs, in units that carry over between models.

    Attributes:
        forward: forwards over the evaluation tokens (tokens forwarded / eval tokens), grad ones included.
        grad: of those, forwards made with autograd on (a backward follows each).
        x_model: peak memory beyond the loaded model, in the model's weight bytes (beyond the logits term).
        x_logits: fp32 (eval tokens x vocabulary) arrays held at the peak: the clean reference's log-probabilities
            and probabilities, and one batch's logits and log-softmax.
        source: where the numbers were measured.
        layers: for a suite whose grid has a cell per block (the ablation layer map): the blocks of the model its
            passes were counted on; the plan scales them to the model's blocks. None: passes do not depend on it.
    """

    forward: float
    grad: float
    x_model: float
    x_logits: float = 4.0
    source: str = ""
    layers: int | None = None

    def passes(self, layers: int) -> tuple[float, float]:
        """(forward, grad) passes on a model of ``layers`` blocks."""
        scale = layers / self.layers if self.layers and layers else 1.0
        return self.forward * scale, self.grad * scale

    def extra_bytes(self, weight_bytes: float, eval_tokens: int, vocab: int) -> float:
        """Estimated peak beyond the loaded model, in bytes."""
        return self.x_model * weight_bytes + self.x_logits * eval_tokens * vocab * 4


# Counted and measured with benchmarks/test_memory.py (one suite per process, one thread, seed 0): on smollm2-135m
# at the quick preset with 256 eval tokens in windows of 128 and 512 calibration tokens, where the run finished;
# else tiny-llama's count (one trial per cell: a random model) x the median smollm2/tiny ratio, with the memory
# of issue 36's table (smollm2-135m, quick, 1024 tokens). Full preset: tiny-llama's full count x the suite's
# quick smollm2/tiny ratio (its trials grow from quick to full on top of that: a lower bound for the campaign
# suites), the memory of its quick run. x_model = (peak - resident after loading - 4 x T x V x 4 bytes) / 538 MB.
# How each was made is in its source; docs/MEASUREMENTS.md has the runs.
MEASURED = "smollm2-135m quick, 256 tokens: measured"
QUICK_COSTS: dict[str, SuiteCost] = {
    "ablation": SuiteCost(62.0, 0.0, 0.02, layers=30, source=MEASURED),
    "adversarial": SuiteCost(51.1, 2.8, 0.18, source=MEASURED),
    "attack": SuiteCost(76.0, 8.0, 2.44, source=MEASURED),
    "attribution": SuiteCost(60.5, 20.4, 0.92, source=MEASURED),
    "bitflip": SuiteCost(148.7, 0.0, 0.14, source=MEASURED),
    "compare_sensitivity": SuiteCost(10.0, 7.0, 2.84, source=MEASURED),
    "detection": SuiteCost(15.7, 0.0, 0.03, source=MEASURED),
    "evaluate": SuiteCost(71.9, 0.0, 2.41,
                         source="smollm2-135m quick: measured 288 forwards of 256 tokens; lm-eval's documents are"
                                " a fixed token count, so given here in forwards of 1024 tokens"),
    "finetune": SuiteCost(77.1, 16.0, 5.50, source=MEASURED),
    "pruning": SuiteCost(33.0, 2.0, 1.81, source=MEASURED),
    "robustness": SuiteCost(20.0, 0.0, 1.3, source=MEASURED),
    "selective_pruning": SuiteCost(10.7, 0.0, 0.51, source=MEASURED),
    "smoke": SuiteCost(3.0, 0.0, 0.09, source=MEASURED),
    "super_weights": SuiteCost(10.0, 0.0, 0.1, source=MEASURED),
    "targeted_perturbation": SuiteCost(27.0, 0.0, 0.24, source=MEASURED),
}

# Full preset: tiny-llama's full count x the suite's quick smollm2/tiny ratio, (forward, grad, that ratio); the
# memory (x_model) and the block scaling are the quick run's. evaluate has no preset: the same as quick.
FULL_PASSES = {
    "ablation": (442.9, 0.0, 8.9),
    "adversarial": (4203.7, 60.1, 0.3),
    "attack": (829.4, 49.5, 0.4),
    "attribution": (63.3, 20.4, 2.8),
    "bitflip": (25282.8, 0.0, 8.7),
    "compare_sensitivity": (50.8, 54.0, 0.8),
    "detection": (2972.9, 0.0, 2.2),
    "finetune": (323.8, 96.0, 1.3),
    "pruning": (231.3, 4.0, 1.1),
    "robustness": (704.0, 0.0, 1.0),
    "selective_pruning": (27.3, 0.0, 1.1),
    "smoke": (3.0, 0.0, 1.0),
    "super_weights": (10.0, 0.0, 2.4),
    "targeted_perturbation": (106.7, 5.1, 1.3),
}
COSTS: dict[str, dict[str, SuiteCost]] = {
    "quick": QUICK_COSTS,
    "full": {
        name: replace(QUICK_COSTS[name], forward=forward, grad=grad,
                      source=f"tiny-llama full x {ratio} (this suite's quick smollm2/tiny ratio); memory as quick")
        for name, (forward, grad, ratio) in FULL_PASSES.items()
    } | {"evaluate": replace(QUICK_COSTS["evaluate"],
                             source=QUICK_COSTS["evaluate"].source + "; the same at full (no preset)")},
}


@dataclass(frozen=True)
class ModelShape:
    """What the plan knows of a model from its config alone."""

    name: str
    params: int
    vocab: int
    layers: int
    dtype: torch.dtype
    config: Any

    @property
    def weight_bytes(self) -> int:
        return self.params * torch.finfo(self.dtype).bits // 8


@dataclass(frozen=True)
class SuitePlan:
    """One suite's row of a plan: its passes on this model (None: not measured), estimated peak and time."""

    suite: str
    cost: SuiteCost | None
    passes: tuple[float, float] | None
    peak_bytes: float | None
    seconds: float | None

    @property
    def passes_text(self) -> str:
        if self.passes is None:
            return "not measured"
        forward, grad = self.passes
        return f"{forward:.0f} fwd + {grad:.0f} bwd"


def model_config(name: str, cache_dir: str | os.PathLike | None = None) -> Any:
    """The transformers config of ``name`` without its weights: a tiny or shape-alike model's own, a converted GGUF
    model's cached ``config.json`` (else its hub config), a local directory's, or the hub's.

    Raises:
        UnknownNameError: an unknown name.
        OfflineError: the config is only on the hub and the hub cannot be reached.
        HarnessError: a directory without config.json; a gated model without a token.
    """
    from transformers import AutoConfig

    from harness.models.loading import resolve_spec

    spec = resolve_spec(name)
    if spec.source in ("tiny", "shape"):
        from harness.models.tiny import random_config

        return random_config(spec.name, spec.family)
    if spec.source == "local":
        return AutoConfig.from_pretrained(spec.name)
    if spec.source == "gguf-package":
        from harness.models.gguf import is_converted, model_dir

        if is_converted(spec, cache_dir):
            return AutoConfig.from_pretrained(model_dir(spec, cache_dir))
    from harness.models.hub import gated_message, hub_reachable, hub_token, in_local_cache, offline_message

    hub_id = spec.hub_id or spec.name
    if not in_local_cache(hub_id) and not hub_reachable():
        raise OfflineError(offline_message(f"the config of {spec.name!r} ({hub_id})"))
    if spec.gated and not hub_token():
        raise HarnessError(gated_message(spec.name, hub_id))
    return AutoConfig.from_pretrained(hub_id, token=hub_token())


def model_shape(name: str, dtype: str | torch.dtype | None = None, config: Any = None) -> ModelShape:
    """Parameters (counted on a ``meta`` model: no memory), vocabulary and blocks of ``name``.

    Args:
        name: a registry name, local directory or hub id (ignored for the config when ``config`` is given).
        dtype: the session's ``--dtype``; default the registry's default dtype, else float32.
        config: a transformers config to use instead of reading ``name``'s.
    """
    from transformers import AutoModelForCausalLM

    from harness.models.device import resolve_dtype
    from harness.models.specs import MODELS

    config = config if config is not None else model_config(name)
    default = MODELS.get(name).default_dtype if name in MODELS else "float32"
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in meta.parameters())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = int(getattr(text, "num_hidden_layers", 0) or getattr(text, "n_layer", 0) or getattr(text, "num_layers", 0))
    torch_dtype = resolve_dtype(dtype if dtype is not None else default)
    return ModelShape(name, params, int(text.vocab_size), layers, torch_dtype, config)


def free_bytes(device: str | torch.device) -> int:
    """Memory a new session on ``device`` can have: a GPU's free memory; on the CPU the machine's total
    (``MemTotal``): what other processes hold there comes and goes (a CI job's parallel calls), so a session is
    refused only when it could never fit."""
    from harness.models.device import resolve_device

    dev = resolve_device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev.index or 0)[0])
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise HarnessError("cannot read the memory of this machine (/proc/meminfo has no MemTotal)")


def _free_word(device: str | torch.device) -> str:
    """How :func:`free_bytes` counts on ``device``: " free" on a GPU, " in all" on the CPU."""
    from harness.models.device import resolve_device

    return " free" if resolve_device(device).type == "cuda" else " in all"


def estimate_peak(shape: ModelShape, cost: SuiteCost, device: str | torch.device, eval_tokens: int) -> float:
    """The estimated peak of one suite on ``device``, in bytes: weights + the suite's extra + the process's own."""
    from harness.models.device import resolve_device

    own = CUDA_RESERVE_BYTES if resolve_device(device).type == "cuda" else CPU_PROCESS_BYTES
    return shape.weight_bytes + cost.extra_bytes(shape.weight_bytes, eval_tokens, shape.vocab) + own


def _costs(preset: str) -> dict[str, SuiteCost]:
    if preset not in COSTS:
        raise HarnessError(f"unknown preset {preset!r}: use one of {', '.join(COSTS)}")
    return COSTS[preset]


def check_fits(name: str, *, preset: str = "quick", device: str | torch.device = "cpu",
               dtype: str | torch.dtype | None = None, eval_tokens: int = DEFAULT_EVAL_TOKENS,
               suites: list[str] | None = None, device_map: Any = None, max_memory: Any = None,
               free: int | None = None, shape: ModelShape | None = None) -> None:
    """Stop before loading when the largest selected suite's estimated peak exceeds the device's free memory.

    Args:
        name: the model (registry name, local directory or hub id); only its config is read.
        preset, device, dtype, eval_tokens: the session's options.
        suites: the selected suites (default: every suite with a measured cost).
        device_map, max_memory: the session's placement; with either, the user has placed the model and
            nothing is checked.
        free: free bytes to check against (default :func:`free_bytes` of ``device``).
        shape: the model's :class:`ModelShape` when already known.

    Raises:
        HarnessError: one line: the estimate, the free memory, and ``--device-map`` / ``--max-memory``.
    """
    if device_map is not None or max_memory is not None:
        return
    costs = _costs(preset)
    chosen = {s: costs[s] for s in (suites or costs) if s in costs}
    if not chosen:
        return
    shape = shape or model_shape(name, dtype)
    free = free_bytes(device) if free is None else free
    suite, peak = max(((s, estimate_peak(shape, c, device, eval_tokens)) for s, c in chosen.items()),
                      key=lambda sp: sp[1])
    if peak > free:
        raise HarnessError(
            f"{name} ({shape.params / 1e9:.2f}B parameters, {shape.weight_bytes / GB:.1f} GB in "
            f"{str(shape.dtype).removeprefix('torch.')}) needs about {peak / GB:.1f} GB for the {suite} suite "
            f"({preset}) but {device} has {free / GB:.1f} GB{_free_word(device)}: place it with --device-map auto "
            f"[--max-memory 0=NGiB,cpu=NGiB], or choose a smaller --dtype, fewer suites or fewer --eval-tokens")


def time_forward(shape: ModelShape, device: str | torch.device, eval_tokens: int, window: int,
                 rounds: int = 2) -> float:
    """Seconds of one forward over ``eval_tokens`` tokens (windows of ``window``, in ``evaluate``'s batches) on
    ``device``, with a random model of ``shape``'s config (no weights are read), the fastest of ``rounds``."""
    from harness.metrics.perplexity import default_batch_size
    from harness.models.device import resolve_device
    from harness.models.tiny import random_model

    dev = resolve_device(device)
    model = random_model(shape.config, dtype=shape.dtype, device=dev)
    windows = torch.randint(0, shape.vocab, (max(1, eval_tokens // window), window), device=dev,
                            generator=torch.Generator(device=dev).manual_seed(0))
    size = default_batch_size(windows)
    best = math.inf
    with torch.no_grad():
        for _ in range(rounds):
            start = time.perf_counter()
            for i in range(0, windows.shape[0], size):
                model(input_ids=windows[i:i + size], use_cache=False)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - start)
    del model
    return best


def plan(name: str, *, preset: str = "quick", device: str | torch.device = "cpu", dtype: str | None = None,
         eval_tokens: int = DEFAULT_EVAL_TOKENS, window: int = 256, suites: list[str] | None = None,
         timed: bool = True, shape: ModelShape | None = None,
         forward: float | None = None) -> tuple[ModelShape, float | None, list[SuitePlan]]:
    """Every selected suite's passes, estimated peak and projected time on ``device``.

    Args:
        suites: the suites to plan (default: every suite with a cost for ``preset``); one without is listed as not
            measured.
        forward: seconds of one forward over the evaluation tokens on the device, when known (another machine's
            measurement); otherwise timed here when ``timed``.

    Returns:
        The model's shape, the seconds of one forward over the evaluation tokens (None when not timed: ``timed``
        False, or the weights do not fit the device's free memory) and one :class:`SuitePlan` per suite.
    """
    costs = _costs(preset)
    names = suites or sorted(costs)
    shape = shape or model_shape(name, dtype)
    if forward is None and timed:
        if shape.weight_bytes * 1.2 + 1e9 < free_bytes(device):
            forward = time_forward(shape, device, eval_tokens, window)
        else:
            log.warning("%s: %.1f GB of weights do not fit %s; no forward timed", name, shape.weight_bytes / GB, device)
    rows = []
    for suite in names:
        cost = costs.get(suite)
        passes = cost.passes(shape.layers) if cost else None
        peak = estimate_peak(shape, cost, device, eval_tokens) if cost else None
        seconds = (passes[0] + 2 * passes[1]) * forward if passes and forward is not None else None
        rows.append(SuitePlan(suite, cost, passes, peak, seconds))
    return shape, forward, rows


def format_plan(shape: ModelShape, preset: str, device: str, forward: float | None, rows: list[SuitePlan],
                free: int | None = None) -> str:
    """The plan as a table: one line per suite, then the nightly's total."""
    def gb(b: float | None) -> str:
        return "-" if b is None else f"{b / GB:.2f} GB"

    def dur(s: float | None) -> str:
        return "-" if s is None else (f"{s:.0f} s" if s < 600 else f"{s / 3600:.2f} h")

    head = (f"{shape.name}: {shape.params:,} parameters, {str(shape.dtype).removeprefix('torch.')}, "
            f"{shape.weight_bytes / GB:.2f} GB of weights, vocabulary {shape.vocab:,}; preset {preset} on {device}")
    fwd = ("one forward over the evaluation tokens: not timed" if forward is None else
           f"one forward over the evaluation tokens (random weights of this config, timed here): {forward:.3f} s")
    lines = [head, fwd, f"{'suite':<24}{'passes':>22}{'peak memory':>14}{'time':>10}"]
    for r in rows:
        fits = "" if free is None or r.peak_bytes is None or r.peak_bytes <= free else "  (does not fit)"
        lines.append(f"{r.suite:<24}{r.passes_text:>22}{gb(r.peak_bytes):>14}{dur(r.seconds):>10}{fits}")
    timed = [r.seconds for r in rows if r.seconds is not None]
    peaks = [r.peak_bytes for r in rows if r.peak_bytes is not None]
    peak, seconds = gb(max(peaks) if peaks else None), dur(sum(timed) if timed else None)
    lines.append(f"{'nightly (every suite above)':<46}{peak:>14}{seconds:>10}")
    if free is not None:
        lines.append(f"memory on {device}: {free / GB:.1f} GB{_free_word(device)}")
    missing = [r.suite for r in rows if r.cost is None]
    if missing:
        lines.append(f"not measured for preset {preset}: {', '.join(missing)}")
    return "\n".join(lines)

