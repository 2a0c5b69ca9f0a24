"""Walking skeleton: clean perplexity of each selected model, recorded and checked against its bound.

Records (suite ``smoke``): ``perplexity`` (with ``extra`` = windows, window length, tokens, corpus,
BOS convention), ``seconds`` of the evaluation, and the claims below.
"""

from __future__ import annotations

import math

from harness.claims import ClaimSet

CLAIMS = ClaimSet("smoke")
CLEAN_PPL = CLAIMS.bound("clean_perplexity", "Clean perplexity on the default corpus stays at its measured level",
                         side="max", statistic="perplexity", seeded=False)


def test_clean_perplexity(lm, eval_windows, clean, recorder, esa, timer):
    from harness.data import window_metadata
    from harness.metrics import evaluate

    with timer() as t:
        result = evaluate(lm.model, eval_windows)
    assert result.perplexity == clean.result.perplexity, "evaluation is not deterministic"
    extra = {**window_metadata(lm.tokenizer, eval_windows), "tokens": result.n_tokens,
             "corpus": esa.options.corpus or "pydoc-topics"}
    recorder.record("perplexity", result.perplexity, extra=extra)
    recorder.record("seconds", t.seconds, extra=extra)
    assert math.isfinite(result.perplexity) and not result.collapsed, f"clean {lm.name} output is not finite"
    recorder.claim(CLEAN_PPL, result.perplexity, extra=extra)
