"""lm-eval task metrics of each model, clean and under one perturbation (``-k evaluate``).

Cells: model x task (``--tasks``, default the offline ``pydoc_rolling,pydoc_cloze``) x {clean,
perturbed}, the perturbation chosen by ``--perturb``:

- ``super_weight_zero`` (default): zero the model's strongest super weight, from the session's one
  detection (``fixtures.superweights``); where none is detected (tiny random models) its strongest
  candidate (the claims about it are then not applicable).
- ``noise:STD``: Gaussian noise of STD x each matrix's own standard deviation on every linear
  weight of every block, seeded by ``--seed``.

The model is evaluated in place (no reload, no copy) through :mod:`harness.metrics.lmeval`; hub
tasks skip with the reason on a machine without the hub. The clean evaluation of a task keeps, for each of
its forward passes, the input of the block the perturbation will touch first, and the perturbed evaluation
starts there (``harness.campaign.prefix.CallPrefix``; bit-identical to a full recompute: smollm2-135m's super
weight is in block 11 of 30, so its perturbed forwards skip 11 blocks).

Records (suite ``evaluate``, ``method`` = task, ``perturbation`` = null when clean, else the
perturbation's JSON): ``acc``, ``acc_norm`` (multiple choice), ``word_perplexity``,
``byte_perplexity``, ``bits_per_byte`` (lm-eval's, rolling) and ``token_perplexity`` (ours on the
same documents), with ``extra`` = lm-eval metric key, documents, stderr, lm-eval version and the
BOS/prefix conventions; perturbed rows carry ``clean_value``. ``seconds`` of each evaluation.

The claims are declared below (relations need no per-model number; bounds in
``suites/bounds/evaluate.toml``).
"""

from __future__ import annotations

import contextlib
import math
import time

import pytest

from harness.campaign import touched_params
from harness.campaign.prefix import CallPrefix, block_index
from harness.claims import ClaimSet, Comparison, greater
from harness.errors import OfflineError
from harness.metrics import lmeval
from harness.metrics.chance import chance_accuracy
from harness.models.archmap import arch_map
from harness.stats import wilson

CLAIMS = ClaimSet("evaluate")
SW_FACTOR = 2.0
ABOVE_CHANCE = CLAIMS.relation(
    "clean_acc_above_chance", "The clean model's multiple-choice accuracy is above chance: the Wilson 95% lower "
    "limit of acc over the task's items exceeds the chance level (mean 1 / choices)",
    statistic="acc", margin="Wilson 95% lower limit at the task's item count")
SW_ZERO_RAISES_PPL = CLAIMS.relation(
    "super_weight_zero_raises_word_ppl", f"Zeroing the super weight raises word perplexity at least {SW_FACTOR:g}x",
    statistic="word_perplexity", margin=f"stated minimum effect x{SW_FACTOR:g} (Yu et al.: zeroing it destroys "
    "the model)")
CLEAN_ACC = CLAIMS.bound("clean_acc", "Clean pydoc_cloze accuracy stays at its measured level", side="min",
                         statistic="acc", seeded=False)
CLEAN_WORD_PPL = CLAIMS.bound("clean_word_perplexity", "Clean pydoc_rolling word perplexity stays at its measured "
                              "level", side="max", statistic="word_perplexity", seeded=False)
SW_ZERO_ACC_DROP = CLAIMS.bound("super_weight_zero_acc_drop", "Zeroing the super weight costs pydoc_cloze accuracy "
                                "at least its measured drop", side="min", statistic="acc drop", seeded=False,
                                null=0.0)
SW_ZERO_PPL_RATIO = CLAIMS.bound("super_weight_zero_word_ppl_ratio", "Zeroing the super weight raises pydoc_rolling "
                                 "word perplexity at least its measured ratio", side="min", statistic="word ppl ratio",
                                 seeded=False, null=1.0)


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


def _clean_rows(esa, lm, task: str) -> tuple[list[lmeval.TaskMetric], float, CallPrefix]:
    """(rows, seconds, the kept prefix for the perturbed evaluation) of the clean model on ``task``, once."""
    def measure():
        prefix = CallPrefix(lm.model, _first_block(esa, lm))
        start = time.perf_counter()
        with prefix.record():
            rows = _evaluator(esa, lm).run([task])
        return rows, time.perf_counter() - start, prefix

    return esa.cached((lm.name, "lmeval-clean", task), measure)


