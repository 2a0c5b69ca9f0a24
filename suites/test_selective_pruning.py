"""Selective pruning suite: chosen layers and components pruned at a percentile and/or threshold.

The research framework's knobs (``harness.pruning.selective_prune``): scorer, component, layers,
percentile, threshold, prune method. Without selective options the suite runs its built-in
selections (below) for each scorer of ``--prune-scorers`` (default magnitude, wanda); with any of
``--prune-layers``, ``--prune-component``, ``--percentile``, ``--threshold`` it runs that one
selection (missing knobs default to all layers, ``linear``, percentile 50).

Records (suite ``selective``, see docs/RECORDS.md), per cell: ``perplexity``, ``ppl_ratio`` (its
``extra`` holds the first prompt's ``clean_output`` and ``perturbed_output``), ``kl``, ``top1``, with
``method`` = scorer and ``perturbation`` = ``{kind: selective_prune, sparsity (reached), layers,
component, percentile, threshold, prune_method, target}``; and from greedy generations of the corpus
prompts, clean versus pruned
(also written side by side to ``<results-dir>/<model>/output_comparison.txt``):
``first_diff_token`` and ``token_edit_distance`` per prompt (``extra.trial``, ``extra.prompt``; the
generation length when nothing differs), and ``identical_generations`` (share of prompts unchanged).
With ``--save-pruned DIR`` each pruned model is also saved to ``DIR/<model>/<cell>`` (safetensors).
Claims (``suites/bounds/selective.toml``, built-in selections only): ``<scorer>_<cell>_ppl_ratio_max``,
the perplexity ratio to the clean model of each selection, bounded from measurement.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

# (id, component, layers, percentile, threshold, target); quick runs the first two
SELECTIONS = (
    ("value-L3,4-p80", "value", "3,4", 80.0, None, "least"),
    ("mlp-all-p30", "mlp", "all", 30.0, None, "least"),
    ("attention-all-t0.05", "attention", "all", None, 0.05, "least"),
    ("value-L3,4-top1pct", "value", "3,4", 1.0, None, "most"),  # the research tool's direction: most sensitive
)
SCORERS = ("magnitude", "wanda")
PROMPTS = {"quick": (4, 24), "full": (8, 48)}  # prompts, new tokens


def _cells(config) -> list[tuple[str, tuple]]:
    opt = config.option
    scorers = opt.esa_prune_scorers or SCORERS
    given = (opt.esa_prune_layers, opt.esa_prune_component, opt.esa_percentile, opt.esa_threshold)
    if any(v is not None for v in given):
        layers, component, percentile, threshold = given
        percentile = 50.0 if percentile is None and threshold is None else percentile
        selections = [("cli", component or "linear", layers or "all", percentile, threshold, "least")]
    else:
        selections = SELECTIONS[:2] if opt.esa_preset == "quick" else SELECTIONS
    return [(scorer, sel) for scorer in scorers for sel in selections]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "selection" in metafunc.fixturenames:
        cells = _cells(metafunc.config)
        metafunc.parametrize("selection", cells, ids=[f"{s}-{sel[0]}" for s, sel in cells])


@pytest.fixture
def recorder(recorder):
    """Records under the analysis name ``selective`` (docs/ARCHITECTURE.md), not the file's stem."""
    recorder.suite = "selective"
    return recorder


