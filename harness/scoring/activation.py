"""``activation``: the super-weight detector (:mod:`harness.scoring.superweights`) as a scorer.

This is not a second detector: it runs :func:`~harness.scoring.superweights.detect` and presents
its sites as a sparse :class:`ScoreSet` (score = |output spike|, every other weight 0), so that the
compare and pruning suites can rank it beside the dense scorers. Windows given to :func:`score`
replace the prompts as input (each window is one prompt).

Memory beyond the model: one no-grad forward of the prompt per round (its T·V logits) and the found sites.
"""

from __future__ import annotations

import logging

from harness.errors import HarnessError
from harness.scoring.base import Context, Cost, ScoredSite, ScoreSet, scorer
from harness.scoring.superweights import FACTOR, PROMPTS, ROUNDS, detect

log = logging.getLogger(__name__)


@scorer("activation", components="mlp_down")
def activation(ctx: Context, *, prompt: str = PROMPTS[0], factor: float = FACTOR, rounds: int = ROUNDS) -> ScoreSet:
    """Super weights from down-projection spikes on the same token (Yu et al. 2024; the shared detector).

    The score of a found weight is |output spike| (its super activation); every other weight scores
    0 and ``top_k`` returns only found weights (none, logged, when no block spikes).

    Options:
        prompt: text of the single prompt (needs a LoadedModel's tokenizer; BOS as the tokenizer adds).
        factor: multiple of the model's typical per-token peak both spikes must reach (default 50).
        rounds: most detection rounds (default 1: the untouched model).

    Cost: one forward pass of the prompt per round.
    """
    if ctx.windows is None and ctx.tokenizer is None:
        raise HarnessError("activation needs a prompt and a tokenizer (pass a LoadedModel) or windows=token ids")
    found = detect(ctx.model, prompts=(prompt,), factor=factor, rounds=rounds, tokenizer=ctx.tokenizer,
                   input_ids=ctx.windows, refs=ctx.refs)
    by_layer = {ref.layer: ref for ref in ctx.refs}
    sites = [ScoredSite(s.site, s.layer, by_layer[s.layer].component, s.value, abs(s.output_spike))
             for s in found.sites]
    sites.sort(key=lambda s: -s.score)
    tokens = sum(len(t) for t in found.token_ids)
    return ScoreSet("activation", ctx.refs, Cost(forward=found.rounds_run * len(found.token_ids),
                                                 tokens=found.rounds_run * tokens),
                    ctx.model, sites=sites, details={"detection": found, "spikes": [s.to_dict() for s in found.sites],
                                                     "rounds": found.rounds_run})
