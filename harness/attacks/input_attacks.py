"""Input attacks: change the prompt, not the weights, to lower the log-probability of a target continuation.

The measure of every input attack is the same (:class:`InputAttackResult`): the change in the
summed log-probability of the target's tokens after the prompt (negative = the attack hurt), and
whether the greedy continuation changed (and the share of its tokens that stayed the same).

Character-level attacks (seeded, black-box: best of ``tries`` random perturbations, each with
``edits`` edits, by target log-probability):

- ``typo``: swap two adjacent letters, drop a letter, double a letter, or hit a keyboard neighbour;
- ``homoglyph``: replace a Latin letter by a look-alike (Cyrillic/Greek);
- ``insertion``: insert a zero-width space, a space, punctuation or a random letter.

Token-level attacks (``gcg``, ``hotflip``) are in :mod:`harness.attacks.suffix_search`.
:func:`run_input_attack` is the one library call. The model's weights are never touched.
"""

from __future__ import annotations

import inspect
import logging
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.errors import HarnessError
from harness.models.device import input_device
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

INPUT_ATTACKS: Registry[Callable[..., Any]] = Registry("input attack")
GREEDY_TOKENS = 8

HOMOGLYPHS = {  # Latin -> visually identical Cyrillic or Greek letters
    "a": "а", "c": "с", "e": "е", "i": "і", "j": "ј", "o": "о", "p": "р", "s": "ѕ", "x": "х", "y": "у",
    "A": "А", "B": "В", "C": "С", "E": "Е", "H": "Н", "I": "І", "K": "К", "M": "М", "N": "Ν", "O": "О",
    "P": "Р", "T": "Т", "X": "Х", "Y": "Υ", "Z": "Ζ",
}
KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")
INSERTIONS = ("\u200b", " ", ".", ",", "-", "'")


@dataclass(frozen=True)
class InputAttackResult:
    """One input attack on one prompt.

    Attributes:
        method: attack name.
        prompt: the clean prompt text.
        adversarial: the attacked prompt text (for token attacks: the decoded token ids).
        target: the target continuation text.
        clean_logprob: summed log-probability of the target tokens after the clean prompt.
        attacked_logprob: the same after the attacked prompt.
        clean_greedy: greedy continuation token ids after the clean prompt.
        attacked_greedy: greedy continuation token ids after the attacked prompt.
        queries: forward (and backward) passes the attack spent.
        seconds: wall time of the attack and its measurement.
        extra: method details (edits, suffix length, steps).
    """

    method: str
    prompt: str
    adversarial: str
    target: str
    clean_logprob: float
    attacked_logprob: float
    clean_greedy: tuple[int, ...]
    attacked_greedy: tuple[int, ...]
    queries: int = 0
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def logprob_delta(self) -> float:
        """attacked - clean target log-probability (nats; negative = the attack lowered it)."""
        return self.attacked_logprob - self.clean_logprob

    @property
    def greedy_changed(self) -> bool:
        return self.clean_greedy != self.attacked_greedy

    @property
    def greedy_agreement(self) -> float:
        """Share of greedy positions where the attacked continuation has the clean token."""
        n = max(len(self.clean_greedy), 1)
        return sum(a == b for a, b in zip(self.clean_greedy, self.attacked_greedy, strict=False)) / n

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method, "prompt": self.prompt, "adversarial": self.adversarial, "target": self.target,
            "clean_logprob": self.clean_logprob, "attacked_logprob": self.attacked_logprob,
            "logprob_delta": self.logprob_delta, "greedy_changed": self.greedy_changed,
            "greedy_agreement": self.greedy_agreement, "queries": self.queries, "seconds": self.seconds,
            "extra": self.extra,
        }


# -- measurement ---------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return input_device(model)


