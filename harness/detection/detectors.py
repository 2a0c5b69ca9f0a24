"""Fault detectors: calibrated on the clean model, they say whether the live model's weights were changed.

A detector is registered in :data:`DETECTORS` by name and built with :func:`make_detector` (keyword options; an
unknown or bad option raises ``HarnessError`` naming what is allowed). :meth:`Detector.calibrate` stores its
references from the clean model (small: checksums, ranges, a few layer outputs of one short input; never a copy
of the model); :meth:`Detector.fired` then says whether the live model differs, and restores nothing: repairing is
the defenses' job (``harness.attacks.defenses``). :meth:`Detector.cost` states what a check costs.

- ``audit``: a test vector (LM-Fix, ICCD 2025): one fixed seeded input of ``tokens`` token ids through the model;
  the outputs of the chosen ``layers`` (block indices, negative from the end, or ``logits``) are compared with the
  clean ones; it fires when ``max |out - ref| / rms(ref)`` exceeds ``tol`` in any layer, or an output is not finite.
- ``checksum``: a per-tensor checksum of the stored bytes of every parameter and buffer
  (:func:`harness.fingerprint.fingerprint`: CRC-32 on the CPU, exact word sums elsewhere): any changed tensor fires;
  :meth:`TensorChecksums.flagged` names the changed tensors (what a recovery restores).
- ``range``: each parameter's clean ``[min, max]``; a weight outside it, or NaN, fires.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.fingerprint import changed, fingerprint
from harness.models.archmap import arch_map
from harness.models.device import input_device
from harness.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectorCost:
    """What one check of a detector costs.

    Attributes:
        forward_tokens: tokens run through the model per check (0: the detector reads weights only).
        weight_reads: full reads of the stored weights per check.
        reference_bytes: bytes of the references kept from calibration.
    """

    forward_tokens: int
    weight_reads: int
    reference_bytes: int

    def to_dict(self) -> dict[str, int]:
        return {"forward_tokens": self.forward_tokens, "weight_reads": self.weight_reads,
                "reference_bytes": self.reference_bytes}


class Detector:
    """Base class: calibrate on the clean model, then ``fired(model)``."""

    name = "detector"

    def calibrate(self, model: nn.Module) -> Detector:
        """Store the references of the clean ``model``; returns ``self``."""
        raise NotImplementedError

    def fired(self, model: nn.Module, *, batch: int = 1) -> bool:
        """Whether ``model`` differs from the calibrated clean model (changes nothing).

        Args:
            model: the calibrated model, live (perhaps faulted).
            batch: run an input as this many copies in one forward (the clean model's numeric noise at another
                batch size); detectors that read no input ignore it.

        Raises:
            HarnessError: not calibrated.
        """
        raise NotImplementedError

    def cost(self) -> DetectorCost:
        """The cost of one check (after calibration)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The detector's name and options (the records' perturbation/extra)."""
        return {"detector": self.name}

    def _need(self, refs: object) -> None:
        if refs is None:
            raise HarnessError(f"detector {self.name!r} is not calibrated: call calibrate(model) on the clean model")


DETECTORS: Registry[Callable[..., Detector]] = Registry("detector")


def make_detector(name: str, **options: Any) -> Detector:
    """The detector registered as ``name``, built with ``options``.

    Raises:
        UnknownNameError: an unknown detector.
        HarnessError: an option the detector does not have, or a bad value.
    """
    factory = DETECTORS.get(name)
    try:
        return factory(**options)
    except TypeError as e:
        allowed = ", ".join(getattr(factory, "OPTIONS", ())) or "none"
        raise HarnessError(f"detector {name!r}: bad options {sorted(options)} ({e}); allowed: {allowed}") from None


# -- test-vector audit ---------------------------------------------------------------------------


class _Enough(Exception):
    """Raised by a hook once the last chosen layer has run (the rest of the forward is not needed)."""


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.get_submodule(arch_map(model).blocks)


@DETECTORS.register("audit")
class TestVectorAudit(Detector):
    """One fixed seeded input through the model; chosen layers' outputs against the clean ones.

    A short test vector reaches only its own tokens' rows of the input embedding table. Where that table is also
    the output head (tied) the logits read every row anyway; where it is not, a flip in the row of a token the
    vector lacks changes nothing the audit sees, yet collapses the model wherever that token occurs (found on
    tiny-gpt-neox: an exp-MSB flip in ``embed_in`` row 114). So ``embedding`` audits the table itself: its output
    for a fixed seeded dense mix of every token (``r @ E``, r ~ N(0, 1) over the vocabulary), one read of the table.

    Args:
        tokens: length of the test vector (token ids drawn uniformly from the vocabulary with ``seed``).
        layers: decoder block indices (negative from the end), ``"logits"`` and/or ``"embedding"`` (skipped where
            the input embedding is tied to the output head: the logits cover its rows).
        tol: fire when ``max |out - ref| / rms(ref)`` exceeds it in a layer (or an output is not finite).
        seed: the test vector's seed (fixed: the same input at calibration and every check).

    Cost: one forward of ``tokens`` tokens per check (stopped after the last chosen block unless ``logits``), plus
    one read of an untied input embedding table for ``embedding``; references ``tokens x hidden`` values per chosen
    block, ``tokens x vocab`` for ``logits``, ``hidden`` for ``embedding``.
    """

    name = "audit"
    OPTIONS = ("tokens", "layers", "tol", "seed")
    __test__ = False  # a pytest collection hint: not a test class

    def __init__(self, *, tokens: int = 16, layers: Sequence[int | str] = ("logits", "embedding"), tol: float = 1e-4,
                 seed: int = 0) -> None:
        if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
            raise HarnessError(f"audit detector: tokens must be an integer >= 1, got {tokens!r}")
        if not isinstance(tol, (int, float)) or not tol > 0 or not math.isfinite(tol):
            raise HarnessError(f"audit detector: tol must be a finite number > 0, got {tol!r}")
        layers = (layers,) if isinstance(layers, (int, str)) else tuple(layers)
        named = ("logits", "embedding")
        bad = [x for x in layers if not (x in named or (isinstance(x, int) and not isinstance(x, bool)))]
        if not layers or bad:
            raise HarnessError(f"audit detector: layers must be block indices, 'logits' or 'embedding', got {layers!r}")
        self.tokens, self.layers, self.tol, self.seed = tokens, layers, float(tol), seed
        self._refs: dict[int | str, torch.Tensor] | None = None
        self._ids: torch.Tensor | None = None
        self._mix: torch.Tensor | None = None  # (vocab,) the embedding audit's dense token mix; None: not audited

    def describe(self) -> dict[str, Any]:
        return {"detector": self.name, "tokens": self.tokens, "layers": list(self.layers), "tol": self.tol}

    def _indices(self, model: nn.Module) -> list[int]:
        n = len(_blocks(model))
        out = []
        for x in self.layers:
            if x in ("logits", "embedding"):
                continue
            if not -n <= x < n:
                raise HarnessError(f"audit detector: layer {x} out of range for a model of {n} blocks "
                                   f"(0..{n - 1}, or -{n}..-1 from the end)")
            out.append(x % n)
        return sorted(set(out))

    @torch.no_grad()
    def _outputs(self, model: nn.Module, ids: torch.Tensor) -> dict[int | str, torch.Tensor]:
        """The chosen layers' outputs for ``ids`` (batch, tokens), float32 (``embedding``: (1, 1, hidden))."""
        blocks, wanted = _blocks(model), self._indices(model)
        logits = "logits" in self.layers
        out: dict[int | str, torch.Tensor] = {}
        if self._mix is not None:
            out["embedding"] = _mixed_rows(model.get_input_embeddings().weight, self._mix)[None, None]
        if not wanted and not logits:
            return out
        handles = []

        def keep(index: int):
            def hook(module, args, output):
                hidden = output[0] if isinstance(output, tuple) else output
                out[index] = hidden.detach().float().clone()  # (batch, tokens, hidden)
                if not logits and index == wanted[-1]:
                    raise _Enough
            return hook

        for i in wanted:
            handles.append(blocks[i].register_forward_hook(keep(i)))
        try:
            result = model(input_ids=ids.to(input_device(model)), use_cache=False)
            if logits:
                out["logits"] = result.logits.detach().float()  # (batch, tokens, vocab)
        except _Enough:
            pass
        finally:
            for h in handles:
                h.remove()
        return out

    def calibrate(self, model: nn.Module) -> TestVectorAudit:
        table = model.get_input_embeddings()
        vocab = table.num_embeddings
        g = torch.Generator().manual_seed(self.seed)
        self._ids = torch.randint(0, vocab, (1, self.tokens), generator=g)  # (1, tokens)
        self._mix = None
        if "embedding" in self.layers and not _tied_to_head(model, table.weight):
            self._mix = torch.randn(vocab, generator=torch.Generator().manual_seed(self.seed + 1))
        self._refs = {k: v[0] for k, v in self._outputs(model, self._ids).items()}  # (tokens, width)
        return self

    def error(self, model: nn.Module, *, batch: int = 1) -> float:
        """The largest ``max |out - ref| / rms(ref)`` over the chosen layers and the batch's rows (inf: not finite)."""
        self._need(self._refs)
        outs = self._outputs(model, self._ids.repeat(batch, 1))
        worst = 0.0
        for key, ref in self._refs.items():
            out = outs[key]
            if not torch.isfinite(out).all():
                return math.inf
            scale = ref.pow(2).mean().sqrt().clamp_min(torch.finfo(torch.float32).tiny)
            worst = max(worst, float((out - ref).abs().max() / scale))
        return worst

    def fired(self, model: nn.Module, *, batch: int = 1) -> bool:
        return not self.error(model, batch=batch) <= self.tol

    def cost(self) -> DetectorCost:
        self._need(self._refs)
        forward = self.tokens if any(k != "embedding" for k in self._refs) else 0  # the embedding audit runs none
        return DetectorCost(forward, 0, sum(r.numel() * r.element_size() for r in self._refs.values()))


