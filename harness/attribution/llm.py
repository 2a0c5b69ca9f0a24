"""Attribution of a fixed target continuation to the prompt's tokens, on Captum.

The target is chosen once (:func:`greedy_target`: the clean model's greedy continuation) and kept
fixed, so a clean and a perturbed model are scored on the same tokens. :func:`attribute` runs one
Captum method (registry ``ATTRIBUTION_METHODS``) and returns per-prompt-token ``seq_attr`` (the
attribution of the whole target's log-probability) and the ``token_attr`` matrix (one row per target
token):

- ``feature_ablation``: ``captum.attr.FeatureAblation`` through ``LLMAttribution``: each prompt
  token in turn is replaced by a baseline token (:func:`baseline_token`), attribution =
  log p(target | prompt) - log p(target | ablated prompt). Cost: ``n_prompt + 1`` forwards of
  ``n_prompt + n_target`` tokens, in ``1 + ceil(n_prompt / perturbations_per_eval)`` model calls.
- ``shapley_sampling``: ``ShapleyValueSampling`` (``n_samples`` random permutations):
  ``n_samples * n_prompt + 1`` forwards, batched the same way.
- ``integrated_gradients``: ``LayerIntegratedGradients`` on the token embedding module (the
  family's ``ArchMap.embeddings``) through ``LLMGradientAttribution``: the embeddings go from the
  baseline token's to the prompt's in ``n_steps``; Captum attributes each target token separately,
  so the cost is ``n_target`` calls of ``n_steps`` forward + backward passes (batched by
  ``internal_batch_size``).

Captum's ``LLMAttribution`` scores one ablated prompt per forward. ``_BatchedLLMAttribution`` is the
same class with a forward that takes a batch of them, so ``perturbations_per_eval`` works; memory
per call is then :func:`ablation_batch_bytes` (``perturbations_per_eval`` x the logits of one
sequence, which dominate on small prompts).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from captum.attr import (
    FeatureAblation,
    LayerIntegratedGradients,
    LLMAttribution,
    LLMGradientAttribution,
    ShapleyValueSampling,
    TextTokenInput,
)
from captum.attr._core import llm_attr as _captum_llm

from harness.errors import HarnessError
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_TARGET_TOKENS = 6
DEFAULT_PERTURBATIONS_PER_EVAL = 8
DEFAULT_STEPS = 16
DEFAULT_SAMPLES = 4

ATTRIBUTION_METHODS: Registry[Callable[..., Any]] = Registry("attribution method")


@dataclass(frozen=True)
class Target:
    """A prompt and the fixed continuation its attributions explain.

    Attributes:
        prompt: the prompt text.
        prompt_ids: (n_prompt,) token ids as the tokenizer encodes the prompt (special tokens included).
        ids: (n_target,) the continuation's token ids.
        tokens: the continuation's tokens as text.
    """

    prompt: str
    prompt_ids: torch.Tensor
    ids: torch.Tensor
    tokens: tuple[str, ...]

    @property
    def text(self) -> str:
        return "".join(self.tokens)


@dataclass(frozen=True)
class TokenAttribution:
    """One method's attribution of a target to the prompt tokens.

    Attributes:
        method: registry name of the method.
        input_tokens: the attributed prompt tokens (special tokens left out), as text.
        target_tokens: the target tokens, as text.
        seq_attr: (n_input,) float32 on the CPU: attribution of the target's total log-probability.
        token_attr: (n_target, n_input) float32 on the CPU: attribution of each target token's log-probability.
        target_logprob: log p(target | prompt) on the model as it was when attributed (nats).
        calls: model forward calls spent (a batch counts once).
        forwards: sequences through the model (a batch of b counts b).
        seconds: wall time.
    """

    method: str
    input_tokens: tuple[str, ...]
    target_tokens: tuple[str, ...]
    seq_attr: torch.Tensor
    token_attr: torch.Tensor
    target_logprob: float
    calls: int
    forwards: int
    seconds: float

    @property
    def finite(self) -> bool:
        return bool(torch.isfinite(self.seq_attr).all())

    def to_dict(self) -> dict[str, Any]:
        """Plain values for a record's ``extra`` (what the report's heatmaps read)."""
        return {"method": self.method, "input_tokens": list(self.input_tokens),
                "target_tokens": list(self.target_tokens), "seq_attr": _floats(self.seq_attr),
                "token_attr": [_floats(row) for row in self.token_attr], "target_logprob": self.target_logprob,
                "calls": self.calls, "forwards": self.forwards, "seconds": self.seconds}


def _floats(t: torch.Tensor) -> list[float | None]:
    """A tensor as JSON-safe floats: a non-finite element (a collapsed model) becomes None."""
    return [float(x) if math.isfinite(x) else None for x in t.tolist()]


def context_length(loaded: LoadedModel) -> int | None:
    """The model's maximum sequence length (positions), or None when it has no fixed one (ALiBi)."""
    config = loaded.model.config
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_lengths(loaded: LoadedModel, prompt: str, n_prompt: int, n_target: int) -> None:
    if not prompt.strip() or n_prompt == 0:
        raise HarnessError("the prompt is empty: give a prompt of at least one non-special token")
    if n_target < 1:
        raise HarnessError(f"the target needs at least one token, got {n_target}")
    limit = context_length(loaded)
    if limit is not None and n_prompt + n_target > limit:
        raise HarnessError(f"prompt ({n_prompt} tokens) + target ({n_target} tokens) is longer than the context of "
                           f"{loaded.name} ({limit} tokens); shorten the prompt or the target")


