"""lm-eval task metrics of each model, clean and under one perturbation (``-k evaluate``).

Cells: model x task (``--tasks``, default the offline ``pydoc_rolling,pydoc_cloze``) x {clean,
perturbed}, the perturbation chosen by ``--perturb``:

- ``super_weight_zero`` (default): zero the model's super weight. Published coordinates
  (``harness.scoring.known``) when the model has them; otherwise the top site of the ``activation``
  scorer after one detection round (the paper's |activation| > 50 thresholds), or, when no spike
  passes them (tiny random models), the largest-|output| down-projection weight of that round.
- ``noise:STD``: Gaussian noise of STD x each matrix's own standard deviation on every linear
  weight of every block, seeded by ``--seed``.

The model is evaluated in place (no reload, no copy) through :mod:`harness.metrics.lmeval`; hub
tasks skip with the reason on a machine without the hub.

Records (suite ``evaluate``, ``method`` = task, ``perturbation`` = null when clean, else the
perturbation's JSON): ``acc``, ``acc_norm`` (multiple choice), ``word_perplexity``,
``byte_perplexity``, ``bits_per_byte`` (lm-eval's, rolling) and ``token_perplexity`` (ours on the
same documents), with ``extra`` = lm-eval metric key, documents, stderr, lm-eval version and the
BOS/prefix conventions; perturbed rows carry ``clean_value``. ``seconds`` of each evaluation.

Claims (``suites/bounds/evaluate.toml``, per model; offline tasks only):
``clean_acc_min`` and ``clean_word_perplexity_max`` (the clean model is sane), and, per
perturbation ``P`` (``super_weight_zero``, ``noise_0p01`` ...), ``P_acc_drop_min`` (clean acc -
perturbed acc of ``pydoc_cloze``) and ``P_word_ppl_ratio_min`` (perturbed / clean word perplexity
of ``pydoc_rolling``).
"""

from __future__ import annotations

import math
import time

import pytest

from harness.errors import OfflineError
from harness.metrics import lmeval

SUPER_WEIGHT_ROUNDS = 1


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "task" in metafunc.fixturenames:
        names = metafunc.config.getoption("esa_tasks")
        tasks = list(dict.fromkeys(t for n in names for t in lmeval.ALIASES.get(n, (n,))))  # "offline" -> both
        metafunc.parametrize("task", tasks, ids=tasks)


def _evaluator(esa, lm) -> lmeval.LMEvaluator:
    """One lm-eval evaluator per model, built on the clean model and shared by the session."""
    return esa.cached((lm.name, "lmeval-evaluator"), lambda: lmeval.LMEvaluator(lm.model, lm.tokenizer))


def _loadable(task: str) -> None:
    try:
        lmeval.load_task(task)
    except OfflineError as err:
        pytest.skip(str(err))


def _clean_rows(esa, lm, task: str) -> tuple[list[lmeval.TaskMetric], float]:
    def measure():
        start = time.perf_counter()
        rows = _evaluator(esa, lm).run([task])
        return rows, time.perf_counter() - start

    return esa.cached((lm.name, "lmeval-clean", task), measure)


def _claim_prefix(spec) -> str:
    return str(spec).replace(":", "_").replace(".", "p").replace("-", "m")


def _super_weight(esa, lm):
    """(FaultSite, how it was found) of ``lm``'s super weight, found once per session."""

    def find():
        from harness.scoring import score
        from harness.scoring.known import known_super_weights

        known = known_super_weights(lm)
        if known:
            return known[0].site, {"source": "published", "hub_id": known[0].hub_id}
        found = score(lm, "activation", max_rounds=SUPER_WEIGHT_ROUNDS)
        how = {"source": "activation scorer", "rounds": SUPER_WEIGHT_ROUNDS, "thresholds": "default"}
        if not found.sites:
            found = score(lm, "activation", max_rounds=SUPER_WEIGHT_ROUNDS, input_threshold=0, output_threshold=0)
            how["thresholds"] = "none (no spike above the defaults): largest |output|"
        top = found.top_k(1)[0]
        return top.site, {**how, "score": top.score, "value": top.value}

    return esa.cached((lm.name, "super-weight"), find)


def _perturbation(esa, lm, rng):
    """(context manager, JSON description) for ``--perturb``."""
    from harness.faults import ablate, add_noise

    spec = esa.options.extra["perturb"]
    if spec.kind == "super_weight_zero":
        site, how = _super_weight(esa, lm)
        p = ablate(lm.model, site, "zero")
        return p, {**p.describe(), "name": str(spec), "site": site.to_dict(), **how}
    from harness.models import select

    p = add_noise(lm.model, select(lm.model, components="linear"), spec.level, scale="std", generator=rng)
    return p, {**p.describe(), "name": str(spec), "components": "linear"}


def test_clean(lm, task, recorder, esa):
    _loadable(task)
    rows, seconds = _clean_rows(esa, lm, task)
    for row in rows:
        recorder.record(row.metric, row.value, **row.columns())
    recorder.record("seconds", seconds, method=task)
    values = {r.metric: r.value for r in rows if r.task == task}
    assert rows and all(math.isfinite(r.value) for r in rows), "the clean model gives finite metrics"
    if task == lmeval.CLOZE_TASK:
        recorder.claim("clean_acc_min", values["acc"], method=task)
    elif task == lmeval.ROLLING_TASK:
        recorder.claim("clean_word_perplexity_max", values["word_perplexity"], method=task)


def test_perturbed(lm, task, recorder, esa, rng):
    _loadable(task)
    clean_rows, _ = _clean_rows(esa, lm, task)
    clean = {(r.task, r.metric): r.value for r in clean_rows}
    evaluator = _evaluator(esa, lm)
    perturbation, described = _perturbation(esa, lm, rng)
    start = time.perf_counter()
    with perturbation:
        rows = evaluator.run([task])
    seconds = time.perf_counter() - start
    for row in rows:
        recorder.record(row.metric, row.value, clean_value=clean.get((row.task, row.metric)),
                        perturbation=described, **row.columns())
    recorder.record("seconds", seconds, method=task, perturbation=described)
    values = {r.metric: r.value for r in rows if r.task == task}
    prefix = _claim_prefix(esa.options.extra["perturb"])
    if task == lmeval.CLOZE_TASK:
        drop = clean[(task, "acc")] - values["acc"]
        recorder.claim(f"{prefix}_acc_drop_min", drop, clean_value=clean[(task, "acc")], method=task,
                       perturbation=described)
    elif task == lmeval.ROLLING_TASK:
        ratio = values["word_perplexity"] / clean[(task, "word_perplexity")]
        recorder.claim(f"{prefix}_word_ppl_ratio_min", ratio, clean_value=clean[(task, "word_perplexity")],
                       method=task, perturbation=described)
