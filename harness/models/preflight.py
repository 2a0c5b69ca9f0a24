"""Fail fast, before any test runs, on a model that cannot be loaded on this machine."""

from __future__ import annotations

import os
from pathlib import Path

from harness.errors import HarnessError, OfflineError
from harness.models.specs import ModelSpec


def preflight(name_or_path: str | os.PathLike) -> ModelSpec:
    """Check that ``name_or_path`` can be loaded here, without loading it (no weights are read; a local
    directory's tokenizer is loaded).

    Returns:
        Its :class:`ModelSpec`.

    Raises:
        UnknownNameError: an unknown name (with a suggestion).
        OfflineError: a hub model, not in the local hub cache, on a machine that cannot reach the hub.
        HarnessError: a path that is not a model directory, or one with a broken config.json or weights file
            (:func:`~harness.models.integrity.check_model_dir`); a gated model without a token.
    """
    from harness.models.hub import gated_message, hub_reachable, hub_token, in_local_cache, offline_message
    from harness.models.integrity import check_model_dir
    from harness.models.loading import load_tokenizer, resolve_spec

    spec = resolve_spec(name_or_path)
    if spec.source == "local":  # headers and the tokenizer: a truncated download fails here, before any test
        check_model_dir(Path(spec.name))
        load_tokenizer(Path(spec.name))
    if spec.source != "hub":
        return spec
    hub_id = spec.hub_id or spec.name
    if in_local_cache(hub_id):
        return spec
    if not hub_reachable():
        raise OfflineError(offline_message(f"model {spec.name!r} ({hub_id})"))
    if spec.gated and hub_token() is None:
        raise HarnessError(gated_message(spec.name, hub_id))
    return spec