def _special_ids(tokenizer: Any) -> set[int]:
    return {int(i) for i in getattr(tokenizer, "all_special_ids", ()) if i is not None}


def baseline_token(tokenizer: Any) -> int:
    """The token an ablated prompt token becomes: ``unk``, else ``pad`` (the loader sets it to eos), else 0."""
    for key in ("unk_token_id", "pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, key, None)
        if isinstance(value, int):
            return value
    return 0


def greedy_target(loaded: LoadedModel, prompt: str, n_tokens: int = DEFAULT_TARGET_TOKENS) -> Target:
    """The model's greedy continuation of ``prompt`` (``n_tokens`` tokens), to be kept fixed.

    Call it on the clean model. No cache, one forward per token: targets are a few tokens long.

    Raises:
        HarnessError: an empty prompt, ``n_tokens < 1``, or prompt + target longer than the context.
    """
    tokenizer = loaded.tokenizer
    prompt_ids = tokenizer.encode(prompt, return_tensors="pt")[0] if prompt else torch.empty(0, dtype=torch.long)
    attributed = [i for i in prompt_ids.tolist() if i not in _special_ids(tokenizer)]
    _check_lengths(loaded, prompt, len(attributed), n_tokens)
    ids = prompt_ids.to(loaded.device).unsqueeze(0)  # (1, n)
    with torch.no_grad():
        for _ in range(n_tokens):
            logits = loaded.model(input_ids=ids, use_cache=False).logits[:, -1]  # (1, vocab)
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    out = ids[0, prompt_ids.numel():].cpu()
    return Target(prompt, prompt_ids, out, tuple(tokenizer.decode([i]) for i in out.tolist()))


def ablation_batch_bytes(loaded: LoadedModel, n_tokens: int, perturbations_per_eval: int) -> int:
    """Estimated peak memory of one batched ablation call, in bytes.

    ``perturbations_per_eval`` sequences of ``n_tokens`` (prompt + target): the logits
    (batch x tokens x vocab, model dtype) plus the float32 log-softmax of the target positions,
    and per layer the widest activation (batch x tokens x max(hidden, mlp)) and the attention
    scores (batch x heads x tokens^2). Weights are not counted.
    """
    config = loaded.model.config
    item = torch.finfo(loaded.dtype).bits // 8
    vocab = int(config.vocab_size)
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "n_embd", 0))
    mlp = int(getattr(config, "intermediate_size", 0) or getattr(config, "n_inner", 0) or 4 * hidden)
    heads = int(getattr(config, "num_attention_heads", 0) or getattr(config, "n_head", 1))
    b, n = perturbations_per_eval, n_tokens
    logits = b * n * vocab * (item + 4)
    activations = b * n * max(hidden, mlp) * item * 4 + b * heads * n * n * 4
    return logits + activations