def _claim_name(scorer: str, cell_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", f"{scorer}_{cell_id}").strip("_") + "_ppl_ratio_max"


def _prompts(esa, lm):
    from harness.data import generation_prompts, load_corpus

    n, tokens = esa.pick(quick=PROMPTS["quick"], full=PROMPTS["full"])
    corpus = esa.cached(("corpus", esa.options.corpus), lambda: load_corpus(esa.options.corpus))
    return generation_prompts(corpus, n), tokens


def _linear_scores(esa, lm, calib_windows, scorer: str):
    """The scorer's scores of every linear matrix, kept while the cells of this scorer run (one slot,
    shared with the pruning suite)."""
    from harness.scoring import score

    slot = esa.cached((lm.name, "pruning-scores"), dict)
    key = (scorer, tuple(calib_windows.shape), esa.options.corpus)
    if key not in slot:
        slot.clear()
        slot[key] = score(lm, scorer, windows=calib_windows)  # default components: every linear matrix
    return slot[key]


def test_selective_pruning(lm, eval_windows, calib_windows, clean, recorder, esa, selection):
    from harness.metrics import evaluate
    from harness.pruning import save_model, selective_prune
    from harness.pruning.compare import divergence, format_section, greedy, write_comparison
    from harness.scoring.artifacts import model_dir_name

    scorer, (cell_id, component, layers, percentile, threshold, target) = selection
    if cell_id != "cli" and layers != "all":
        from harness.models import num_layers

        n = num_layers(lm)
        if max(int(x) for x in layers.split(",")) >= n:
            pytest.skip(f"selection {cell_id} names layers {layers}; {lm.name} has {n} layers")
    method = esa.options.extra.get("prune_method") or "zero"
    prompts, tokens = _prompts(esa, lm)
    clean_text = esa.cached((lm.name, "selective-clean-generations", tuple(prompts), tokens),
                            lambda: greedy(lm.model, lm.tokenizer, prompts, tokens))
    pruning = selective_prune(lm, method=scorer, component=component, layers=None if layers == "all" else layers,
                              percentile=percentile, threshold=threshold, prune_method=method, target=target,
                              scores=_linear_scores(esa, lm, calib_windows, scorer))
    with pruning as report:
        result = evaluate(lm.model, eval_windows, clean.reference)
        pruned_text = greedy(lm.model, lm.tokenizer, prompts, tokens)
        save_dir = esa.options.extra.get("save_pruned")
        if save_dir is not None:
            save_model(lm, Path(save_dir) / model_dir_name(lm.name) / f"{scorer}-{cell_id}", report=report,
                       overwrite=bool(esa.options.extra.get("overwrite_pruned")),
                       metadata={"source_model": lm.name, "selection": cell_id})
    summary = report.to_dict(per_matrix=False)
    perturbation = {"kind": "selective_prune", "sparsity": round(summary["sparsity"], 4), "layers": layers,
                    "component": component, "percentile": percentile, "threshold": threshold,
                    "prune_method": method, "target": target}
    extra = {"cell": cell_id, "sparsity": summary["sparsity"], "model_sparsity": summary["model_sparsity"],
             "pruned": summary["pruned"], "matrices": summary["matrices"]}
    columns = {"method": scorer, "perturbation": perturbation}
    example = {"prompt": prompts[0], "clean_output": lm.tokenizer.decode(clean_text[0], skip_special_tokens=True),
               "perturbed_output": lm.tokenizer.decode(pruned_text[0], skip_special_tokens=True)}
    recorder.record("perplexity", result.perplexity, clean_value=clean.result.perplexity, extra=extra, **columns)
    recorder.record("ppl_ratio", result.ratio_to(clean.result), clean_value=clean.result.perplexity,
                    extra={**extra, **example}, **columns)
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
                    extra={"prompts": len(found), "tokens": tokens}, **columns)

    notes = (f"scorer={scorer} component={component} layers={layers} percentile={percentile} "
             f"threshold={threshold} method={method} target={target}: pruned {summary['pruned']:,} of "
             f"{summary['numel']:,} weights ({100 * summary['sparsity']:.2f}%) in {summary['matrices']} matrices; "
             f"perplexity {clean.result.perplexity:.3f} -> {result.perplexity:.3f}; greedy, {tokens} new tokens")
    write_comparison(esa.options.results_dir, lm.name, f"{lm.name} {scorer} {cell_id}",
                     format_section(f"{lm.name} {scorer} {cell_id}", lm.tokenizer, prompts, clean_text,
                                    pruned_text, notes=notes))
    if percentile is not None and threshold is None:
        assert summary["sparsity"] == pytest.approx(percentile / 100, abs=2e-3)
    assert not math.isnan(result.perplexity)
    if cell_id != "cli":
        recorder.claim(_claim_name(scorer, cell_id), result.ratio_to(clean.result), extra=extra, **columns)
