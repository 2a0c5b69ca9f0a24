"""Which weights a run ran on: a digest of the parameters as loaded, and where they came from.

Two conversions of the same registry name (a new transformers release that dequantizes a GGUF differently) or
a fine-tuned copy saved under the old name load without an error and compare as the same model by name. Their
:func:`weights_identity` differs: the digest covers every parameter's name, dtype, shape and stored bits.

The digest uses the device-independent word sums of :func:`harness.fingerprint.word_sums`, so the same
weights give the same digest on the CPU and on a GPU. Cost: one read of the weights (0.4 s for smollm2-135m's
538 MB on one CPU thread, under load).
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

DIGEST_PREFIX = "w1:"  # the digest's scheme; a new scheme gets a new prefix, so that old digests never match


def weights_digest(model: Any) -> str:
    """A digest of every parameter of ``model`` as stored (name, dtype, shape, bits): ``w1:`` and 16 hex digits."""
    from harness.fingerprint import word_sums

    h = hashlib.sha256()
    for name, p in model.named_parameters():
        sums = "offloaded" if p.device.type == "meta" else word_sums(p)  # --device-map ... disk: not in memory
        h.update(repr((name, str(p.dtype), tuple(p.shape), sums)).encode())
    return DIGEST_PREFIX + h.hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def weights_source(loaded: LoadedModel) -> dict[str, Any]:
    """Where ``loaded``'s weights came from: the registry name and source kind, the hub id and revision, the local
    directory, the GGUF file's SHA-256 and the transformers version that converted it, the loading versions."""
    spec = loaded.spec
    out: dict[str, Any] = {"name": loaded.name, "source": spec.source, "hub_id": spec.hub_id,
                           "transformers": _version("transformers"), "torch": _version("torch")}
    revision = getattr(getattr(loaded.model, "config", None), "_commit_hash", None)
    if revision:
        out["revision"] = revision
    if spec.source == "local":
        out["directory"] = str(Path(loaded.name).resolve())
    if spec.source == "gguf-package":
        from harness.models.gguf import SOURCE_FILE, model_dir

        out.update(gguf_file=spec.gguf_file, gguf_sha256=spec.sha256, package_version=spec.package_version)
        marker = model_dir(spec) / SOURCE_FILE
        if marker.is_file():
            out["converted_by_transformers"] = json.loads(marker.read_text()).get("transformers")
    return {k: v for k, v in out.items() if v is not None}


def weights_identity(loaded: LoadedModel) -> dict[str, Any]:
    """``{"digest": weights_digest, "dtype": ..., "parameters": count, "source": weights_source}`` of ``loaded``."""
    from harness.models.device import dtype_name

    params = sum(p.numel() for p in loaded.model.parameters())
    return {"digest": weights_digest(loaded.model), "dtype": dtype_name(loaded.dtype), "parameters": params,
            "source": weights_source(loaded)}
