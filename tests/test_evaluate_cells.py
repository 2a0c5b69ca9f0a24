"""The evaluate suite's cells (harness.evaluate.cells): the task grid, the above-chance statistic, the
perturbation recipes and their descriptions, the prefix the perturbed evaluation starts from, and the restore."""

from __future__ import annotations

import dataclasses
import math
from types import SimpleNamespace

import pytest
import torch

from harness.evaluate.cells import (
    EvalCells,
    Evaluation,
    Perturbed,
    above_chance,
    first_block,
    grid,
    replayable,
)
from harness.faults import FaultSite, ablate
from harness.fingerprint import changed, fingerprint
from harness.metrics import lmeval
from harness.metrics.lmeval import TaskMetric
from harness.metrics.lmeval_options import PerturbSpec
from harness.models import build_tiny, byte_tokenizer
from harness.recipes import Subject, prepare
from harness.scoring.superweights import Detection, detect

IDS = torch.arange(16).reshape(1, 16)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, Detection]:
    """The tiny random llama and its real detection (no super weight, a candidate)."""
    net = build_tiny("llama").eval().requires_grad_(False)
    return net, detect(net, tokenizer=byte_tokenizer(), name="tiny")


@pytest.fixture(scope="module")
def model(tiny):
    return tiny[0]


@pytest.fixture(scope="module")
def nothing(tiny):
    assert not tiny[1] and tiny[1].candidate is not None
    return tiny[1]


class FakeEvaluator:
    """One forward of the model per run; the metrics are the mean logit and a fixed acc."""

    def __init__(self, model: torch.nn.Module, acc: float = 0.5) -> None:
        self.model, self.acc, self.runs = model, acc, 0

    def run(self, tasks: list[str]) -> list[TaskMetric]:
        self.runs += 1
        with torch.no_grad():
            mean = float(self.model(IDS).logits.mean())
        return [TaskMetric(tasks[0], "word_perplexity", math.exp(mean), None, False, "test"),
                TaskMetric(tasks[0], "acc", self.acc, None, True, "test", {"n_docs": 10})]


def cells_of(model, detection, spec: PerturbSpec) -> EvalCells:
    return EvalCells(SimpleNamespace(model=model), FakeEvaluator(model), spec, 0, lambda: detection)


def test_grid_expands_aliases_keeps_order_and_drops_duplicates():
    assert grid(["offline"]) == list(lmeval.OFFLINE_TASKS)
    assert grid(["pydoc_cloze", "offline", "wikitext"]) == ["pydoc_cloze", "pydoc_rolling", "wikitext"]


def test_above_chance_is_the_wilson_lower_limit():
    assert above_chance(0.9, 100, 0.25).holds
    tie = above_chance(0.25, 100, 0.25)
    assert not tie.holds and tie.detail["items"] == 100
    assert not above_chance(0.5, 4, 0.25).holds  # 2 of 4: the interval reaches below chance


def test_evaluation_reads_the_tasks_own_metrics():
    metrics = (TaskMetric("group", "acc", 0.1, None, True, "t"), TaskMetric("t", "acc", 0.8, None, True, "t",
                                                                          {"n_docs": 50}))
    ev = Evaluation("t", metrics, 1.0)
    assert ev.value("acc") == 0.8 and ev.values()[("group", "acc")] == 0.1 and ev.finite()
    assert not Evaluation("t", (), 0.0).finite()
    assert not dataclasses.replace(ev, metrics=(*metrics, TaskMetric("t", "x", math.inf, None, None, "t"))).finite()


