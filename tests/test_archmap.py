"""The architecture map resolves every canonical component on every tiny family, with the right rows."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from harness.errors import HarnessError, UnknownNameError
from harness.models import MODELS
from harness.models.archmap import (
    ARCH_MAPS,
    COMPONENTS,
    GROUPS,
    QKV,
    arch_map,
    mlp_down_modules,
    num_layers,
    parse_components,
    parse_layers,
    select,
)
from harness.models.tiny import build_tiny

FAMILIES = list(ARCH_MAPS)
FUSED = [f for f, m in ARCH_MAPS.items() if m.fused_qkv is not None]


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, nn.Module]:
    return {family: build_tiny(family) for family in FAMILIES}


def test_every_family_has_a_tiny_model_and_a_registered_model():
    families = {spec.family for _, spec in MODELS.items()}
    assert families == set(ARCH_MAPS)
    for family in FAMILIES:
        assert MODELS.get(f"tiny-{family}").family == family


@pytest.mark.parametrize("family", FAMILIES)
def test_every_component_resolves_to_a_real_weight(family, tiny_models):
    model = tiny_models[family]
    amap = arch_map(model)
    assert amap.family == family and arch_map(family) is amap
    assert num_layers(model) == 2
    refs = select(model)
    present = [c for c in COMPONENTS if amap.has(c)]
    assert [(r.layer, r.component) for r in refs] == [(i, c) for i in range(2) for c in present]
    for ref in refs:
        module = model.get_submodule(ref.module)
        weight = model.get_parameter(ref.param)
        assert ref.param == f"{ref.module}.weight" and module.weight is weight
        if ref.component.endswith("_norm"):
            assert weight.dim() == 1 and "norm" in type(module).__name__.lower()
        else:
            assert isinstance(module, nn.Linear)
        assert (ref.rows is not None) == (family in FUSED and ref.component in QKV)
    for path in (amap.embeddings, amap.final_norm, amap.lm_head):
        assert isinstance(model.get_submodule(path).weight, nn.Parameter)
    assert model.get_submodule(amap.embeddings) is model.get_input_embeddings()
    assert model.get_submodule(amap.lm_head) is model.get_output_embeddings()


@pytest.mark.parametrize("family", FUSED)
def test_fused_rows_partition_the_matrix(family, tiny_models):
    model = tiny_models[family]
    refs = {r.component: r for r in select(model, layers=[0], components="query,key,value")}
    rows = {c: refs[c].rows for c in QKV}
    n_rows = model.get_parameter(refs["query"].param).shape[0]
    assert sorted(rows["query"] + rows["key"] + rows["value"]) == list(range(n_rows))
    hidden = model.config.hidden_size
    assert len(rows["query"]) == hidden and len(rows["key"]) == len(rows["value"]) == hidden
    head_dim = hidden // model.config.num_attention_heads
    assert rows["value"][:head_dim] == tuple(range(2 * head_dim, 3 * head_dim))  # per head [q, k, v]


def test_falcon_multi_query_and_grouped_layouts():
    amap = ARCH_MAPS["falcon"]

    class Cfg:
        num_attention_heads, hidden_size, num_kv_heads = 4, 8, 2  # head_dim 2
        multi_query, new_decoder_architecture = True, False

    assert amap.qkv_rows(Cfg, "query") == tuple(range(8))  # [q0 q1 q2 q3 k v]
    assert amap.qkv_rows(Cfg, "key") == (8, 9) and amap.qkv_rows(Cfg, "value") == (10, 11)
    Cfg.new_decoder_architecture = True  # 2 groups of [q q k v]
    assert amap.qkv_rows(Cfg, "query") == (0, 1, 2, 3, 8, 9, 10, 11)
    assert amap.qkv_rows(Cfg, "key") == (4, 5, 12, 13) and amap.qkv_rows(Cfg, "value") == (6, 7, 14, 15)


def _attn_out_input(model: nn.Module, layer: int, ids: torch.Tensor) -> torch.Tensor:
    """The input of layer ``layer``'s attention output projection: the attention's mixed values."""
    module = model.get_submodule(select(model, layers=[layer], components="attn_out")[0].module)
    seen = []
    handle = module.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().clone()))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_value_rows_carry_the_value(family):
    """Zeroing the value component (weight and bias rows) makes every attention output zero;
    zeroing the key component does not. On fused families this checks the value rows."""
    model = build_tiny(family)  # edited below: a fresh copy
    ids = torch.arange(4, 36).reshape(1, 32)

    def zero(component: str) -> None:
        ref = select(model, layers=[1], components=component)[0]
        module = model.get_submodule(ref.module)
        rows = slice(None) if ref.rows is None else list(ref.rows)
        with torch.no_grad():
            module.weight[rows] = 0
            if module.bias is not None:
                module.bias[rows] = 0

    assert _attn_out_input(model, 1, ids).abs().max() > 0
    zero("key")
    assert _attn_out_input(model, 1, ids).abs().max() > 0
    zero("value")
    assert _attn_out_input(model, 1, ids).abs().max() == 0


def test_parse_layers_forms():
    assert parse_layers("3,4", 30) == [3, 4]
    assert parse_layers("0-5", 30) == [0, 1, 2, 3, 4, 5]
    assert parse_layers([3, 4, 3], 30) == [3, 4]
    assert parse_layers("all", 3) == parse_layers(None, 3) == [0, 1, 2]
    assert parse_layers(-1, 30) == [29]
    assert parse_layers("transformer.h.3", 30, blocks="transformer.h") == [3]
    assert parse_layers(["model.layers.2", "0-1"], 30, blocks="model.layers") == [2, 0, 1]


@pytest.mark.parametrize(("spec", "message"), [
    (40, "layer 40 out of range: model has 30 layers (0-29)"),
    ("28-31", "layer 31 out of range: model has 30 layers (0-29)"),
    ("5-2", "layer range '5-2' is empty"),
    ("model.layers.3", "is not a block of this model: its blocks are transformer.h.0-29"),
    ("three", "bad layer 'three'"),
    ("", "no layers given"),
])
def test_bad_layers_are_one_line_errors(spec, message):
    with pytest.raises(HarnessError) as err:
        parse_layers(spec, 30, blocks="transformer.h")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_components_groups_and_errors(tiny_models):
    neo = arch_map("gpt-neo")
    assert parse_components("mlp", neo) == ["mlp_up", "mlp_down"]  # no gate on gpt-neo
    assert parse_components("attention", neo) == list(GROUPS["attention"])
    assert "mlp_norm" not in parse_components("all", arch_map("gpt-j"))
    assert parse_components("value,mlp_down", arch_map("llama")) == ["value", "mlp_down"]
    with pytest.raises(HarnessError, match=r"component 'mlp_gate' does not exist on gpt-neo models; they have: query"):
        parse_components("mlp_gate", neo)
    with pytest.raises(HarnessError, match=r"unknown component 'values': use one of query, key, value"):
        select(tiny_models["llama"], components="values")
    refs = select(tiny_models["bloom"], layers="1", components="value")
    assert [(r.layer, r.module) for r in refs] == [(1, "transformer.h.1.self_attention.query_key_value")]
    with pytest.raises(HarnessError, match=r"layer 2 out of range: model has 2 layers \(0-1\)"):
        select(tiny_models["opt"], layers=[2])


def test_mlp_down_modules(tiny_models):
    for family, model in tiny_models.items():
        found = mlp_down_modules(model)
        amap = arch_map(family)
        assert [name for name, _ in found] == [f"{amap.blocks}.{i}.{amap.components['mlp_down']}" for i in range(2)]
        assert all(isinstance(m, nn.Linear) and m.out_features == model.config.hidden_size for _, m in found)


def test_unknown_family_and_unmapped_model():
    with pytest.raises(UnknownNameError, match="Did you mean 'gpt-neo'"):
        arch_map("gptneo")

    class Cfg:
        model_type = "mamba"

    class Model(nn.Module):
        config = Cfg()

    with pytest.raises(HarnessError, match="model type 'mamba' is not in the architecture map; supported: bloom"):
        mlp_down_modules(Model())