class _BatchedLLMAttribution(LLMAttribution):
    """Captum's ``LLMAttribution`` with a sequence forward that scores a batch of ablated prompts."""

    n_target: int = 0  # set per call: Captum repeats tensor forward args once per batched perturbation

    def _forward_func_by_seq(self, perturbed_tensor: torch.Tensor | None, inp: Any,
                             target_tokens: torch.Tensor) -> torch.Tensor:
        ids = inp.to_model_input(perturbed_tensor).to(self.device)  # (B, n)
        batch, n = ids.shape
        t = self.n_target
        target = target_tokens[:t].to(self.device).expand(batch, t)  # (B, t)
        full = torch.cat([ids, target], dim=1)  # (B, n + t)
        logits = self.model(input_ids=full, attention_mask=torch.ones_like(full), use_cache=False).logits
        logp = torch.log_softmax(logits[:, n - 1:n - 1 + t].float(), dim=-1)  # (B, t, vocab)
        per_token = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # (B, t)
        out = torch.cat([per_token.sum(1, keepdim=True), per_token], dim=1)  # (B, 1 + t)
        return out if self.attr_target == "log_prob" else out.exp()


def _perturbation_method(kind: type) -> Callable[..., Any]:
    def run(loaded: LoadedModel, inp: Any, target: Target, *,
            perturbations_per_eval: int = DEFAULT_PERTURBATIONS_PER_EVAL,
            n_samples: int = DEFAULT_SAMPLES, generator: torch.Generator | None = None, **_: Any) -> Any:
        if isinstance(perturbations_per_eval, bool) or not isinstance(perturbations_per_eval, int) \
                or perturbations_per_eval < 1:
            raise HarnessError(f"perturbations_per_eval must be a positive integer, got {perturbations_per_eval!r}")
        llm = _BatchedLLMAttribution(kind(loaded.model), loaded.tokenizer)
        llm.n_target = target.ids.numel()
        kwargs: dict[str, Any] = {"perturbations_per_eval": perturbations_per_eval}
        if kind is ShapleyValueSampling:
            kwargs["n_samples"] = n_samples
            if generator is not None:  # Captum draws permutations from the global generator
                torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        return llm.attribute(inp, target=target.ids, forward_in_tokens=False, use_cached_outputs=False,
                             show_progress=False, **kwargs)

    return run


ATTRIBUTION_METHODS.register("feature_ablation", _perturbation_method(FeatureAblation))
ATTRIBUTION_METHODS.register("shapley_sampling", _perturbation_method(ShapleyValueSampling))


@ATTRIBUTION_METHODS.register("integrated_gradients")
def _integrated_gradients(loaded: LoadedModel, inp: Any, target: Target, *, n_steps: int = DEFAULT_STEPS,
                          internal_batch_size: int | None = None, **_: Any) -> Any:
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise HarnessError(f"n_steps must be a positive integer, got {n_steps!r}")
    embeddings = loaded.model.get_submodule(loaded.arch.embeddings)
    llm = LLMGradientAttribution(LayerIntegratedGradients(loaded.model, embeddings), loaded.tokenizer)
    with torch.enable_grad():
        return llm.attribute(inp, target=target.ids, n_steps=n_steps,
                             internal_batch_size=internal_batch_size or n_steps)


def target_logprob(loaded: LoadedModel, target: Target) -> float:
    """log p(target | prompt) under the model as it is now (nats, float32 log-softmax)."""
    ids = torch.cat([target.prompt_ids, target.ids]).to(loaded.device).unsqueeze(0)  # (1, n + t)
    n, t = target.prompt_ids.numel(), target.ids.numel()
    with torch.no_grad():
        logits = loaded.model(input_ids=ids, use_cache=False).logits[0, n - 1:n - 1 + t].float()  # (t, vocab)
    return float(torch.log_softmax(logits, -1).gather(-1, target.ids.to(logits.device).unsqueeze(-1)).sum())


