"""Build the offline lm-eval tasks shipped in ``harness/metrics/tasks/`` from the offline corpus.

Two tasks, both made only from the *evaluation* documents of the default corpus
(:func:`harness.data.load_corpus`, CPython's documentation topics), so they need no download and
never overlap the calibration documents that scorers and pruning see:

``pydoc_rolling`` (``loglikelihood_rolling``, like lm-eval's ``wikitext``)
    ``ROLLING_DOCS`` documents with at least ``ROLLING_MIN_WORDS`` words, chosen by the seeded RNG,
    in corpus order. Each is cut to its leading whole paragraphs that fit in ``ROLLING_MAX_WORDS``
    words (a longer first paragraph is cut at the last line that fits). The text is kept verbatim
    (headings, code, line breaks). Metrics: word_perplexity, byte_perplexity, bits_per_byte.

``pydoc_cloze`` (``multiple_choice``)
    A *prose paragraph* is one with no indented line (code), no heading underline and no ``::=``
    grammar rule; its lines are joined with single spaces and it is split into sentences after
    ``.``/``?``/``!`` followed by whitespace and a capital letter or quote. A *usable sentence* has
    ``SENTENCE_WORDS`` words, ends with ``.``, holds none of ``>>>``, ``::``, ``|`` and is no list
    bullet (``* ``) or version note (``Changed in version ...``).
    An item is a paragraph position whose sentence is usable and whose preceding sentences in the
    same paragraph hold ``CONTEXT_WORDS`` words (as many trailing sentences as fit in the maximum).
    The context is those sentences; the answer is the true next sentence; the three distractors
    are usable sentences from *other* documents, found nowhere in the passage's own document (the
    topics repeat some text), whose word count is within
    ``DISTRACTOR_LENGTH_RATIO`` of the answer's (so length is no cue), all distinct. The answer's
    position among the four is drawn by the RNG. At most one item per paragraph and
    ``CLOZE_PER_DOC`` per document; candidates are visited in RNG order until ``CLOZE_ITEMS``.
    Metrics: acc and acc_norm (log-likelihood divided by the choice's length in bytes); chance is 0.25.

Randomness uses only ``random.Random(SEED).random()``, whose sequence Python guarantees across
versions; every choice is ``int(rng.random() * n)``. The documentation topics change with the
Python version, so ``manifest.json`` records the SHA-256 of the source documents: the shipped files
are reproduced byte for byte (``python -m harness.metrics.taskbuild --check``) wherever that hash
matches, and are the fixed data everywhere.

Regenerate with ``python -m harness.metrics.taskbuild`` (writes ``harness/metrics/tasks/``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BUILDER_VERSION = 1
SEED = 20240607

ROLLING_TASK = "pydoc_rolling"
ROLLING_DOCS = 12
ROLLING_MIN_WORDS = 200
ROLLING_MAX_WORDS = 320

CLOZE_TASK = "pydoc_cloze"
CLOZE_ITEMS = 100
CLOZE_PER_DOC = 4
CONTEXT_WORDS = (12, 60)  # min, max words of the passage
SENTENCE_WORDS = (6, 30)  # min, max words of an answer or distractor
DISTRACTOR_LENGTH_RATIO = 1.5  # distractor words within [answer/r, answer*r]
N_CHOICES = 4

_SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z\"'(])")
_HEADING = re.compile(r"^\s*[*=\-~^]{3,}\s*$", re.M)
_BAD_SENTENCE = (">>>", "::", "|")
_BAD_START = re.compile(r"^(\* |(Changed|New|Added|Deprecated) in version)")


@dataclass(frozen=True)
class _Sentence:
    doc: int
    para: int
    pos: int  # index within the paragraph
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


class _Rng:
    """Choices from ``random.Random(seed).random()`` only (stable across Python versions)."""

    def __init__(self, seed: int) -> None:
        self._r = random.Random(seed)

    def index(self, n: int) -> int:
        return int(self._r.random() * n)

    def shuffle(self, items: list) -> list:
        items = list(items)
        for i in range(len(items) - 1, 0, -1):  # Fisher-Yates
            j = self.index(i + 1)
            items[i], items[j] = items[j], items[i]
        return items


def _paragraphs(doc: str) -> list[str]:
    return [p for p in re.split(r"\n\s*\n", doc) if p.strip()]


def _is_prose(paragraph: str) -> bool:
    lines = paragraph.split("\n")
    return (not _HEADING.search(paragraph) and "::=" not in paragraph
            and not any(line.startswith((" ", "\t")) for line in lines if line.strip()))


def _sentences(paragraph: str) -> list[str]:
    flat = " ".join(paragraph.split())
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]


def _usable(sentence: str) -> bool:
    n = len(sentence.split())
    return (SENTENCE_WORDS[0] <= n <= SENTENCE_WORDS[1] and sentence.endswith(".")
            and not any(bad in sentence for bad in _BAD_SENTENCE) and not _BAD_START.match(sentence))


def _truncate(doc: str, max_words: int) -> str:
    """Leading whole paragraphs of ``doc`` within ``max_words`` words (see module docstring)."""
    kept, words = [], 0
    for para in re.split(r"(\n\s*\n)", doc.strip()):  # keeps the separators
        n = len(para.split())
        if words + n > max_words:
            if not any(p.strip() for p in kept):  # first paragraph alone is too long: cut by lines
                for line in para.split("\n"):
                    if words + len(line.split()) > max_words:
                        break
                    kept.append(line + "\n")
                    words += len(line.split())
            break
        kept.append(para)
        words += n
    return "".join(kept).rstrip()


def build_rolling(docs: tuple[str, ...] | list[str], rng: _Rng) -> list[dict]:
    """The rows of the rolling log-likelihood task (see module docstring)."""
    eligible = [i for i, d in enumerate(docs) if len(d.split()) >= ROLLING_MIN_WORDS]
    chosen = sorted(rng.shuffle(eligible)[:ROLLING_DOCS])
    return [{"id": n, "doc": i, "text": _truncate(docs[i], ROLLING_MAX_WORDS)} for n, i in enumerate(chosen)]


def build_cloze(docs: tuple[str, ...] | list[str], rng: _Rng) -> list[dict]:
    """The rows of the multiple-choice cloze task (see module docstring)."""
    paragraphs: dict[tuple[int, int], list[str]] = {}
    for d, doc in enumerate(docs):
        for p, para in enumerate(_paragraphs(doc)):
            if _is_prose(para):
                paragraphs[(d, p)] = _sentences(para)
    pool = [_Sentence(d, p, i, s) for (d, p), sents in paragraphs.items() for i, s in enumerate(sents) if _usable(s)]
    candidates = []
    for target in pool:
        context, words = [], 0
        for prev in reversed(paragraphs[(target.doc, target.para)][:target.pos]):
            if words + len(prev.split()) > CONTEXT_WORDS[1]:
                break
            context.insert(0, prev)
            words += len(prev.split())
        if words >= CONTEXT_WORDS[0]:
            candidates.append((target, " ".join(context)))

    flat = [" ".join(doc.split()) for doc in docs]
    items, per_doc, used_paras, seen = [], {}, set(), set()
    for target, context in rng.shuffle(candidates):
        if len(items) == CLOZE_ITEMS:
            break
        if ((target.doc, target.para) in used_paras or per_doc.get(target.doc, 0) >= CLOZE_PER_DOC
                or (context, target.text) in seen):  # topics repeat text: no item twice
            continue
        lo, hi = target.words / DISTRACTOR_LENGTH_RATIO, target.words * DISTRACTOR_LENGTH_RATIO
        others = [s for s in pool if s.doc != target.doc and lo <= s.words <= hi and s.text not in flat[target.doc]]
        distractors: list[str] = []
        while len(distractors) < N_CHOICES - 1 and others:
            pick = others.pop(rng.index(len(others)))
            if pick.text not in distractors:
                distractors.append(pick.text)
        if len(distractors) < N_CHOICES - 1:
            continue
        label = rng.index(N_CHOICES)
        choices = [*distractors[:label], target.text, *distractors[label:]]
        items.append({"id": len(items), "doc": target.doc, "context": context, "choices": choices, "label": label})
        per_doc[target.doc] = per_doc.get(target.doc, 0) + 1
        used_paras.add((target.doc, target.para))
        seen.add((context, target.text))
    if len(items) < CLOZE_ITEMS:
        log.warning("only %d cloze items could be built (asked for %d)", len(items), CLOZE_ITEMS)
    return items


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_fingerprint(docs: tuple[str, ...] | list[str]) -> str:
    """SHA-256 of the source documents (joined by NUL)."""
    return _sha256("\0".join(docs))


def build(docs: tuple[str, ...] | list[str] | None = None, corpus_name: str | None = None) -> dict[str, str]:
    """All task data files, by file name, built from ``docs`` (default: the offline eval docs).

    Returns:
        ``{file name: content}`` for the two JSONL files and ``manifest.json``.
    """
    if docs is None:
        from harness.data import load_corpus

        corpus = load_corpus()
        docs, corpus_name = corpus.eval_docs, corpus.name
    # one RNG stream per task, so changing one task's size never changes the other task
    rolling = _jsonl(build_rolling(docs, _Rng(SEED)))
    cloze = _jsonl(build_cloze(docs, _Rng(SEED + 1)))
    manifest = {
        "builder_version": BUILDER_VERSION,
        "seed": SEED,
        "corpus": corpus_name,
        "corpus_sha256": corpus_fingerprint(docs),
        "corpus_python": f"{sys.version_info.major}.{sys.version_info.minor}",
        "files": {
            f"{ROLLING_TASK}.jsonl": {"rows": rolling.count("\n"), "sha256": _sha256(rolling)},
            f"{CLOZE_TASK}.jsonl": {"rows": cloze.count("\n"), "sha256": _sha256(cloze)},
        },
    }
    return {
        f"{ROLLING_TASK}.jsonl": rolling,
        f"{CLOZE_TASK}.jsonl": cloze,
        "manifest.json": json.dumps(manifest, indent=2, sort_keys=True) + "\n",
    }


def check(out: Path = TASKS_DIR) -> list[str]:
    """File names in ``out`` that differ from a fresh build (empty when all match).

    Only meaningful where the corpus fingerprint equals the manifest's (see module docstring).
    """
    return [name for name, text in build().items()
            if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.metrics.taskbuild", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=TASKS_DIR, help=f"output folder (default: {TASKS_DIR})")
    parser.add_argument("--check", action="store_true", help="exit 1 when the files in --out differ from a fresh build")
    args = parser.parse_args(argv)
    if args.check:
        differ = check(args.out)
        print("up to date" if not differ else "differ: " + ", ".join(differ))
        return 1 if differ else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
