"""Architecture map: where each canonical part of a decoder block lives, per family, as one table.

"Layers 3,4, component value" means the same thing on every family. The canonical components are

    query key value attn_out mlp_up mlp_gate mlp_down attn_norm mlp_norm

with the groups ``attention`` (query, key, value, attn_out), ``mlp`` (mlp_up, mlp_gate, mlp_down),
``linear`` (attention + mlp), ``norms`` (attn_norm, mlp_norm) and ``all`` (every component).
Families without a gated MLP have no ``mlp_gate``; GPT-J (parallel attention and MLP behind one
norm) has no ``mlp_norm``. A group takes the members that exist; a component named explicitly must
exist.

Fused q/k/v (bloom, gpt-neox, falcon): query, key and value are row sets of one matrix. Its rows are
``kv_heads`` groups, each ``[q_1 .. q_r, k, v]`` blocks of ``head_dim`` rows with ``r = heads / kv_heads``.
This one layout covers all three: bloom, gpt-neox and falcon-rw-1b (``multi_query=False``,
``new_decoder_architecture=False``) have ``kv_heads == heads`` (per head ``[q, k, v]``, as
``view(..., heads, 3, head_dim)`` in their modeling code); multi-query falcon has ``kv_heads == 1``
(``[q_1 .. q_h, k, v]``); falcon's new decoder architecture has ``num_kv_heads`` groups.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.errors import HarnessError, UnknownNameError
from harness.option_values import comma_list

COMPONENTS = ("query", "key", "value", "attn_out", "mlp_up", "mlp_gate", "mlp_down", "attn_norm", "mlp_norm")
GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("query", "key", "value", "attn_out"),
    "mlp": ("mlp_up", "mlp_gate", "mlp_down"),
    "linear": ("query", "key", "value", "attn_out", "mlp_up", "mlp_gate", "mlp_down"),
    "norms": ("attn_norm", "mlp_norm"),
    "all": COMPONENTS,
}
QKV = ("query", "key", "value")


def _heads(config: Any) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) of a fused qkv with one k and one v per head."""
    heads = config.num_attention_heads
    return heads, heads, config.hidden_size // heads


def _falcon_heads(config: Any) -> tuple[int, int, int]:
    heads = config.num_attention_heads
    if config.new_decoder_architecture:
        kv_heads = config.num_kv_heads
    else:
        kv_heads = 1 if config.multi_query else heads
    return heads, kv_heads, config.hidden_size // heads


@dataclass(frozen=True)
class ArchMap:
    """Where the parts of one family's decoder live.

    Args:
        family: family name (``llama``, ``gpt-neox``, ...).
        model_types: the ``config.model_type`` values of this family.
        blocks: path of the ``ModuleList`` of decoder blocks from the top model.
        components: canonical component -> module path inside one block (the parameter is ``.weight``).
        embeddings: path of the token embedding module.
        final_norm: path of the norm after the last block.
        lm_head: path of the output projection (may share its weight with ``embeddings``).
        fused_qkv: ``(heads, kv_heads, head_dim)`` from a config when query/key/value share one
            matrix (see the module docstring for the row layout), else None.
    """

    family: str
    model_types: tuple[str, ...]
    blocks: str
    components: Mapping[str, str] = field(hash=False)
    embeddings: str
    final_norm: str
    lm_head: str
    fused_qkv: Callable[[Any], tuple[int, int, int]] | None = field(default=None, compare=False, hash=False)

    def has(self, component: str) -> bool:
        return component in self.components

    def qkv_rows(self, config: Any, component: str) -> tuple[int, ...] | None:
        """Row indices of ``component`` (query/key/value) in the fused matrix, or None when not fused."""
        if self.fused_qkv is None or component not in QKV:
            return None
        heads, kv_heads, head_dim = self.fused_qkv(config)
        per_group = heads // kv_heads  # query heads per k/v pair
        group_rows = (per_group + 2) * head_dim  # rows of one [q_1 .. q_r, k, v] group
        if component == "query":
            offsets = range(per_group * head_dim)
        else:
            start = (per_group + (component == "value")) * head_dim
            offsets = range(start, start + head_dim)
        return tuple(g * group_rows + o for g in range(kv_heads) for o in offsets)