def encode(tokenizer: Any, text: str, what: str = "text") -> torch.Tensor:
    """Token ids of ``text`` without special tokens, (T,) int64.

    Raises:
        HarnessError: when ``text`` tokenizes to nothing.
    """
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise HarnessError(f"the {what} {text!r} tokenizes to nothing; give a non-empty {what}")
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def target_logprobs(model: nn.Module, prompts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of ``target`` (T,) after each prompt of ``prompts`` (B, P); returns (B,)."""
    ids = torch.cat([prompts, target.expand(prompts.shape[0], -1)], dim=1).to(_device(model))
    logits = model(input_ids=ids, use_cache=False).logits[:, prompts.shape[1] - 1:-1].float()  # (B, T, V)
    lp = F.log_softmax(logits, dim=-1).gather(-1, ids[:, prompts.shape[1]:, None])[..., 0]  # (B, T)
    return lp.sum(dim=1).cpu()


@torch.no_grad()
def greedy_tokens(model: nn.Module, prompt: torch.Tensor, n: int = GREEDY_TOKENS) -> tuple[int, ...]:
    """The ``n`` greedy next tokens after ``prompt`` (P,) (no sampling, no cache: n forward passes)."""
    ids = prompt[None].to(_device(model))
    out = []
    for _ in range(n):
        nxt = model(input_ids=ids, use_cache=False).logits[0, -1].float().argmax()
        out.append(int(nxt))
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tuple(out)


def text_logprob(model: nn.Module, tokenizer: Any, prompt: str, target_ids: torch.Tensor) -> float:
    return float(target_logprobs(model, encode(tokenizer, prompt, "prompt")[None], target_ids)[0])


# -- character-level -----------------------------------------------------------------------------


def _randint(n: int, generator: torch.Generator) -> int:
    return int(torch.randint(0, n, (1,), generator=generator))


def _keyboard_neighbour(ch: str, generator: torch.Generator) -> str:
    low = ch.lower()
    for r, row in enumerate(KEYBOARD_ROWS):
        if low in row:
            c = row.index(low)
            near = [row[j] for j in (c - 1, c + 1) if 0 <= j < len(row)]
            near += [KEYBOARD_ROWS[q][c] for q in (r - 1, r + 1) if 0 <= q < 3 and c < len(KEYBOARD_ROWS[q])]
            pick = near[_randint(len(near), generator)]
            return pick.upper() if ch.isupper() else pick
    return ch


def _typo(text: str, generator: torch.Generator) -> str:
    letters = [i for i, ch in enumerate(text) if ch.isalpha()]
    if not letters:
        return text
    i = letters[_randint(len(letters), generator)]
    kind = _randint(4, generator)
    if kind == 0 and i + 1 < len(text) and text[i + 1].isalpha():  # swap with the next letter
        return text[:i] + text[i + 1] + text[i] + text[i + 2:]
    if kind == 1 and len(letters) > 1:  # drop
        return text[:i] + text[i + 1:]
    if kind == 2:  # double
        return text[:i] + text[i] + text[i:]
    return text[:i] + _keyboard_neighbour(text[i], generator) + text[i + 1:]


def _homoglyph(text: str, generator: torch.Generator) -> str:
    spots = [i for i, ch in enumerate(text) if ch in HOMOGLYPHS]
    if not spots:
        return text
    i = spots[_randint(len(spots), generator)]
    return text[:i] + HOMOGLYPHS[text[i]] + text[i + 1:]


def _insertion(text: str, generator: torch.Generator) -> str:
    i = _randint(len(text) + 1, generator)
    pool = (*INSERTIONS, *string.ascii_lowercase)
    return text[:i] + pool[_randint(len(pool), generator)] + text[i:]


EDITS: dict[str, Callable[[str, torch.Generator], str]] = {
    "typo": _typo, "homoglyph": _homoglyph, "insertion": _insertion,
}


def perturb_text(text: str, kind: str, edits: int, generator: torch.Generator) -> str:
    """``text`` with ``edits`` random character edits of ``kind`` (``typo``, ``homoglyph``, ``insertion``).

    Raises:
        HarnessError: unknown kind or edits < 1.
    """
    if kind not in EDITS:
        raise HarnessError(f"unknown character edit {kind!r}; use one of {', '.join(EDITS)}")
    if isinstance(edits, bool) or not isinstance(edits, int) or edits < 1:
        raise HarnessError(f"edits must be an integer >= 1, got {edits!r}")
    for _ in range(edits):
        text = EDITS[kind](text, generator)
    return text


def _char_attack(kind: str):
    def run(model: nn.Module, tokenizer: Any, prompt: str, target_ids: torch.Tensor, *,
            generator: torch.Generator, edits: int = 2, tries: int = 8) -> tuple[str, torch.Tensor, int, dict]:
        if isinstance(tries, bool) or not isinstance(tries, int) or tries < 1:
            raise HarnessError(f"tries must be an integer >= 1, got {tries!r}")
        best_text, best_lp = prompt, None
        for _ in range(tries):
            candidate = perturb_text(prompt, kind, edits, generator)
            lp = text_logprob(model, tokenizer, candidate, target_ids)
            if best_lp is None or lp < best_lp:
                best_text, best_lp = candidate, lp
        return best_text, encode(tokenizer, best_text, "prompt"), tries, {"edits": edits, "tries": tries}

    run.__doc__ = (f"Character-level ``{kind}`` attack: the best of ``tries`` random prompts with ``edits`` "
                   f"{kind} edits each, by target log-probability.\n\n    Cost: ``tries`` forward passes.")
    return run


for _kind in EDITS:
    INPUT_ATTACKS.register(_kind, _char_attack(_kind))


# -- the library call ----------------------------------------------------------------------------


def input_attack_options(method: str) -> dict[str, Any]:
    """The keyword options of input attack ``method`` with their defaults."""
    params = inspect.signature(INPUT_ATTACKS.get(method)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "generator"}


def run_input_attack(model_or_loaded: LoadedModel, method: str, prompt: str, target: str, *,
                     generator: torch.Generator | None = None, tokenizer: Any = None,
                     greedy: int = GREEDY_TOKENS, **options: Any) -> InputAttackResult:
    """Attack one prompt and measure the target log-probability and greedy output before and after.

    Args:
        model_or_loaded: a ``LoadedModel``, or a transformers model with ``tokenizer=``.
        method: a name in :data:`INPUT_ATTACKS` (``typo``, ``homoglyph``, ``insertion``, ``gcg``, ``hotflip``).
        prompt: the clean prompt.
        target: the continuation whose log-probability the attack lowers (tokenized on its own, so
            start it with a space when it continues a word boundary).
        generator: seeded ``torch.Generator`` (default: seeded with 0).
        greedy: greedy tokens compared before and after.
        **options: the attack's options (``edits``, ``tries``; ``length``, ``steps``, ``topk``, ``batch``).

    Raises:
        HarnessError: unknown method, an empty prompt or a target that tokenizes to nothing, bad options.
    """
    fn = INPUT_ATTACKS.get(method)
    allowed = input_attack_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise HarnessError(f"input attack {method!r} has no option {unknown[0]!r}; it takes: {', '.join(allowed)}")
    model = model_or_loaded if isinstance(model_or_loaded, nn.Module) else model_or_loaded.model
    tokenizer = tokenizer if tokenizer is not None else getattr(model_or_loaded, "tokenizer", None)
    if tokenizer is None:
        raise HarnessError("an input attack needs a tokenizer: pass a LoadedModel or tokenizer=")
    prompt_ids = encode(tokenizer, prompt, "prompt")
    target_ids = encode(tokenizer, target, "target")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    start = time.perf_counter()
    clean_lp = float(target_logprobs(model, prompt_ids[None], target_ids)[0])
    clean_greedy = greedy_tokens(model, prompt_ids, greedy)
    adversarial, adv_ids, queries, extra = fn(model, tokenizer, prompt, target_ids, generator=generator, **options)
    attacked_lp = float(target_logprobs(model, adv_ids[None], target_ids)[0])
    result = InputAttackResult(
        method=method, prompt=prompt, adversarial=adversarial, target=target, clean_logprob=clean_lp,
        attacked_logprob=attacked_lp, clean_greedy=clean_greedy,
        attacked_greedy=greedy_tokens(model, adv_ids, greedy), queries=queries,
        seconds=time.perf_counter() - start, extra=extra,
    )
    log.info("%s: target log-prob %.3f -> %.3f, greedy %s", method, clean_lp, attacked_lp,
             "changed" if result.greedy_changed else "unchanged")
    return result
