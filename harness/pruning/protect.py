"""Which weights pruning must keep: the super weights of a model (the shared detector's sites).

Pass the session's :class:`~harness.scoring.superweights.Detection` (the ``super_weights`` fixture)
so that pruning protects exactly the weights every other suite calls super weights. Given a model
instead, the detection is read from ``<results-dir>/<model>/super_weights.json`` when that file
holds one made with the detector's defaults on the same dtype, else detected now (defaults).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from harness.faults.sites import FaultSite

log = logging.getLogger(__name__)


def super_weight_sites(source: Any, results_dir: str | os.PathLike | None = None) -> list[FaultSite]:
    """The super weights as fault sites (possibly none: logged).

    Args:
        source: a ``Detection``, or a ``LoadedModel`` to detect on.
        results_dir: where to look for a stored detection first (None: detect only).
    """
    from harness.scoring.superweights import Detection, DetectorParams, detect

    if isinstance(source, Detection):
        detection = source
    else:
        detection = None
        if results_dir is not None:
            from harness.scoring.artifacts import read_detection

            stored = read_detection(results_dir, source.name)
            dtype = str(source.dtype).removeprefix("torch.")
            if stored is not None and stored.params == DetectorParams() and stored.dtype == dtype:
                detection = stored
        if detection is None:
            detection = detect(source)
    log.info("protecting %d super weights (detection %s)", len(detection), detection.id)
    return detection.fault_sites()
