"""Selective pruning suite: chosen layers and components pruned at a percentile and/or threshold.

The research framework's knobs (``harness.pruning.selective_prune``): scorer, component, layers,
percentile, threshold, prune method. Without selective options the suite runs its built-in
selections (below) for each scorer of ``--prune-scorers`` (default magnitude, wanda); with any of
``--prune-layers``, ``--prune-component``, ``--percentile``, ``--threshold`` it runs that one
selection (missing knobs default to all layers, ``linear``, percentile 50). Cells are measured once
per model (``harness.pruning.selective_cells``).

Records (suite ``selective_pruning``, see docs/RECORDS.md), per cell: ``perplexity``, ``ppl_ratio``
(its ``extra`` holds the first prompt's ``clean_output`` and ``perturbed_output``), ``kl``, ``top1``,
with ``method`` = scorer and ``perturbation`` = ``{kind: selective_prune, sparsity (reached), layers,
component, percentile, threshold, prune_method, target}``; and from greedy generations of the corpus
prompts, clean versus pruned (also written side by side to ``<results-dir>/<model>/output_comparison.txt``):
``first_diff_token`` and ``token_edit_distance`` per prompt (``extra.trial``, ``extra.prompt``; the
generation length when nothing differs), and ``identical_generations`` (share of prompts unchanged).
With ``--save-pruned DIR`` each pruned model is also saved to ``DIR/<model>/<cell>`` (safetensors).
"""

from __future__ import annotations

import math

import pytest

from harness.claims import ClaimSet, greater
from harness.pruning.cells import ScoreSlot
from harness.pruning.selective_cells import Selection, SelectiveCells, claim_tag

SELECTIONS = (  # quick runs the first two
    Selection("value-L3,4-p80", "value", "3,4", 80.0, None),
    Selection("mlp-all-p30", "mlp", "all", 30.0, None),
    Selection("attention-all-t0.05", "attention", "all", None, 0.05),
    Selection("value-L3,4-top1pct", "value", "3,4", 1.0, None, "most"),  # the research tool's direction
)
SCORERS = ("magnitude", "wanda")
PROMPTS = {"quick": (4, 24), "full": (8, 48)}  # prompts, new tokens

CLAIMS = ClaimSet("selective_pruning")
WANDA_FACTOR = 2.0
COMPARED = SELECTIONS[1]  # mlp-all-p30: the built-in selection that costs perplexity
WANDA_BEATS_MAGNITUDE = CLAIMS.relation(
    "wanda_beats_magnitude_mlp",
    f"Pruning every MLP matrix at the 30th percentile, magnitude scores lose at least {WANDA_FACTOR:g}x the "
    "perplexity Wanda scores lose (excess perplexity: pruned / clean - 1)",
    statistic="ppl_ratio - 1", margin=f"stated minimum effect x{WANDA_FACTOR:g}, as in the pruning suite")
PPL_RATIO = {(scorer, s.id): CLAIMS.bound(f"{claim_tag(scorer, s.id)}_ppl_ratio",
                                          f"Perplexity after {scorer} selection {s.id} over clean stays at its "
                                          "measured level", side="max", statistic="ppl_ratio", seeded=False)
             for scorer in SCORERS for s in SELECTIONS}


def _selections(config) -> list[tuple[str, Selection]]:
    opt = config.option
    scorers = opt.esa_prune_scorers or SCORERS
    given = (opt.esa_prune_layers, opt.esa_prune_component, opt.esa_percentile, opt.esa_threshold)
    if any(v is not None for v in given):
        layers, component, percentile, threshold = given
        percentile = 50.0 if percentile is None and threshold is None else percentile
        selections = [Selection("cli", component or "linear", layers or "all", percentile, threshold)]
    else:
        selections = SELECTIONS[:2] if opt.esa_preset == "quick" else SELECTIONS
    return [(scorer, sel) for scorer in scorers for sel in selections]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "selection" in metafunc.fixturenames:
        cells = _selections(metafunc.config)
        metafunc.parametrize(("scorer", "selection"), cells, ids=[f"{s}-{sel.id}" for s, sel in cells])


@pytest.fixture
def cells(esa, lm, eval_windows, calib_windows, clean) -> SelectiveCells:
    """This model's measured selective cells, shared by the session."""
    from harness.data import generation_prompts, load_corpus
    from harness.scoring.artifacts import model_dir_name

    o = esa.options
    n, tokens = esa.pick(quick=PROMPTS["quick"], full=PROMPTS["full"])
    corpus = esa.cached(("corpus", o.corpus), lambda: load_corpus(o.corpus))
    save = o.extra.get("save_pruned")
    method = o.extra.get("prune_method") or "zero"
    return esa.cached(
        (lm.name, "selective-cells", method, tuple(eval_windows.shape), tuple(calib_windows.shape), o.corpus),
        lambda: SelectiveCells(lm, eval_windows, calib_windows, clean.reference, generation_prompts(corpus, n), tokens,
                               scores=esa.cached((lm.name, "pruning-scores"), ScoreSlot), prune_method=method,
                               save_dir=None if save is None else f"{save}/{model_dir_name(lm.name)}",
                               overwrite=bool(o.extra.get("overwrite_pruned")), tag=o.corpus))


