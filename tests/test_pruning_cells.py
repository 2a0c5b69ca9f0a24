"""Cells of the pruning, selective-pruning and compare-sensitivity suites: presets, grids, the session memo, the
measuring on a tiny model and the named statistics."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from harness.data import load_corpus, token_windows
from harness.errors import HarnessError
from harness.fingerprint import changed, fingerprint
from harness.metrics import EvalResult, evaluate, make_reference
from harness.models import load_model, num_layers
from harness.pruning import cells as P
from harness.pruning import selective_cells as S
from harness.pruning.options import PruningOptions
from harness.scoring import compare_cells as C
from harness.scoring.agreement import Scored
from tests.fake_session import FakeSession


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def windows(tiny):
    return token_windows(tiny.tokenizer, load_corpus().calib_docs, 16, 2)


@pytest.fixture(scope="module")
def clean(tiny, windows):
    reference = make_reference(tiny.model, windows)
    return SimpleNamespace(result=evaluate(tiny.model, windows, reference), reference=reference)


# -- pruning ------------------------------------------------------------------------------------


def test_pruning_preset_grid_is_the_presets_grid_with_the_options_given():
    quick = P.PRESETS["quick"]
    assert P.preset_grid("quick") == P.grid(quick.scorers, quick.sparsities, quick.granularities)
    cells = P.preset_grid("full", scorers=("wanda",), granularities=("2:4",))
    assert cells == [P.PruneCell("wanda", 0.5, "2:4")]
    assert len(P.preset_grid("full")) > len(P.preset_grid("quick"))
    with pytest.raises(HarnessError, match="quick"):
        P.preset_grid("fast")


def test_pruning_cells_of_is_memoized_and_shares_the_score_slot(tiny, windows, clean, tmp_path):
    esa = FakeSession(tmp_path, windows=windows, pruning=PruningOptions(method="mean"))
    cells = P.PruningCells.of(esa, tiny)
    assert P.PruningCells.of(esa, tiny) is cells
    assert cells.method == "mean" and cells.scores is P.ScoreSlot.of(esa, tiny)
    assert all(key[0] == tiny.name for key in esa.memo)
    assert esa.detections == 0  # the detection is asked for on first need only


def test_a_pruning_cell_is_measured_once_restores_the_model_and_counts_super_weights(tiny, windows, clean, tmp_path):
    esa = FakeSession(tmp_path, windows=windows)
    cells = P.PruningCells.of(esa, tiny)
    before = fingerprint(tiny.model)
    cell = P.PruneCell("magnitude+protect", 0.5, "row")
    measured = cells.measure(cell)
    assert not changed(before, fingerprint(tiny.model))
    assert cells.measure(cell) is measured and esa.detections == 1
    assert measured.extra["sparsity"] == pytest.approx(0.5, abs=P.rounding(tiny, "row"))
    assert measured.extra["super_weights_pruned"] == 0
    assert measured.perturbation == {"kind": "prune", "scorer": "magnitude", "sparsity": 0.5, "granularity": "row",
                                     "method": "zero", "protected": True}
    assert cells.detected().none_reason()


def _result(perplexity: float, kl: float | None = None, top1: float | None = None) -> EvalResult:
    return EvalResult(perplexity, math.log(perplexity), 10, False, kl, top1)


def test_a_pruning_cells_rows_are_its_metrics_against_the_clean_model():
    summary = {k: 0.5 for k in P.SUMMARY}
    cell = P.PruneCell("wanda+protect", 0.5, "row")
    measured = P.CellResult(cell, _result(6.0, 0.2, 0.9), 1.5, summary, 0, {"kind": "prune"}, _result(4.0))
    rows = measured.rows()
    assert [(r.metric, r.value) for r in rows] == [("perplexity", 6.0), ("ppl_ratio", 1.5), ("kl", 0.2),
                                                   ("top1", 0.9), ("seconds", 1.5)]
    assert rows[0].clean_value == 4.0 and all(r.clean_value is None for r in rows[1:])
    assert all(r.columns == {"method": "wanda+protect"} and r.perturbation == {"kind": "prune"} for r in rows)
    assert all(r.extra == measured.extra for r in rows) and measured.extra["super_weights_pruned"] == 0
    [row] = P.Reloaded(5.0, 5.0, 5.0, [], {"kind": "prune"}, "wanda", 4.0).rows()
    assert (row.metric, row.value, row.clean_value, row.columns) == ("perplexity", 5.0, 4.0, {"method": "wanda"})
    assert row.extra == {"reloaded": True, "measured_before_saving": 5.0, "via_from_pretrained": 5.0}


def test_saved_pruned_model_reloads_with_the_same_perplexity(tiny, windows, clean, tmp_path):
    cells = P.PruningCells.of(FakeSession(tmp_path, windows=windows), tiny)
    before = fingerprint(tiny.model)
    saved = cells.save_and_reload(P.PruneCell("magnitude", 0.5, "row"), tmp_path / "pruned")
    assert not changed(before, fingerprint(tiny.model))
    assert saved.via_from_pretrained == saved.before_saving == saved.via_zoo
    assert "config.json" in saved.files and saved.perturbation["scorer"] == "magnitude"
    assert saved.method == "magnitude" and saved.clean_perplexity == cells.clean.perplexity


# -- selective pruning --------------------------------------------------------------------------


def test_selective_grid_is_the_presets_selections_or_the_one_the_options_name():
    assert S.grid("quick") == [(s, sel) for s in S.SCORERS for sel in S.SELECTIONS[:2]]
    assert S.grid("full", ("wanda",)) == [("wanda", sel) for sel in S.SELECTIONS]
    [(scorer, cli)] = S.grid("quick", ("magnitude",), component="mlp")
    assert (scorer, cli.id, cli.component, cli.layers, cli.percentile, cli.threshold) == \
        ("magnitude", S.CLI, "mlp", "all", 50.0, None)
    [(_, only_threshold)] = S.grid("quick", ("magnitude",), threshold=0.1)
    assert only_threshold.percentile is None and only_threshold.component == "linear"


def test_missing_layers_names_a_selection_beyond_the_model(tiny):
    beyond = S.Selection("x", "value", str(num_layers(tiny)), 10.0, None)
    assert "layers" in S.missing_layers(tiny, beyond)
    assert S.missing_layers(tiny, S.Selection("x", "value", "0", 10.0, None)) == ""
    assert S.missing_layers(tiny, S.Selection(S.CLI, "value", "99", 10.0, None)) == ""  # the options' own


def _selective(clean_text: list[list[int]], pruned_text: list[list[int]]) -> S.SelectiveResult:
    summary = {"sparsity": 0.3, "model_sparsity": 0.1, "pruned": 30, "matrices": 2}
    example = {"prompt": "a", "clean_output": "x", "perturbed_output": "y"}
    return S.SelectiveResult("magnitude", S.SELECTIONS[0], _result(6.0, 0.2, 0.9), summary, clean_text, pruned_text,
                             {"kind": "selective_prune"}, _result(4.0), ["a", "b"], 2, example)


def test_excess_perplexity_and_identical_share():
    ratio = SimpleNamespace(ratio_to=lambda clean: 3.0)
    assert S.excess_perplexity(ratio, None) == 2.0
    result = _selective([[1, 2], [3, 4]], [[1, 2], [3, 5]])
    assert [d.identical for d in result.divergences()] == [True, False]
    assert result.identical_share == 0.5 and result.ratio == 1.5 and result.excess == 0.5


def test_a_selective_cells_rows_are_its_metrics_then_per_prompt_divergence():
    result = _selective([[1, 2], [3, 4]], [[1, 2], [3, 5]])
    rows = result.rows()
    assert [r.metric for r in rows] == ["perplexity", "ppl_ratio", "kl", "top1", "first_diff_token",
                                        "token_edit_distance", "first_diff_token", "token_edit_distance",
                                        "identical_generations"]
    assert [r.clean_value for r in rows[:3]] == [4.0, 4.0, None] and rows[1].value == 1.5
    assert rows[1].extra == {**result.extra, **result.example} and rows[0].extra == result.extra
    assert rows[4].value == 2 and rows[4].extra == {"trial": 0, "prompt": "a", "identical": True}
    assert rows[6].value == 1 and rows[7].extra == {"trial": 1, "prompt": "b", "length": 2}
    assert rows[-1].value == 0.5 and rows[-1].extra == {"prompts": 2, "tokens": 2}
    assert all(r.columns == {"method": "magnitude"} and r.perturbation == {"kind": "selective_prune"} for r in rows)


def test_a_selective_cell_is_measured_once_and_written_beside_the_clean_generations(tiny, windows, tmp_path):
    esa = FakeSession(tmp_path, windows=windows)
    cells = S.SelectiveCells.of(esa, tiny)
    assert S.SelectiveCells.of(esa, tiny) is cells
    assert ("corpus", "builtin") in esa.memo and len(cells.prompts) == S.PRESETS["quick"].prompts
    cells.prompts, cells.new_tokens = cells.prompts[:1], 4  # keep the generation short
    before = fingerprint(tiny.model)
    measured = cells.measure("magnitude", S.Selection("mlp-0-p50", "mlp", "0", 50.0, None))
    assert not changed(before, fingerprint(tiny.model))
    assert cells.measure("magnitude", S.Selection("mlp-0-p50", "mlp", "0", 50.0, None)) is measured
    assert measured.extra["cell"] == "mlp-0-p50" and 0 < measured.extra["model_sparsity"] < 0.5
    assert set(measured.example) == {"prompt", "clean_output", "perturbed_output"}
    assert measured.clean is cells.clean and measured.prompts == cells.prompts and measured.new_tokens == 4
    path = cells.write_comparison(measured)
    assert "magnitude mlp-0-p50" in path.read_text()


# -- compare sensitivity ------------------------------------------------------------------------


def test_compare_presets_and_methods():
    assert C.PRESETS["quick"].options("hessian") == {"probes": 2}
    assert C.PRESETS["full"].options("integrated") == {"steps": 8}
    assert C.PRESETS["quick"].options("magnitude") == {}
    assert C.methods("quick", ("wanda", "magnitude")) == ("wanda", "magnitude")
    assert "magnitude" in C.methods("full")


def _scored(method: str, top: set, sampled: torch.Tensor | None, numel: int = 10_000) -> Scored:
    return Scored(method, 0.0, None, {}, top, sampled, numel)


def test_agreement_statistics_and_the_relations_they_decide():
    same = torch.arange(200.0)
    a = _scored("a", {("w", (i,)) for i in range(100)}, same)
    b = _scored("b", {("w", (i,)) for i in range(50, 150)}, same)
    found = C.agreement(a, b, 100)
    assert (found.method, found.common, found.jaccard, found.sample) == ("a|b", 50, 50 / 150, 200)
    assert found.rho == pytest.approx(1.0)
    assert found.random_overlap == 1.0 and found.random_overlap_p < 1e-3
    assert found.jaccard_extra()["random_overlap_p"] == found.random_overlap_p
    assert C.top_k_overlap(found, 1e-3).holds and C.ranks_agree(found).holds
    assert not C.top_k_overlap(found, found.random_overlap_p).holds  # strict: p must be below
    reversed_ranks = C.agreement(a, _scored("b", b.top, -same), 100)
    assert reversed_ranks.rho == pytest.approx(-1.0) and not C.ranks_agree(reversed_ranks).holds
    sparse = C.agreement(_scored("activation", set(), None), b, 100)
    assert sparse.rho is None and sparse.random_limit is None
    with pytest.raises(ValueError, match="no Spearman sample"):
        C.ranks_agree(sparse)


def test_a_scorings_and_an_agreements_rows():
    cost = SimpleNamespace(forward=2, backward=1, tokens=64)
    scored = Scored("hessian", 3.0, cost, {"probes": 2}, {("w", (0,)), ("w", (1,))}, None, 100)
    measured = C.Scoring(scored, 5)
    assert (measured.method, measured.found, measured.perturbation) == ("hessian", 2, {"kind": "score", "k": 5})
    [row] = measured.rows()
    assert (row.metric, row.value, row.perturbation, row.columns) == ("seconds", 3.0, {"kind": "score", "k": 5},
                                                                     {"method": "hessian"})
    assert row.extra == {"forward": 2, "backward": 1, "tokens": 64, "found": 2, "probes": 2}
    same = torch.arange(200.0)
    a = _scored("a", {("w", (i,)) for i in range(100)}, same)
    found = C.agreement(a, _scored("b", {("w", (i,)) for i in range(50, 150)}, same), 100)
    rows = found.rows()
    assert [(r.metric, r.value) for r in rows] == [("jaccard", found.jaccard), ("spearman", found.rho)]
    assert [r.extra for r in rows] == [found.jaccard_extra(), found.spearman_extra()]
    assert all(r.columns == {"method": "a|b"} and r.perturbation == {"kind": "score", "k": 100} for r in rows)
    sparse = C.agreement(_scored("activation", set(), None), a, 100)
    assert [r.metric for r in sparse.rows()] == ["jaccard"]


def test_compare_cells_score_each_method_once_and_compare_every_pair(tiny, windows, tmp_path):
    esa = FakeSession(tmp_path, windows=windows)
    cells = C.CompareCells.of(esa, tiny)
    assert C.CompareCells.of(esa, tiny) is cells and cells.calib_windows.shape[0] == 2
    found = cells.agreements(("wanda", "magnitude"))
    assert cells.scored("magnitude") is cells.scored("magnitude")
    [pair] = found
    assert pair.method == "magnitude|wanda" and len(cells.scored("wanda").top) == C.PRESETS["quick"].k
    assert cells.measure("wanda").scored is cells.scored("wanda") and cells.measure("wanda").k == C.PRESETS["quick"].k
    assert pair.sample == pytest.approx(C.PRESETS["quick"].sample, rel=0.01)
    assert -1 <= pair.rho <= 1 and not math.isnan(pair.jaccard)


def test_a_cell_that_prunes_nothing_has_no_effect_claim():
    """10% of a tiny model's 4 heads rounds to none: the effect claim does not apply (never a pass, never a fail)."""
    from types import SimpleNamespace

    from harness.pruning.cells import CellResult, PruneCell

    clean = SimpleNamespace(perplexity=10.0, kl=0.0, ratio_to=lambda other: 1.0)
    same = SimpleNamespace(perplexity=10.0, kl=0.0, ratio_to=lambda other: 1.0)
    moved = SimpleNamespace(perplexity=11.0, kl=0.01, ratio_to=lambda other: 1.1)
    cell = PruneCell("magnitude", 0.1, "head")
    nothing = CellResult(cell, same, 0.0, {"pruned": 0}, 0, clean=clean)
    assert "rounds to none" in nothing.effect()
    assert CellResult(cell, moved, 0.0, {"pruned": 64}, 0, clean=clean).effect().holds
    assert not CellResult(cell, same, 0.0, {"pruned": 64}, 0, clean=clean).effect().holds