def _llama_like(family: str, model_types: tuple[str, ...], mlp_norm: str = "post_attention_layernorm") -> ArchMap:
    return ArchMap(
        family=family, model_types=model_types, blocks="model.layers",
        components={
            "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
            "attn_out": "self_attn.o_proj", "mlp_up": "mlp.up_proj", "mlp_gate": "mlp.gate_proj",
            "mlp_down": "mlp.down_proj", "attn_norm": "input_layernorm", "mlp_norm": mlp_norm,
        },
        embeddings="model.embed_tokens", final_norm="model.norm", lm_head="lm_head",
    )


_FUSED_BLOCK = {  # bloom, gpt-neox and falcon name their block parts alike
    "attn_out": "dense", "mlp_up": "mlp.dense_h_to_4h", "mlp_down": "mlp.dense_4h_to_h",
    "attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
}

ARCH_MAPS: dict[str, ArchMap] = {
    "llama": _llama_like("llama", ("llama",)),
    "mistral": _llama_like("mistral", ("mistral",)),
    # gemma3: post_attention_layernorm normalises the attention output; the MLP input norm is
    # pre_feedforward_layernorm.
    "gemma3": _llama_like("gemma3", ("gemma3_text", "gemma3"), mlp_norm="pre_feedforward_layernorm"),
    "gpt-neo": ArchMap(
        family="gpt-neo", model_types=("gpt_neo",), blocks="transformer.h",
        components={
            "query": "attn.attention.q_proj", "key": "attn.attention.k_proj", "value": "attn.attention.v_proj",
            "attn_out": "attn.attention.out_proj", "mlp_up": "mlp.c_fc", "mlp_down": "mlp.c_proj",
            "attn_norm": "ln_1", "mlp_norm": "ln_2",
        },
        embeddings="transformer.wte", final_norm="transformer.ln_f", lm_head="lm_head",
    ),
    "gpt-j": ArchMap(  # attention and MLP run in parallel behind ln_1: no mlp_norm
        family="gpt-j", model_types=("gptj",), blocks="transformer.h",
        components={
            "query": "attn.q_proj", "key": "attn.k_proj", "value": "attn.v_proj", "attn_out": "attn.out_proj",
            "mlp_up": "mlp.fc_in", "mlp_down": "mlp.fc_out", "attn_norm": "ln_1",
        },
        embeddings="transformer.wte", final_norm="transformer.ln_f", lm_head="lm_head",
    ),
    "opt": ArchMap(
        family="opt", model_types=("opt",), blocks="model.decoder.layers",
        components={
            "query": "self_attn.q_proj", "key": "self_attn.k_proj", "value": "self_attn.v_proj",
            "attn_out": "self_attn.out_proj", "mlp_up": "fc1", "mlp_down": "fc2",
            "attn_norm": "self_attn_layer_norm", "mlp_norm": "final_layer_norm",
        },
        embeddings="model.decoder.embed_tokens", final_norm="model.decoder.final_layer_norm", lm_head="lm_head",
    ),
    "bloom": ArchMap(
        family="bloom", model_types=("bloom",), blocks="transformer.h",
        components={**{c: "self_attention.query_key_value" for c in QKV}, **_FUSED_BLOCK,
                    "attn_out": "self_attention.dense"},
        embeddings="transformer.word_embeddings", final_norm="transformer.ln_f", lm_head="lm_head",
        fused_qkv=_heads,
    ),
    "gpt-neox": ArchMap(
        family="gpt-neox", model_types=("gpt_neox",), blocks="gpt_neox.layers",
        components={**{c: "attention.query_key_value" for c in QKV}, **_FUSED_BLOCK, "attn_out": "attention.dense"},
        embeddings="gpt_neox.embed_in", final_norm="gpt_neox.final_layer_norm", lm_head="lm_head",
        fused_qkv=_heads,
    ),
    # falcon-rw-1b layout (parallel_attn=False). A parallel-attention falcon has no
    # post_attention_layernorm; select() then reports mlp_norm as missing on that model.
    "falcon": ArchMap(
        family="falcon", model_types=("falcon",), blocks="transformer.h",
        components={**{c: "self_attention.query_key_value" for c in QKV}, **_FUSED_BLOCK,
                    "attn_out": "self_attention.dense"},
        embeddings="transformer.word_embeddings", final_norm="transformer.ln_f", lm_head="lm_head",
        fused_qkv=_falcon_heads,
    ),
}

