"""Scorers: shapes and types on several families, determinism, the planted super weight, gradients
against direct autograd, Hutchinson against the exact diagonal, integrated-gradient completeness,
restored state, bad input, and the super_weights.json artifact."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch

from harness.errors import HarnessError, UnknownNameError
from harness.fingerprint import fingerprint
from harness.models import build_tiny, byte_tokenizer, load_model, select
from harness.models.specs import TINY_PARAMS
from harness.scoring import SCORERS, known_super_weights, score
from harness.scoring.base import ScoredSite, ref_shape
from harness.scoring.grads import batch_nll, grad_on
from harness.scoring.hessian import hutchinson_diagonal, rademacher

FAMILIES = ["tiny-llama", "tiny-gpt-neox", "tiny-falcon"]  # plain, fused qkv (gpt-neox), fused + biases
FAST = {"hessian": {"probes": 2}, "integrated": {"steps": 2}}


def _windows(seed: int = 1, count: int = 2, length: int = 16) -> torch.Tensor:
    return torch.randint(4, 260, (count, length), generator=torch.Generator().manual_seed(seed))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return load_model(request.param)


@pytest.fixture(scope="module")
def llama():
    return load_model("tiny-llama")


def _mean_nll(model, windows) -> float:
    with torch.no_grad():
        return float(batch_nll(model, windows, windows.shape[0] * (windows.shape[1] - 1)))


# -- every scorer, every family ------------------------------------------------------------------


@pytest.mark.parametrize("method", SCORERS.names())
def test_scorer_yields_one_matrix_at_a_time_with_the_right_shape(tiny, method):
    model = tiny.model
    before = fingerprint(model)
    result = score(tiny, method, windows=_windows(), generator=_gen(), **FAST.get(method, {}))
    assert fingerprint(model) == before, "scoring changed the model"
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())
    assert result.method == method and result.cost.seconds >= 0
    expected = "mlp_down" if method == "activation" else "linear"
    assert [r.param for r in result.refs] == [r.param for r in select(model, components=expected)]
    for ref, scores in result:
        assert scores.shape == ref_shape(model, ref) and scores.dtype == torch.float32
        assert scores.device == next(model.parameters()).device and torch.isfinite(scores).all()
    fused = [r for r in result.refs if r.rows is not None]
    if tiny.family in ("gpt-neox", "falcon") and method != "activation":
        assert fused and ref_shape(model, fused[0])[0] < model.get_parameter(fused[0].param).shape[0]
    top = result.top_k(5)
    assert len(top) <= 5 and (method == "activation" or len(top) == 5)
    for site in top:
        assert isinstance(site, ScoredSite)
        param = model.get_parameter(site.site.param)
        assert site.value == float(param[site.site.index])
    keys = [abs(s.score) for s in top]
    assert keys == sorted(keys, reverse=True)


@pytest.mark.parametrize("family", sorted(TINY_PARAMS))
def test_every_scorer_runs_on_every_tiny_family(family):
    loaded = load_model(f"tiny-{family}")
    before = fingerprint(loaded.model)
    for method in SCORERS.names():
        options = {"hessian": {"probes": 1}, "integrated": {"steps": 1}}.get(method, {})
        result = score(loaded, method, windows=_windows(count=1, length=8), **options)
        assert sum(s.numel() for _, s in result) == result.numel()
    assert fingerprint(loaded.model) == before


@pytest.mark.parametrize("method", ["hessian", "gradient", "wanda", "z_score"])
def test_same_seed_same_scores(llama, method):
    def run(seed):
        res = score(llama, method, layers=1, windows=_windows(), generator=_gen(seed), **FAST.get(method, {}))
        return [s.clone() for _, s in res], res.top_k(10)

    (a, top_a), (b, top_b) = run(0), run(0)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)) and top_a == top_b
    if method == "hessian":
        c, _ = run(1)
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True)), "the generator is not used"


def test_top_k_equals_a_global_sort(llama):
    result = score(llama, "magnitude")
    flat = []
    for ref, scores in result:
        for i, v in enumerate(scores.reshape(-1).tolist()):
            flat.append((-v, result.refs.index(ref), i))
    flat.sort()
    expected = [(ref_i, i) for _, ref_i, i in flat[:50]]
    got = [(result.refs.index(next(r for r in result.refs if r.param == s.site.param)),
            s.site.index[0] * llama.model.get_parameter(s.site.param).shape[1] + s.site.index[1])
           for s in result.top_k(50)]
    assert got == expected


def test_top_k_indices_match_top_k_on_fused_rows_and_sparse_sets():
    loaded = load_model("tiny-gpt-neox")
    for result in (score(loaded, "magnitude", components="value"), score(_planted(), "activation")):
        sites = result.top_k(7) if result.sites is None else result.top_k(1)
        grouped = result.top_k_indices(len(sites))
        flat = sorted((ref.param, tuple(i), float(sc)) for ref, (idx, scs) in grouped.items()
                      for i, sc in zip(idx.tolist(), scs.tolist(), strict=True))
        assert flat == sorted((s.site.param, s.site.index, s.score) for s in sites)
    fused = score(loaded, "magnitude", components="value").top_k_indices(50)
    assert all(set(idx[:, 0].tolist()) <= set(ref.rows) for ref, (idx, _) in fused.items())


# -- activation: the shared detector as a scorer (the detector itself: tests/test_superweights.py) ----


def _planted(layer: int = 0, row: int = 11, col: int = 37, dim: int = 5):
    """A tiny llama with one super weight W_down[row, col]: only the token 'A' spikes on input channel col."""
    model, tok = build_tiny("llama"), byte_tokenizer()
    token = tok("A", add_special_tokens=False)["input_ids"][0]
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, dim] = 0.0
        emb[token] = 0.0
        emb[token, dim] = 1.0
        mlp = model.model.layers[layer].mlp
        for proj in (mlp.gate_proj, mlp.up_proj):
            proj.weight[col] = 0.0
            proj.weight[col, dim] = 6.0
        mlp.down_proj.weight[:, col] = 0.0  # no other weight of the column turns the spike into output
        mlp.down_proj.weight[row, col] = 5.0
    return SimpleNamespace(model=model, tokenizer=tok)


def test_activation_finds_the_planted_super_weight_and_restores_the_model():
    planted = _planted()
    before = fingerprint(planted.model)
    result = score(planted, "activation")
    assert fingerprint(planted.model) == before
    top = result.top_k(5)
    assert [(s.site.param, s.site.index) for s in top] == [("model.layers.0.mlp.down_proj.weight", (11, 37))]
    assert top[0].value == 5.0 and top[0].score > 50 and top[0].component == "mlp_down"
    spike = result.details["spikes"][0]
    assert spike["input_spike"] > 50 and spike["round"] == 0
    assert result.details["rounds"] == 1 and result.cost.forward == 1  # default: round 0 only
    dense = dict((ref.layer, s) for ref, s in result)
    assert dense[0][11, 37] == top[0].score and dense[0].count_nonzero() == 1 and dense[1].count_nonzero() == 0


def test_activation_rounds_option_repeats_until_no_new_spike():
    planted = _planted()
    with torch.no_grad():  # a second, smaller weight in the same column: found once the first is zeroed
        planted.model.model.layers[0].mlp.down_proj.weight[20, 37] = 2.0
    result = score(planted, "activation", rounds=4)
    spikes = [(s["round"], s["row"], s["col"]) for s in result.details["spikes"]]
    assert spikes == [(0, 11, 37), (1, 20, 37)] and result.details["rounds"] == 3


def test_activation_restores_the_model_when_the_forward_fails():
    planted = _planted()
    before = fingerprint(planted.model)
    calls = []

    def fail_second_round(module, args, output):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("boom")

    handle = planted.model.model.layers[1].mlp.down_proj.register_forward_hook(fail_second_round)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            score(planted, "activation", rounds=2)  # round 1 runs with the found weight zeroed
    finally:
        handle.remove()
    assert fingerprint(planted.model) == before


def test_activation_factor_that_finds_nothing_returns_empty(llama, caplog):
    with caplog.at_level(logging.INFO):
        result = score(llama, "activation", factor=1e9)
    assert result.top_k(3) == [] and result.sites == []
    assert "strongest candidate" in caplog.text


def test_activation_on_windows_without_tokenizer(llama):
    result = score(llama.model, "activation", windows=_windows())
    assert result.sites == [] and result.details["detection"].token_ids[0] == tuple(_windows()[0].tolist())
    with pytest.raises(HarnessError, match="tokenizer"):
        score(llama.model, "activation")


# -- gradients against direct autograd ------------------------------------------------------------


def test_gradient_taylor_fisher_equal_direct_autograd(llama):
    model, windows = llama.model, _windows(count=3)
    ref = select(model, layers=1, components="mlp_up")[0]
    param = model.get_parameter(ref.param)
    with grad_on(model, [param]):
        loss = model(input_ids=windows, labels=windows, use_cache=False).loss
        (g,) = torch.autograd.grad(loss, param)
        per_window = [torch.autograd.grad(model(input_ids=w[None], labels=w[None], use_cache=False).loss, param)[0]
                      for w in windows]
    expected = {
        "gradient": g.abs(),
        "taylor": (g * param.detach()).abs(),
        "fisher": torch.stack(per_window).pow(2).mean(0),
    }
    for method, want in expected.items():
        got = dict(score(llama, method, layers=1, components="mlp_up", windows=windows, batch_size=2))[ref]
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-9)


def test_requires_grad_and_grad_restored_even_on_error(llama):
    model = llama.model
    param = model.get_parameter("model.layers.0.mlp.up_proj.weight")
    marker = torch.ones_like(param)
    param.requires_grad_(True)
    param.grad = marker
    try:
        score(llama, "gradient", windows=_windows())
        assert param.requires_grad and param.grad is marker
        handle = model.model.layers[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
        try:
            with pytest.raises(RuntimeError, match="boom"):
                score(llama, "fisher", windows=_windows())
        finally:
            handle.remove()
        assert param.requires_grad and param.grad is marker
    finally:
        param.requires_grad_(False)
        param.grad = None
    others = [n for n, p in model.named_parameters() if p.requires_grad or p.grad is not None]
    assert others == []


# -- Hutchinson ------------------------------------------------------------------------------------


def test_hutchinson_is_exact_on_a_quadratic_with_diagonal_hessian_and_converges_otherwise():
    gen = _gen(3)
    n = 12
    a = torch.randn(n, n, generator=gen, dtype=torch.float64)
    a = a @ a.T / n + torch.diag(torch.linspace(1, 3, n, dtype=torch.float64))
    w = torch.randn(n, generator=gen, dtype=torch.float64, requires_grad=True)

    def losses():
        yield 0.5 * w @ a @ w

    errors = {}
    for probes in (16, 1024):
        (est,), backward = hutchinson_diagonal(losses, [(w, None)], probes, _gen(0))
        errors[probes] = float((est.double() - a.diag()).norm() / a.diag().norm())
        assert backward == 2 * probes
    assert errors[1024] < 0.1 and errors[1024] < errors[16] / 3
    d = torch.diag(torch.arange(1.0, n + 1, dtype=torch.float64))
    (est,), _ = hutchinson_diagonal(lambda: iter([0.5 * w @ d @ w]), [(w, None)], 1, _gen(0))
    torch.testing.assert_close(est.double(), d.diag())  # z ⊙ Dz = diag(D) for every ±1 z


def test_hessian_scorer_is_the_hutchinson_estimate_of_the_exact_hessian_of_a_tiny_model(llama):
    """With the probes replayed from the same seed, the scorer's estimate equals mean(z ⊙ Hz) for the
    exact Hessian H (built row by row with double backward); its diagonal is what that estimates."""
    model, windows = llama.model, _windows()
    param = model.get_parameter("model.layers.1.post_attention_layernorm.weight")  # 64 weights
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with grad_on(model, [param]), sdpa_kernel([SDPBackend.MATH]):
        loss = batch_nll(model, windows, windows.shape[0] * (windows.shape[1] - 1))
        (g,) = torch.autograd.grad(loss, param, create_graph=True)
        hess = torch.stack([torch.autograd.grad(g[i], param, retain_graph=True)[0] for i in range(g.numel())])
    torch.testing.assert_close(hess, hess.T, rtol=1e-3, atol=1e-6)
    probes = 6
    result = score(llama, "hessian", layers=1, components="mlp_norm", windows=windows, probes=probes,
                   generator=_gen(5))
    (_, est), = list(result)
    replay = _gen(5)
    zs = [rademacher((64,), replay) for _ in range(probes)]
    expected = torch.stack([z * (hess @ z) for z in zs]).mean(0)
    torch.testing.assert_close(est, expected, rtol=1e-4, atol=1e-6)
    assert result.cost.backward == 2 * probes and result.cost.forward == probes and result.signed
    many = torch.stack([z * (hess @ z) for z in (rademacher((64,), replay) for _ in range(2000))]).mean(0)
    assert float((many - hess.diag()).norm() / hess.diag().norm()) < 0.15  # -> diag(H) as probes grow


def test_hessian_blocks_bound_memory_without_changing_the_estimate(llama):
    whole = score(llama, "hessian", layers=1, components="mlp", windows=_windows(), probes=1, generator=_gen())
    split = score(llama, "hessian", layers=1, components="mlp", windows=_windows(), probes=1, generator=_gen(),
                  max_block=1)
    assert whole.details["blocks"] == 1 and split.details["blocks"] == 3
    assert split.cost.forward == 3 * whole.cost.forward
    for (_, a), (_, b) in zip(whole, split, strict=True):
        assert a.shape == b.shape  # different z per block: same expectation, different draw


# -- the lower-memory paths compute the same bits ------------------------------------------------------


def _all_at_once_hutchinson(losses, targets, probes, generator):
    """The estimator as first written: every gradient and every Hz at once from ``torch.autograd.grad``."""
    params = list({id(t): t for t, _ in targets}.values())
    where = [next(i for i, p in enumerate(params) if p is t) for t, _ in targets]
    shapes = [tuple(t.shape) if rows is None else (len(rows), *t.shape[1:]) for t, rows in targets]
    sums = [torch.zeros(s) for s in shapes]
    backward = 0
    for _ in range(probes):
        zs = [rademacher(s, generator) for s in shapes]
        for loss in losses():
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            dot = sum(((grads[p] if rows is None else grads[p][rows]) * z).sum()
                      for (_, rows), z, p in zip(targets, zs, where, strict=True))
            hvps = torch.autograd.grad(dot, params, allow_unused=True)
            backward += 2
            for (_, rows), z, p, acc in zip(targets, zs, where, sums, strict=True):
                acc.add_(z * (hvps[p] if rows is None else hvps[p][rows]))
    return [acc / probes for acc in sums], backward


@pytest.mark.parametrize("family", ["tiny-llama", "tiny-falcon", "tiny-gpt-neox"])  # falcon: a fused qkv matrix
def test_low_memory_scorers_equal_the_all_at_once_computation(family, monkeypatch):
    """Checkpointed blocks (activations recomputed in the backward) give the first-order scorers the same bits
    as keeping every activation. The Hessian's block-by-block double backward (:func:`segmented`), one window
    per double backward and the probe that consumes each gradient and Hz as it arrives give the all-at-once
    estimate summed in another order: equal to rounding (1e-5 of the largest score), the same draws."""
    import contextlib

    import harness.scoring.gradient as gradient_module
    import harness.scoring.grads as grads_module
    import harness.scoring.hessian as hessian_module
    import harness.scoring.integrated as integrated_module

    loaded, windows = load_model(family), _windows(count=3)
    methods = {"gradient": {}, "taylor": {}, "fisher": {}, "integrated": {"steps": 2}, "hessian": {"probes": 2}}

    def run() -> dict[str, list[torch.Tensor]]:
        return {m: [s.clone() for _, s in score(loaded, m, layers="0,1", windows=windows, batch_size=2,
                                                generator=_gen(), **o)] for m, o in methods.items()}

    low = run()
    with monkeypatch.context() as patch:
        for module in (grads_module, integrated_module):
            patch.setattr(module, "checkpointed", lambda model: contextlib.nullcontext())
        patch.setattr(hessian_module, "segmented", lambda model: contextlib.nullcontext())
        patch.setattr(hessian_module, "DOUBLE_BACKWARD_TOKENS", 10**9)  # every window in one batch of 2
        patch.setattr(hessian_module, "hutchinson_diagonal", _all_at_once_hutchinson)
        assert gradient_module.gradient_sums is grads_module.gradient_sums
        before = run()
    for method in methods:
        if method == "hessian":
            top = max(float(b.abs().max()) for b in before[method])
            assert not all(torch.equal(a, b) for a, b in zip(low[method], before[method], strict=True))
            for a, b in zip(low[method], before[method], strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5 * top)
        else:
            assert all(torch.equal(a, b) for a, b in zip(low[method], before[method], strict=True)), method


def test_segmented_blocks_differentiate_twice_and_restore_their_forward_even_on_error(llama):
    """Through :func:`segmented` blocks, a first backward keeps a graph that a second backward differentiates
    (the Hessian-vector product of one matrix equals the plain double backward's to rounding), and the blocks'
    forward is put back after, even on error."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from harness.scoring.hessian import segmented

    model, windows = llama.model, _windows()
    param = model.model.layers[0].mlp.gate_proj.weight  # its gradient depends on itself inside the block (SiLU)
    z = rademacher(tuple(param.shape), _gen(3))

    def hvp() -> torch.Tensor:
        loss = batch_nll(model, windows, windows.shape[0] * (windows.shape[1] - 1))
        (g,) = torch.autograd.grad(loss, param, create_graph=True)
        return torch.autograd.grad((g * z).sum(), param)[0]

    with grad_on(model, [param]), sdpa_kernel([SDPBackend.MATH]):
        plain = hvp()
        with segmented(model):
            assert all("forward" in vars(block) for block in model.model.layers)
            seg = hvp()
    assert not any("forward" in vars(block) for block in model.model.layers)
    torch.testing.assert_close(seg, plain, rtol=0, atol=1e-5 * float(plain.abs().max()))
    assert float(plain.abs().max()) > 0
    with pytest.raises(RuntimeError, match="boom"), segmented(model):
        raise RuntimeError("boom")
    assert not any("forward" in vars(block) for block in model.model.layers)


def test_hessian_takes_one_window_per_double_backward_of_256_tokens():
    """The double backward's graph is about 3x a first-order one: its batches hold at most
    DOUBLE_BACKWARD_TOKENS tokens (at least one window), whatever the first-order batch size."""
    from harness.scoring.hessian import DOUBLE_BACKWARD_TOKENS

    loaded = load_model("tiny-llama")
    long = torch.randint(4, 260, (3, DOUBLE_BACKWARD_TOKENS), generator=_gen(1))
    short = torch.randint(4, 260, (4, DOUBLE_BACKWARD_TOKENS // 2), generator=_gen(1))
    for windows, batches in ((long, 3), (short, 2)):
        result = score(loaded, "hessian", layers=0, components="mlp_down", windows=windows, probes=1, generator=_gen())
        assert result.cost.forward == batches and result.cost.backward == 2 * batches


def test_heap_trim_changes_no_value():
    from harness import heap

    t = torch.arange(10.0)
    assert heap.trim() in (True, False)
    assert torch.equal(t, torch.arange(10.0))


def test_checkpointed_blocks_recompute_and_restore_their_forward_even_on_error(llama):
    from harness.scoring.grads import checkpointed

    model, windows = llama.model, _windows()
    blocks = model.model.layers
    calls = []
    handle = blocks[0].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with grad_on(model, [blocks[0].mlp.up_proj.weight]), checkpointed(model):
            batch_nll(model, windows, 1).backward()
        assert len(calls) == 2  # the forward, and its recomputation in the backward
        with pytest.raises(RuntimeError, match="boom"), checkpointed(model):
            raise RuntimeError("boom")
    finally:
        handle.remove()
        blocks[0].mlp.up_proj.weight.grad = None
    assert all("forward" not in vars(block) for block in blocks)


# -- integrated gradients ----------------------------------------------------------------------------


@pytest.mark.parametrize("components", ["mlp_down", "value"])
def test_integrated_gradients_complete_and_leave_the_model_bit_exact(components):
    loaded = load_model("tiny-gpt-neox")  # value: rows of the fused qkv matrix
    model, windows = loaded.model, _windows()
    before = fingerprint(model)
    result = score(loaded, "integrated", layers=1, components=components, windows=windows, steps=16)
    assert fingerprint(model) == before
    total = sum(float(s.double().sum()) for _, s in result)
    ref = result.refs[0]
    param = model.get_parameter(ref.param)
    rows = slice(None) if ref.rows is None else list(ref.rows)
    saved = param.detach().clone()
    with torch.no_grad():
        full = _mean_nll(model, windows)
        param[rows] = 0.0
        zero = _mean_nll(model, windows)
        param.copy_(saved)
    assert total == pytest.approx(full - zero, rel=0.02)
    assert result.cost.forward == 16 and result.signed


def test_integrated_restores_the_weights_when_the_backward_fails(llama):
    before = fingerprint(llama.model)
    handle = llama.model.model.layers[1].register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("x")))
    try:
        with pytest.raises(RuntimeError):
            score(llama, "integrated", windows=_windows(), steps=3)
    finally:
        handle.remove()
    assert fingerprint(llama.model) == before


def test_wanda_is_weight_times_input_norm(llama):
    model, windows = llama.model, _windows()
    ref = select(model, layers=0, components="mlp_down")[0]
    seen = []
    handle = model.get_submodule(ref.module).register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        model(input_ids=windows, use_cache=False)
    handle.remove()
    x = torch.cat([s.reshape(-1, s.shape[-1]) for s in seen])
    want = model.get_parameter(ref.param).detach().abs() * x.norm(dim=0)[None, :]
    got = dict(score(llama, "wanda", layers=0, components="mlp_down", windows=windows))[ref]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


# -- bad input -------------------------------------------------------------------------------------


def test_unknown_method_lists_the_known_ones(llama):
    with pytest.raises(UnknownNameError) as err:
        score(llama, "gradiant")
    assert "'gradient'" in str(err.value) and "wanda" in str(err.value) and "\n" not in str(err.value)


def test_bad_k_and_options(llama):
    result = score(llama, "magnitude", layers=0, components="mlp_down")
    with pytest.raises(HarnessError, match=r"k=8,193 is larger than the 8,192 weights"):
        result.top_k(8193)
    assert len(result.top_k(8192)) == 8192
    with pytest.raises(HarnessError, match="positive integer"):
        result.top_k(0)
    with pytest.raises(HarnessError, match="has no option 'prob'; its options: probes=16"):
        score(llama, "hessian", prob=3)
    with pytest.raises(HarnessError, match="scores only 'mlp_down'"):
        score(llama, "activation", components="value")
    with pytest.raises(HarnessError, match="wanda scores weight matrices"):
        score(llama, "wanda", components="norms", windows=_windows())
    with pytest.raises(HarnessError, match="LongTensor"):
        score(llama, "gradient", windows=torch.zeros(2, 8))
    with pytest.raises(HarnessError, match="probes >= 1"):
        score(llama, "hessian", windows=_windows(), probes=0)


def test_z_score_threshold_that_finds_nothing_returns_empty(llama, caplog):
    with caplog.at_level(logging.WARNING):
        assert score(llama, "z_score", threshold=1e9).top_k(5) == []
    assert "found nothing" in caplog.text
    outliers = score(llama, "z_score").top_k(20)
    assert len(outliers) == 20 and all(s.score >= 2.5 for s in outliers)


def test_family_without_a_locatable_down_projection_is_named():
    model = build_tiny("llama")
    del model.model.layers[1].mlp.down_proj
    with pytest.raises(HarnessError, match=r"mlp_down.*llama"):
        score(model, "activation", windows=_windows())
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300))
    with pytest.raises(HarnessError, match="'gpt2' is not in the architecture map"):
        score(gpt2, "activation", windows=_windows())


