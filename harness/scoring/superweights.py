"""The super-weight detector (Yu et al. 2024, "The Super Weight in Large Language Models"): the one
definition of "the super weights of a model" that every suite, the pruning protection, the guided
attack and the ``activation`` scorer use.

Recipe (per round, one forward pass of each prompt, hooks on every MLP down projection):

1. For every decoder block ``l`` and token ``t``: the largest |input| of the down projection,
   ``a[l, t] = max_j |x[t, j]|`` at channel ``j(l, t)``, and the largest |output|,
   ``b[l, t] = max_i |y[t, i]|`` at channel ``i(l, t)``.
2. The model's own activation scale, taken once on the untouched model (round 0):
   ``A = median over (l, t) of a[l, t]`` and ``B = median over (l, t) of b[l, t]`` (the typical
   per-token peak of the down projection's input and output).
3. A block's spike strength at token ``t`` is ``min(a[l, t] / A, b[l, t] / B)``: input and output
   must spike **on the same token**. The block's candidate is its strongest token; it is a super
   weight when its strength is at least ``factor`` (default 50): ``W[i(l, t), j(l, t)]`` of that
   block's down projection.
4. ``rounds`` (default 1): after each round the weights found so far are zeroed (an ``Ablation``
   perturbation, restored bit-exactly) and the prompts run again; a round that finds no new
   coordinate ends the scan. Every site keeps the round it was found in (0 = untouched model).
   The default is round 0 only: on smollm2-135m the iteration does not settle (with 6 rounds it
   finds 14 sites; from round 1 on, mostly further rows of the late blocks' spiking input channels,
   e.g. layer 28 column 678 rows 247, 17, 14, 260, 308 with |w| < 0.5, each the next-largest
   output once the previous row is zeroed). Later rounds are there to be asked for.

Why the median over (block, token) and why 50: the median of per-token peaks is what an ordinary
activation of this model looks like; one spiking token in one block cannot move it, also in a 2-block
model (a median over per-block maxima would be dragged up by the spike itself there). A super
activation is orders of magnitude above it: on smollm2-135m the layer-11 spike is 2996 (input) and
24022 (output), i.e. about 1,700x and 3,400x the typical token peak; the largest strength of a
random-weight tiny model is below 5. 50 is the reference implementation's absolute threshold
(|activation| > 50 in mengxiayu/LLMSuperWeight) re-read as a multiple of the model's own scale, and
it sits between those two regimes with margin on both sides. ``Detection.candidate`` keeps the
strongest block of round 0 even when it falls short, so a negative control can report how far it was.

Prompts start with the tokenizer's BOS where the tokenizer adds one (plain ``tokenizer(text)``, the
HF convention). The detection is named by ``Detection.id``, a hash of the model, dtype, prompt token
ids, parameters and found coordinates.
"""

from __future__ import annotations

import hashlib
import json
import logging
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.ablation import Ablation
from harness.faults.sites import FaultSite, find_tensor
from harness.models.archmap import ComponentRef, select
from harness.models.device import input_device

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

DETECTOR = "activation"  # the name sites and records carry (the scorer registered in activation.py)
PROMPTS = ("Apple Inc. is a worldwide tech company.",)  # the reference implementation's prompt
FACTOR = 50.0
ROUNDS = 1  # see the module docstring (4.)