_BY_MODEL_TYPE = {t: m for m in ARCH_MAPS.values() for t in m.model_types}


@dataclass(frozen=True)
class ComponentRef:
    """One canonical component of one layer, resolved on a model.

    Args:
        layer: block index.
        component: canonical component name.
        module: full module path (``model.get_submodule(module)``).
        param: full parameter name of the weight (``model.get_parameter(param)``).
        rows: row indices of ``param`` for part of a fused matrix, None for the whole matrix.
    """

    layer: int
    component: str
    module: str
    param: str
    rows: tuple[int, ...] | None = None


def family_of_model_type(model_type: str) -> str:
    """Our family name for a transformers ``config.model_type``.

    Raises:
        HarnessError: when no family covers ``model_type``.
    """
    try:
        return _BY_MODEL_TYPE[model_type].family
    except KeyError:
        known = ", ".join(sorted(_BY_MODEL_TYPE))
        raise HarnessError(f"model type {model_type!r} is not in the architecture map; supported: {known}") from None


def arch_map(model_or_family: Any) -> ArchMap:
    """The :class:`ArchMap` of a family name, a transformers model or a ``LoadedModel``.

    Raises:
        UnknownNameError: an unknown family name.
        HarnessError: a model whose ``config.model_type`` is not in the map.
    """
    if isinstance(model_or_family, str):
        try:
            return ARCH_MAPS[model_or_family]
        except KeyError:
            from harness.registry import Registry

            families: Registry[ArchMap] = Registry("family")
            for name, amap in ARCH_MAPS.items():
                families.register(name, amap)
            raise UnknownNameError(families.unknown_message(model_or_family)) from None
    model = _unwrap(model_or_family)
    config = getattr(model, "config", None)
    if config is None:
        raise HarnessError(f"cannot find the architecture of a {type(model).__name__}: it has no .config")
    return ARCH_MAPS[family_of_model_type(config.model_type)]


def _unwrap(model: Any) -> Any:
    """The nn.Module of a ``LoadedModel``; a module as it is."""
    return model if hasattr(model, "get_submodule") else getattr(model, "model", model)


def num_layers(model: Any) -> int:
    """Number of decoder blocks of ``model`` (a transformers model or a ``LoadedModel``)."""
    model = _unwrap(model)
    return len(model.get_submodule(arch_map(model).blocks))


def _layer_range(n_layers: int) -> str:
    return f"model has {n_layers} layers (0-{n_layers - 1})"


def _check_index(index: int, n_layers: int) -> int:
    if not -n_layers <= index < n_layers:
        raise HarnessError(f"layer {index} out of range: {_layer_range(n_layers)}")
    return index % n_layers


def parse_layers(spec: Any, n_layers: int, blocks: str | None = None) -> list[int]:
    """Layer indices named by ``spec``, in the order given, without repeats.

    Args:
        spec: None or ``"all"`` (every layer); an int; ``"3,4"``; ``"0-5"`` (inclusive); ``[3, 4]``;
            block paths such as ``"transformer.h.3"`` (``blocks`` says which prefix is valid).
            Negative ints count from the end.
        n_layers: number of blocks of the model.
        blocks: the model's block path (``ArchMap.blocks``), to check block paths against.

    Raises:
        HarnessError: a malformed entry or an index out of range.
    """
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "all"):
        return list(range(n_layers))
    if isinstance(spec, int):
        items: list[Any] = [spec]
    elif isinstance(spec, str):
        items = list(comma_list(spec, "layers", unique=False, required=False))
    elif isinstance(spec, Iterable):
        items = list(spec)
    else:
        raise HarnessError(f"layers must be 'all', '3,4', '0-5', a list of ints or block paths, not {spec!r}")
    if not items:
        raise HarnessError("no layers given: use 'all', '3,4', '0-5' or a list of ints")
    out: list[int] = []
    for item in items:
        for index in _parse_one(item, n_layers, blocks):
            if index not in out:
                out.append(index)
    return out


