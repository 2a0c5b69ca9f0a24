"""Tiny random-weight models, one per family, built deterministically with no download.

Each is 2 blocks of hidden size 64 with 4 heads, built from a transformers config with a byte-level
tokenizer (256 bytes + 4 specials). The weights come from a local ``torch.Generator`` seeded with
``seed`` (default 0), drawn in ``named_parameters()`` order, so the same seed gives the same bits
on every call, independent of the global RNG and of transformers' own initialisation:
matrices ~ N(0, 0.02), vectors (biases, norm weights) = transformers' constant init + N(0, 0.02).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from harness.errors import UnknownNameError
from harness.registry import Registry

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0-3; the bytes are ids 4-259
VOCAB_SIZE = len(SPECIAL_TOKENS) + 256
HIDDEN, LAYERS, HEADS, MLP = 64, 2, 4, 128
MAX_POSITIONS = 2048
INIT_STD = 0.02

_IDS = {"unk_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}


def _config(family: str) -> Any:
    """The small transformers config of ``family`` (imports only the family's config class)."""
    import transformers as tf

    common = dict(vocab_size=VOCAB_SIZE, **_IDS, tie_word_embeddings=False)
    llama_like = dict(
        hidden_size=HIDDEN, intermediate_size=MLP, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
    )
    builders = {
        "llama": lambda: tf.LlamaConfig(**llama_like, **common),
        "mistral": lambda: tf.MistralConfig(**llama_like, sliding_window=64, **common),
        "gemma3": lambda: tf.Gemma3TextConfig(
            **llama_like, head_dim=HIDDEN // HEADS, query_pre_attn_scalar=HIDDEN // HEADS, sliding_window=32,
            layer_types=["sliding_attention", "full_attention"], **common,
        ),
        "gpt-neo": lambda: tf.GPTNeoConfig(
            hidden_size=HIDDEN, num_layers=LAYERS, num_heads=HEADS, intermediate_size=MLP,
            attention_types=[[["global", "local"], LAYERS // 2]], window_size=32,
            max_position_embeddings=MAX_POSITIONS, **common,
        ),
        "gpt-j": lambda: tf.GPTJConfig(
            n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_inner=MLP, rotary_dim=8, n_positions=MAX_POSITIONS,
            **common,
        ),
        "opt": lambda: tf.OPTConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, ffn_dim=MLP,
            word_embed_proj_dim=HIDDEN, max_position_embeddings=MAX_POSITIONS, **common,
        ),
        "bloom": lambda: tf.BloomConfig(hidden_size=HIDDEN, n_layer=LAYERS, n_head=HEADS, **common),
        "gpt-neox": lambda: tf.GPTNeoXConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=MLP,
            rotary_pct=0.25, max_position_embeddings=MAX_POSITIONS, **common,
        ),
        # falcon-rw-1b's layout: one k/v per head, sequential attention then MLP, ALiBi, biases
        "falcon": lambda: tf.FalconConfig(
            hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS, multi_query=False,
            new_decoder_architecture=False, parallel_attn=False, alibi=True, bias=True, **common,
        ),
    }
    if family not in builders:
        known: Registry[str] = Registry("tiny family")
        for name in builders:
            known.register(name, name)
        raise UnknownNameError(known.unknown_message(family))
    return builders[family]()


def byte_tokenizer() -> Any:
    """A byte-level ``PreTrainedTokenizerFast``: every byte is one token, no merges, no download.

    Ids 0-3 are ``<unk> <s> </s> <pad>``; byte ``b`` is id ``4 + b``. Decoding inverts encoding exactly.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _BYTE_OF_CHAR[ch])
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({ch: len(SPECIAL_TOKENS) + i for i, ch in enumerate(alphabet)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=MAX_POSITIONS,
    )


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what ``ByteLevel`` uses)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {ch: b for b, ch in _bytes_to_unicode().items()}


def build_tiny(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of ``family`` in float32 on cpu, in eval mode, the same bits for the same seed.

    Raises:
        UnknownNameError: an unknown family.
    """
    from transformers import AutoModelForCausalLM

    config = _config(family)
    with torch.random.fork_rng(devices=[]):  # transformers' own init draws from the global RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32) * INIT_STD
            if param.dim() >= 2:
                param.copy_(noise)
            else:
                param.add_(noise)
    return model.eval()


@functools.cache
def saved_tiny(family: str) -> Path:
    """A directory holding ``build_tiny(family)`` and its byte tokenizer, as ``from_pretrained`` reads them.

    Loading a tiny model with a device map goes through it, so tiny models take the same path as any
    local model (and disk offload reads their weights from its safetensors file). Written once per
    process and family, to a temporary directory removed at exit.

    Raises:
        UnknownNameError: an unknown family.
    """
    model = build_tiny(family)
    path = Path(tempfile.mkdtemp(prefix=f"esa-tiny-{family}-"))
    atexit.register(shutil.rmtree, path, True)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path
