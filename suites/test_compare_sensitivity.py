"""Do sensitivity methods agree? Top-k overlap (Jaccard) and rank correlation (Spearman) between scorers,
and each scorer's wall time.

Tests (per model):

- ``test_method_cost[<method>]`` (``--methods``): score the decoder blocks' linear weights with one
  method, time it (scoring plus the top-k pass, since the data-free scorers compute lazily), keep its
  top ``k`` weights and its scores at a common seeded sample.
- ``test_method_agreement``: for every pair of methods, the Jaccard similarity of their top-``k``
  sets and the Spearman rank correlation of their scores on the common sample (methods not yet
  scored in this session are scored here), and the claims below for the pairs that should agree.

The sizes per preset, the scorings and the statistics live in ``harness.scoring.compare_cells``.
Spearman is taken over the common sample, not over the union of the top-k sets (the union would mix
weights a method never ranked); ``activation`` is left out of it (its scores are 0 almost everywhere).

Records (suite ``compare_sensitivity``; docs/RECORDS.md): ``seconds`` per scorer (method = scorer,
perturbation ``{kind: score, k}``, extra forward/backward/tokens); ``jaccard`` and ``spearman`` per pair
(method ``"a|b"`` sorted, perturbation ``{kind: score, k}``, extra ``method_a``, ``method_b``, ``k``,
sizes / sample, the random-ranking references).
"""

from __future__ import annotations

import pytest

from fixtures.session import options_of
from harness.claims import ClaimSet
from harness.scoring.compare_cells import CompareCells, methods, ranks_agree, top_k_overlap
from harness.session import Grid

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


def _methods(config: pytest.Config) -> tuple[str, ...]:
    o = options_of(config)
    return methods(o.preset, o.scoring.methods)


GRIDS = (Grid("method", lambda o: methods(o.preset, o.scoring.methods)),)


@pytest.fixture
def cells(esa, lm) -> CompareCells:
    """This model's scorings, shared by the session (the agreement test reuses the cost tests' scorings)."""
    return CompareCells.of(esa, lm)


def test_method_cost(cells, recorder, method):
    out = cells.measure(method)
    assert out.found <= out.k
    if method != "activation":
        assert out.found == out.k, f"{method} ranked fewer than {out.k} weights"
    recorder.rows(out.rows())


def test_method_agreement(cells, recorder, request):
    chosen = _methods(request.config)
    if len(chosen) < 2:
        pytest.skip("--methods names a single method: nothing to compare")
    for found in cells.agreements(chosen):
        recorder.rows(found.rows())
        pair = next((p for p in ((found.a, found.b), (found.b, found.a)) if p in RANKS_AGREE), None)
        if pair is None:
            continue
        columns = {"method": found.method, "perturbation": found.perturbation}
        recorder.claim(TOP_K_OVERLAP[pair], top_k_overlap(found, P_RANDOM), **columns)
        if found.rho is not None:
            recorder.claim(RANKS_AGREE[pair], ranks_agree(found), **columns)
            recorder.claim(SPEARMAN[pair], found.rho, **columns)
    for pair in AGREEING:
        missing = [m for m in pair if m not in chosen]
        if missing:
            for claim in (TOP_K_OVERLAP[pair], RANKS_AGREE[pair], SPEARMAN[pair]):
                recorder.not_applicable(claim, f"--methods leaves out {', '.join(missing)}")