def _tied_to_head(model: nn.Module, weight: torch.Tensor) -> bool:
    """The input embedding table is also the output head (the logits read every row): reachable under a second name
    (``harness.faults.sites.tied_names``, which also compares offloaded weights by the values their hooks hold)."""
    from harness.faults.sites import tied_names

    name = next(n for n, p in model.named_parameters() if p is weight)
    return len(tied_names(model, name)) > 1


def _mixed_rows(weight: torch.Tensor, mix: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    """``mix @ weight`` in float32, ``chunk`` rows at a time (no float32 copy of a low-precision table)."""
    out = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    mix = mix.to(weight.device)
    for start in range(0, weight.shape[0], chunk):
        out += mix[start:start + chunk] @ weight[start:start + chunk].float()
    return out


# -- checksums -----------------------------------------------------------------------------------


@DETECTORS.register("checksum")
class TensorChecksums(Detector):
    """A checksum per tensor over the stored bytes of every parameter and buffer (``harness.fingerprint``).

    Cost: one read of every weight per check; references ~40 bytes per tensor.
    """

    name = "checksum"
    OPTIONS = ()

    def __init__(self) -> None:
        self._refs: dict[str, tuple[int, ...]] | None = None

    def calibrate(self, model: nn.Module) -> TensorChecksums:
        self._refs = fingerprint(model)
        return self

    def flagged(self, model: nn.Module) -> list[str]:
        """The names of the tensors whose checksum differs from the clean one (sorted; empty when none): which
        tensors a recovery has to restore (``harness.detection.recovery``)."""
        self._need(self._refs)
        return changed(self._refs, fingerprint(model))

    changed = flagged  # the former name

    def fired(self, model: nn.Module, *, batch: int = 1) -> bool:
        return bool(self.flagged(model))

    def cost(self) -> DetectorCost:
        self._need(self._refs)
        return DetectorCost(0, 1, sum(8 * len(v) for v in self._refs.values()))


# -- range check ---------------------------------------------------------------------------------


@DETECTORS.register("range")
class RangeCheck(Detector):
    """Each parameter's clean ``[min, max]``; a weight outside it (or NaN) fires.

    Cost: one read of every weight per check (stops at the first tensor out of range); references two values per
    parameter.
    """

    name = "range"
    OPTIONS = ()

    def __init__(self) -> None:
        self._refs: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    @staticmethod
    def _params(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
        return [(n, p.detach()) for n, p in model.named_parameters() if not p.is_meta and p.numel()]

    def calibrate(self, model: nn.Module) -> RangeCheck:
        self._refs = {n: torch.aminmax(p) for n, p in self._params(model)}
        return self

    def outside(self, model: nn.Module) -> str | None:
        """The first parameter with a weight outside its clean range (or NaN), else None."""
        self._need(self._refs)
        for name, p in self._params(model):
            lo, hi = self._refs[name]
            low, high = torch.aminmax(p)
            if not bool((low >= lo) & (high <= hi)):  # NaN compares False: fires
                return name
        return None

    def fired(self, model: nn.Module, *, batch: int = 1) -> bool:
        return self.outside(model) is not None

    def cost(self) -> DetectorCost:
        self._need(self._refs)
        return DetectorCost(0, 1, sum(2 * lo.element_size() for lo, _ in self._refs.values()))
