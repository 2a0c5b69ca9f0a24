"""The model under test, judged once per session before any suite's claims: is it a healthy trained model?

A suite's claims are mostly relative to the model's own clean output (a bit flip's perplexity ratio, a noise
curve, a fine-tune's gain), so they hold on a broken model as on a healthy one: a GGUF dequantized wrongly
(clean perplexity 55,918 instead of 17), a misread rotary base (a few percent). These claims are about the
clean model itself, measured in one forward pass over the evaluation windows the suites evaluate (:func:`measure`:
nothing is kept, so a suite that never needs the clean capture does not hold it), and recorded under the claim
set ``model``:

- ``clean_perplexity`` (bound): at most its regression bound in ``suites/bounds/model.toml`` (derived like every
  bound: two seed-independent runs, margin 5% relative). The only check that sees a break of a few percent.
- ``output_finite``: every clean logit of the evaluation windows is finite.
- ``below_uniform``: perplexity below sqrt(V), the vocabulary's square root: the model removes at least half of
  a uniform guess's log V nats. A trained model's perplexity on text is in the tens (smollm2-135m 17.5 of
  sqrt(49152) = 222; gemma3-270m 16.9 of 512); random weights sit near V.
- ``below_unigram``: perplexity at most half that of a unigram model of the same evaluation tokens, fit to those
  very tokens (in-sample maximum likelihood, the unigram's best case): a model that has lost its context is no
  better than token frequencies (smollm2-135m 17.5 vs 168.4).
- ``top1_above_chance``: the next-token argmax is right more often than the best constant guess (the most
  frequent evaluation token) by at least 10 points (smollm2-135m 0.444 vs 0.057).

The relations catch gross breaks (a scrambled matrix, a wrong layout, a collapse: perplexity in the hundreds or
more) on any model, bounds or not; breaks of a few percent only the bound sees. Random-weight models: every
claim but ``output_finite`` is not applicable (a random model has no healthy perplexity).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from harness.claims import HEALTH_SUITE, ClaimSet, Comparison, greater

SUITE = HEALTH_SUITE  # the claim set's name: rows with suite "model", bounds in suites/bounds/model.toml
UNIGRAM_FACTOR = 2.0
CHANCE_MARGIN = 0.10

CLAIMS = ClaimSet(SUITE)
CLEAN_PERPLEXITY = CLAIMS.bound(
    "clean_perplexity", "Clean perplexity on the evaluation windows stays at its measured level",
    side="max", statistic="perplexity", seeded=False, pretrained_only=True)
OUTPUT_FINITE = CLAIMS.relation(
    "output_finite", "Every clean next-token logit of the evaluation windows is finite",
    statistic="finite positions", pretrained_only=False, seeded=False, margin="all positions; one non-finite fails")
BELOW_UNIFORM = CLAIMS.relation(
    "below_uniform", "Clean perplexity is below the square root of the vocabulary size (at least half of a "
    "uniform guess's log V explained)", statistic="perplexity", seeded=False, margin="sqrt(V): half of log V")
BELOW_UNIGRAM = CLAIMS.relation(
    "below_unigram", f"Clean perplexity is at most 1/{UNIGRAM_FACTOR:g} of a unigram model's fit to the same "
    "evaluation tokens (in-sample)", statistic="perplexity", seeded=False,
    margin=f"stated minimum effect x{UNIGRAM_FACTOR:g}")
TOP1_ABOVE_CHANCE = CLAIMS.relation(
    "top1_above_chance", f"Next-token top-1 accuracy beats the best constant guess by at least "
    f"{CHANCE_MARGIN * 100:g} points", statistic="top1 accuracy", seeded=False,
    margin=f"+{CHANCE_MARGIN:g} absolute over the most frequent token's share")


@dataclass(frozen=True)
class Health:
    """What the health claims are judged on: one pass over the evaluation windows.

    Attributes:
        perplexity: clean perplexity (``harness.metrics.evaluate``'s: the same number as the suites' clean capture).
        vocab: output vocabulary size V.
        unigram_perplexity: perplexity of the evaluation targets under their own token frequencies.
        top1: share of predicted positions whose argmax is the next token.
        chance: share of the most frequent target token (the best constant guess's accuracy).
        finite, positions: predicted positions whose logits are all finite, and all of them.
    """

    perplexity: float
    vocab: int
    unigram_perplexity: float
    top1: float
    chance: float
    finite: int
    positions: int

    def extra(self) -> dict[str, Any]:
        return {"perplexity": self.perplexity, "vocab": self.vocab, "unigram_perplexity": self.unigram_perplexity,
                "top1": self.top1, "chance": self.chance, "finite": self.finite, "positions": self.positions}


def measure(model: torch.nn.Module, windows: torch.Tensor) -> Health:
    """:class:`Health` of ``model`` on ``windows`` (count, length): one forward pass (``evaluate``'s, with its
    batches and reduction), each batch's logits looked at once and dropped. Memory: one batch's logits."""
    from harness.metrics import evaluate

    seen = {"hits": 0, "finite": 0, "vocab": 0}

    def look(logits: torch.Tensor, batch: torch.Tensor) -> None:
        predicted = logits[:, :-1]
        seen["hits"] += int((predicted.argmax(-1).cpu() == batch[:, 1:].cpu()).sum())
        seen["finite"] += int(torch.isfinite(predicted).all(-1).sum())
        seen["vocab"] = logits.shape[-1]

    result = evaluate(model, windows, look=look)
    targets = windows[:, 1:].reshape(-1).cpu()
    counts = torch.bincount(targets)
    p = counts[counts > 0].double() / targets.numel()
    unigram = math.exp(-(p * p.log()).sum().item())
    return Health(float(result.perplexity), seen["vocab"], unigram, seen["hits"] / targets.numel(),
                  counts.max().item() / targets.numel(), seen["finite"], targets.numel())


def evidence(health: Health) -> dict[Any, float | Comparison]:
    """Each health claim's evidence: the bound's number, the relations' comparisons (a non-finite perplexity
    compares as +inf and fails every relation)."""
    ppl = health.perplexity if math.isfinite(health.perplexity) else math.inf
    all_finite = health.finite == health.positions
    return {
        OUTPUT_FINITE: Comparison(all_finite, float(health.finite), float(health.positions),
                                  {"test": "all finite", "non_finite": health.positions - health.finite}),
        BELOW_UNIFORM: greater(math.sqrt(health.vocab), ppl),
        BELOW_UNIGRAM: greater(health.unigram_perplexity, ppl, factor=UNIGRAM_FACTOR),
        TOP1_ABOVE_CHANCE: greater(health.top1, health.chance + CHANCE_MARGIN),
        CLEAN_PERPLEXITY: ppl,
    }


def failure(claim: Any, value: float | None, other: float | None) -> str:
    """A failed health claim in one short line: the measured value and what it was held to."""
    def g(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.6g}"

    if claim is CLEAN_PERPLEXITY:
        return f"clean perplexity {g(value)} is not <= {g(other)}, its bound"
    if claim is OUTPUT_FINITE:
        return f"only {g(value)} of {g(other)} clean positions are finite"
    if claim is BELOW_UNIFORM:
        return f"clean perplexity {g(other)} is not below sqrt(V) = {g(value)}"
    if claim is BELOW_UNIGRAM:
        return f"clean perplexity {g(other)} is not below the unigram's {g(value)} / {UNIGRAM_FACTOR:g}"
    if claim is TOP1_ABOVE_CHANCE:
        return f"top-1 accuracy {g(value)} is not above the best constant guess + {CHANCE_MARGIN:g} = {g(other)}"
    return f"{claim.name} {g(value)} vs {g(other)}"
