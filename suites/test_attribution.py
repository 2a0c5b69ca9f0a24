"""LLM attribution (Captum): how weight perturbations change which prompt tokens a continuation depends on.

For each shipped prompt (``harness/attribution/prompts.json``: openings of CPython documentation
topics and short code questions) the clean model's greedy continuation (``TARGET_TOKENS`` tokens) is
the fixed target. Feature ablation (Captum ``FeatureAblation`` through ``LLMAttribution``, batched
``PERTURBATIONS_PER_EVAL`` ablated prompts per call) attributes the target's log-probability to each
prompt token, on the clean model and under each perturbation (context managers, restored bit-exactly):

- ``zero_super_weights``: the session's detected super weights zeroed (``fixtures.superweights``; on a
  model where none is detected the detector's strongest candidate stands in, so the code path runs);
- ``zero_random``: as many seeded random weights of the same matrices zeroed (the control);
- ``exp_msb_flip``: the exponent MSB of one seeded random weight of the linear layers flipped;
- ``wanda_50``: Wanda pruning at 50% per row (calibration: the first ``CALIB_WINDOWS`` windows).

Measures per prompt and perturbation (``harness.attribution.measures``): ``target_logprob_change``,
``attr_spearman``, ``attr_shift`` (1 - Spearman; inf on a collapse), ``attr_rel_change`` (relative L1
change), ``attr_topk_jaccard`` (top ``TOP_K``), ``attr_sign_flip_share``. Records of metric
``target_logprob`` carry the attribution itself in ``extra`` (``condition``, ``prompt``, tokens,
``seq_attr``, ``token_attr``) for the report's heatmaps (``reports.attribution``).

Claims:

- ``zero_super_weights_vs_random`` (relation): on every prompt zeroing the super weights changes the
  attributions at least ``SHIFT_FACTOR`` times as much (``attr_rel_change``) as zeroing as many random
  weights of the same matrices. Not on the rank shift: zeroing a few random weights leaves the ranking
  exactly as it was (``attr_shift`` 0 on every prompt of smollm2-135m), and ``x >= 2 x 0`` cannot fail.
  Pretrained models only; not applicable when no super weight is detected.
- ``deterministic`` (relation): feature ablation and integrated gradients computed twice give the
  same numbers bit for bit (largest |difference| = 0).
- ``method_agreement`` (bound, ``min``): mean over prompts of the Spearman correlation of feature
  ablation and integrated gradients (``IG_STEPS`` steps on the embeddings) on the clean model. A
  bound, not a relation: how well two attribution methods agree is a property of the model and the
  prompts with no natural control to compare against; the number per model is the measured mean
  less 5% (``claims.derive_bound``'s relative margin; both methods are deterministic, so seeds do
  not scatter it), in ``suites/bounds/attribution.toml``.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from harness.attribution import attribute, greedy_target
from harness.attribution.measures import compare
from harness.attribution.prompts import select_prompts
from harness.claims import ClaimSet, Comparison, paired_greater
from harness.faults import FaultSite, ablate, flip_bits, uniform_sites
from harness.models.archmap import select
from harness.stats import spearman

CLAIMS = ClaimSet("attribution")
SHIFT_FACTOR = 2.0
ZERO_VS_RANDOM = CLAIMS.relation(
    "zero_super_weights_vs_random",
    "Zeroing the super weights moves per-token attributions more than zeroing as many random weights",
    statistic="attr_rel_change",
    margin=f"every prompt: attr_rel_change(super weights) >= {SHIFT_FACTOR:g} x attr_rel_change(random weights)",
)
DETERMINISTIC = CLAIMS.relation(
    "deterministic", "An attribution computed twice is the same, bit for bit",
    statistic="attr_repeat_max_abs_diff", pretrained_only=False, margin="largest |difference| must be 0",
)
AGREEMENT = CLAIMS.bound(
    "method_agreement", "Feature ablation and integrated gradients rank the prompt tokens alike on the clean model",
    side="min", statistic="attr_method_spearman", pretrained_only=True, seeded=False,
    margin="measured mean Spearman over the prompts less 5% (deterministic methods: no seed scatter)",
)

PROMPTS = {"quick": 4, "full": None}
TARGET_TOKENS = {"quick": 4, "full": 8}
PERTURBATIONS_PER_EVAL = 8
IG_STEPS = {"quick": 16, "full": 32}
TINY_IG_STEPS = 4
TINY_PROMPT_CHARS = 24
TOP_K = 3
CALIB_WINDOWS = {"quick": 2, "full": 8}
PERTURBATIONS = ("zero_super_weights", "zero_random", "exp_msb_flip", "wanda_50")


def _prompts(esa, lm) -> list[tuple[str, str]]:
    """(id, text) of the preset's prompts; on a random-weight tiny model, whose numbers mean nothing and which
    only runs the code paths, the first ``TINY_PROMPT_CHARS`` characters of one (its byte tokenizer makes
    every character a feature)."""
    if lm.spec.random_weights:
        first = select_prompts(1)[0]
        return [(first.id, first.text[:TINY_PROMPT_CHARS])]
    return [(p.id, p.text) for p in select_prompts(esa.pick(**PROMPTS))]


def _steps(esa, lm) -> int:
    return TINY_IG_STEPS if lm.spec.random_weights else esa.pick(**IG_STEPS)


def _clean(esa, lm) -> dict:
    """Per prompt id: the fixed target and the clean feature-ablation attribution (cached per model)."""

    def make():
        out = {}
        for pid, text in _prompts(esa, lm):
            target = greedy_target(lm, text, 2 if lm.spec.random_weights else esa.pick(**TARGET_TOKENS))
            out[pid] = (target, attribute(lm, target, "feature_ablation",
                                           perturbations_per_eval=PERTURBATIONS_PER_EVAL))
        return out

    return esa.cached((lm.name, "attribution", "clean"), make)


def _clean_ig(esa, lm) -> dict:
    """Per prompt id: the clean integrated-gradients attribution of the same target (cached per model)."""
    return esa.cached((lm.name, "attribution", "clean-ig"), lambda: {
        pid: attribute(lm, target, "integrated_gradients", n_steps=_steps(esa, lm))
        for pid, (target, _) in _clean(esa, lm).items()})


def _super_weights(esa, lm) -> tuple[list[FaultSite], dict]:
    """(sites, description): the session's detected super weights (``fixtures.superweights``), or, where none
    is detected (random-weight tiny models), the detector's strongest candidate so the code path runs."""
    from fixtures.superweights import shared_detection

    detection = shared_detection(esa, lm)
    if detection:
        return detection.fault_sites(), {**detection.describe(), "source": "detected"}
    if detection.candidate is None:
        pytest.skip(f"the super-weight detector scanned no block of {lm.name}")
    return [detection.candidate.site], {**detection.describe(), "source": "candidate below the detector's factor"}


