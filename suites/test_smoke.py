"""Walking skeleton: clean perplexity of each selected model, recorded, and the evaluation deterministic.

The model's health (clean perplexity against its bound, above chance, finite) is judged once per session
whatever ``-k`` selects (``harness.health``, ``fixtures.health``): this suite records what it measured.

Records (suite ``smoke``): ``perplexity`` (with ``extra`` = windows, window length, tokens, corpus,
BOS convention) and ``seconds`` of the evaluation.
"""

from __future__ import annotations

import math


def test_clean_perplexity(lm, eval_windows, clean, recorder, esa, timer):
    from harness.data import window_metadata
    from harness.data.corpus import DEFAULT_CORPUS
    from harness.metrics import evaluate

    with timer() as t:
        result = evaluate(lm.model, eval_windows)
    assert result.perplexity == clean.result.perplexity, "evaluation is not deterministic"
    extra = {**window_metadata(lm.tokenizer, eval_windows), "tokens": result.n_tokens,
             "corpus": esa.options.corpus or DEFAULT_CORPUS}
    recorder.record("perplexity", result.perplexity, extra=extra)
    recorder.record("seconds", t.seconds, extra=extra)
    assert math.isfinite(result.perplexity) and not result.collapsed, f"clean {lm.name} output is not finite"
