"""lm-eval's overhead on the offline rolling task, against a plain forward pass over the same tokens.

Group ``lmeval-overhead-<model>``, three measurements of scoring the ``pydoc_rolling`` documents:

- ``plain``: one forward pass per lm-eval rolling window (lm-eval's own window function, the same
  tokens lm-eval scores), float32 log-softmax and gather
  (:func:`harness.metrics.lmeval.rolling_loglikelihood`). The floor.
- ``hflm``: ``HFLM.loglikelihood_rolling`` on the same documents: lm-eval's tokenization, windows,
  batching and padding.
- ``task``: the whole task through ``simple_evaluate`` (requests, metrics, environment info), the
  loaded task reused as the adapter does.

Each stores ``ratio_to_plain`` (its mean / the plain mean, timed in the same session) in
``extra_info``; the issue's target is under 1.10. No wall time is asserted.
"""

from __future__ import annotations

import json
import logging
import time

import pytest

from harness.metrics import lmeval, taskbuild

log = logging.getLogger(__name__)
ROUNDS = 3


def _docs() -> list[str]:
    lines = (taskbuild.TASKS_DIR / f"{lmeval.ROLLING_TASK}.jsonl").read_text().splitlines()
    return [json.loads(line)["text"] for line in lines]


@pytest.fixture
def setup(esa, lm):
    """(evaluator, documents, their tokens) for ``lm``, shared with the rest of the session."""
    evaluator = esa.cached((lm.name, "lmeval-evaluator"), lambda: lmeval.LMEvaluator(lm.model, lm.tokenizer))
    docs = _docs()
    tokens = [lm.tokenizer(d, add_special_tokens=False, verbose=False)["input_ids"] for d in docs]
    lmeval.load_task(lmeval.ROLLING_TASK)
    return evaluator, docs, tokens


def _plain(lm, evaluator, tokens):
    hflm = evaluator.hflm(rolling=True)
    return sum(lmeval.rolling_loglikelihood(lm.model, t, hflm.prefix_token_id, hflm.max_length) for t in tokens)


def _hflm(evaluator, docs):
    from lm_eval.api.instance import Instance

    requests = [Instance("loglikelihood_rolling", {}, (d,), i) for i, d in enumerate(docs)]
    with lmeval.quiet_lmeval():
        return sum(evaluator.hflm(rolling=True).loglikelihood_rolling(requests, disable_tqdm=True))


def _task(evaluator):
    return evaluator.run([lmeval.ROLLING_TASK], token_perplexity=False)


@pytest.fixture
def plain_mean(esa, lm, setup):
    """``plain_mean(measured=None)``: mean seconds of the plain pass for this model and session:
    the first ``measured`` given (test_plain_forward's), else ``ROUNDS`` runs timed here."""
    evaluator, _, tokens = setup

    def get(measured: float | None = None) -> float:
        def measure() -> float:
            if measured is not None:
                return measured
            start = time.perf_counter()
            for _ in range(ROUNDS):
                _plain(lm, evaluator, tokens)
            return (time.perf_counter() - start) / ROUNDS

        return esa.cached((lm.name, "lmeval-bench-plain"), measure)

    return get


def _run(benchmark, fn, plain_mean, name: str, lm) -> None:
    benchmark.group = f"lmeval-overhead-{lm.name}"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1)
    if benchmark.stats is None:  # --benchmark-disable (CI): ran once as a test, nothing timed
        return
    mean = benchmark.stats.stats.mean
    ratio = mean / plain_mean(mean if name == "plain" else None)
    benchmark.extra_info["ratio_to_plain"] = ratio
    log.info("%s on %s: %.3f x the plain forward pass", name, lm.name, ratio)


def test_plain_forward(benchmark, lm, setup, plain_mean):
    evaluator, _, tokens = setup
    _run(benchmark, lambda: _plain(lm, evaluator, tokens), plain_mean, "plain", lm)


def test_hflm_loglikelihood_rolling(benchmark, lm, setup, plain_mean):
    evaluator, docs, _ = setup
    _run(benchmark, lambda: _hflm(evaluator, docs), plain_mean, "hflm", lm)


def test_simple_evaluate_task(benchmark, lm, setup, plain_mean):
    evaluator, _, _ = setup
    _run(benchmark, lambda: _task(evaluator), plain_mean, "task", lm)