def _perturbation(name: str, esa, lm, calib_windows):
    """A fresh context manager for perturbation ``name`` and its description for the record."""
    g = torch.Generator().manual_seed(esa.options.seed)
    if name in ("zero_super_weights", "zero_random"):
        sw, described = _super_weights(esa, lm)
        if name == "zero_super_weights":
            return ablate(lm.model, sw, "zero"), described
        taken = {(s.param, tuple(s.index)) for s in sw}
        drawn = uniform_sites(lm.model, sorted({s.param for s in sw}), len(sw) + 8, generator=g)
        sites = [FaultSite(s.param, s.index) for s in drawn if (s.param, tuple(s.index)) not in taken][: len(sw)]
        return ablate(lm.model, sites, "zero"), {"count": len(sites), "matrices": "those of the super weights"}
    if name == "exp_msb_flip":
        site = uniform_sites(lm.model, select(lm.model, components="linear"), 1, generator=g, bits="exp_msb")
        return flip_bits(lm.model, site), {"site": {"param": site[0].param, "index": list(site[0].index)}}
    if name == "wanda_50":
        from harness.pruning import prune
        from harness.scoring import score

        scores = esa.cached((lm.name, "attribution", "wanda", esa.options.corpus),
                            lambda: score(lm, "wanda", windows=calib_windows[: esa.pick(**CALIB_WINDOWS)]))
        return prune(lm, scores, 0.5, granularity="row"), {"sparsity": 0.5, "granularity": "row"}
    raise ValueError(f"unknown perturbation {name!r}; allowed: {', '.join(PERTURBATIONS)}")


