"""Pruning: masks from scores at any granularity, applied in place and undone bit-exactly, selective
pruning with the research framework's knobs, saving, and clean-versus-pruned output comparison.

    from harness.pruning import prune
    from harness.scoring import score
    scores = score(lm, "wanda", components="linear", windows=calib)
    with prune(lm, scores, 0.5, granularity="row") as report:
        evaluate(lm.model, windows)

Modules: ``masks`` (granularities), ``methods`` (zero / mean / noise), ``prune`` (the context manager
and the permanent edit, the sparsity report), ``selective`` (the one
call), ``covered`` (protection where the mask covers every super weight: the sites kept come from the
session's one detection, ``prune(..., protect=sites)``), ``save``, ``compare``, ``options`` (pytest options).
"""

from harness.pruning.masks import GRANULARITIES, Granularity, parse_granularity
from harness.pruning.methods import PRUNE_METHODS
from harness.pruning.prune import MatrixSparsity, Pruning, SparsityReport, prune, prune_permanently
from harness.pruning.save import save_model
from harness.pruning.selective import selective_prune

__all__ = [
    "GRANULARITIES", "PRUNE_METHODS", "Granularity", "MatrixSparsity", "Pruning", "SparsityReport",
    "parse_granularity", "prune", "prune_permanently", "save_model", "selective_prune",
]