def test_evaluation_rows_are_each_metrics_then_the_seconds():
    clean = Evaluation("t", (TaskMetric("t", "acc", 0.8, None, True, "v"),
                             TaskMetric("t", "word_perplexity", 5.0, None, False, "v")), 2.0)
    rows = clean.rows()
    assert [(r.metric, r.value, r.perturbation, r.clean_value) for r in rows] == [
        ("acc", 0.8, None, None), ("word_perplexity", 5.0, None, None), ("seconds", 2.0, None, None)]
    assert rows[0].columns["method"] == "t" and rows[-1].columns == {"method": "t"}
    after = Evaluation("t", (TaskMetric("t", "acc", 0.5, None, True, "v"),
                             TaskMetric("t", "token_perplexity", 9.0, None, False, "v")), 3.0)
    rows = Perturbed(after, clean, {"kind": "zero"}).rows()
    assert [(r.metric, r.clean_value) for r in rows] == [("acc", 0.8), ("token_perplexity", None), ("seconds", None)]
    assert all(r.perturbation == {"kind": "zero"} for r in rows) and rows[-1].value == 3.0


def test_first_block_and_replay_follow_the_touched_blocks(model):
    site = FaultSite("model.layers.1.mlp.down_proj.weight", (0, 0))
    assert first_block(model, ablate(model, [site], "zero")) == 1
    noise = prepare("std_noise_linear", Subject(model, generator=torch.Generator().manual_seed(0)), level=0.1)
    assert first_block(model, noise.perturbation) == 0
    prefix = SimpleNamespace(model=model, start=1)
    assert replayable(prefix, ablate(model, [site], "zero"))
    assert not replayable(prefix, noise.perturbation)


def test_candidate_zeroed_is_described_and_the_raise_not_claimed(model, nothing):
    cells = cells_of(model, nothing, PerturbSpec("super_weight_zero"))
    before = fingerprint(model)
    clean = cells.clean("t")
    run = cells.perturbed("t")
    assert not changed(before, fingerprint(model)), "the perturbed evaluation restores the model"
    assert run.clean is clean and cells.clean("t") is clean and cells.evaluator.runs == 2
    d = run.description
    assert d["name"] == "super_weight_zero" and d["source"] == "candidate below the detector's factor"
    assert d["site"] == nothing.candidate.site.to_dict() and d["strength"] == nothing.candidate.strength
    assert d["detection"] == nothing.id and d["count"] == 0 and d["elements"] == 1
    assert run.off_target is None and "the candidate was zeroed" in run.raise_not_claimed
    assert run.evaluation.value("word_perplexity") != clean.value("word_perplexity")
    assert run.acc_drop() == 0.0
    assert run.word_ppl_ratio() == run.evaluation.value("word_perplexity") / clean.value("word_perplexity")


def test_detected_super_weight_is_claimed(model, nothing):
    w = model.model.layers[1].mlp.down_proj.weight
    row, col = divmod(int(w.abs().argmax()), w.shape[1])
    found = dataclasses.replace(nothing.candidate, layer=1, param="model.layers.1.mlp.down_proj.weight", row=row,
                                col=col, value=float(w[row, col]))
    detection = dataclasses.replace(nothing, sites=(found,), id="")
    run = cells_of(model, detection, PerturbSpec("super_weight_zero")).perturbed("t")
    assert run.description["source"] == "detected" and run.raise_not_claimed is None
    assert run.description["site"] == {"param": found.param, "index": [row, col], "bits": []}
    assert run.raises_word_ppl(1.0).holds == (run.word_ppl_ratio() >= 1.0)


def test_noise_is_seeded_off_target_and_never_asks_for_the_detection(model):
    def no_detection():
        raise AssertionError("noise needs no detection")

    def run():
        cells = EvalCells(SimpleNamespace(model=model), FakeEvaluator(model), PerturbSpec("noise", 0.1), 3,
                          no_detection)
        return cells.perturbed("t")

    first, again = run(), run()
    assert first.evaluation.values() == again.evaluation.values()
    assert first.description["components"] == "linear" and first.description["name"] == "noise:0.1"
    assert first.description["scale"] == "std" and first.description["level"] == 0.1
    assert first.off_target == "--perturb is noise:0.1, the claim is about super_weight_zero"


def test_no_candidate_is_unperturbable(model, nothing):
    cells = cells_of(model, dataclasses.replace(nothing, candidate=None), PerturbSpec("super_weight_zero"))
    assert "the detector scanned no block" in cells.unperturbable()
    assert cells_of(model, nothing, PerturbSpec("super_weight_zero")).unperturbable() is None
