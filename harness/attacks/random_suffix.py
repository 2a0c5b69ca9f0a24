"""The control of the suffix attacks (``gcg``, ``hotflip``): a suffix of as many uniformly random tokens.

A suffix search earns its name only if it lowers the target's log-probability more than appending
the same number of random tokens does (random text between prompt and target also disturbs it).
Tokens are drawn from the same allowed set the searches use (printable ASCII, not special).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from harness.attacks.input_attacks import encode, target_logprobs
from harness.attacks.suffix_search import allowed_tokens

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel


def random_suffix_logprob(loaded: LoadedModel, prompt: str, target: str, length: int,
                          generator: torch.Generator) -> tuple[float, str]:
    """Target log-probability after ``prompt`` + ``length`` random allowed tokens.

    Args:
        loaded: a ``LoadedModel`` (model and tokenizer).
        prompt, target: as :func:`harness.attacks.input_attacks.run_input_attack` takes them.
        length: suffix tokens.
        generator: seeded ``torch.Generator``.

    Returns:
        (summed target log-probability in nats, the prompt with the random suffix as text).
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    prompt_ids, target_ids = encode(tokenizer, prompt, "prompt"), encode(tokenizer, target, "target")
    pool = allowed_tokens(tokenizer, model.get_input_embeddings().weight.shape[0]).nonzero().flatten()  # (A,)
    suffix = pool[torch.randint(0, len(pool), (length,), generator=generator)]  # (L,)
    logprob = float(target_logprobs(model, torch.cat([prompt_ids, suffix])[None], target_ids)[0])
    return logprob, prompt + tokenizer.decode(suffix.tolist())