def _first_block(esa, lm) -> int:
    """The first decoder block ``--perturb`` touches (0: noise on every block, or no super weight to zero)."""
    if esa.options.extra["perturb"].kind != "super_weight_zero":
        return 0
    try:
        site, _ = _super_weight(esa, lm)
    except pytest.skip.Exception:
        return 0
    return block_index(arch_map(lm.model).blocks, site.param) or 0


def _replayable(prefix: CallPrefix, perturbation) -> bool:
    """Whether ``perturbation`` leaves blocks ``0..prefix.start-1`` untouched, so the kept prefix holds."""
    params = touched_params(perturbation)
    blocks = [block_index(arch_map(prefix.model).blocks, p) for p in params or ()]
    return bool(blocks) and all(b is not None and b >= prefix.start for b in blocks)


def _super_weight(esa, lm):
    """(FaultSite, how it was found): the strongest detected super weight, else the strongest candidate."""
    from fixtures.superweights import shared_detection

    detection = shared_detection(esa, lm)
    if detection:
        return detection.sites[0].site, {**detection.describe(), "source": "detected"}
    if detection.candidate is None:
        pytest.skip(f"the super-weight detector scanned no block of {lm.name}")
    cand = detection.candidate
    return cand.site, {**detection.describe(), "source": "candidate below the detector's factor",
                       "strength": cand.strength}


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
    rows, seconds, _ = _clean_rows(esa, lm, task)
    for row in rows:
        recorder.record(row.metric, row.value, **row.columns())
    recorder.record("seconds", seconds, method=task)
    values = {r.metric: r.value for r in rows if r.task == task}
    assert rows and all(math.isfinite(r.value) for r in rows), "the clean model gives finite metrics"
    if task == lmeval.CLOZE_TASK:
        acc = next(r for r in rows if r.task == task and r.metric == "acc")
        recorder.claim(ABOVE_CHANCE, above_chance(acc.value, int(acc.extra["n_docs"]), chance_accuracy(task)),
                       method=task)
        recorder.claim(CLEAN_ACC, values["acc"], method=task)
    elif task == lmeval.ROLLING_TASK:
        recorder.claim(CLEAN_WORD_PPL, values["word_perplexity"], method=task)


def above_chance(acc: float, items: int, chance: float) -> Comparison:
    """Wilson 95% lower limit of ``acc`` over ``items`` above ``chance``."""
    low, high = wilson(round(acc * items), items)
    return Comparison(low > chance, acc, chance, {"test": "wilson_vs_chance", "ci": [low, high], "items": items})


def test_perturbed(lm, task, recorder, esa, rng):
    _loadable(task)
    clean_rows, _, prefix = _clean_rows(esa, lm, task)
    clean = {(r.task, r.metric): r.value for r in clean_rows}
    evaluator = _evaluator(esa, lm)
    perturbation, described = _perturbation(esa, lm, rng)
    start = time.perf_counter()
    with perturbation, prefix.replay() if _replayable(prefix, perturbation) else contextlib.nullcontext():
        rows = evaluator.run([task])
    seconds = time.perf_counter() - start
    prefix.calls.clear()  # the kept outputs served their one perturbed evaluation
    for row in rows:
        recorder.record(row.metric, row.value, clean_value=clean.get((row.task, row.metric)),
                        perturbation=described, **row.columns())
    recorder.record("seconds", seconds, method=task, perturbation=described)
    values = {r.metric: r.value for r in rows if r.task == task}
    spec = esa.options.extra["perturb"]
    if spec.kind != "super_weight_zero":
        for claim in (SW_ZERO_RAISES_PPL, SW_ZERO_ACC_DROP, SW_ZERO_PPL_RATIO):
            recorder.not_applicable(claim, f"--perturb is {spec}, the claim is about super_weight_zero", method=task)
        return
    columns = {"method": task, "perturbation": described}
    if task == lmeval.CLOZE_TASK:
        recorder.claim(SW_ZERO_ACC_DROP, clean[(task, "acc")] - values["acc"], clean_value=clean[(task, "acc")],
                       **columns)
    elif task == lmeval.ROLLING_TASK:
        before, after = clean[(task, "word_perplexity")], values["word_perplexity"]
        if described.get("source") != "detected":
            from fixtures.superweights import shared_detection

            recorder.not_applicable(SW_ZERO_RAISES_PPL, f"{shared_detection(esa, lm).none_reason()}: the candidate "
                                    "was zeroed (its ratio is recorded, the raise is not claimed)", **columns)
        else:
            recorder.claim(SW_ZERO_RAISES_PPL, greater(after, before, factor=SW_FACTOR), clean_value=before,
                           **columns)
        recorder.claim(SW_ZERO_PPL_RATIO, after / before, clean_value=before, **columns)
