"""``activation``: super weights from activation spikes at the MLP down projections (Yu et al. 2024,
"The Super Weight in Large Language Models").

One prompt goes through the model with hooks on the input and output of the MLP down projection
of every selected block. In each block, the largest |input| names a column (input channel) and the
largest |output| names a row (output channel); where both exceed their thresholds, W[row, col] is a
super-weight candidate. The candidates are zeroed (temporarily) and the prompt is run again, until
a round finds no new coordinate. Every zeroed weight is written back bit-exactly in ``finally``.

Default thresholds are the reference implementation's: |activation| > 50 on both sides
(``spike_threshold=50`` in mengxiayu/LLMSuperWeight ``analyze.py``), with its prompt.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.sites import FaultSite
from harness.models.archmap import ComponentRef
from harness.scoring.base import Context, Cost, ScoredSite, ScoreSet, scorer

log = logging.getLogger(__name__)

PROMPT = "Apple Inc. is a worldwide tech company."
INPUT_THRESHOLD = 50.0
OUTPUT_THRESHOLD = 50.0
MAX_ROUNDS = 8  # the published models need at most 4 (3 weights in one column, then a round with none)


@dataclass(frozen=True)
class Spike:
    """One detected super weight and the activations that revealed it.

    Attributes:
        round: detection round (0 = the untouched model).
        layer: block index.
        param: full parameter name of the down projection's weight.
        row: output channel (the super activation's hidden dimension).
        col: input channel of the down projection.
        token: position of the input spike in the prompt.
        input_value: the down projection's input at (token, col).
        output_value: its output at the position of the output spike, channel row.
        weight: W[row, col].
    """

    round: int
    layer: int
    param: str
    row: int
    col: int
    token: int
    input_value: float
    output_value: float
    weight: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LayerPeak:
    """The largest |input| and |output| of one down projection in one round."""

    layer: int
    col: int
    input_token: int
    input_value: float
    row: int
    output_token: int
    output_value: float


class _PeakHooks:
    """Forward hooks keeping, per module, where its input and output peak in |value|.

    No activation is stored: each hook reduces its tensors to two argmax/argmin pairs on the fly.
    """

    def __init__(self, modules: dict[int, nn.Module]) -> None:
        self.modules = modules
        self.raw: dict[int, tuple[torch.Tensor, ...]] = {}
        self._handles: list = []

    def __enter__(self) -> _PeakHooks:
        for layer, module in self.modules.items():
            self._handles.append(module.register_forward_hook(self._hook(layer)))
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, layer: int):
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            x = args[0].detach()
            y = (output[0] if isinstance(output, tuple) else output).detach()
            self.raw[layer] = (*_peak(x), *_peak(y))

        return hook

    def peaks(self) -> list[LayerPeak]:
        layers = sorted(self.raw)
        if not layers:
            return []
        raw = [self.raw[layer] for layer in layers]
        # one transfer for all layers (not one sync per number)
        values = torch.stack([v for r in raw for v in (r[0], r[3])]).double().tolist()
        flat = torch.stack([i for r in raw for i in (r[1], r[4])]).tolist()
        self.raw.clear()
        out = []
        for n, (layer, r) in enumerate(zip(layers, raw, strict=True)):
            xd, yd = r[2], r[5]
            xi, yi = flat[2 * n], flat[2 * n + 1]
            out.append(LayerPeak(layer, xi % xd, xi // xd, values[2 * n], yi % yd, yi // yd, values[2 * n + 1]))
        return out


def _peak(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(signed value, flat index, last-dim size) of the entry of ``t`` with the largest magnitude.

    Reduced per token first (parallel over tokens on CPU), then over tokens: the fastest of the
    variants measured in benchmarks/test_scoring_bench.py on CPU and GPU.
    """
    width = t.shape[-1]
    per_token, channel = t.reshape(-1, width).abs().max(dim=1)  # (tokens,)
    token = per_token.argmax()
    flat = token * width + channel[token]
    return t.reshape(-1)[flat], flat, width


@contextmanager
def _zeroed(model: nn.Module, coords: list[tuple[str, int, int]]):
    """Zero W[row, col] for each coordinate inside the block; the saved values go back in ``finally``."""
    saved = []
    try:
        with torch.no_grad():
            for param, row, col in coords:
                w = model.get_parameter(param)
                saved.append((w, row, col, w[row, col].clone()))
                w[row, col] = 0
        yield
    finally:
        with torch.no_grad():
            for w, row, col, value in reversed(saved):
                w[row, col] = value


def find_super_weights(model: nn.Module, input_ids: torch.Tensor, refs: list[ComponentRef], *,
                       input_threshold: float = INPUT_THRESHOLD, output_threshold: float = OUTPUT_THRESHOLD,
                       max_rounds: int = MAX_ROUNDS) -> tuple[list[Spike], list[list[LayerPeak]]]:
    """Iterative spike detection on the down projections ``refs`` (see the module docstring).

    Args:
        model: the model (left bit-identical on return, also on error).
        input_ids: (B, T) prompt tokens.
        refs: ``mlp_down`` components from :func:`harness.models.archmap.select`.
        input_threshold, output_threshold: minimum |activation| of the input and output spikes.
        max_rounds: stop after this many forward passes even if spikes keep appearing.

    Returns:
        (spikes in detection order, per-round peaks of every layer).

    Cost: one forward pass of the prompt per round (rounds = found groups + 1, at most ``max_rounds``).
    """
    modules = {ref.layer: model.get_submodule(ref.module) for ref in refs}
    params = {ref.layer: ref.param for ref in refs}
    spikes: list[Spike] = []
    rounds: list[list[LayerPeak]] = []
    seen: set[tuple[int, int, int]] = set()
    with _PeakHooks(modules) as hooks, torch.no_grad():
        for round_ in range(max_rounds):
            with _zeroed(model, [(s.param, s.row, s.col) for s in spikes]):
                model(input_ids=input_ids, use_cache=False)
            peaks = hooks.peaks()
            rounds.append(peaks)
            new = [p for p in peaks
                   if abs(p.input_value) > input_threshold and abs(p.output_value) > output_threshold
                   and (p.layer, p.row, p.col) not in seen]
            for p in new:
                seen.add((p.layer, p.row, p.col))
                weight = float(model.get_parameter(params[p.layer])[p.row, p.col])
                spikes.append(Spike(round_, p.layer, params[p.layer], p.row, p.col, p.input_token,
                                    p.input_value, p.output_value, weight))
            if not new:
                break
        else:
            log.warning("activation: spikes still appearing after %d rounds; stopped (raise max_rounds)", max_rounds)
    return spikes, rounds


@scorer("activation", components="mlp_down")
def activation(ctx: Context, *, prompt: str = PROMPT, input_threshold: float = INPUT_THRESHOLD,
               output_threshold: float = OUTPUT_THRESHOLD, max_rounds: int = MAX_ROUNDS) -> ScoreSet:
    """Super weights from down-projection activation spikes, found iteratively (Yu et al. 2024).

    The score of a found weight is |output spike| (its super activation); every other weight scores
    0 and ``top_k`` returns only found weights (none, logged, when no spike passes the thresholds).
    Windows given to :func:`score` replace the prompt as input.

    Options:
        prompt: text of the single prompt (needs a LoadedModel's tokenizer).
        input_threshold, output_threshold: minimum |activation| of the spikes (default 50 each).
        max_rounds: most forward passes (default 8).

    Cost: one forward pass of the prompt per round; rounds = groups of new spikes found + 1.
    """
    if input_threshold < 0 or output_threshold < 0 or max_rounds < 1:
        raise HarnessError("activation needs thresholds >= 0 and max_rounds >= 1, got "
                           f"input_threshold={input_threshold}, output_threshold={output_threshold}, "
                           f"max_rounds={max_rounds}")
    if ctx.windows is not None:
        input_ids = ctx.windows
    elif ctx.tokenizer is not None:
        input_ids = ctx.tokenizer(prompt, return_tensors="pt")["input_ids"].to(ctx.device)
    else:
        raise HarnessError("activation needs a prompt and a tokenizer (pass a LoadedModel) or windows=token ids")
    spikes, rounds = find_super_weights(ctx.model, input_ids, ctx.refs, input_threshold=input_threshold,
                                        output_threshold=output_threshold, max_rounds=max_rounds)
    if not spikes:
        top_in = max(rounds[0], key=lambda p: abs(p.input_value))
        top_out = max(rounds[0], key=lambda p: abs(p.output_value))
        log.warning("activation: no down-projection spike above |input| > %g and |output| > %g in %d layers "
                    "(largest |input| %.4g at layer %d, largest |output| %.4g at layer %d); found nothing",
                    input_threshold, output_threshold, len(ctx.refs), abs(top_in.input_value), top_in.layer,
                    abs(top_out.output_value), top_out.layer)
    by_layer = {ref.layer: ref for ref in ctx.refs}
    sites = [ScoredSite(FaultSite(s.param, (s.row, s.col)), s.layer, by_layer[s.layer].component, s.weight,
                        abs(s.output_value)) for s in spikes]
    sites.sort(key=lambda s: -s.score)
    cost = Cost(forward=len(rounds), tokens=len(rounds) * input_ids.numel())
    return ScoreSet("activation", ctx.refs, cost, ctx.model, sites=sites, details={
        "spikes": [s.to_dict() for s in spikes], "rounds": len(rounds),
        "input_threshold": input_threshold, "output_threshold": output_threshold,
        "prompt": prompt if ctx.windows is None else None,
        "peaks": rounds,  # per round, the LayerPeak of every layer
    })
