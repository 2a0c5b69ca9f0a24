"""Tiny random-weight models, one per family, built deterministically with no download.

Each is 2 blocks of hidden size 64 with 4 heads, built from a transformers config with a byte-level
tokenizer (256 bytes + 4 specials). The weights come from a local ``torch.Generator`` seeded with
``seed`` (default 0), drawn in ``named_parameters()`` order, so the same seed gives the same bits
on every call, independent of the global RNG and of transformers' own initialisation:
matrices ~ N(0, 0.02), vectors (biases, norm weights) = transformers' constant init + N(0, 0.02).

The shape-alike models (:data:`SHAPES`, ``shape-llama-7b``) have a large model's matrix shapes and only a few
blocks, so that memory at real matrix sizes is measured on a CPU; :func:`random_model` builds them (and the
plan's timing model) in memory from a config, fast, without transformers' initialisation.
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


# Shape-alike random models: the matrix shapes of a large model with only a few blocks, so that memory at
# real matrix sizes (a 4096 x 11008 MLP, 32,000-word logits) is measured on a CPU. Name -> config keywords.
SHAPES: dict[str, dict[str, Any]] = {
    # llama-2-7b's shapes (hidden 4096, MLP 11008, 32 heads, 32 k/v heads, 32,000 words), 2 of its 32 blocks:
    # 666,914,816 parameters, 2.67 GB in fp32
    "shape-llama-7b": dict(
        family="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32,
        num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096,
    ),
}


def shape_config(name: str) -> Any:
    """The transformers config of the shape-alike model ``name`` (a key of :data:`SHAPES`).

    Raises:
        UnknownNameError: an unknown name.
    """
    import transformers as tf

    if name not in SHAPES:
        known: Registry[str] = Registry("shape-alike model")
        for key in SHAPES:
            known.register(key, key)
        raise UnknownNameError(known.unknown_message(name))
    kw = dict(SHAPES[name])
    family = kw.pop("family")
    classes = {"llama": tf.LlamaConfig}
    return classes[family](**kw, **{**_IDS, "tie_word_embeddings": False})


def random_config(name: str, family: str) -> Any:
    """The config of the random-weight model registered as ``name``: a shape-alike's (:data:`SHAPES`), else the
    tiny model of ``family``'s.

    Raises:
        UnknownNameError: an unknown family.
    """
    return shape_config(name) if name in SHAPES else _config(family)


def random_model(config: Any, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu") -> torch.nn.Module:
    """A model of ``config`` with seeded random weights, made on ``device`` in ``dtype``, in eval mode.

    Built without transformers' initialisation (``no_init_weights``; it takes ~18 s for 0.7B parameters on one
    core) and filled in place from a local ``torch.Generator`` on ``device``: matrices ~ N(0, 0.02), biases 0, other
    vectors (norm weights) 1. About 3-5 s for 0.7B parameters on one core; nothing is written to disk.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    dev = torch.device(device)
    with torch.random.fork_rng(devices=[]), no_init_weights(), dev:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    gen = torch.Generator(device=dev).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() >= 2:
                param.normal_(0.0, INIT_STD, generator=gen)
            elif name.endswith("bias"):
                param.zero_()
            else:
                param.fill_(1.0)
    return model.eval()


def build_shape(name: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """The shape-alike random model ``name`` on cpu in ``dtype`` (:func:`random_model` of its config), in eval
    mode, the same bits for the same seed.

    Raises:
        UnknownNameError: an unknown name.
    """
    return random_model(shape_config(name), seed=seed, dtype=dtype)
