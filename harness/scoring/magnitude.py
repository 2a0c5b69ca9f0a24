"""Data-free scorers from the weights alone: ``magnitude`` and ``z_score``.

Memory beyond the model: nothing kept; one matrix of scores at a time, computed when it is read.
"""

from __future__ import annotations

from harness.scoring.base import Context, Cost, ScoreSet, ref_weight, scorer

Z_THRESHOLD = 2.5  # the research framework's default outlier cut


@scorer("magnitude")
def magnitude(ctx: Context) -> ScoreSet:
    """|w|.

    Cost: no forward or backward pass; one read of each selected matrix.
    """
    return ScoreSet("magnitude", ctx.refs, Cost(), ctx.model, lambda ref: ref_weight(ctx.model, ref).float().abs())


@scorer("z_score")
def z_score(ctx: Context, *, threshold: float = Z_THRESHOLD) -> ScoreSet:
    """Per-matrix z-score of |w|: (|w| − mean|w|) / std|w| over the selected rows of each matrix.

    ``top_k`` keeps only outliers, weights with ``z >= threshold`` (default 2.5); a threshold no
    weight reaches gives an empty list (logged), not an error.

    Cost: no forward or backward pass; one read of each selected matrix.
    """

    def compute(ref):
        a = ref_weight(ctx.model, ref).float().abs()
        std = a.std()
        return (a - a.mean()) / std if std > 0 else a.zero_()

    return ScoreSet("z_score", ctx.refs, Cost(), ctx.model, compute, threshold=float(threshold),
                    details={"threshold": float(threshold)})
