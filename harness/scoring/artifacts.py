"""``<results-dir>/<model>/super_weights.json`` and its per-layer summary, written atomically.

``super_weights.json`` is a JSON list, one object per scored weight::

    {"method": "activation", "rank": 0, "module": "model.layers.2.mlp.down_proj.weight",
     "layer": 2, "component": "mlp_down", "row": 3968, "col": 7003, "index": [3968, 7003],
     "value": -1.75, "score": 2300.0}

(``col`` is null for a 1-D parameter.) ``super_weights_summary.json`` is a list of
``{"method", "layer", "count", "max_score"}`` for the per-layer plot (``max_score`` is the largest
|score|). Writing one method replaces that method's entries and keeps the others; both files are
replaced with ``os.replace`` under a lock file, so readers never see a half-written file and
parallel writers (xdist) do not lose each other's methods.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.scoring.base import ScoredSite

FILENAME = "super_weights.json"
SUMMARY_FILENAME = "super_weights_summary.json"


def model_dir_name(model_name: str) -> str:
    """A directory name for a model name, hub id or path (``org/name`` -> ``org--name``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "--", str(model_name).strip()).strip("-.")
    if not name:
        raise HarnessError(f"cannot make a directory name from model name {model_name!r}")
    return name


def super_weights_path(results_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(results_dir) / model_dir_name(model_name) / FILENAME


def read_super_weights(results_dir: str | os.PathLike, model_name: str) -> list[dict[str, Any]]:
    """The entries of ``super_weights.json`` (empty when the file does not exist).

    Raises:
        HarnessError: the file exists but is not a JSON list.
    """
    return _read_list(super_weights_path(results_dir, model_name))


def _read_list(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HarnessError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); delete it or fix it") from None
    if not isinstance(data, list):
        raise HarnessError(f"{path} should hold a JSON list of super-weight objects")
    return data


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf/nan


def _entry(method: str, rank: int, s: ScoredSite, extra: dict[str, Any] | None) -> dict[str, Any]:
    d = s.to_dict()
    out = {"method": method, "rank": rank, **d, "value": _finite(d["value"]), "score": _finite(d["score"])}
    if extra:
        out.update(extra)
    return out


def summarize(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (method, layer): how many weights and the largest |score|."""
    table: dict[tuple[str, int], dict[str, Any]] = {}
    for e in entries:
        row = table.setdefault((e["method"], e["layer"]),
                               {"method": e["method"], "layer": e["layer"], "count": 0, "max_score": None})
        row["count"] += 1
        if e.get("score") is not None:
            score = abs(e["score"])
            row["max_score"] = score if row["max_score"] is None else max(row["max_score"], score)
    return [table[key] for key in sorted(table)]


def write_super_weights(results_dir: str | os.PathLike, model_name: str, sites: Iterable[ScoredSite],
                        method: str, *, extra: list[dict[str, Any]] | None = None) -> Path:
    """Write ``sites`` as ``method``'s entries of ``<results_dir>/<model>/super_weights.json``.

    Args:
        results_dir: the results directory (``--results-dir``).
        model_name: model name, hub id or path (made safe for a directory name).
        sites: the weights, best first (``ScoreSet.top_k``); an empty list records that the method
            found nothing (its earlier entries are removed).
        method: the scorer's name; entries of other methods are kept.
        extra: per-site extra fields (same length as ``sites``), e.g. the activations of a spike.

    Returns:
        Path of ``super_weights.json`` (the summary is written next to it).

    Raises:
        HarnessError: an empty method name, ``extra`` of the wrong length, or an unreadable existing file.
    """
    if not method:
        raise HarnessError("write_super_weights needs a method name")
    sites = list(sites)
    if extra is not None and len(extra) != len(sites):
        raise HarnessError(f"extra has {len(extra)} entries for {len(sites)} sites")
    path = super_weights_path(results_dir, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = [_entry(method, i, s, extra[i] if extra else None) for i, s in enumerate(sites)]
    with _locked(path):
        kept = [e for e in _read_list(path) if e.get("method") != method]
        entries = sorted(kept + new, key=lambda e: (e["method"], e["rank"]))
        _atomic_write(path, entries)
        _atomic_write(path.with_name(SUMMARY_FILENAME), summarize(entries))
    return path


def _atomic_write(path: Path, data: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # Windows: atomic replace only
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