@dataclass(frozen=True)
class SuperWeight:
    """One detected super weight ``W[row, col]`` of block ``layer``'s down projection.

    Attributes:
        layer: block index.
        param: full parameter name of the down projection's weight.
        row: output channel (the super activation's hidden dimension).
        col: input channel.
        value: ``W[row, col]`` when found.
        round: detection round (0 = the untouched model).
        prompt: index of the prompt the spike was on.
        token: position of the spiking token in that prompt.
        input_spike: the down projection's input ``x[token, col]`` (signed).
        output_spike: its output ``y[token, row]`` (signed).
        strength: ``min(|input_spike| / A, |output_spike| / B)`` (module docstring).
    """

    layer: int
    param: str
    row: int
    col: int
    value: float
    round: int
    prompt: int
    token: int
    input_spike: float
    output_spike: float
    strength: float

    @property
    def site(self) -> FaultSite:
        return FaultSite(self.param, (self.row, self.col))

    @property
    def coords(self) -> tuple[int, int, int]:
        return (self.layer, self.row, self.col)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DetectorParams:
    """The detector's parameters (part of the detection's id)."""

    prompts: tuple[str, ...] = PROMPTS
    factor: float = FACTOR
    rounds: int = ROUNDS

    def __post_init__(self) -> None:
        if not self.prompts or not all(isinstance(p, str) and p for p in self.prompts):
            raise HarnessError(f"super-weight prompts must be non-empty strings, got {self.prompts!r}")
        if not self.factor > 1:
            raise HarnessError(f"super-weight factor must be > 1 (a multiple of the typical peak), got {self.factor}")
        if not (isinstance(self.rounds, int) and self.rounds >= 1):
            raise HarnessError(f"super-weight rounds must be an integer >= 1, got {self.rounds!r}")
        object.__setattr__(self, "prompts", tuple(self.prompts))


@dataclass(frozen=True)
class Detection:
    """The super weights of one model, dtype and prompt set; compare and cache by ``id``.

    Attributes:
        model: model name (registry name, hub id or path).
        dtype: dtype of the scanned weights (``float32`` ...).
        params: the detector's parameters.
        token_ids: the prompts as token ids (BOS included where the tokenizer adds one).
        input_scale, output_scale: ``A`` and ``B`` of the module docstring (round 0).
        sites: the super weights, by round, then by |output spike| (strongest first).
        rounds_run: forward rounds done (a round without new sites ends the scan).
        candidate: round 0's strongest block even when below ``factor`` (None when no block ran).
    """

    model: str
    dtype: str
    params: DetectorParams
    token_ids: tuple[tuple[int, ...], ...]
    input_scale: float
    output_scale: float
    sites: tuple[SuperWeight, ...]
    rounds_run: int
    candidate: SuperWeight | None = None
    id: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if not self.id:
            object.__setattr__(self, "id", self._hash())

    def _hash(self) -> str:
        key = {"model": self.model, "dtype": self.dtype, "params": asdict(self.params),
               "token_ids": [list(t) for t in self.token_ids], "sites": [(s.round, *s.coords) for s in self.sites]}
        return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]

    def __bool__(self) -> bool:
        return bool(self.sites)

    def __len__(self) -> int:
        return len(self.sites)

    def none_reason(self) -> str:
        """Why a super-weight claim does not apply when nothing was detected (names the strongest candidate)."""
        c = self.candidate
        near = "" if c is None else (f"; strongest candidate layer {c.layer} [{c.row}, {c.col}] (w = {c.value:.4g}) "
                                     f"at {c.strength:.3g}x the typical peak")
        return f"no super weight detected (detection {self.id}, factor {self.params.factor:g}x{near})"

    def fault_sites(self, max_round: int | None = None) -> list[FaultSite]:
        """The sites as ``FaultSite`` (no bits), strongest first within a round; ``max_round`` keeps rounds <= it."""
        return [s.site for s in self.sites if max_round is None or s.round <= max_round]

    def describe(self) -> dict[str, Any]:
        """What a record that uses these sites names: the detection's id, detector and parameters."""
        return {"detection": self.id, "detector": DETECTOR, "factor": self.params.factor,
                "rounds": self.params.rounds, "count": len(self.sites)}

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "detector": DETECTOR, "model": self.model, "dtype": self.dtype,
                "params": asdict(self.params), "token_ids": [list(t) for t in self.token_ids],
                "input_scale": self.input_scale, "output_scale": self.output_scale, "rounds_run": self.rounds_run,
                "candidate": None if self.candidate is None else self.candidate.to_dict(),
                "sites": [s.to_dict() for s in self.sites]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Detection:
        p = data["params"]
        params = DetectorParams(tuple(p["prompts"]), float(p["factor"]), int(p["rounds"]))
        cand = data.get("candidate")
        return cls(data["model"], data["dtype"], params, tuple(tuple(t) for t in data["token_ids"]),
                   float(data["input_scale"]), float(data["output_scale"]),
                   tuple(SuperWeight(**s) for s in data["sites"]), int(data["rounds_run"]),
                   None if cand is None else SuperWeight(**cand), id=data.get("id", ""))


