"""Save a (pruned) model as safetensors with its config and tokenizer; never pickle.

The directory loads with ``AutoModelForCausalLM.from_pretrained(path)`` and with the harness zoo
(``load_model(path)``, ``--model path``). ``esa-pruning.json`` beside the weights records what was
pruned (the sparsity report's summary and any caller metadata).
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from harness.errors import HarnessError

log = logging.getLogger(__name__)

PRUNING_FILE = "esa-pruning.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def _is_replaceable(path: Path) -> bool:
    """Only an empty directory or a model directory (config.json) is replaced with overwrite=True."""
    return path.is_dir() and (not any(path.iterdir()) or (path / "config.json").is_file())


def save_model(model: Any, path: str | Path, *, tokenizer: Any = None, overwrite: bool = False,
               report: Any = None, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``model`` (and tokenizer) to the directory ``path`` as safetensors.

    Args:
        model: a ``LoadedModel`` (its tokenizer is saved too) or a transformers model.
        path: output directory; it must not exist unless ``overwrite``.
        tokenizer: the tokenizer, when ``model`` is a bare transformers model.
        overwrite: replace an existing model directory (or an empty directory) at ``path``.
        report: a ``SparsityReport`` to record in ``esa-pruning.json``.
        metadata: more JSON-ready facts for ``esa-pruning.json`` (source model, scorer, ...).

    Returns:
        The directory written.

    Raises:
        HarnessError: ``path`` exists and ``overwrite`` is False, or it is not a model directory.
    """
    path = Path(path)
    if path.exists():
        if not overwrite:
            raise HarnessError(f"output path {path} exists; choose a new path or pass overwrite=True to replace it")
        if not _is_replaceable(path):
            raise HarnessError(f"refusing to overwrite {path}: it is not a model directory (no config.json) "
                               "or an empty directory")
    module = model if hasattr(model, "save_pretrained") else model.model
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        kwargs = {}
        if "safe_serialization" in inspect.signature(module.save_pretrained).parameters:
            kwargs["safe_serialization"] = True  # transformers 4; version 5 writes only safetensors
        module.save_pretrained(tmp, **kwargs)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        pickled = [p.name for p in tmp.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickled:
            raise HarnessError(f"saving wrote pickle files {pickled}; refusing (safetensors only)")
        facts = dict(metadata or {})
        if report is not None:
            facts["pruning"] = report.to_dict(per_matrix=True)
        (tmp / PRUNING_FILE).write_text(json.dumps(facts, indent=2, default=str))
        if path.exists():
            shutil.rmtree(path)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %s to %s", type(module).__name__, path)
    return path
