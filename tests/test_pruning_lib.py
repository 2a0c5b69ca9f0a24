"""Pruning library: masks per granularity, bit-exact restore, protection, bad input, saving, comparison."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.data import load_corpus, token_windows
from harness.errors import HarnessError
from harness.faults import Perturbation
from harness.faults.sites import FaultSite
from harness.fingerprint import changed, fingerprint
from harness.metrics import evaluate
from harness.models import load_model, select
from harness.option_values import as_option_type
from harness.pruning import masks as M
from harness.pruning import options
from harness.pruning.compare import divergence, edit_distance, format_section, write_comparison
from harness.pruning.prune import Pruning, prune, prune_permanently
from harness.pruning.save import PRUNING_FILE, save_model
from harness.pruning.selective import selective_prune
from harness.scoring import score

GRANULARITIES = ["matrix", "row", "global", "2:4", "4:8", "head", "neuron"]


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def windows(tiny):
    return token_windows(tiny.tokenizer, load_corpus().calib_docs, 32, 4)


def _sparsity(granularity: str) -> float | None:
    return None if ":" in granularity else 0.5


# -- masks --------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(1, 4), st.floats(0, 0.99), st.integers(0, 2**31))
def test_exact_counts_even_with_ties(rows, cols, levels, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (rows, cols), generator=g).float()  # few levels: many ties
    k = M.count_of(fraction, cols)
    per_row = M.lowest_per_row(scores, k)
    assert (per_row.sum(1) == k).all()
    kept_min = torch.where(per_row, math.inf, scores).min(1).values
    pruned_max = torch.where(per_row, scores, -math.inf).max(1).values
    assert (pruned_max <= kept_min).all()  # nothing kept scores below something pruned
    k_all = M.count_of(fraction, rows * cols)
    whole = M.lowest(scores, k_all)
    assert int(whole.sum()) == k_all
    if 0 < k_all < rows * cols:
        assert scores[whole].max() <= scores[~whole].min()


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 300), st.floats(0, 0.99), st.integers(0, 2**31))
def test_global_selection_exact_count_and_order(n_matrices, width, fraction, seed):
    g = torch.Generator().manual_seed(seed)
    mats = [torch.rand(3, width, generator=g) * 10 ** float(torch.randint(-3, 3, (1,), generator=g))
            for _ in range(n_matrices)]
    sel = M.GlobalSelection()
    for m in mats:
        sel.add(m)
    k = sel.finish(fraction)
    picked = [sel.mask(i, m) for i, m in enumerate(mats)]
    assert sum(int(p.sum()) for p in picked) == k == M.count_of(fraction, sum(m.numel() for m in mats))
    if 0 < k < sel.numel:
        pruned_max = max(float(m[p].max()) for m, p in zip(mats, picked, strict=True) if p.any())
        kept_min = min(float(m[~p].min()) for m, p in zip(mats, picked, strict=True) if (~p).any())
        assert pruned_max <= kept_min * (1 + 2**-6)  # order exact up to the bin width near the threshold


def test_n_of_m_keeps_n_in_every_group():
    scores = torch.rand(5, 16, generator=torch.Generator().manual_seed(0))
    mask = M.n_of_m(scores, 2, 4)
    assert (mask.view(5, 4, 4).sum(-1) == 2).all()
    groups, chosen = scores.view(5, 4, 4), mask.view(5, 4, 4)
    assert (torch.where(chosen, groups, -1).amax(-1) <= torch.where(chosen, math.inf, groups).amin(-1)).all()


# -- pruning on a tiny model ----------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("method", ["zero", "mean", "noise"])
def test_context_restores_bit_exactly(tiny, granularity, method):
    before = fingerprint(tiny.model)
    params = [p.data_ptr() for p in tiny.model.parameters()]
    with prune(tiny, score(tiny, "magnitude"), _sparsity(granularity), granularity=granularity, method=method) as r:
        assert changed(before, fingerprint(tiny.model))
        assert r.sparsity == pytest.approx(0.5, abs=0.01)
    assert not changed(before, fingerprint(tiny.model))
    assert [p.data_ptr() for p in tiny.model.parameters()] == params  # edited in place, never replaced


def test_restores_when_the_body_raises_and_nests(tiny, windows):
    before = fingerprint(tiny.model)
    with pytest.raises(RuntimeError, match="boom"), prune(tiny, score(tiny, "magnitude"), 0.3):
        raise RuntimeError("boom")
    assert not changed(before, fingerprint(tiny.model))
    with prune(tiny, score(tiny, "magnitude"), 0.3, granularity="row"):
        middle = fingerprint(tiny.model)
        with prune(tiny, score(tiny, "wanda", windows=windows), 0.5, granularity="matrix", method="noise"):
            assert changed(middle, fingerprint(tiny.model))
        assert not changed(middle, fingerprint(tiny.model))
    assert not changed(before, fingerprint(tiny.model))
    once = prune(tiny, score(tiny, "magnitude"), 0.3)  # the Perturbation contract: one application at a time
    assert isinstance(once, Perturbation)
    with once, pytest.raises(HarnessError, match="already applied"), once:
        pass
    assert not changed(before, fingerprint(tiny.model))


def test_per_matrix_sparsity_is_reported_and_real(tiny):
    with prune(tiny, score(tiny, "magnitude"), 0.25, granularity="row") as r:
        for m in r.matrices:
            w = tiny.model.get_parameter(m.param)
            assert m.pruned == m.numel // 4 == int((w == 0).sum()) == m.zeros
            assert (w == 0).sum(1).unique().tolist() == [w.shape[1] // 4]  # every row
        assert r.sparsity == 0.25 and r.backup_bytes > 0
        assert 0 < r.model_sparsity < r.sparsity
        summary = r.to_dict()
        assert summary["min_matrix_sparsity"] == summary["max_matrix_sparsity"] == 0.25
        assert len(summary["per_matrix"]) == len(select(tiny, components="linear"))


def test_backup_is_the_smaller_form(tiny):
    total = sum(tiny.model.get_parameter(r.param).numel() for r in select(tiny, components="linear"))
    with prune(tiny, score(tiny, "magnitude"), 0.1, granularity="matrix") as low:
        pass
    with prune(tiny, score(tiny, "magnitude"), 0.9, granularity="matrix") as high:
        pass
    assert low.backup_bytes == low.pruned * (4 + 4) < total * 4  # int32 index + fp32 value per pruned weight
    assert high.backup_bytes == total * 4  # a copy of the touched matrices


def test_structured_heads_and_neurons(tiny):
    cfg = tiny.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    with prune(tiny, score(tiny, "magnitude", layers=0, components="attention"), 0.5, granularity="head"):
        q = tiny.model.get_parameter("model.layers.0.self_attn.q_proj.weight")
        o = tiny.model.get_parameter("model.layers.0.self_attn.o_proj.weight")
        dead_q = (q.view(-1, head_dim, q.shape[1]) == 0).all(-1).all(-1)
        dead_o = (o.view(o.shape[0], -1, head_dim) == 0).all(0).all(-1)
        assert dead_q.sum() == cfg.num_attention_heads // 2 and dead_q.tolist() == dead_o.tolist()
    with prune(tiny, score(tiny, "magnitude", layers=1, components="mlp"), 0.25, granularity="neuron"):
        up = tiny.model.get_parameter("model.layers.1.mlp.up_proj.weight")
        down = tiny.model.get_parameter("model.layers.1.mlp.down_proj.weight")
        dead = (up == 0).all(1)
        assert dead.sum() == cfg.intermediate_size // 4 and ((down == 0).all(0) == dead).all()


def test_fused_qkv_touches_only_the_selected_rows():
    neox = load_model("tiny-gpt-neox")
    before = fingerprint(neox.model)
    (ref,) = select(neox, layers=0, components="value")
    other = sorted(set(range(neox.model.get_parameter(ref.param).shape[0])) - set(ref.rows))
    untouched = neox.model.get_parameter(ref.param)[other].clone()
    with prune(neox, score(neox, "magnitude", layers=0, components="value"), 0.5, granularity="row") as r:
        w = neox.model.get_parameter(ref.param)
        assert torch.equal(w[other], untouched)
        assert int((w[list(ref.rows)] == 0).sum()) == r.pruned == len(ref.rows) * w.shape[1] // 2
    assert not changed(before, fingerprint(neox.model))


@pytest.mark.parametrize("granularity", ["row", "global", "2:4", "neuron"])
def test_protected_sites_are_never_pruned(tiny, granularity):
    scores = score(tiny, "magnitude", components="mlp")
    (ref, first), *_ = list(scores)
    weakest = divmod(int(first.argmin()), first.shape[1])  # the first weight any granularity prunes
    site = FaultSite(ref.param, weakest)
    as_json = {"module": ref.param, "row": weakest[0], "col": weakest[1], "index": list(weakest)}
    for protect in ([site], [as_json]):
        with prune(tiny, scores, _sparsity(granularity), granularity=granularity, protect=protect) as r:
            assert tiny.model.get_parameter(ref.param)[weakest] != 0
            assert r.protected == 1
    with prune(tiny, scores, _sparsity(granularity), granularity=granularity):
        assert tiny.model.get_parameter(ref.param)[weakest] == 0


def test_target_most_and_threshold(tiny):
    scores = score(tiny, "magnitude", layers=0, components="query")
    (ref, s), = list(scores)
    w = tiny.model.get_parameter(ref.param)
    with prune(tiny, scores, 0.1, granularity="matrix", target="most"):
        assert w.reshape(-1)[int(s.argmax())] == 0 and w.reshape(-1)[int(s.argmin())] != 0
    with prune(tiny, scores, threshold=0.5, granularity="matrix") as r:
        assert r.pruned == int((s / s.max() < 0.5).sum())
    with prune(tiny, scores, 0.1, threshold=0.5, granularity="matrix") as r:  # both: the smaller set
        assert r.pruned == M.count_of(0.1, s.numel())


def test_mean_and_noise_values(tiny):
    scores = score(tiny, "magnitude", layers=0, components="key")
    (ref, s), = list(scores)
    w = tiny.model.get_parameter(ref.param)
    mean, std = float(w.mean()), float(w.std())
    weakest = int(s.argmin())
    with prune(tiny, scores, 0.5, method="mean"):
        assert float(w.reshape(-1)[weakest]) == pytest.approx(mean)
    with prune(tiny, scores, 0.5, granularity="matrix", method="noise", generator=torch.Generator().manual_seed(1)):
        a = w.clone()
    with prune(tiny, scores, 0.5, granularity="matrix", method="noise", generator=torch.Generator().manual_seed(1)):
        assert torch.equal(a, w)  # seeded
        pruned = torch.zeros_like(w, dtype=torch.bool).reshape(-1)
        pruned[s.reshape(-1).argsort()[: s.numel() // 2]] = True
        assert float(w.reshape(-1)[pruned].std()) < 0.05 * std


def test_permanent_edit_keeps_the_pruning():
    fresh = load_model("tiny-llama")
    report = prune_permanently(fresh, score(fresh, "magnitude"), 0.5)
    for m in report.matrices:
        assert int((fresh.model.get_parameter(m.param) == 0).sum()) == m.pruned
    assert report.backup_bytes == 0


def test_selective_prune_knobs(tiny, windows):
    before = fingerprint(tiny.model)
    with selective_prune(tiny, method="wanda", component="value", layers="model.layers.1", percentile=80,
                         windows=windows) as r:
        assert [m.param for m in r.matrices] == ["model.layers.1.self_attn.v_proj.weight"]
        assert r.sparsity == pytest.approx(0.8, abs=1e-3)
    with selective_prune(tiny, component="mlp_down", layers=[0], percentile=100) as r:
        assert r.sparsity == 1.0  # percentile 100 prunes the whole selection
    assert not changed(before, fingerprint(tiny.model))


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sparsity": 1.0}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity must be in \[0, 1\)"),
    ({"sparsity": 0.5, "granularity": "4:4"}, "1 <= N < M"),
    ({"sparsity": 0.5, "granularity": "5:4"}, "1 <= N < M"),
    ({"sparsity": 0.3, "granularity": "2:4"}, "0.5 by definition"),
    ({"sparsity": 0.5, "granularity": "diagonal"}, "unknown granularity"),
    ({"sparsity": 0.5, "method": "delete"}, "unknown prune method"),
    ({}, "give a sparsity"),
    ({"sparsity": 0.5, "granularity": "head", "threshold": 0.1}, "unstructured"),
])
def test_bad_arguments_are_one_line_errors(tiny, kwargs, message):
    with pytest.raises(HarnessError, match=message) as err:
        Pruning(tiny, score(tiny, "magnitude"), **kwargs)
    assert "\n" not in str(err.value)


def test_width_not_divisible_by_m(tiny):
    with pytest.raises(HarnessError, match=r"divisible by 3; .* has 64 columns"):
        prune(tiny, score(tiny, "magnitude", layers=0, components="query"), granularity="2:3").__enter__()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"percentile": 101}, r"percentile must be in \[0, 100\]"),
    ({"percentile": -1}, r"percentile must be in \[0, 100\]"),
    ({"threshold": 1.5}, r"threshold must be in \[0, 1\]"),
    ({"percentile": 50, "layers": "7"}, "layer 7 out of range"),
    ({"percentile": 50, "component": "values"}, "unknown component 'values'"),
    ({"percentile": 50, "method": "magnitud"}, "Did you mean 'magnitude'"),
    ({}, "needs a percentile"),
])
def test_selective_bad_input(tiny, kwargs, message):
    with pytest.raises(HarnessError, match=message) as err:
        selective_prune(tiny, **kwargs)
    assert "\n" not in str(err.value)


def test_option_parsers_give_usage_errors():
    parse = as_option_type(options.parse_sparsities)
    assert parse("0.1, 0.5") == (0.1, 0.5)
    with pytest.raises(argparse.ArgumentTypeError, match=r"sparsity must be in \[0, 1\)"):
        parse("0.5,1")
    assert as_option_type(options.parse_granularities)("row,2:4,heads") == ("row", "2:4", "head")
    with pytest.raises(argparse.ArgumentTypeError, match="1 <= N < M"):
        as_option_type(options.parse_granularities)("8:4")
    with pytest.raises(argparse.ArgumentTypeError, match="percentile"):
        as_option_type(options.parse_percentile)("150")


# -- saving --------------------------------------------------------------------------------------


def test_saved_pruned_model_reloads_with_the_same_perplexity(tmp_path):
    from transformers import AutoModelForCausalLM

    fresh = load_model("tiny-llama")
    windows = token_windows(fresh.tokenizer, load_corpus().eval_docs, 32, 3)
    report = prune_permanently(fresh, score(fresh, "magnitude"), 0.5, granularity="2:4")
    measured = evaluate(fresh.model, windows).perplexity
    out = save_model(fresh, tmp_path / "pruned", report=report, metadata={"source": "tiny-llama"})
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "config.json" in names and "tokenizer.json" in names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    facts = json.loads((out / PRUNING_FILE).read_text())
    assert facts["source"] == "tiny-llama" and facts["pruning"]["granularity"] == "2:4"
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    assert evaluate(hf, windows).perplexity == measured
    zoo = load_model(str(out))
    assert zoo.spec.source == "local" and evaluate(zoo.model, windows).perplexity == measured
    with pytest.raises(HarnessError, match="exists; choose a new path or pass overwrite=True"):
        save_model(fresh, out)
    assert save_model(fresh, out, overwrite=True) == out
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    with pytest.raises(HarnessError, match="not a model directory"):
        save_model(fresh, tmp_path / "notes", overwrite=True)


# -- output comparison ---------------------------------------------------------------------------


def test_divergence_and_edit_distance():
    assert edit_distance([1, 2, 3], [1, 3]) == 1
    assert edit_distance([], [4, 5]) == 2
    assert divergence([1, 2, 3], [1, 2, 3]).identical
    d = divergence([1, 2, 3, 4], [1, 2, 9, 4])
    assert (d.first, d.distance, d.length) == (2, 1, 4)
    assert divergence([1, 2], [1, 2, 3]).first == 2


def test_comparison_file_keeps_one_section_per_title(tmp_path, tiny):
    section = format_section("wanda 50%", tiny.tokenizer, ["Hi"], [[76, 77]], [[76, 78]])
    assert "first differing token: 1" in section and "token edit distance 1 of 2" in section
    path = write_comparison(tmp_path, "tiny-llama", "wanda 50%", section)
    write_comparison(tmp_path, "tiny-llama", "magnitude 50%", section.replace("wanda", "magnitude"))
    write_comparison(tmp_path, "tiny-llama", "wanda 50%", section)
    text = path.read_text()
    assert path == tmp_path / "tiny-llama" / "output_comparison.txt"
    assert text.count("======== wanda 50% ========") == 1 and text.count("======== magnitude 50% ========") == 1


def test_selective_prune_reuses_precomputed_scores(tiny, windows):
    full = score(tiny, "wanda", windows=windows)
    with selective_prune(tiny, method="wanda", component="mlp_up", layers="1", percentile=50, scores=full) as r:
        assert [m.param for m in r.matrices] == ["model.layers.1.mlp.up_proj.weight"] and r.scorer == "wanda"
    partial = score(tiny, "magnitude", layers=0)
    with pytest.raises(HarnessError, match=r"do not cover model\.layers\.1"):
        selective_prune(tiny, component="value", layers="0,1", percentile=50, scores=partial)
