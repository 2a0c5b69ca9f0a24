"""Evaluation and calibration text.

The default corpus needs no download: CPython's documentation topics (``pydoc_data.topics``, shipped
with every Python), real human-written English about the language. Topics are split
deterministically into evaluation and calibration documents by a SHA-256 of the topic name, so the
split does not depend on dict order or Python version beyond the topics themselves.

Other sources: a local ``.txt`` file (documents separated by blank lines), a local ``.jsonl`` file
(one object per line with a ``"text"`` field), or ``wikitext2`` through ``datasets`` when the hub
is reachable (test split for evaluation, train split for calibration).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import HarnessError, OfflineError

log = logging.getLogger(__name__)

DEFAULT_CORPUS = "pydoc-topics"
CALIBRATION_PERCENT = 20  # share of documents that go to calibration
DOC_SEPARATOR = "\n\n"


@dataclass(frozen=True)
class Corpus:
    """Documents for evaluation (perplexity, prompts) and calibration (scorers, pruning)."""

    name: str
    eval_docs: tuple[str, ...]
    calib_docs: tuple[str, ...]


def _is_calibration(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % 100 < CALIBRATION_PERCENT


def _split(name: str, docs: list[tuple[str, str]]) -> Corpus:
    """Split (key, text) pairs by the hash of their key; a text seen before is dropped, so no
    document is in both halves (some pydoc topics share one text)."""
    seen: set[str] = set()
    docs = [(k, t) for k, t in docs if t.strip() and not (t in seen or seen.add(t))]
    if not docs:
        raise HarnessError(f"corpus {name!r} holds no text")
    calib = tuple(t for k, t in docs if _is_calibration(k))
    evals = tuple(t for k, t in docs if not _is_calibration(k))
    if not evals or not calib:  # a one-document file: use it for both rather than fail
        evals = evals or calib
        calib = calib or evals
    return Corpus(name=name, eval_docs=evals, calib_docs=calib)


def _pydoc_topics() -> Corpus:
    from pydoc_data.topics import topics

    return _split(DEFAULT_CORPUS, [(k, topics[k]) for k in sorted(topics)])


def _local_file(path: Path) -> Corpus:
    if not path.is_file():
        raise HarnessError(
            f"corpus file {path} does not exist (give a .txt or .jsonl file, 'wikitext2' or '{DEFAULT_CORPUS}')"
        )
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        docs = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                docs.append((f"{n}", json.loads(line)["text"]))
            except (json.JSONDecodeError, KeyError, TypeError):
                raise HarnessError(f"{path}:{n}: expected a JSON object with a \"text\" field") from None
    else:
        docs = [(f"{n}", p) for n, p in enumerate(re.split(r"\n\s*\n", text))]
    if not any(t.strip() for _, t in docs):
        raise HarnessError(f"corpus file {path} is empty")
    return _split(path.name, docs)


def _wikitext2() -> Corpus:
    try:
        import datasets

        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1")
    except Exception as err:
        raise OfflineError(
            f"wikitext2 needs the Hugging Face hub ({type(err).__name__}); "
            f"use the offline corpus '{DEFAULT_CORPUS}' or --corpus PATH"
        ) from None
    return Corpus(
        name="wikitext2",
        eval_docs=("".join(ds["test"]["text"]),),
        calib_docs=("".join(ds["train"]["text"]),),
    )


def load_corpus(spec: str | Path | None = None) -> Corpus:
    """Load a corpus.

    Args:
        spec: None or ``"pydoc-topics"`` (default, offline), ``"wikitext2"``, or a path to a
            ``.txt`` / ``.jsonl`` file.

    Raises:
        HarnessError: missing or empty file, or bad JSONL.
        OfflineError: wikitext2 without hub access.
    """
    if spec is None or str(spec) == DEFAULT_CORPUS:
        return _pydoc_topics()
    if str(spec) in ("wikitext2", "wikitext-2"):
        return _wikitext2()
    return _local_file(Path(spec))


def token_stream(tokenizer, docs: tuple[str, ...] | list[str]) -> torch.Tensor:
    """Tokenize the documents joined by blank lines, without special tokens. Returns (N,) int64."""
    ids = tokenizer(DOC_SEPARATOR.join(docs), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids, dtype=torch.long)


_PROBE = "The probe text."


def bos_token_id(tokenizer) -> int | None:
    """The special token ``tokenizer`` puts in front of a text when it adds special tokens (its BOS), or None.

    Found by encoding a probe text with and without special tokens, so it follows what the tokenizer
    does (Gemma, Llama-2, OPT: yes; SmolLM2, GPT-NeoX, the tiny byte tokenizer: no), not what its
    config names: many tokenizers define a ``bos_token`` they never add.
    """
    plain = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    full = tokenizer(_PROBE, add_special_tokens=True)["input_ids"]
    if len(full) <= len(plain) or full[1:1 + len(plain)] != plain:
        return None
    special = set(getattr(tokenizer, "all_special_ids", None) or ())
    first = int(full[0])
    return first if first in special or first == getattr(tokenizer, "bos_token_id", None) else None


def token_windows(tokenizer, docs: tuple[str, ...] | list[str], length: int, count: int,
                  corpus_name: str = "corpus", *, bos: bool | None = None) -> torch.Tensor:
    """``count`` windows of ``length`` tokens cut from the document stream, in the model's own convention.

    Window ``i`` covers stream tokens ``[i*length, (i+1)*length)``. Its first position is context
    only: without BOS it is the stream token ``i*length``; with BOS that token is replaced by the
    tokenizer's BOS, so the window is ``[BOS] + (length-1)`` stream tokens, exactly what the tokenizer
    makes of that text (as HF and lm-eval score it). Either way the predicted tokens are stream
    tokens ``i*length+1 .. (i+1)*length-1``: the same tokens, ``count * (length-1)`` of them, so
    perplexities with and without BOS compare token for token.

    Args:
        tokenizer: a transformers tokenizer (called with ``add_special_tokens``).
        docs: the documents, joined by blank lines into one stream.
        length: tokens per window (model positions), >= 2.
        count: number of windows, >= 1.
        corpus_name: for the error message.
        bos: None (default): BOS exactly when the tokenizer adds one (:func:`bos_token_id`);
            False: never; True: always (the tokenizer must add one).

    Returns:
        LongTensor (count, length).

    Raises:
        HarnessError: when length < 2 or count < 1, the corpus is too short, or ``bos=True`` with a
            tokenizer that adds no BOS.
    """
    if length < 2 or count < 1:
        raise HarnessError(
            f"need a window length >= 2 and at least one window (got length={length}, count={count})"
        )
    bos_id = bos_token_id(tokenizer) if bos is not False else None
    if bos and bos_id is None:
        raise HarnessError("bos=True, but this tokenizer adds no BOS token; use bos=None (its own convention) or False")
    stream = token_stream(tokenizer, docs)
    need = length * count
    if stream.numel() < need:
        raise HarnessError(
            f"{need} tokens asked for, but {corpus_name} has only {stream.numel()} tokens "
            f"with this tokenizer; ask for at most {stream.numel() // length * length}"
        )
    windows = stream[:need].view(count, length).clone()  # (count, length)
    if bos_id is not None:
        windows[:, 0] = bos_id
    return windows


def window_metadata(tokenizer, windows: torch.Tensor) -> dict[str, int | bool | None]:
    """What a record needs to say about evaluation windows: count, length, predicted tokens and BOS.

    ``bos`` is True when the windows start with the tokenizer's BOS (:func:`token_windows`' convention).
    """
    bos_id = bos_token_id(tokenizer)
    with_bos = bos_id is not None and bool((windows[:, 0] == bos_id).all())
    return {"windows": int(windows.shape[0]), "window": int(windows.shape[1]),
            "predicted_tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
            "bos": with_bos, "bos_token_id": bos_id if with_bos else None}


def _is_prose(paragraph: str, words: int) -> bool:
    heading = re.search(r"^[*=\-]{3,}\s*$", paragraph, re.M)
    return not heading and "::=" not in paragraph and len(paragraph.split()) >= words


def generation_prompts(corpus: Corpus, n: int = 8, words: int = 10) -> list[str]:
    """The opening words of the first paragraph of the first ``n`` evaluation documents.

    Headings (a line followed by a line of ``*``, ``=`` or ``-``) and paragraphs shorter than
    ``words`` words or holding grammar rules (``::=``) are skipped.
    """
    prompts = []
    for doc in corpus.eval_docs:
        paragraphs = [p.strip() for p in re.split(r"\n\s*\n", doc) if p.strip()]
        body = next((p for p in paragraphs if _is_prose(p, words)), None)
        if body is None:
            continue
        opening = " ".join(body.split()[:words])
        if opening:
            prompts.append(opening)
        if len(prompts) == n:
            break
    return prompts
