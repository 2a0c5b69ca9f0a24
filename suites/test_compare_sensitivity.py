"""Do sensitivity methods agree? Top-k overlap (Jaccard) and rank correlation (Spearman) between scorers,
and each scorer's wall time.

Tests (per model):

- ``test_method_cost[<method>]`` (``--methods``): score the decoder blocks' linear weights with one
  method (``harness.scoring.agreement.scored``), time it (scoring plus the top-k pass, since the
  data-free scorers compute lazily), keep its top ``K`` weights and its scores at a common sample.
- ``test_method_agreement``: for every pair of methods, the Jaccard similarity of their top-``K``
  sets and the Spearman rank correlation of their scores on the common sample (methods not yet
  scored in this session are scored here), and the claims below for the pairs that should agree.

Choices:

- Scored weights: ``components="linear"`` of every block (the scorers' default); ``activation``
  scores only ``mlp_down`` and ranks only the weights its spike scan found (a few), so its top-``K``
  set is small and its Jaccard with dense methods is near 0 by construction.
- Spearman: over a common seeded sample of ``SAMPLE`` weights, drawn per matrix in proportion to its
  size (``--seed``), not over the union of the top-k sets (the union would mix weights a method
  never ranked). ``activation`` is left out of Spearman (its scores are 0 almost everywhere).
  Signed methods (``integrated``, ``hessian``) are ranked by |score|, as ``ScoreSet.top_k`` ranks them.
- Cost: calibration scorers use the first ``CALIB_WINDOWS`` calibration windows in the quick preset
  (all of them in full), ``integrated`` runs ``steps=2`` and ``hessian`` ``probes=2`` in quick
  (8 and 16 in full). Both presets compare every registered method by default.

Records (suite ``compare_sensitivity``; docs/RECORDS.md): ``seconds`` per scorer (method = scorer,
perturbation ``{kind: score, k}``, extra forward/backward/tokens); ``jaccard`` and ``spearman`` per pair
(method ``"a|b"`` sorted, perturbation ``{kind: score, k}``, extra ``method_a``, ``method_b``, ``k``,
sizes / sample, the random-ranking references).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from harness.claims import ClaimSet, Comparison
from harness.scoring.agreement import overlap_pvalue, random_jaccard, random_spearman_limit, sample_positions, scored
from harness.scoring.options import FULL_METHODS, QUICK_METHODS
from harness.stats import jaccard, spearman

K = {"quick": 100, "full": 1000}
SAMPLE = {"quick": 20_000, "full": 200_000}
CALIB_WINDOWS = {"quick": 2, "full": None}
METHOD_OPTIONS = {"integrated": {"steps": (2, 8)}, "hessian": {"probes": (2, 16)}}  # (quick, full)
P_RANDOM = 1e-3  # a random ranking reaches the claimed agreement with at most this probability

# Pairs that should agree: wanda is |w| x ||x|| (magnitude scaled per input channel); taylor is |w g|
# and fisher g^2 (both built on the gradient).
AGREEING = (("magnitude", "wanda"), ("gradient", "taylor"), ("fisher", "gradient"))
CLAIMS = ClaimSet("compare_sensitivity")
RANKS_AGREE = {p: CLAIMS.relation(
    f"{p[0]}_{p[1]}_rank_agreement",
    f"{p[0]} and {p[1]} rank the sampled weights alike: Spearman's rho above what a random ranking reaches "
    f"with probability {P_RANDOM:g}", statistic="spearman", margin="3.29 / sqrt(sample - 1) (99.9%)")
    for p in AGREEING}
TOP_K_OVERLAP = {p: CLAIMS.relation(
    f"{p[0]}_{p[1]}_top_k_overlap",
    f"The top-k sets of {p[0]} and {p[1]} share more weights than two random k-sets would with probability "
    f"{P_RANDOM:g}", statistic="jaccard", margin="Poisson tail of the random overlap k_a k_b / n")
    for p in AGREEING}
SPEARMAN = {p: CLAIMS.bound(f"{p[0]}_{p[1]}_spearman", f"Spearman's rho of {p[0]} and {p[1]} stays at its measured "
                            "level", side="min", statistic="spearman")
            for p in AGREEING}


def _methods(config) -> tuple[str, ...]:
    chosen = config.getoption("esa_methods")
    if chosen:
        return chosen
    return FULL_METHODS if config.getoption("esa_preset") == "full" else QUICK_METHODS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "method" in metafunc.fixturenames:
        methods = _methods(metafunc.config)
        metafunc.parametrize("method", methods, ids=list(methods))


def _scored(esa, lm, calib_windows, method: str):
    """Score once per model and method (cached)."""

    def make():
        positions = esa.cached((lm.name, "compare-sample", esa.options.seed),
                               lambda: sample_positions(lm.model, esa.pick(**SAMPLE),
                                                        torch.Generator().manual_seed(esa.options.seed)))
        options = {k: esa.pick(*v) for k, v in METHOD_OPTIONS.get(method, {}).items()}
        return scored(lm, method, calib_windows[: esa.pick(**CALIB_WINDOWS)], esa.pick(**K), positions, **options)

    return esa.cached((lm.name, "compare", method, esa.options.preset, esa.options.seed), make)


def test_method_cost(lm, calib_windows, esa, recorder, method):
    out = _scored(esa, lm, calib_windows, method)
    k = esa.pick(**K)
    assert len(out.top) <= k
    if method != "activation":
        assert len(out.top) == k, f"{method} ranked fewer than {k} weights"
    c = out.cost
    recorder.record("seconds", out.seconds, method=method, perturbation={"kind": "score", "k": k},
                    extra={"forward": c.forward, "backward": c.backward, "tokens": c.tokens, "found": len(out.top),
                           **out.options})


def test_method_agreement(lm, calib_windows, esa, recorder, request):
    methods = _methods(request.config)
    if len(methods) < 2:
        pytest.skip("--methods names a single method: nothing to compare")
    k = esa.pick(**K)
    results = {m: _scored(esa, lm, calib_windows, m) for m in methods}
    for a, b in itertools.combinations(sorted(methods), 2):
        ra, rb = results[a], results[b]
        columns = {"method": f"{a}|{b}", "perturbation": {"kind": "score", "k": k}}
        common = len(ra.top & rb.top)
        extra = {"method_a": a, "method_b": b, "k": k, "size_a": len(ra.top), "size_b": len(rb.top),
                 "common": common, "random_jaccard": random_jaccard(len(ra.top), len(rb.top), ra.numel),
                 "random_overlap_p": overlap_pvalue(common, len(ra.top), len(rb.top), ra.numel)}
        recorder.record("jaccard", jaccard(ra.top, rb.top), extra=extra, **columns)
        rho = None
        if ra.sampled is not None and rb.sampled is not None:
            rho = spearman(ra.sampled, rb.sampled)
            n = int(ra.sampled.numel())
            recorder.record("spearman", rho, extra={"method_a": a, "method_b": b, "sample": n, "over": "common_sample",
                                                    "random_limit": random_spearman_limit(n)}, **columns)
        pair = (a, b) if (a, b) in RANKS_AGREE else (b, a) if (b, a) in RANKS_AGREE else None
        if pair is None:
            continue
        recorder.claim(TOP_K_OVERLAP[pair], Comparison(extra["random_overlap_p"] < P_RANDOM, common,
                                                       len(ra.top) * len(rb.top) / ra.numel,
                                                       {"test": "random_overlap", **extra}), **columns)
        if rho is not None:
            limit = random_spearman_limit(int(ra.sampled.numel()))
            recorder.claim(RANKS_AGREE[pair], Comparison(rho > limit, rho, limit, {"test": "random_ranking",
                                                                                  "sample": n}), **columns)
            recorder.claim(SPEARMAN[pair], rho, **columns)
    for pair in AGREEING:
        missing = [m for m in pair if m not in methods]
        if missing:
            for claim in (TOP_K_OVERLAP[pair], RANKS_AGREE[pair], SPEARMAN[pair]):
                recorder.not_applicable(claim, f"--methods leaves out {', '.join(missing)}")