def attribute(loaded: LoadedModel, target: Target, method: str = "feature_ablation",
              **options: Any) -> TokenAttribution:
    """Attribute ``target`` (fixed) to the prompt's tokens with one Captum method.

    Args:
        loaded: a ``harness.models.LoadedModel`` (clean or under a perturbation).
        target: from :func:`greedy_target` on the clean model.
        method: ``feature_ablation``, ``shapley_sampling`` or ``integrated_gradients``.
        **options: ``perturbations_per_eval`` (ablation batch, default 8; memory per call
            :func:`ablation_batch_bytes`), ``n_samples`` and ``generator`` (Shapley), ``n_steps`` and
            ``internal_batch_size`` (integrated gradients).

    Returns:
        A :class:`TokenAttribution` over the prompt's non-special tokens.

    Raises:
        HarnessError: an empty prompt or target, a sequence longer than the context, bad options.
        UnknownNameError: an unknown method.
    """
    run = ATTRIBUTION_METHODS.get(method)
    tokenizer = loaded.tokenizer
    inp = TextTokenInput(target.prompt, tokenizer, baselines=baseline_token(tokenizer),
                         skip_tokens=sorted(_special_ids(tokenizer)) or None)
    _check_lengths(loaded, target.prompt, inp.n_itp_features, target.ids.numel())
    if inp.inp_tensor.numel() != target.prompt_ids.numel() or not torch.equal(inp.inp_tensor[0], target.prompt_ids):
        raise HarnessError("the target was made from another tokenization of the prompt; make it with greedy_target "
                           "on this model's tokenizer")
    if "perturbations_per_eval" in options:
        need = ablation_batch_bytes(loaded, target.prompt_ids.numel() + target.ids.numel(),
                                    options["perturbations_per_eval"])
        log.debug("%s: about %.1f MiB per ablation batch", method, need / 2**20)
    counter = _CallCounter(loaded.model.get_submodule(loaded.arch.embeddings))
    start = time.perf_counter()
    with counter, _plain_output_tokens():
        result = run(loaded, inp, target, **options)
    seconds = time.perf_counter() - start
    token_attr = result.token_attr.detach().float().cpu()  # (t, n_input)
    return TokenAttribution(
        method=method, input_tokens=tuple(tokenizer.convert_tokens_to_string([t]) for t in inp.values),
        target_tokens=target.tokens, seq_attr=result.seq_attr.detach().float().cpu(), token_attr=token_attr,
        target_logprob=target_logprob(loaded, target), calls=counter.calls, forwards=counter.rows, seconds=seconds,
    )


@contextmanager
def _plain_output_tokens() -> Iterator[None]:
    """Name the target tokens one id at a time while Captum runs.

    Captum's "pretty" naming re-tokenizes the decoded target and, on a token that is only part of a
    UTF-8 character (byte tokenizers, random models), warns and then indexes past the end
    (captum 0.9 ``_convert_ids_to_pretty_tokens_fallback``). The names are not used here (the
    :class:`Target` has its own), so the module function is swapped for a plain decode and put back.
    """
    original = _captum_llm._convert_ids_to_pretty_tokens
    _captum_llm._convert_ids_to_pretty_tokens = lambda ids, tokenizer: [tokenizer.decode([i]) for i in ids.tolist()]
    try:
        yield
    finally:
        _captum_llm._convert_ids_to_pretty_tokens = original


class _CallCounter:
    """Counts calls (and batch rows) of the embedding module while active; the hook is removed on exit."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.calls, self.rows, self._handle = module, 0, 0, None

    def _hook(self, module: torch.nn.Module, args: tuple, output: Any) -> None:
        self.calls += 1
        self.rows += int(output.shape[0]) if isinstance(output, torch.Tensor) and output.dim() > 1 else 1

    def __enter__(self) -> _CallCounter:
        self._handle = self.module.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
