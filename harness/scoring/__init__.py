"""Sensitivity scorers: one registry (``SCORERS``), one output type (``ScoreSet``), one call (``score``).

    from harness.scoring import score
    top = score(loaded, "activation").top_k(5)

Methods: ``activation`` (the super-weight detector ``harness.scoring.superweights`` as a scorer),
``z_score``, ``magnitude``, ``gradient``, ``taylor``, ``fisher``, ``hessian`` (Hutchinson), ``integrated`` (integrated
gradients), ``wanda``. Each method's docstring states its cost in forward/backward passes.
"""

from __future__ import annotations

from harness.scoring import activation, gradient, hessian, integrated, magnitude, wanda  # noqa: F401 - register
from harness.scoring.artifacts import read_detection, read_super_weights, super_weights_path, write_super_weights
from harness.scoring.base import SCORERS, Context, Cost, ScoredSite, Scorer, ScoreSet, score, scorer
from harness.scoring.known import KNOWN_SUPER_WEIGHTS, KnownSuperWeight, known_super_weights
from harness.scoring.superweights import Detection, SuperWeight, detect

__all__ = [
    "KNOWN_SUPER_WEIGHTS", "SCORERS", "Context", "Cost", "Detection", "KnownSuperWeight", "ScoreSet", "ScoredSite",
    "Scorer", "SuperWeight", "detect", "known_super_weights", "read_detection", "read_super_weights", "score",
    "scorer", "super_weights_path", "write_super_weights",
]
