"""The shipped attribution prompts (``prompts.json`` next to this module): openings of CPython
documentation topics from the offline corpus and short code questions about the same material."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from harness.errors import HarnessError

PROMPTS_FILE = Path(__file__).with_name("prompts.json")
KINDS = ("doc", "code")


@dataclass(frozen=True)
class Prompt:
    """One attribution prompt: ``id`` (used in test ids and records), ``kind`` (doc or code), where it comes from."""

    id: str
    kind: str
    text: str
    source: str


@cache
def load_prompts(path: Path = PROMPTS_FILE) -> tuple[Prompt, ...]:
    """All prompts of ``path``, in file order.

    Raises:
        HarnessError: a missing or malformed file, an unknown kind, a duplicate id or an empty text.
    """
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8"))["prompts"]
        prompts = tuple(Prompt(r["id"], r["kind"], r["text"], r.get("source", "")) for r in rows)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise HarnessError(f"{path}: not a prompt file ({{\"prompts\": [{{id, kind, text}}...]}}): {err}") from None
    ids = [p.id for p in prompts]
    for p in prompts:
        if p.kind not in KINDS or not p.text.strip() or ids.count(p.id) > 1:
            raise HarnessError(f"{path}: prompt {p.id!r} needs a unique id, a kind in {KINDS} and a non-empty text")
    return prompts


def select_prompts(n: int | None = None) -> tuple[Prompt, ...]:
    """The first ``n`` prompts (all for None); the file alternates doc and code prompts, so any ``n >= 2`` has both.

    Raises:
        HarnessError: ``n`` below 1 or above the number of prompts.
    """
    prompts = load_prompts()
    if n is None:
        return prompts
    if not 1 <= n <= len(prompts):
        raise HarnessError(f"asked for {n} attribution prompts; the prompt file has 1..{len(prompts)}")
    return prompts[:n]
