"""Do sensitivity methods agree? Top-k overlap (Jaccard) and rank correlation (Spearman) between scorers,
and each scorer's wall time.

Tests (per model):

- ``test_method_cost[<method>]`` (``--methods``): score the decoder blocks' linear weights with one
  method, time it (scoring plus the top-k pass, since the data-free scorers compute lazily), keep
  its top ``K`` weights and its scores at a common sample of weights.
- ``test_method_agreement``: for every pair of methods, the Jaccard similarity of their top-``K``
  sets and the Spearman rank correlation of their scores on the common sample (methods not yet
  scored in this session are scored here).

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

Records (suite ``compare``; docs/RECORDS.md): ``seconds`` per scorer (method = scorer, perturbation
``{kind: score, k}``, extra forward/backward/tokens); ``jaccard`` and ``spearman`` per pair (method
``"a|b"`` sorted, perturbation ``{kind: score, k}``, extra ``method_a``, ``method_b``, ``k``, sizes /
sample). The records carry ``suite="compare"``, the name the report reads.
"""

from __future__ import annotations

import itertools
import math
import time

import pytest
import torch

from harness.models.archmap import select
from harness.scoring import score
from harness.scoring.base import ref_shape
from harness.scoring.options import FULL_METHODS, QUICK_METHODS

SUITE = "compare_sensitivity"
RECORD_SUITE = "compare"  # the suite name docs/RECORDS.md and the report use
K = {"quick": 100, "full": 1000}
SAMPLE = {"quick": 20_000, "full": 200_000}
CALIB_WINDOWS = {"quick": 2, "full": None}
METHOD_OPTIONS = {"integrated": {"steps": (2, 8)}, "hessian": {"probes": (2, 16)}}  # (quick, full)


def _methods(config) -> tuple[str, ...]:
    chosen = config.getoption("esa_methods")
    if chosen:
        return chosen
    return FULL_METHODS if config.getoption("esa_preset") == "full" else QUICK_METHODS


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "method" in metafunc.fixturenames:
        methods = _methods(metafunc.config)
        metafunc.parametrize("method", methods, ids=list(methods))


def _sample(esa, lm, refs) -> list[torch.Tensor]:
    """Per ref, flat indices into its scores: ``SAMPLE`` weights in all, in proportion to size, seeded."""

    def make():
        g = torch.Generator().manual_seed(esa.options.seed)
        sizes = [math.prod(ref_shape(lm.model, ref)) for ref in refs]
        total, n = sum(sizes), esa.pick(**SAMPLE)
        return [torch.randint(0, size, (max(1, round(n * size / total)),), generator=g) for size in sizes]

    return esa.cached((lm.name, SUITE, "sample", esa.options.seed), make)


def _scored(esa, lm, calib_windows, method: str) -> dict:
    """Score once per model and method (cached): seconds, cost, top-k keys, sampled |scores|."""

    def make():
        windows = calib_windows[: esa.pick(**CALIB_WINDOWS)]
        options = {k: esa.pick(*v) for k, v in METHOD_OPTIONS.get(method, {}).items()}
        refs = select(lm.model, components="linear")
        k = esa.pick(**K)
        start = time.perf_counter()
        found = score(lm, method, windows=windows, **options)
        top = found.top_k(min(k, found.numel()))  # lazy scorers (magnitude, z_score) compute here
        seconds = time.perf_counter() - start
        sampled = None
        if method != "activation":
            positions = _sample(esa, lm, refs)
            assert [r.param for r in found.refs] == [r.param for r in refs]
            sampled = torch.cat([scores.reshape(-1)[pos.to(scores.device)].abs().float().cpu()
                                 for (_, scores), pos in zip(found, positions, strict=True)])
        return {"seconds": seconds, "cost": found.cost, "options": options,
                "top": {(s.site.param, s.site.index) for s in top}, "sampled": sampled}

    return esa.cached((lm.name, SUITE, method, esa.options.preset), make)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    rho = spearmanr(a.numpy(), b.numpy()).statistic
    return float(rho)


def test_method_cost(lm, calib_windows, esa, recorder, method):
    out = _scored(esa, lm, calib_windows, method)
    k = esa.pick(**K)
    assert len(out["top"]) <= k
    if method != "activation":
        assert len(out["top"]) == k, f"{method} ranked fewer than {k} weights"
    c = out["cost"]
    recorder.record("seconds", out["seconds"], suite=RECORD_SUITE, method=method,
                    perturbation={"kind": "score", "k": k},
                    extra={"forward": c.forward, "backward": c.backward, "tokens": c.tokens, "found": len(out["top"]),
                           **out["options"]})


def test_method_agreement(lm, calib_windows, esa, recorder, request):
    methods = _methods(request.config)
    if len(methods) < 2:
        pytest.skip("--methods names a single method: nothing to compare")
    k = esa.pick(**K)
    results = {m: _scored(esa, lm, calib_windows, m) for m in methods}
    for a, b in itertools.combinations(sorted(methods), 2):
        ta, tb = results[a]["top"], results[b]["top"]
        union = ta | tb
        jaccard = len(ta & tb) / len(union) if union else math.nan
        assert math.isnan(jaccard) or 0.0 <= jaccard <= 1.0
        columns = dict(suite=RECORD_SUITE, method=f"{a}|{b}", perturbation={"kind": "score", "k": k})
        recorder.record("jaccard", jaccard, higher_is_better=True,
                        extra={"method_a": a, "method_b": b, "k": k, "size_a": len(ta), "size_b": len(tb)}, **columns)
        sa, sb = results[a]["sampled"], results[b]["sampled"]
        if sa is not None and sb is not None:
            rho = _spearman(sa, sb)
            assert math.isnan(rho) or -1.0 - 1e-9 <= rho <= 1.0 + 1e-9
            recorder.record("spearman", rho, higher_is_better=True,
                            extra={"method_a": a, "method_b": b, "sample": int(sa.numel()), "over": "common_sample"},
                            **columns)
