"""Super weights (Yu et al. 2024): which single weights matter most, and what zeroing them does.

Tests (per model):

- ``test_find_super_weights[<method>]`` (``--method``, default ``activation``): the top ``TOP_K``
  weights of each scorer, written to ``<results-dir>/<model>/super_weights.json``
  (``harness.scoring.write_super_weights``) and recorded as ``super_weight_score`` (one per weight).
  ``activation`` ranks only what its spike scan found; a scorer that finds nothing records nothing
  and passes. Calibration-based scorers use the first ``CALIB_WINDOWS`` calibration windows (quick).
- ``test_zero_super_weight``: zero the super weights, the top-scored one alone, and as control the
  same number of seeded random weights of the same matrices; claims
  ``zero_super_weight_ppl_ratio_min``, ``zero_top_super_weight_ppl_ratio_min``,
  ``zero_random_weights_ppl_ratio_max`` (largest ratio over the random trials).
- ``test_zero_largest_others``: zero the ``OTHERS`` (7,000) largest-|w| other weights, super weights
  left in place, (a) of the top super weight's matrix (target ``largest_others``; claim
  ``zero_7000_largest_others_ppl_ratio_max``) and (b) spread over the matrices of all the round-0
  super weights (target ``largest_others_all``; recorded only). On smollm2-135m (b) does *not* barely
  matter (x57.9, measured 2026-11-27), unlike Yu et al.'s Llama-7B: those matrices include the late
  layers 27-29, whose largest weights matter; (a) holds (x1.12).
- ``test_row_mean_control``: set each super weight to the mean of its row instead of zero (the
  zero-versus-mean control of Sun et al. 2024); claim ``row_mean_super_weight_ppl_ratio_min``. The
  mean control does **not** rescue the model here: a row mean of a down projection is ~0 (0.0056 for
  the top super weight's row on smollm2-135m), so it hurts as much as zeroing (x24.7 vs x23.6 for the
  six round-0 weights, measured 2026-11-27). Sun et al.'s rescue is for *activations* set to their
  mean over tokens, which this weight-level control does not test.
- ``test_restore_exact``: after zeroing and restoring, perplexity equals the clean one exactly.
- ``test_known_super_weights``: for models with published coordinates
  (``harness.scoring.known_super_weights``), the activation scan finds them; skipped otherwise.

The super weights zeroed are the spikes of the ``activation`` scan in **round 0** (the untouched
model). On smollm2-135m the scan does not terminate by itself (late layers keep spiking after the
earlier spikes are zeroed; it stops at ``max_rounds`` with a warning), so the later rounds are not
used as super weights. Where the scan finds nothing (tiny random models) the largest-|w| weight of
the ``mlp_down`` matrices stands in, so the same code runs; ``target_source`` says which.

Evaluation: all ``eval_windows`` (the ``clean`` fixture's; 1024 tokens by default).

Records (suite ``super_weights``; see docs/RECORDS.md): ``super_weight_score`` (method = scorer,
perturbation ``{kind: score}``, extra module/layer/row/col/weight_value/rank), ``seconds`` per
scorer; ``ppl_ratio`` (+ ``kl``) of each ablation, method = target (``super_weights``,
``top_super_weight``, ``random``, ``largest_others``), perturbation ``{kind: zero|row_mean, target,
count, target_source}``, per trial for the random control (``extra.trial``).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

from harness.faults import FaultSite, ablate, top_magnitude_sites, uniform_sites
from harness.fingerprint import changed, fingerprint
from harness.metrics import evaluate
from harness.models.archmap import select
from harness.scoring import known_super_weights, score, write_super_weights
from harness.scoring.options import DEFAULT_METHOD

SUITE = "super_weights"
TOP_K = 16  # weights per scorer written and recorded
OTHERS = 7_000  # Yu et al.: the 7,000 next-largest weights barely matter
CALIB_WINDOWS = {"quick": 2, "full": None}  # calibration windows of the gradient/wanda scorers
RANDOM_TRIALS = {"quick": 2, "full": 10}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "method" in metafunc.fixturenames:
        methods = metafunc.config.getoption("esa_method") or DEFAULT_METHOD
        metafunc.parametrize("method", methods, ids=list(methods))


def _super_weights(esa, lm) -> tuple[list[FaultSite], str]:
    """(the super weights, where they come from), cached per model: round-0 activation spikes."""

    def make():
        found = score(lm, "activation")
        spikes = sorted((s for s in found.details["spikes"] if s["round"] == 0), key=lambda s: -abs(s["output_value"]))
        if spikes:
            return [FaultSite(s["param"], (s["row"], s["col"])) for s in spikes], "activation_round0"
        sites = top_magnitude_sites(lm.model, select(lm.model, components="mlp_down"), 1)
        return [FaultSite(s.param, s.index) for s in sites], "largest_mlp_down"

    return esa.cached((lm.name, SUITE, "super_weights"), make)


@contextmanager
def _row_mean(model, sites: list[FaultSite]):
    """Set each site to the mean of its row (taken before any edit); restored bit-exactly in ``finally``."""
    saved = []
    try:
        with torch.no_grad():
            means = [model.get_parameter(s.param)[s.index[0]].float().mean() for s in sites]
            for s, mean in zip(sites, means, strict=True):
                w = model.get_parameter(s.param)
                saved.append((w, s.index, w[s.index].clone()))
                w[s.index] = mean.to(w.dtype)
        yield
    finally:
        with torch.no_grad():
            for w, index, value in reversed(saved):
                w[index] = value


def _measure(lm, eval_windows, clean, perturbation):
    with perturbation:
        result = evaluate(lm.model, eval_windows, clean.reference)
    return result, result.ratio_to(clean.result)


def _record(recorder, clean, result, ratio, method: str, perturbation: dict, extra: dict | None = None):
    columns = dict(method=method, perturbation=perturbation, extra=extra or {})
    recorder.record("ppl_ratio", ratio, clean_value=clean.result.perplexity, **columns)
    recorder.record("kl", result.kl, **columns)


def test_find_super_weights(lm, calib_windows, esa, recorder, timer, method):
    windows = calib_windows[: esa.pick(**CALIB_WINDOWS)]
    with timer() as t:
        found = score(lm, method, windows=None if method == "activation" else windows)
        top = found.top_k(min(TOP_K, found.numel()))
    path = write_super_weights(esa.options.results_dir, lm.name, top, method)
    assert path.exists()
    for rank, s in enumerate(top):
        current = float(lm.model.get_parameter(s.site.param)[s.site.index])
        assert current == s.value or (math.isnan(current) and math.isnan(s.value))
        row, col = s.site.index[0], s.site.index[1] if len(s.site.index) > 1 else None
        recorder.record("super_weight_score", s.score, method=method, perturbation={"kind": "score"},
                        extra={"module": s.site.param, "layer": s.layer, "component": s.component, "row": row,
                               "col": col, "weight_value": s.value, "rank": rank})
    extra = {"found": len(top), "k": TOP_K, "forward": found.cost.forward, "backward": found.cost.backward,
             "tokens": found.cost.tokens}
    if method == "activation":
        extra.update(rounds=found.details["rounds"],
                     round0=sum(1 for s in found.details["spikes"] if s["round"] == 0))
    recorder.record("seconds", t.seconds, method=method, perturbation={"kind": "score", "k": TOP_K}, extra=extra)
    key = [abs(s.score) if found.signed else s.score for s in top]
    assert key == sorted(key, reverse=True), "top_k is not best first"


def test_zero_super_weight(lm, eval_windows, clean, esa, recorder):
    sites, source = _super_weights(esa, lm)
    n = len(sites)
    pert = {"kind": "zero", "target": "super_weights", "count": n, "target_source": source,
            "sites": [s.to_dict() for s in sites]}
    result, ratio = _measure(lm, eval_windows, clean, ablate(lm.model, sites, "zero"))
    _record(recorder, clean, result, ratio, "super_weights", pert)

    top_result, top_ratio = _measure(lm, eval_windows, clean, ablate(lm.model, sites[:1], "zero"))
    _record(recorder, clean, top_result, top_ratio, "top_super_weight",
            {"kind": "zero", "target": "top_super_weight", "count": 1, "target_source": source,
             "sites": [sites[0].to_dict()]})

    matrices = sorted({s.param for s in sites})
    trials = esa.trials(lm.name, **RANDOM_TRIALS)
    random_ratios = []
    for trial in range(trials):
        trial_seed = esa.options.seed * 100_003 + trial
        g = torch.Generator().manual_seed(trial_seed)
        picks = [FaultSite(s.param, s.index) for s in uniform_sites(lm.model, matrices, n, generator=g)]
        r_result, r_ratio = _measure(lm, eval_windows, clean, ablate(lm.model, picks, "zero"))
        random_ratios.append(r_ratio)
        _record(recorder, clean, r_result, r_ratio, "random",
                {"kind": "zero", "target": "random", "count": n, "target_source": "uniform_same_matrices"},
                extra={"trial": trial, "trial_seed": trial_seed})
    assert math.isfinite(clean.result.perplexity)
    recorder.claim("zero_super_weight_ppl_ratio_min", ratio, method="super_weights",
                   perturbation={"kind": "zero", "target": "super_weights", "count": n},
                   extra={"random_ratio_max": max(random_ratios), "top_super_weight_ratio": top_ratio})
    recorder.claim("zero_top_super_weight_ppl_ratio_min", top_ratio, method="top_super_weight",
                   perturbation={"kind": "zero", "target": "top_super_weight", "count": 1})
    recorder.claim("zero_random_weights_ppl_ratio_max", max(random_ratios), method="random",
                   perturbation={"kind": "zero", "target": "random", "count": n}, extra={"trials": trials})


def test_zero_largest_others(lm, eval_windows, clean, esa, recorder):
    sites, source = _super_weights(esa, lm)
    exclude = set(sites)
    for target, matrices in (("largest_others", [sites[0].param]),
                             ("largest_others_all", sorted({s.param for s in sites}))):
        total = sum(lm.model.get_parameter(p).numel() for p in matrices)
        count = min(OTHERS, total - len(exclude))
        ranked = top_magnitude_sites(lm.model, matrices, count + len(exclude))
        others = [FaultSite(s.param, s.index) for s in ranked if FaultSite(s.param, s.index) not in exclude][:count]
        assert len(others) == count and not exclude & set(others)
        result, ratio = _measure(lm, eval_windows, clean, ablate(lm.model, others, "zero"))
        pert = {"kind": "zero", "target": target, "count": count, "target_source": source, "matrices": matrices}
        _record(recorder, clean, result, ratio, target, pert)
        if target == "largest_others":  # the top super weight's matrix: where the claim holds (module docstring)
            recorder.claim(f"zero_{OTHERS}_largest_others_ppl_ratio_max", ratio, method=target, perturbation=pert)


def test_row_mean_control(lm, eval_windows, clean, esa, recorder):
    sites, source = _super_weights(esa, lm)
    pert = {"kind": "row_mean", "target": "super_weights", "count": len(sites), "target_source": source}
    result, ratio = _measure(lm, eval_windows, clean, _row_mean(lm.model, sites))
    _record(recorder, clean, result, ratio, "super_weights", pert)
    recorder.claim("row_mean_super_weight_ppl_ratio_min", ratio, method="super_weights", perturbation=pert)


def test_restore_exact(lm, eval_windows, clean, esa, recorder):
    sites, source = _super_weights(esa, lm)
    before = fingerprint(lm.model)
    with ablate(lm.model, sites, "zero"):
        assert all(float(lm.model.get_parameter(s.param)[s.index]) == 0.0 for s in sites)
        assert changed(before, fingerprint(lm.model)), "zeroing the super weights changed nothing"
    assert not changed(before, fingerprint(lm.model)), "the super weights were not restored bit-exactly"
    after = evaluate(lm.model, eval_windows, clean.reference)
    assert after.perplexity == clean.result.perplexity, "perplexity after restore differs from the clean model's"
    recorder.record("perplexity", after.perplexity, clean_value=clean.result.perplexity, method="super_weights",
                    perturbation={"kind": "restored", "target": "super_weights", "count": len(sites),
                                  "target_source": source})


def test_known_super_weights(lm, esa, recorder):
    known = known_super_weights(lm)
    if not known:
        pytest.skip(f"no published super-weight coordinates for {lm.name} (harness.scoring.known)")
    found = {s.site for s in score(lm, "activation").top_k(TOP_K)}
    missing = [k for k in known if k.site not in found]
    recorder.record("known_found_fraction", 1 - len(missing) / len(known), method="activation",
                    higher_is_better=True, perturbation={"kind": "score"},
                    extra={"known": [(k.layer, k.row, k.col) for k in known],
                           "missing": [(k.layer, k.row, k.col) for k in missing]})
    assert not missing, f"activation missed the published super weights {[(k.layer, k.row, k.col) for k in missing]}"