class _PeakHooks:
    """Forward hooks reducing each down projection's input and output to per-token peaks (no activation kept)."""

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
            x = args[0].detach().flatten(0, -2)  # (tokens, d_ff)
            y = (output[0] if isinstance(output, tuple) else output).detach().flatten(0, -2)  # (tokens, d_model)
            ax, jx = x.abs().max(dim=1)  # (tokens,)
            ay, iy = y.abs().max(dim=1)
            xv = x.gather(1, jx[:, None])[:, 0]
            yv = y.gather(1, iy[:, None])[:, 0]
            self.raw[layer] = (ax.float(), jx, xv.float(), ay.float(), iy, yv.float())

        return hook

    def take(self, layers: list[int]) -> list[torch.Tensor]:
        """Six (layers, tokens) CPU tensors: |x| peak, its channel, x, |y| peak, its channel, y."""
        missing = [layer for layer in layers if layer not in self.raw]
        if missing:
            raise HarnessError(f"the down projection of layer {missing[0]} did not run in the forward pass")
        out = [torch.stack([self.raw[layer][k] for layer in layers]).cpu() for k in range(6)]
        self.raw.clear()
        return out


def _encode(tokenizer: Any, prompts: tuple[str, ...], device: torch.device) -> list[torch.Tensor]:
    if tokenizer is None:
        raise HarnessError("the super-weight detector needs a tokenizer for its prompts: pass a LoadedModel, "
                           "tokenizer=..., or input_ids=...")
    return [tokenizer(p, return_tensors="pt")["input_ids"].to(device) for p in prompts]  # BOS as the tokenizer adds