# -- artifacts and known coordinates -------------------------------------------------------------


def test_known_super_weights_are_data_keyed_by_hub_id():
    (llama7b,) = known_super_weights("huggyllama/llama-7b")
    assert (llama7b.layer, llama7b.row, llama7b.col) == (2, 3968, 7003)
    assert llama7b.site.param == "model.layers.2.mlp.down_proj.weight" and llama7b.site.index == (3968, 7003)
    assert [(k.layer, k.row, k.col) for k in known_super_weights("mistral-7b")] == [(1, 2070, 7310)]  # registry name
    assert len(known_super_weights("META-LLAMA/Meta-Llama-3-8B")) == 3
    assert len(known_super_weights("huggyllama/llama-30b")) == 3
    assert len(known_super_weights("huggyllama/llama-13b")) == 2
    assert {k.layer for k in known_super_weights("allenai/OLMo-7B-0724-hf")} == {1, 2, 7, 24}
    assert known_super_weights("tiny-llama") == [] and known_super_weights("nobody/nothing") == []


def test_overlap_pvalue_with_overlaps_beyond_a_float_factorial():
    """The full preset's k = 1000: overlaps above 170 once raised OverflowError (170! is the last float factorial)."""
    from harness.scoring.agreement import overlap_pvalue

    assert overlap_pvalue(0, 10, 10, 100) == 1.0
    assert 0.0 < overlap_pvalue(2, 10, 10, 100) < 1.0
    assert overlap_pvalue(400, 1000, 1000, 4000) < overlap_pvalue(300, 1000, 1000, 4000) < 0.01  # mean 250
    assert overlap_pvalue(200, 1000, 1000, 10**9) == 0.0
    assert overlap_pvalue(180, 1000, 1000, 4000) > 0.99  # mean overlap 250: at least 180 is near certain
