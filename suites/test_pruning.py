"""Pruning suite: each model pruned by each scorer at each sparsity and granularity, perplexity per cell.

A cell is (scorer, sparsity, granularity). Scorers come from ``harness.scoring`` (``magnitude``,
``wanda``, ``gradient``, ...); ``NAME+protect`` is the same scorer with the model's super weights
(``super_weights.json`` of the super-weights suite, else the ``activation`` scorer) kept. The pruned
model is restored bit-exactly after each cell (checked by the ``lm`` guard).

Options: ``--prune-scorers``, ``--sparsities``, ``--granularity``, ``--prune-method``; the preset
picks the grid when they are not given (quick: magnitude, wanda, gradient, magnitude+protect x 50% x
row, 2:4; full adds taylor and wanda+protect, 10-60% and every granularity).

Records (suite ``pruning``), per cell: ``perplexity``, ``ppl_ratio``, ``kl``, ``top1`` and ``seconds``
(of pruning), with ``method`` = the scorer as named in the cell, ``perturbation`` =
``{kind: prune, scorer, sparsity, granularity, method, protected}`` and ``extra`` = the sparsity
reached (overall, smallest and largest per matrix), weights pruned, protected sites, backup bytes and
``super_weights_pruned`` (how many of the model's super weights the cell pruned).
Claims (``suites/bounds/pruning.toml``, measured per model):

- ``wanda_over_magnitude_row_ppl_ratio_max``, ``wanda_over_magnitude_2of4_ppl_ratio_max``: perplexity
  after Wanda over perplexity after magnitude pruning at 50% per output row, and at 2:4 (Sun et al.:
  Wanda well below magnitude on LLaMA).
- ``protected_over_unprotected_row_ppl_ratio_max`` (and ``_2of4_``): perplexity of magnitude pruning
  at 50% with the super weights protected over without; recorded with ``extra.super_weights_pruned``,
  how many super weights the unprotected pruning removed.
"""

from __future__ import annotations

import math
import time
from typing import Any

import pytest

from harness.pruning.options import (
    FULL_GRANULARITIES,
    FULL_SCORERS,
    FULL_SPARSITIES,
    QUICK_GRANULARITIES,
    QUICK_SPARSITIES,
    SUITE_SCORERS,
)

PROTECT = "+protect"


def _grid(config) -> list[tuple[str, float, str]]:
    opt = config.option
    quick = opt.esa_preset == "quick"
    scorers = opt.esa_prune_scorers or (SUITE_SCORERS if quick else FULL_SCORERS)
    sparsities = opt.esa_sparsities or (QUICK_SPARSITIES if quick else FULL_SPARSITIES)
    granularities = opt.esa_granularity or (QUICK_GRANULARITIES if quick else FULL_GRANULARITIES)
    cells = []
    for scorer in scorers:  # one scorer's cells together: its scores are computed once
        for granularity in granularities:
            if ":" in granularity:
                n, m = map(int, granularity.split(":"))
                cells.append((scorer, round(1 - n / m, 6), granularity))
            else:
                cells.extend((scorer, s, granularity) for s in sparsities)
    return cells


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" in metafunc.fixturenames:
        cells = _grid(metafunc.config)
        metafunc.parametrize("cell", cells, ids=[f"{s}-{p:g}-{g}" for s, p, g in cells])


def _scores(esa, lm, calib_windows, scorer: str):
    """The scorer's ScoreSet, kept for the next cells of the same scorer only (one slot per model)."""
    from harness.scoring import score

    slot = esa.cached((lm.name, "pruning-scores"), dict)
    key = (scorer, tuple(calib_windows.shape), esa.options.corpus)
    if key not in slot:
        slot.clear()
        slot[key] = score(lm, scorer, windows=calib_windows, generator=None)
    return slot[key]


def _super_weights(esa, lm):
    from harness.pruning.protect import super_weight_sites

    # Detected here on the scorer's default prompt, not read from a super_weights.json that another
    # suite may have written with other inputs: the cells must not depend on which suites ran first.
    return esa.cached((lm.name, "pruning-super-weights"), lambda: super_weight_sites(lm, None))


def measure_cell(esa, lm, eval_windows, calib_windows, clean, *, scorer: str, sparsity: float,
                 granularity: str) -> dict[str, Any]:
    """Prune, evaluate, restore; memoized per (model, cell) so the claim tests reuse the cells."""
    from harness.metrics import evaluate
    from harness.pruning import prune

    method = esa.options.extra.get("prune_method") or "zero"
    key = (lm.name, "pruning-cell", scorer, sparsity, granularity, method, tuple(eval_windows.shape),
           tuple(calib_windows.shape), esa.options.corpus)

    def run() -> dict[str, Any]:
        base, protected = scorer.removesuffix(PROTECT), scorer.endswith(PROTECT)
        sites = _super_weights(esa, lm) if protected else None
        scores = _scores(esa, lm, calib_windows, base)
        start = time.perf_counter()
        with prune(lm, scores, None if ":" in granularity else sparsity, granularity=granularity, method=method,
                   protect=sites) as report:
            seconds = time.perf_counter() - start
            result = evaluate(lm.model, eval_windows, clean.reference)
            sw_zero = _count_zero(lm, _super_weights(esa, lm))
        summary = report.to_dict(per_matrix=False)
        return {"result": result, "seconds": seconds, "summary": summary, "super_weights_pruned": sw_zero,
                "perturbation": {"kind": "prune", "scorer": base, "sparsity": sparsity, "granularity": granularity,
                                 "method": method, "protected": protected}}

    return esa.cached(key, run)


def _count_zero(lm, sites) -> int:
    return sum(int(lm.model.get_parameter(s.param)[s.index] == 0) for s in sites)