def _scan(model: nn.Module, hooks: _PeakHooks, layers: list[int], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Per-token peaks of every block over all prompts: six (layers, total tokens) tensors, + prompt/token index."""
    parts = []
    with torch.no_grad():
        for ids in inputs:
            model(input_ids=ids, use_cache=False)
            parts.append(hooks.take(layers))
    return [torch.cat([p[k] for p in parts], dim=1) for k in range(6)]


def detect(model_or_loaded: LoadedModel, *, prompts: tuple[str, ...] | list[str] = PROMPTS, factor: float = FACTOR,
           rounds: int = ROUNDS, tokenizer: Any = None, input_ids: torch.Tensor | None = None,
           refs: list[ComponentRef] | None = None, name: str | None = None) -> Detection:
    """Detect the super weights of a model (see the module docstring for the recipe).

    Args:
        model_or_loaded: a ``LoadedModel`` (its tokenizer encodes the prompts) or a transformers model.
        prompts: the prompt texts (default: the reference implementation's one prompt).
        factor: how many times the typical per-token peak both input and output must reach (default 50).
        rounds: most scan rounds; after each, the sites found so far are zeroed and the prompts rerun.
        tokenizer: overrides the LoadedModel's tokenizer.
        input_ids: (B, T) token ids to scan instead of the prompts (each row is one prompt).
        refs: the ``mlp_down`` components to scan (default: every block's).
        name: model name for the detection (default: the LoadedModel's name, else the class name).

    Returns:
        The :class:`Detection`; the model is left bit-identical (also on error).

    Raises:
        HarnessError: bad parameters, no tokenizer for the prompts, or a family without ``mlp_down``.

    Cost: one forward pass per prompt per round (rounds = groups of new sites + 1, at most ``rounds``).
    """
    params = DetectorParams(tuple(prompts), float(factor), rounds)
    if isinstance(model_or_loaded, nn.Module):
        model, loaded = model_or_loaded, None
    else:
        model, loaded = model_or_loaded.model, model_or_loaded
    tokenizer = tokenizer if tokenizer is not None else getattr(loaded, "tokenizer", None)
    name = name or getattr(loaded, "name", None) or type(model).__name__
    device = input_device(model)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    inputs = ([row[None].to(device) for row in input_ids] if input_ids is not None
              else _encode(tokenizer, params.prompts, device))
    refs = refs if refs is not None else select(model, components="mlp_down")
    layers = [ref.layer for ref in refs]
    by_layer = {ref.layer: ref for ref in refs}
    for ref in refs:
        module, w = model.get_submodule(ref.module), model.get_parameter(ref.param)
        out_features = getattr(module, "out_features", w.shape[0])
        if w.dim() != 2 or w.shape[0] != out_features:
            raise HarnessError(f"{ref.module} is {type(module).__name__} with weight {tuple(w.shape)}; the detector "
                               "reads down projections whose weight is (out, in), as nn.Linear's")
    positions = [(p, t) for p, ids in enumerate(inputs) for t in range(ids.shape[1])]
    token_ids = tuple(tuple(ids[0].tolist()) for ids in inputs)

    sites: list[SuperWeight] = []
    seen: set[tuple[int, int, int]] = set()
    scale_in = scale_out = float("nan")
    candidate = None
    rounds_run = 0
    model_training = model.training
    model.eval()
    try:
        with _PeakHooks({ref.layer: model.get_submodule(ref.module) for ref in refs}) as hooks:
            for round_ in range(params.rounds):
                with Ablation(model, [s.site for s in sites], "zero") if sites else nullcontext():
                    ax, jx, xv, ay, iy, yv = _scan(model, hooks, layers, inputs)
                rounds_run += 1
                if round_ == 0:
                    scale_in, scale_out = float(ax.median()), float(ay.median())
                    if not (scale_in > 0 and scale_out > 0):
                        raise HarnessError(f"{name}: the typical down-projection activation is 0 "
                                           f"(input {scale_in}, output {scale_out}); cannot set a relative threshold")
                strength = torch.minimum(ax / scale_in, ay / scale_out)  # (layers, tokens)
                best, at = strength.max(dim=1)  # (layers,)
                found = []
                for n, layer in enumerate(layers):
                    t = int(at[n])
                    row, col = int(iy[n, t]), int(jx[n, t])
                    ref = by_layer[layer]
                    value = float(find_tensor(model, ref.param).detach()[row, col])
                    sw = SuperWeight(layer, ref.param, row, col, value, round_, *positions[t],
                                     float(xv[n, t]), float(yv[n, t]), float(best[n]))
                    if round_ == 0 and (candidate is None or sw.strength > candidate.strength):
                        candidate = sw
                    if sw.strength >= params.factor and sw.coords not in seen:
                        found.append(sw)
                found.sort(key=lambda s: -abs(s.output_spike))
                sites += found
                seen.update(s.coords for s in found)
                if not found:
                    break
            else:
                if params.rounds > 1:
                    log.info("super weights: still finding new sites after %d rounds (rounds=%d)", rounds_run, rounds)
    finally:
        if model_training:
            model.train()
    detection = Detection(name, dtype, params, token_ids, scale_in, scale_out, tuple(sites), rounds_run, candidate)
    if sites:
        top = sites[0]
        log.info("super weights of %s: %d in %d rounds (detection %s), strongest layer %d [%d, %d] = %.4g",
                 name, len(sites), rounds_run, detection.id, top.layer, top.row, top.col, top.value)
    elif candidate is not None:
        log.info("super weights of %s: none (strongest candidate layer %d [%d, %d]: %.3gx the typical peak, "
                 "below %gx)", name, candidate.layer, candidate.row, candidate.col, candidate.strength, params.factor)
    return detection
