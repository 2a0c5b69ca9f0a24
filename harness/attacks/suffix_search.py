"""Token-level suffix search that lowers the log-probability of a target continuation.

An adversarial suffix of ``length`` tokens (initialised to ``!``) is appended to the prompt. Each
step takes the gradient of the target's summed log-probability with respect to the suffix's one-hot
token matrix (one forward and backward pass), which ranks every replacement token at every
position by its first-order effect, then evaluates replacements for real and keeps the best if it
lowers the log-probability:

- ``gcg`` (greedy coordinate gradient, Zou et al. 2023): ``batch`` candidates, each replacing one
  random position by a random token among that position's ``topk`` by gradient;
- ``hotflip`` (Ebrahimi et al. 2018): the ``batch`` single (position, token) swaps with the best
  gradient over all positions.

Replacement tokens are restricted to printable-ASCII, non-special tokens. Results are measured on
the token ids (prompt ids + suffix ids); ``adversarial`` is their decoded text.

Cost per step: one forward+backward pass of prompt+suffix+target and one batched forward pass of
``batch`` candidates.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from harness.attacks.input_attacks import INPUT_ATTACKS, encode, target_logprobs
from harness.errors import HarnessError

_ALLOWED: dict[tuple[int, int], torch.Tensor] = {}


def allowed_tokens(tokenizer: Any, vocab: int) -> torch.Tensor:
    """(vocab,) bool: tokens that decode to non-empty printable ASCII and are not special."""
    key = (id(tokenizer), vocab)
    if key not in _ALLOWED:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        ok = torch.zeros(vocab, dtype=torch.bool)
        for i in range(min(vocab, len(tokenizer))):
            text = tokenizer.decode([i])
            ok[i] = bool(text.strip()) and text.isascii() and text.isprintable() and i not in special
        _ALLOWED[key] = ok
    return _ALLOWED[key]


def suffix_gradient(model: nn.Module, prompt: torch.Tensor, suffix: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """d(target log-prob)/d(one-hot suffix), (L, V) float32.

    Cost: one forward and one backward pass of prompt + suffix + target.
    """
    embed = model.get_input_embeddings()
    weight = embed.weight.detach()  # (V, d)
    device = weight.device
    scale = getattr(embed, "embed_scale", 1.0)
    with torch.enable_grad():
        one_hot = torch.zeros(len(suffix), weight.shape[0], dtype=weight.dtype, device=device)
        one_hot.scatter_(1, suffix.to(device)[:, None], 1.0)
        one_hot.requires_grad_(True)
        parts = [embed(prompt.to(device)).detach(), (one_hot @ weight) * scale, embed(target.to(device)).detach()]
        logits = model(inputs_embeds=torch.cat(parts)[None], use_cache=False).logits[0]  # (P+L+T, V)
        start = len(prompt) + len(suffix) - 1
        lp = F.log_softmax(logits[start:start + len(target)].float(), dim=-1)
        lp.gather(-1, target.to(device)[:, None]).sum().backward()
    return one_hot.grad.float()


def _check(length: int, steps: int, topk: int, batch: int) -> None:
    for name, v in (("length", length), ("steps", steps), ("topk", topk), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise HarnessError(f"suffix search needs {name} >= 1, got {v!r}")


def _search(model: nn.Module, tokenizer: Any, prompt: str, target: torch.Tensor, *, generator: torch.Generator,
            length: int, steps: int, topk: int, batch: int, mode: str) -> tuple[str, torch.Tensor, int, dict]:
    _check(length, steps, topk, batch)
    prompt_ids = encode(tokenizer, prompt, "prompt")
    vocab = model.get_input_embeddings().weight.shape[0]
    allowed = allowed_tokens(tokenizer, vocab)
    init = encode(tokenizer, "!", "suffix")[:1]
    suffix = init.repeat(length)  # (L,)
    best = float(target_logprobs(model, torch.cat([prompt_ids, suffix])[None], target)[0])
    queries, accepted, trace = 1, 0, [best]
    for _ in range(steps):
        grad = suffix_gradient(model, prompt_ids, suffix, target).cpu()  # (L, V)
        grad[:, ~allowed] = torch.inf
        grad[torch.arange(length), suffix] = torch.inf  # a swap must change the token
        if mode == "gcg":
            top = (-grad).topk(topk, dim=1).indices  # (L, topk) most log-prob-lowering tokens
            pos = torch.randint(0, length, (batch,), generator=generator)
            pick = torch.randint(0, topk, (batch,), generator=generator)
            tokens = top[pos, pick]
        else:
            flat = (-grad).reshape(-1).topk(batch).indices
            pos, tokens = flat // vocab, flat % vocab
        candidates = suffix.repeat(len(pos), 1)  # (B, L)
        candidates[torch.arange(len(pos)), pos] = tokens
        lps = target_logprobs(model, torch.cat([prompt_ids.expand(len(pos), -1), candidates], dim=1), target)
        queries += 2
        i = int(lps.argmin())
        if float(lps[i]) < best:
            best, suffix, accepted = float(lps[i]), candidates[i].clone(), accepted + 1
        trace.append(best)
    ids = torch.cat([prompt_ids, suffix])
    extra = {"length": length, "steps": steps, "topk": topk, "batch": batch, "accepted": accepted,
             "suffix_ids": suffix.tolist(), "trace": trace}
    return prompt + tokenizer.decode(suffix.tolist()), ids, queries, extra


@INPUT_ATTACKS.register("gcg")
def gcg(model: nn.Module, tokenizer: Any, prompt: str, target: torch.Tensor, *, generator: torch.Generator,
        length: int = 8, steps: int = 8, topk: int = 64, batch: int = 16) -> tuple[str, torch.Tensor, int, dict]:
    """Greedy coordinate gradient suffix search (see the module docstring).

    Cost: ``steps`` x (one forward+backward pass + one forward pass of ``batch`` candidates).
    """
    return _search(model, tokenizer, prompt, target, generator=generator, length=length, steps=steps, topk=topk,
                   batch=batch, mode="gcg")


@INPUT_ATTACKS.register("hotflip")
def hotflip(model: nn.Module, tokenizer: Any, prompt: str, target: torch.Tensor, *, generator: torch.Generator,
            length: int = 8, steps: int = 8, batch: int = 8) -> tuple[str, torch.Tensor, int, dict]:
    """HotFlip suffix search: the ``batch`` best single swaps by gradient per step (see the module docstring).

    Cost: ``steps`` x (one forward+backward pass + one forward pass of ``batch`` candidates).
    """
    return _search(model, tokenizer, prompt, target, generator=generator, length=length, steps=steps, topk=1,
                   batch=batch, mode="hotflip")
