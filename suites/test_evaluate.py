"""lm-eval task metrics of each model, clean and under one perturbation (``-k evaluate``).

Cells: model x task (``--tasks``, default the offline ``pydoc_rolling,pydoc_cloze``) x {clean, perturbed}
(``harness.evaluate.cells``), the perturbation chosen by ``--perturb``:

- ``super_weight_zero`` (default): zero the model's strongest super weight, from the session's one
  detection (``esa.detection``); where none is detected (tiny random models) its strongest
  candidate (the claims about it are then not applicable).
- ``noise:STD``: Gaussian noise of STD x each matrix's own standard deviation on every linear
  weight of every block, seeded by ``--seed``.

The model is evaluated in place (no reload, no copy) through :mod:`harness.metrics.lmeval`; hub
tasks skip with the reason on a machine without the hub.

Records (suite ``evaluate``, ``method`` = task, ``perturbation`` = null when clean, else the
perturbation's JSON): ``acc``, ``acc_norm`` (multiple choice), ``word_perplexity``,
``byte_perplexity``, ``bits_per_byte`` (lm-eval's, rolling) and ``token_perplexity`` (ours on the
same documents), with ``extra`` = lm-eval metric key, documents, stderr, lm-eval version and the
BOS/prefix conventions; perturbed rows carry ``clean_value``. ``seconds`` of each evaluation.

The claims are declared below (relations need no per-model number; bounds in
``suites/bounds/evaluate.toml``).
"""

from __future__ import annotations

import pytest

from harness.claims import ClaimSet
from harness.evaluate.cells import EvalCells, grid, unavailable
from harness.metrics import lmeval
from harness.session import Grid

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


GRIDS = (Grid("task", lambda o: grid(o.lmeval.tasks)),)


@pytest.fixture
def cells(esa, lm, task) -> EvalCells:
    """This model's evaluations, shared by the session (a hub task without the hub skips)."""
    if reason := unavailable(task):
        pytest.skip(reason)
    return EvalCells.of(esa, lm)


def test_clean(task, recorder, cells):
    clean = cells.clean(task)
    recorder.rows(clean.rows())
    assert clean.finite(), "the clean model gives finite metrics"
    if task == lmeval.CLOZE_TASK:
        recorder.claim(ABOVE_CHANCE, clean.above_chance(), method=task)
        recorder.claim(CLEAN_ACC, clean.value("acc"), method=task)
    elif task == lmeval.ROLLING_TASK:
        recorder.claim(CLEAN_WORD_PPL, clean.value("word_perplexity"), method=task)


def test_perturbed(task, recorder, cells):
    if reason := cells.unperturbable():
        pytest.skip(reason)
    run = cells.perturbed(task)
    recorder.rows(run.rows())
    if run.off_target:
        for claim in (SW_ZERO_RAISES_PPL, SW_ZERO_ACC_DROP, SW_ZERO_PPL_RATIO):
            recorder.not_applicable(claim, run.off_target, method=task)
        return
    columns = {"method": task, "perturbation": run.description}
    if task == lmeval.CLOZE_TASK:
        recorder.claim(SW_ZERO_ACC_DROP, run.acc_drop(), clean_value=run.clean.value("acc"), **columns)
    elif task == lmeval.ROLLING_TASK:
        before = run.clean.value("word_perplexity")
        if run.raise_not_claimed:
            recorder.not_applicable(SW_ZERO_RAISES_PPL, run.raise_not_claimed, **columns)
        else:
            recorder.claim(SW_ZERO_RAISES_PPL, run.raises_word_ppl(SW_FACTOR), clean_value=before, **columns)
        recorder.claim(SW_ZERO_PPL_RATIO, run.word_ppl_ratio(), clean_value=before, **columns)