def test_pruning_cell(lm, eval_windows, calib_windows, clean, recorder, esa, cell):
    scorer, sparsity, granularity = cell
    cell_data = measure_cell(esa, lm, eval_windows, calib_windows, clean, scorer=scorer, sparsity=sparsity,
                             granularity=granularity)
    result, summary = cell_data["result"], cell_data["summary"]
    extra = {k: summary[k] for k in ("sparsity", "model_sparsity", "min_matrix_sparsity", "max_matrix_sparsity",
                                     "pruned", "numel", "protected", "backup_bytes", "matrices")}
    extra["super_weights_pruned"] = cell_data["super_weights_pruned"]
    columns = {"method": scorer, "perturbation": cell_data["perturbation"], "extra": extra}
    clean_ppl = clean.result.perplexity
    recorder.record("perplexity", result.perplexity, clean_value=clean_ppl, **columns)
    recorder.record("ppl_ratio", result.ratio_to(clean.result), **columns)
    recorder.record("kl", result.kl, **columns)
    recorder.record("top1", result.top1, **columns)
    recorder.record("seconds", cell_data["seconds"], **columns)
    # the sparsity asked for is reached in every matrix, up to rounding to whole elements of each group
    if granularity not in ("head", "neuron"):
        assert summary["sparsity"] == pytest.approx(sparsity, abs=_rounding(lm, granularity))
    if granularity != "global":
        assert summary["max_matrix_sparsity"] - summary["min_matrix_sparsity"] <= 2 * _rounding(lm, granularity)
    assert not math.isnan(result.perplexity)


def _rounding(lm, granularity: str) -> float:
    """Largest share a group's count can be off by when rounded to whole elements (or units)."""
    from harness.models import select

    shapes = [lm.model.get_parameter(ref.param).shape for ref in select(lm, components="linear")]
    if granularity == "row":
        return 0.5 / min(shape[1] for shape in shapes) + 1e-9
    if granularity in ("head", "neuron"):
        config = lm.model.config
        heads = config.num_attention_heads
        kv = getattr(config, "num_key_value_heads", None) or heads
        return 0.5 / (min(heads, kv) if granularity == "head" else config.intermediate_size) + 1e-9
    return 1e-3


@pytest.mark.parametrize("granularity", ["row", "2:4"])
def test_wanda_versus_magnitude(lm, eval_windows, calib_windows, clean, recorder, esa, granularity):
    cells = {s: measure_cell(esa, lm, eval_windows, calib_windows, clean, scorer=s, sparsity=0.5,
                          granularity=granularity)
             for s in ("wanda", "magnitude")}
    wanda, magnitude = cells["wanda"]["result"].perplexity, cells["magnitude"]["result"].perplexity
    ratio = wanda / magnitude if math.isfinite(magnitude) else 0.0
    name = f"wanda_over_magnitude_{_tag(granularity)}_ppl_ratio_max"
    recorder.claim(name, ratio, method="wanda", perturbation=cells["wanda"]["perturbation"],
                   extra={"wanda_ppl": wanda, "magnitude_ppl": magnitude, "clean_ppl": clean.result.perplexity})


@pytest.mark.parametrize("granularity", ["row", "2:4"])
def test_protecting_super_weights(lm, eval_windows, calib_windows, clean, recorder, esa, granularity):
    plain = measure_cell(esa, lm, eval_windows, calib_windows, clean, scorer="magnitude", sparsity=0.5,
                         granularity=granularity)
    kept = measure_cell(esa, lm, eval_windows, calib_windows, clean, scorer="magnitude" + PROTECT, sparsity=0.5,
                        granularity=granularity)
    p, k = plain["result"].perplexity, kept["result"].perplexity
    ratio = k / p if math.isfinite(p) else 0.0
    recorder.claim(f"protected_over_unprotected_{_tag(granularity)}_ppl_ratio_max", ratio,
                   method="magnitude" + PROTECT, perturbation=kept["perturbation"],
                   extra={"protected_ppl": k, "unprotected_ppl": p, "super_weights": kept["summary"]["protected"],
                          "super_weights_pruned": plain["super_weights_pruned"]})
    assert kept["super_weights_pruned"] == 0  # protected sites are never pruned


def _tag(granularity: str) -> str:
    return granularity.replace(":", "of")


def test_saved_pruned_model_reloads_with_the_same_perplexity(lm, eval_windows, calib_windows, clean, recorder, esa,
                                                            tmp_path):
    """Saved inside the pruning context (the shared model is restored after), reloaded twice."""
    import gc

    from transformers import AutoModelForCausalLM

    from harness.metrics import evaluate
    from harness.models import load_model
    from harness.pruning import prune, save_model

    with prune(lm, _scores(esa, lm, calib_windows, "wanda"), 0.5, granularity="row") as report:
        measured = evaluate(lm.model, eval_windows).perplexity
        path = save_model(lm, tmp_path / "pruned", report=report, metadata={"source_model": lm.name})
    assert not [p for p in path.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".pkl")]
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=lm.dtype).eval()
    via_hf = evaluate(hf, eval_windows).perplexity
    del hf
    gc.collect()
    zoo = load_model(str(path), dtype=lm.dtype)
    via_zoo = evaluate(zoo.model, eval_windows).perplexity
    columns = {"method": "wanda", "perturbation": {"kind": "prune", "scorer": "wanda", "sparsity": 0.5,
                                                   "granularity": "row", "method": "zero", "protected": False}}
    recorder.record("perplexity", via_zoo, clean_value=clean.result.perplexity,
                    extra={"reloaded": True, "measured_before_saving": measured, "via_from_pretrained": via_hf},
                    **columns)
    assert via_hf == measured and via_zoo == measured
