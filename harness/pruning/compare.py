"""Greedy generations of the clean and the pruned model, side by side, with per-prompt divergence.

``greedy(model, tokenizer, prompts)`` generates; ``divergence(clean, pruned)`` gives the first
differing token and the token edit distance; ``write_comparison`` puts one section per pruning
configuration into ``<results-dir>/<model>/output_comparison.txt`` (a section with the same title is
replaced, the others kept).
"""

from __future__ import annotations

import os
import re
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.models.device import input_device

COMPARISON_FILE = "output_comparison.txt"
COLUMN = 60  # characters per column
_SECTION = "=" * 8

@dataclass(frozen=True)
class Divergence:
    """How two token sequences differ: ``first`` is the index of the first differing generated token
    (None when identical), ``distance`` the token edit distance (Levenshtein), ``length`` the longer
    sequence's length."""

    first: int | None
    distance: int
    length: int

    @property
    def identical(self) -> bool:
        return self.first is None


@torch.no_grad()
def greedy(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int = 32) -> list[list[int]]:
    """Greedy continuations (token ids, prompt excluded) of each prompt, one prompt at a time."""
    module = model if hasattr(model, "generate") else model.model
    device = input_device(module)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out = []
    for prompt in prompts:
        enc = tokenizer(prompt, return_tensors="pt").to(device)
        ids = module.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                              temperature=None, top_p=None, top_k=None)
        out.append(ids[0, enc["input_ids"].shape[1]:].tolist())
    return out


def edit_distance(a: list[int], b: list[int]) -> int:
    """Levenshtein distance between two token sequences."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def divergence(clean: list[int], pruned: list[int]) -> Divergence:
    """First differing position and token edit distance of two generations."""
    first = next((i for i, (x, y) in enumerate(zip(clean, pruned, strict=False)) if x != y), None)
    if first is None and len(clean) != len(pruned):
        first = min(len(clean), len(pruned))
    return Divergence(first, edit_distance(clean, pruned), max(len(clean), len(pruned)))


def _columns(left: str, right: str) -> list[str]:
    a = textwrap.wrap(left, COLUMN, replace_whitespace=True, drop_whitespace=True) or [""]
    b = textwrap.wrap(right, COLUMN, replace_whitespace=True, drop_whitespace=True) or [""]
    a += [""] * (len(b) - len(a))
    b += [""] * (len(a) - len(b))
    return [f"    {x:<{COLUMN}} | {y}" for x, y in zip(a, b, strict=True)]


def format_section(title: str, tokenizer: Any, prompts: list[str], clean: list[list[int]],
                   pruned: list[list[int]], *, notes: str = "") -> str:
    """One configuration's comparison as text (see the module docstring)."""
    lines = [f"{_SECTION} {title} {_SECTION}"]
    if notes:
        lines.append(notes)
    for n, (prompt, c, p) in enumerate(zip(prompts, clean, pruned, strict=True), 1):
        d = divergence(c, p)
        lines.append("")
        lines.append(f"[{n}] prompt: {prompt!r}")
        if d.identical:
            lines.append(f"    identical ({len(c)} tokens)")
        else:
            ct = repr(tokenizer.decode(c[d.first:d.first + 1])) if d.first < len(c) else "<end>"
            pt = repr(tokenizer.decode(p[d.first:d.first + 1])) if d.first < len(p) else "<end>"
            lines.append(f"    first differing token: {d.first} (clean {ct} vs pruned {pt}); "
                         f"token edit distance {d.distance} of {d.length}")
        lines.append(f"    {'clean':<{COLUMN}} | pruned")
        lines.append(f"    {'-' * COLUMN} | {'-' * COLUMN}")
        lines.extend(_columns(tokenizer.decode(c, skip_special_tokens=True),
                              tokenizer.decode(p, skip_special_tokens=True)))
    return "\n".join(lines) + "\n"


def write_comparison(results_dir: str | Path, model_name: str, title: str, section: str) -> Path:
    """Put ``section`` into ``<results_dir>/<model>/output_comparison.txt``, replacing the section of
    the same ``title``; the file is rewritten atomically."""
    from harness.scoring.artifacts import model_dir_name  # the directory super_weights.json uses

    path = Path(results_dir) / model_dir_name(model_name) / COMPARISON_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    sections: dict[str, str] = {}
    if path.exists():
        for chunk in re.split(rf"(?m)^(?={_SECTION} )", path.read_text(encoding="utf-8")):
            m = re.match(rf"{_SECTION} (.*) {_SECTION}\n", chunk)
            if m:
                sections[m[1]] = chunk.rstrip("\n") + "\n"
    sections[title] = section
    fd, tmp = tempfile.mkstemp(prefix=".output_comparison.", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write("\n".join(sections.values()))
    os.replace(tmp, path)
    return path