def _parse_one(item: Any, n_layers: int, blocks: str | None) -> list[int]:
    if isinstance(item, int) and not isinstance(item, bool):
        return [_check_index(item, n_layers)]
    text = str(item).strip()
    if re.fullmatch(r"-?\d+", text):
        return [_check_index(int(text), n_layers)]
    if m := re.fullmatch(r"(\d+)\s*-\s*(\d+)", text):
        lo, hi = int(m[1]), int(m[2])
        if lo > hi:
            raise HarnessError(f"layer range {text!r} is empty: write low-high, e.g. 0-{n_layers - 1}")
        _check_index(hi, n_layers)
        return list(range(lo, hi + 1))
    if m := re.fullmatch(r"(.+)\.(\d+)", text):
        if blocks is not None and m[1] != blocks:
            raise HarnessError(f"layer {text!r} is not a block of this model: its blocks are {blocks}.0-{n_layers - 1}")
        return [_check_index(int(m[2]), n_layers)]
    raise HarnessError(f"bad layer {text!r}: use 'all', an index, '3,4', '0-5' or a block path like 'model.layers.3'")


def parse_components(spec: Any, amap: ArchMap) -> list[str]:
    """Canonical component names named by ``spec`` that exist on ``amap``'s family, in canonical order.

    Args:
        spec: None or ``"all"``; a component or group name; a comma list or list of them.

    Raises:
        HarnessError: an unknown name, or a component named explicitly that this family lacks.
    """
    if spec is None:
        spec = "all"
    items = list(comma_list(spec, "components", unique=False, required=False)) if isinstance(spec, str) else list(spec)
    if not items:
        raise HarnessError(f"no components given: use {', '.join(COMPONENTS)} or a group ({', '.join(GROUPS)})")
    present = [c for c in COMPONENTS if amap.has(c)]
    wanted: set[str] = set()
    for item in items:
        if item in GROUPS:
            wanted.update(c for c in GROUPS[item] if amap.has(c))
        elif item in COMPONENTS:
            if not amap.has(item):
                raise HarnessError(
                    f"component {item!r} does not exist on {amap.family} models; they have: {', '.join(present)}"
                )
            wanted.add(item)
        else:
            raise HarnessError(
                f"unknown component {item!r}: use one of {', '.join(COMPONENTS)} or a group ({', '.join(GROUPS)})"
            )
    return [c for c in COMPONENTS if c in wanted]


def select(model: Any, layers: Any = None, components: Any = None) -> list[ComponentRef]:
    """Resolve layers x components to parameters of ``model``.

    Args:
        model: a transformers model or a ``LoadedModel``.
        layers: see :func:`parse_layers`; None means every layer.
        components: see :func:`parse_components`; None means every component.

    Returns:
        One :class:`ComponentRef` per (layer, component), ordered by layer then canonical component.

    Raises:
        HarnessError: a bad layer or component (the message lists what exists).
    """
    model = _unwrap(model)
    amap = arch_map(model)
    n_layers = num_layers(model)
    names = parse_components(components, amap)
    refs = []
    for layer in parse_layers(layers, n_layers, amap.blocks):
        block = f"{amap.blocks}.{layer}"
        for component in names:
            module = f"{block}.{amap.components[component]}"
            try:
                model.get_parameter(f"{module}.weight")
            except AttributeError:
                present = [c for c in COMPONENTS if _resolves(model, f"{block}.{amap.components.get(c)}")]
                raise HarnessError(
                    f"component {component!r} ({module}) does not exist on this {amap.family} model; "
                    f"it has: {', '.join(present)}"
                ) from None
            rows = amap.qkv_rows(model.config, component)
            refs.append(ComponentRef(layer, component, module, f"{module}.weight", rows))
    return refs


def _resolves(model: Any, module: str) -> bool:
    try:
        model.get_parameter(f"{module}.weight")
    except AttributeError:
        return False
    return True


def mlp_down_modules(model: Any) -> list[tuple[str, Any]]:
    """``(module path, module)`` of the MLP down projection of every layer, in layer order.

    Raises:
        HarnessError: naming the family when the modules cannot be found.
    """
    model = _unwrap(model)
    amap = arch_map(model)
    try:
        refs = select(model, layers="all", components="mlp_down")
    except HarnessError as err:
        raise HarnessError(f"cannot locate the MLP down projections of this {amap.family} model: {err}") from None
    return [(ref.module, model.get_submodule(ref.module)) for ref in refs]
