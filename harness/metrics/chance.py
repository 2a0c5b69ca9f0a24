"""Chance level of the offline multiple-choice tasks: what a model that guesses uniformly scores."""

from __future__ import annotations

import json
from pathlib import Path

from harness.metrics.lmeval import TASKS_DIR


def chance_accuracy(task: str, tasks_dir: Path = TASKS_DIR) -> float | None:
    """Expected ``acc`` of uniform guessing on ``task``: the mean of 1 / (choices of each item).

    Returns:
        The chance level, or None when ``task`` is not a multiple-choice task shipped in ``tasks_dir``
        (a ``<task>.jsonl`` whose items carry ``choices``).
    """
    path = Path(tasks_dir) / f"{task}.jsonl"
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as fh:
        counts = [len(item["choices"]) for item in map(json.loads, filter(str.strip, fh)) if item.get("choices")]
    return sum(1 / n for n in counts) / len(counts) if counts else None