def _missing_layers(lm, selection: Selection) -> str:
    """Why ``selection`` cannot apply to ``lm`` (it names layers the model lacks), or ""."""
    from harness.models import num_layers

    top = selection.max_layer()
    if selection.id != "cli" and top is not None and top >= num_layers(lm):
        return f"selection {selection.id} names layers {selection.layers}; {lm.name} has {num_layers(lm)} layers"
    return ""


def test_selective_pruning(lm, clean, cells, recorder, esa, scorer, selection):
    from harness.pruning.compare import divergence, format_section, write_comparison

    missing = _missing_layers(lm, selection)
    if missing:  # structural: the claim cannot apply to this model
        if (scorer, selection.id) in PPL_RATIO:
            recorder.not_applicable(PPL_RATIO[scorer, selection.id], missing, method=scorer)
            return
        pytest.skip(missing)
    measured = cells.measure(scorer, selection)
    result, summary, prompts = measured.result, measured.summary, cells.prompts
    clean_text, pruned_text = measured.clean_text, measured.pruned_text
    extra = {"cell": selection.id, "sparsity": summary["sparsity"], "model_sparsity": summary["model_sparsity"],
             "pruned": summary["pruned"], "matrices": summary["matrices"]}
    columns = {"method": scorer, "perturbation": measured.perturbation}
    example = {"prompt": prompts[0], "clean_output": lm.tokenizer.decode(clean_text[0], skip_special_tokens=True),
               "perturbed_output": lm.tokenizer.decode(pruned_text[0], skip_special_tokens=True)}
    ratio = result.ratio_to(clean.result)
    recorder.record("perplexity", result.perplexity, clean_value=clean.result.perplexity, extra=extra, **columns)
    recorder.record("ppl_ratio", ratio, clean_value=clean.result.perplexity, extra={**extra, **example}, **columns)
    recorder.record("kl", result.kl, extra=extra, **columns)
    recorder.record("top1", result.top1, extra=extra, **columns)

    found = [divergence(c, p) for c, p in zip(clean_text, pruned_text, strict=True)]
    for i, d in enumerate(found):  # one record per prompt (a trial); reports aggregate them
        first = d.length if d.first is None else d.first
        recorder.record("first_diff_token", first, extra={"trial": i, "prompt": prompts[i], "identical": d.identical},
                        **columns)
        recorder.record("token_edit_distance", d.distance, extra={"trial": i, "prompt": prompts[i], "length": d.length},
                        **columns)
    recorder.record("identical_generations", sum(d.identical for d in found) / len(found),
                    extra={"prompts": len(found), "tokens": cells.new_tokens}, **columns)
    s = selection
    notes = (f"scorer={scorer} component={s.component} layers={s.layers} percentile={s.percentile} "
             f"threshold={s.threshold} method={cells.prune_method} target={s.target}: pruned {summary['pruned']:,} "
             f"of {summary['numel']:,} weights ({100 * summary['sparsity']:.2f}%) in {summary['matrices']} matrices; "
             f"perplexity {clean.result.perplexity:.3f} -> {result.perplexity:.3f}; greedy, {cells.new_tokens} "
             "new tokens")
    title = f"{lm.name} {scorer} {s.id}"
    write_comparison(esa.options.results_dir, lm.name, title,
                     format_section(title, lm.tokenizer, prompts, clean_text, pruned_text, notes=notes))

    if s.percentile is not None and s.threshold is None:
        assert summary["sparsity"] == pytest.approx(s.percentile / 100, abs=2e-3)
    assert not math.isnan(result.perplexity)
    bound = PPL_RATIO.get((scorer, s.id))
    if bound is not None:
        recorder.claim(bound, ratio, extra=extra, **columns)


def test_wanda_beats_magnitude(lm, clean, cells, recorder):
    missing = _missing_layers(lm, COMPARED)
    if missing:
        recorder.not_applicable(WANDA_BEATS_MAGNITUDE, missing, method="wanda")
        return
    wanda, magnitude = (cells.measure(s, COMPARED) for s in ("wanda", "magnitude"))
    excess = {name: m.result.ratio_to(clean.result) - 1 for name, m in (("wanda", wanda), ("magnitude", magnitude))}
    recorder.claim(WANDA_BEATS_MAGNITUDE, greater(excess["magnitude"], excess["wanda"], factor=WANDA_FACTOR),
                   method="wanda", perturbation=wanda.perturbation,
                   extra={"wanda_ppl": wanda.perplexity, "magnitude_ppl": magnitude.perplexity,
                          "clean_ppl": clean.result.perplexity, "cell": COMPARED.id})