def _record_attribution(recorder, attr, prompt_id: str, condition: str, **columns) -> None:
    extra = {"condition": condition, "prompt": prompt_id, **attr.to_dict()}
    recorder.record("target_logprob", attr.target_logprob, method=attr.method, extra=extra, seconds=attr.seconds,
                    **columns)


def _changes(esa, lm, calib_windows, name: str) -> dict:
    """Per prompt id: (perturbed attribution, measures) under perturbation ``name`` (cached per model)."""

    def make():
        clean = _clean(esa, lm)
        perturbation, described = _perturbation(name, esa, lm, calib_windows)
        out = {}
        with perturbation:
            for pid, (target, before) in clean.items():
                after = attribute(lm, target, "feature_ablation", perturbations_per_eval=PERTURBATIONS_PER_EVAL)
                out[pid] = (after, compare(before, after, TOP_K))
        return out, described

    return esa.cached((lm.name, "attribution", "perturbed", name), make)


def test_attribution_clean(lm, esa, recorder):
    for pid, (_, attr) in _clean(esa, lm).items():
        _record_attribution(recorder, attr, pid, "clean", perturbation={"kind": "none"})


@pytest.mark.parametrize("perturbation", PERTURBATIONS)
def test_attribution_perturbed(lm, esa, recorder, calib_windows, perturbation):
    results, described = _changes(esa, lm, calib_windows, perturbation)
    where = {"kind": perturbation, **described}
    for pid, (attr, change) in results.items():
        _record_attribution(recorder, attr, pid, perturbation, perturbation=where)
        for metric, value in change.to_dict().items():
            recorder.record(metric, value, method="feature_ablation", perturbation=where,
                            extra={"prompt": pid, "top_k": TOP_K})


def test_attribution_zero_super_weights_vs_random(lm, esa, recorder, calib_windows, super_weights):
    if not super_weights:
        recorder.not_applicable(ZERO_VS_RANDOM, super_weights.none_reason())
        return
    sw, _ = _changes(esa, lm, calib_windows, "zero_super_weights")
    rand, _ = _changes(esa, lm, calib_windows, "zero_random")
    ids = list(sw)
    recorder.claim(ZERO_VS_RANDOM, paired_greater([sw[i][1].attr_rel_change for i in ids],
                                                  [rand[i][1].attr_rel_change for i in ids], factor=SHIFT_FACTOR),
                   extra={"prompts": ids, "attr_shift": [sw[i][1].attr_shift for i in ids],
                          "attr_shift_random": [rand[i][1].attr_shift for i in ids]})


def test_attribution_deterministic(lm, esa, recorder):
    clean = _clean(esa, lm)
    diffs = []
    for target, first in clean.values():
        again = attribute(lm, target, "feature_ablation", perturbations_per_eval=PERTURBATIONS_PER_EVAL)
        diffs.append(float((first.token_attr - again.token_attr).abs().max()))
    pid, (target, _) = next(iter(clean.items()))
    ig = attribute(lm, target, "integrated_gradients", n_steps=_steps(esa, lm))
    diffs.append(float((_clean_ig(esa, lm)[pid].token_attr - ig.token_attr).abs().max()))
    worst = max(diffs)
    recorder.record("attr_repeat_max_abs_diff", worst, extra={"per_run": diffs})
    # a relation "0 >= largest difference": holds exactly when the repeat is bit-identical
    recorder.claim(DETERMINISTIC, Comparison(worst == 0.0, 0.0, worst, {"test": "exact", "max_abs_diff": worst}))


def test_attribution_method_agreement(lm, esa, recorder):
    rhos = []
    ig_all = _clean_ig(esa, lm)
    for pid, (_, ablation) in _clean(esa, lm).items():
        ig = ig_all[pid]
        rho = spearman(ablation.seq_attr, ig.seq_attr)
        rhos.append(rho)
        _record_attribution(recorder, ig, pid, "clean", perturbation={"kind": "none"})
        recorder.record("attr_method_spearman", rho, method="feature_ablation|integrated_gradients",
                        extra={"prompt": pid, "ig_steps": _steps(esa, lm), "ig_seconds": ig.seconds,
                               "ablation_seconds": ablation.seconds})
    mean = statistics.fmean(rhos) if all(math.isfinite(r) for r in rhos) else math.nan
    recorder.claim(AGREEMENT, mean)
