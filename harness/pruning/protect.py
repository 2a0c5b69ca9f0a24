"""Which weights pruning must keep: the super weights of a model.

From ``<results-dir>/<model>/super_weights.json`` (the super-weights suite writes it) when it holds
entries of the ``activation`` method, else found now with the ``activation`` scorer (one prompt, a
few forward passes; see :mod:`harness.scoring.activation`).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from harness.faults.sites import FaultSite

log = logging.getLogger(__name__)


def super_weight_sites(loaded: Any, results_dir: str | os.PathLike | None = None,
                       method: str = "activation") -> list[FaultSite]:
    """The super weights of ``loaded`` as fault sites (possibly none: logged).

    Args:
        loaded: a ``LoadedModel``.
        results_dir: where to look for ``super_weights.json`` first (None: detect only).
        method: entries of which method in the file count as super weights.
    """
    from harness.scoring import read_super_weights, score

    if results_dir is not None:
        entries = [e for e in read_super_weights(results_dir, loaded.name) if e.get("method") == method]
        if entries:
            log.info("protecting %d %s super weights from super_weights.json", len(entries), method)
            return [FaultSite(e["module"], tuple(e["index"])) for e in entries]
    sites = [s.site for s in score(loaded, "activation").sites or ()]
    log.info("protecting %d super weights found by the activation scorer", len(sites))
    return sites
