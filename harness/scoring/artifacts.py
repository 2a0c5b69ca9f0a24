"""``<results-dir>/<model>/super_weights.json``: the model's super-weight detection, written atomically.

One file per model and run: the :class:`~harness.scoring.superweights.Detection` the run used (the
session fixture writes it once), as a JSON object::

    {"detection": {"id": "1ba7584922b5", "detector": "activation", "model": "smollm2-135m",
                   "dtype": "float32", "params": {"prompts": [...], "factor": 50.0, "rounds": 1},
                   "token_ids": [[...]], "input_scale": 2.47, "output_scale": 13.07, "rounds_run": 2,
                   "candidate": {...}},
     "sites": [{"method": "activation", "rank": 0, "module": "model.layers.11.mlp.down_proj.weight",
                "layer": 11, "component": "mlp_down", "row": 507, "col": 1229, "index": [507, 1229],
                "value": 5.876, "score": 24021.9, "round": 0, "token": 0, "input_spike": 2996.0,
                "output_spike": 24021.9, "strength": 1211.8, "detection": "1ba7584922b5"}, ...]}

``score`` is |output spike| (the super activation). An empty ``sites`` list records that the
detector found nothing (``detection.candidate`` says how close the strongest block came). The file
is replaced with ``os.replace`` under a lock file, so readers never see a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness.errors import HarnessError
from harness.scoring.superweights import DETECTOR, Detection

FILENAME = "super_weights.json"


def model_dir_name(model_name: str) -> str:
    """A directory name for a model name, hub id or path (``org/name`` -> ``org--name``)."""
    name = re.sub(r"[^A-Za-z0-9._+-]+", "--", str(model_name).strip()).strip("-.")
    if not name:
        raise HarnessError(f"cannot make a directory name from model name {model_name!r}")
    return name


def super_weights_path(results_dir: str | os.PathLike, model_name: str) -> Path:
    return Path(results_dir) / model_dir_name(model_name) / FILENAME


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None  # JSON has no inf/nan


def site_entries(detection: Detection) -> list[dict[str, Any]]:
    """The detection's sites as ``super_weights.json`` entries (best first)."""
    out = []
    for rank, s in enumerate(detection.sites):
        out.append({"method": DETECTOR, "rank": rank, "module": s.param, "layer": s.layer, "component": "mlp_down",
                    "row": s.row, "col": s.col, "index": [s.row, s.col], "value": _finite(s.value),
                    "score": _finite(abs(s.output_spike)), "round": s.round, "prompt": s.prompt, "token": s.token,
                    "input_spike": _finite(s.input_spike), "output_spike": _finite(s.output_spike),
                    "strength": _finite(s.strength), "detection": detection.id})
    return out


def write_super_weights(results_dir: str | os.PathLike, detection: Detection) -> Path:
    """Write ``detection`` as ``<results_dir>/<model>/super_weights.json`` (replacing the file).

    Returns:
        The file's path.
    """
    path = super_weights_path(results_dir, detection.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {k: v for k, v in detection.to_dict().items() if k != "sites"}
    with _locked(path):
        _atomic_write(path, {"detection": header, "sites": site_entries(detection)})
    return path


def _read(path: Path) -> dict[str, Any] | None:
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise HarnessError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); delete it or fix it") from None
    if not (isinstance(data, dict) and isinstance(data.get("sites"), list) and isinstance(data.get("detection"), dict)):
        raise HarnessError(f"{path} should hold a JSON object with 'detection' and 'sites' (a super-weight "
                           "detection); delete it to have it written again")
    return data


def read_super_weights(results_dir: str | os.PathLike, model_name: str) -> list[dict[str, Any]]:
    """The site entries of ``super_weights.json`` (empty when the file does not exist).

    Raises:
        HarnessError: the file exists but is not a detection object.
    """
    data = _read(super_weights_path(results_dir, model_name))
    return [] if data is None else data["sites"]


def read_detection(results_dir: str | os.PathLike, model_name: str) -> Detection | None:
    """The :class:`Detection` stored in ``super_weights.json``, or None when there is no file.

    Raises:
        HarnessError: the file exists but is not a detection object.
    """
    data = _read(super_weights_path(results_dir, model_name))
    if data is None:
        return None
    from harness.scoring.superweights import SuperWeight

    sites = [SuperWeight(e["layer"], e["module"], e["row"], e["col"], e["value"], e["round"], e["prompt"],
                         e["token"], e["input_spike"], e["output_spike"], e["strength"]) for e in data["sites"]]
    return Detection.from_dict({**data["detection"], "sites": [s.to_dict() for s in sites]})


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
