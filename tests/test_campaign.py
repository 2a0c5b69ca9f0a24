"""The campaign engine gives the per-trial path's numbers: prefix reuse, early stops, batched trials and the
chunked reduction, on five families of tiny random models."""

from __future__ import annotations

import gc
import logging
import math
import weakref

import pytest
import torch

import harness.metrics.perplexity as perplexity_mod
import harness.metrics.reduce as reduce_mod
from harness.campaign import Campaign, clean_baseline, run_trial, trial_specs
from harness.campaign.prefix import blocks_of
from harness.data import load_corpus, token_windows
from harness.errors import HarnessError
from harness.faults import FaultSite, flip_bits, uniform_sites
from harness.fingerprint import changed, fingerprint
from harness.metrics import evaluate, make_reference
from harness.metrics.reduce import combine, finish, reduce_batch
from harness.models.archmap import select
from harness.models.tiny import build_tiny, byte_tokenizer
from harness.stats import trial_seed
from tests.fake_session import FakeSession

pytest_plugins = ["pytester"]

FAMILIES = ("llama", "gpt-neox", "opt", "bloom", "gemma3")
LENGTH, COUNT, BATCH = 48, 5, 3  # two window batches (3 + 2)


@pytest.fixture(scope="module")
def windows() -> torch.Tensor:
    return token_windows(byte_tokenizer(), load_corpus().eval_docs, LENGTH, COUNT)


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request, windows):
    """(model, clean with kept blocks) of one tiny family; the model may be edited by a test (module-local)."""
    model = build_tiny(request.param)
    return model, clean_baseline(model, windows, keep_blocks=True, batch_size=BATCH)


def _sites(model, layers, n, bits, seed=0):
    refs = select(model, layers=layers, components="linear")
    return uniform_sites(model, refs, n, generator=torch.Generator().manual_seed(seed), bits=bits)


def _same(engine, full) -> None:
    """Equal ratio, perplexity, KL, top-1 and collapse (bit for bit on the CPU)."""
    assert engine.ratio == full.ratio
    assert engine.result.perplexity == full.result.perplexity
    assert engine.result.kl == full.result.kl
    assert engine.result.top1 == full.result.top1
    assert engine.collapsed == full.collapsed


@torch.no_grad()
def _whole_batch_evaluate(model, windows, ref, batch_size):
    """The reduction written plainly: one log-softmax of each batch's logits, whole (B, T-1, V) tensors
    (what ``evaluate`` computed before it used the chunked reduction)."""
    nll_sum, kl_sum, kl_n, agree, collapsed = 0.0, 0.0, 0, 0, False
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start:start + batch_size]
        lp = torch.log_softmax(model(input_ids=batch, use_cache=False).logits[:, :-1].float(), dim=-1)
        nll = -lp.gather(-1, batch[:, 1:].unsqueeze(-1)).sum().item()
        finite = math.isfinite(nll) and all(map(math.isfinite, map(float, torch.aminmax(lp))))
        collapsed |= not finite
        nll_sum += nll
        top1 = lp.argmax(-1) if finite else torch.nan_to_num(lp, nan=-math.inf).argmax(-1)
        agree += int((top1 == ref.top1[start:start + batch.shape[0]]).sum())
        if finite:
            sub = lp[:, ::ref.stride]
            kl_sum -= float(sub.sub_(ref.logprobs[start:start + batch.shape[0]]).mul_(
                ref.probs[start:start + batch.shape[0]]).sum())
            kl_n += sub.shape[0] * sub.shape[1]
    n_tokens = windows.shape[0] * (windows.shape[1] - 1)
    return finish(nll_sum, n_tokens, collapsed=collapsed, kl=(kl_sum, kl_n), top1=agree / n_tokens)


def test_seed_policy():
    assert trial_seed(3, 7) == 3 * 100_003 + 7
    assert [s.seed for s in trial_specs(2, 3)] == [200_006, 200_007, 200_008]


@pytest.mark.parametrize("stride_bytes", [None, 20_000])
@pytest.mark.parametrize("chunk_rows", [None, 5])
def test_chunked_reduction_equals_evaluate(windows, monkeypatch, stride_bytes, chunk_rows):
    model = build_tiny("llama")
    if stride_bytes:  # a KL reference that subsamples positions
        monkeypatch.setattr(perplexity_mod, "REFERENCE_BYTES", stride_bytes)
    if chunk_rows:  # several chunks per window, a chunk size that is no multiple of the length
        monkeypatch.setattr(reduce_mod, "CHUNK_BYTES", 4 * 260 * chunk_rows)
    ref = make_reference(model, windows)
    assert (ref.stride > 1) == bool(stride_bytes)
    with flip_bits(model, _sites(model, None, 3, "sign")):
        expected = _whole_batch_evaluate(model, windows, ref, BATCH)
        assert evaluate(model, windows, ref, batch_size=BATCH) == expected
        stats = []
        for start in range(0, COUNT, BATCH):
            batch = windows[start:start + BATCH]
            with torch.no_grad():
                logits = model(input_ids=batch, use_cache=False).logits
            stats.append(reduce_batch(logits, batch, ref, start))
    assert combine(stats, COUNT * (LENGTH - 1), ref) == expected
    assert expected.kl > 0  # the fault is visible: the comparison is not between two clean runs


@pytest.mark.parametrize("family", FAMILIES)
def test_evaluate_equals_the_whole_batch_reduction(windows, family):
    """Every family's perplexity, KL and top-1 are those of the plain reduction, bit for bit."""
    model = build_tiny(family)
    ref = make_reference(model, windows, batch_size=BATCH)
    with flip_bits(model, _sites(model, None, 2, "exp_msb", seed=1)):
        assert evaluate(model, windows, ref, batch_size=BATCH) == _whole_batch_evaluate(model, windows, ref, BATCH)
    assert evaluate(model, windows, ref) == _whole_batch_evaluate(model, windows, ref, COUNT)


def test_chunked_reduction_of_a_collapse(windows):
    model = build_tiny("llama")
    ref = make_reference(model, windows)
    param = select(model, layers=0, components="mlp_down")[0].param
    with torch.no_grad():
        model.get_parameter(param)[3, 5] = math.inf
    expected = _whole_batch_evaluate(model, windows, ref, BATCH)
    assert evaluate(model, windows, ref, batch_size=BATCH) == expected
    stats = []
    for start in range(0, COUNT, BATCH):
        batch = windows[start:start + BATCH]
        with torch.no_grad():
            stats.append(reduce_batch(model(input_ids=batch, use_cache=False).logits, batch, ref, start))
    assert expected.collapsed and combine(stats, COUNT * (LENGTH - 1), ref) == expected


def test_kept_clean_run_equals_evaluate(setup, windows):
    model, clean = setup
    assert clean.result == evaluate(model, windows, clean.reference, batch_size=BATCH)
    assert len(clean.prefix.outputs) == 2 and clean.prefix.n_blocks == len(blocks_of(model))


@pytest.mark.parametrize("bits", ["sign", "exponent", "mantissa_msb"])
def test_prefix_reuse_equals_full_recompute(setup, windows, bits):
    model, clean = setup
    before = fingerprint(model)
    campaign = Campaign(model, windows, clean)
    for seed in range(3):
        sites = _sites(model, "1", 2, bits, seed)  # faults in the last block: block 0 is replayed
        engine = campaign.trial(flip_bits(model, sites))
        full = run_trial(model, windows, clean, flip_bits(model, sites))
        assert engine.start_block == 1
        _same(engine, full) if engine.stopped_at is None else (engine.collapsed and full.collapsed)
    assert not changed(before, fingerprint(model))
    assert all("forward" not in vars(block) for block in blocks_of(model))


def test_faults_in_every_block_run_the_whole_model(setup, windows):
    model, clean = setup
    sites = [*_sites(model, "0", 1, "sign"), *_sites(model, "1", 1, "sign")]
    engine = Campaign(model, windows, clean).trial(flip_bits(model, sites))
    assert engine.start_block == 0
    _same(engine, run_trial(model, windows, clean, flip_bits(model, sites)))


def test_masked_fault_gives_the_clean_result(setup, windows):
    model, _ = setup
    param = select(model, layers=1, components="mlp_down")[0].param
    w = model.get_parameter(param)
    old = w[2, 3].item()
    with torch.no_grad():
        w[2, 3] = 0.0  # -0.0 * x == 0.0 * x, so a sign flip here changes no output bit
    try:
        clean0 = clean_baseline(model, windows, keep_blocks=True, batch_size=BATCH)
        flip = [FaultSite(param, (2, 3), (31,))]
        engine = Campaign(model, windows, clean0).trial(flip_bits(model, flip))
        full = run_trial(model, windows, clean0, flip_bits(model, flip))
        assert engine.masked and engine.result == clean0.result
        _same(engine, full)
        visible = Campaign(model, windows, clean0).trial(flip_bits(model, _sites(model, "1", 1, "sign")))
        assert not visible.masked
    finally:
        with torch.no_grad():
            w[2, 3] = old


def test_non_finite_block_output_stops_as_collapse(setup, windows):
    model, _ = setup
    param = select(model, layers=0, components="mlp_down")[0].param
    w = model.get_parameter(param)
    old = w[2, 3].item()
    with torch.no_grad():
        w[2, 3] = 0.0  # flipping every exponent bit of +0.0 makes +inf
    try:
        clean0 = clean_baseline(model, windows, keep_blocks=True, batch_size=BATCH)
        flip = [FaultSite(param, (2, 3), tuple(range(23, 31)))]
        engine = Campaign(model, windows, clean0).trial(flip_bits(model, flip))
        full = run_trial(model, windows, clean0, flip_bits(model, flip))
        assert engine.stopped_at == 0 and engine.collapsed and full.collapsed
        assert engine.ratio == full.ratio == math.inf and engine.result.kl == full.result.kl == math.inf
        assert all("forward" not in vars(block) for block in blocks_of(model))
    finally:
        with torch.no_grad():
            w[2, 3] = old


@pytest.mark.parametrize("family", ["llama", "gpt-neox"])
def test_batched_trials_equal_single_trials(windows, family):
    model = build_tiny(family)
    clean = clean_baseline(model, windows, keep_blocks=True, batch_size=BATCH)
    before = fingerprint(model)
    flips = [flip_bits(model, _sites(model, None, 2, bits, seed))
             for seed, bits in enumerate(["sign", "sign", "mantissa_msb", "exponent", "sign"])]
    flips.append(flip_bits(model, [FaultSite(select(model, layers=1, components="query")[0].param, (1, 2), (30,))]))
    batched = Campaign(model, windows, clean, trials_per_forward=4).trials(flips)
    n_tokens = COUNT * (LENGTH - 1)
    for got, flip in zip(batched, flips, strict=True):
        want = run_trial(model, windows, clean, flip)
        assert got.collapsed == want.collapsed
        if want.collapsed and not math.isfinite(want.ratio):
            assert not math.isfinite(got.ratio)
            continue
        assert got.ratio == pytest.approx(want.ratio, rel=1e-5)
        assert got.result.kl == pytest.approx(want.result.kl, rel=1e-3, abs=1e-7)
        assert got.result.top1 == pytest.approx(want.result.top1, abs=2 / n_tokens)
    assert not changed(before, fingerprint(model))


def test_run_yields_records_in_order_and_logs_progress(windows, caplog):
    model = build_tiny("llama")
    clean = clean_baseline(model, windows, keep_blocks=True, batch_size=BATCH)
    campaign = Campaign(model, windows, clean)

    def make(spec, g):
        return flip_bits(model, uniform_sites(model, select(model, components="linear"), 1, generator=g, bits="sign"))

    with caplog.at_level(logging.INFO, logger="harness.campaign.progress"):
        records = list(campaign.run(trial_specs(1, 3), make, cell="sign"))
    assert [r.spec.trial for r in records] == [0, 1, 2]
    again = make(None, torch.Generator().manual_seed(trial_seed(1, 2)))
    assert records[2].perturbation.sites == again.sites
    assert any("sign: 3 trials in" in m for m in caplog.messages)


def test_progress_plugin_prints_a_line_per_cell_and_nothing_under_q(pytester):
    pytester.makepyfile(test_cell="""
        from harness.campaign.progress import Progress

        def test_cell():
            progress = Progress("tiny-llama sign", 3)
            for _ in range(3):
                progress.step()
            progress.finish()
    """)
    loud = pytester.runpytest_inprocess("-p", "fixtures.campaign", "-p", "no:cacheprovider")
    loud.assert_outcomes(passed=1)
    loud.stdout.fnmatch_lines(["*tiny-llama sign: 3 trials in * s (* trials/s)*"])
    assert "3/3 trials" not in loud.stdout.str()  # not a terminal: no live line, only the summary
    quiet = pytester.runpytest_inprocess("-q", "-p", "fixtures.campaign", "-p", "no:cacheprovider")
    quiet.assert_outcomes(passed=1)
    assert "trials in" not in quiet.stdout.str()


# -- the cells of the campaign suites (harness.campaign.{bitflip,noise,ablation}_cells) ---------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from harness.models import load_model

    return load_model("tiny-llama")


def _clean_of(calls: list):
    """A stand-in for the session's ``esa.clean``: one capture per (name, dtype, window shape), calls logged."""
    captured: dict = {}

    def clean(name, model, windows):
        calls.append((name, tuple(windows.shape)))
        key = (name, str(next(model.parameters()).dtype), tuple(windows.shape))
        if key not in captured:
            captured[key] = clean_baseline(model, windows, keep_blocks=True)
        return captured[key]

    return clean


def test_uniform_target_draws_as_before_from_one_sampler_per_model(tiny_llama):
    """The uniform bit-flip target draws from one sampler per model (its sizes computed once) and draws what it
    drew when it recomputed them per trial (digest recorded at commit f1d61e7, before the change)."""
    import hashlib
    import json

    from harness.campaign.bitflip import sample_sites, uniform_sampler

    model = tiny_llama.model

    def draw(seed, t, bit_class, n):
        g = torch.Generator().manual_seed(trial_seed(seed, t))
        return sample_sites(model, "uniform", bit_class, n, generator=g, pool=None)

    sites = [s for t in range(4) for s in draw(0, t, "exp_msb" if t % 2 else "exponent", 2)]
    assert (sites[0].param, sites[0].index, sites[0].bits) == ("model.layers.1.mlp.up_proj.weight", (42, 44), (25,))
    many = [s for t in range(50) for s in draw(1, t, "any", 3)]
    digests = [hashlib.sha256(json.dumps([s.to_dict() for s in x]).encode()).hexdigest()[:16] for x in (sites, many)]
    assert digests == ["5a9edf91a442f5e3", "a5d6da1a3748fa81"]
    assert uniform_sampler(model) is uniform_sampler(model)
    other = build_tiny("llama")
    assert uniform_sampler(other) is not uniform_sampler(model)
    assert uniform_sampler(other).draw(2, generator=torch.Generator().manual_seed(3)) == \
        uniform_sites(other, select(other, components="linear"), 2, generator=torch.Generator().manual_seed(3))
    gone, kept = weakref.ref(other), uniform_sampler(other)
    del other
    gc.collect()
    assert gone() is None, "the sampler cache kept a dropped model alive"
    with pytest.raises(HarnessError, match="was freed"):
        kept.draw(1, generator=torch.Generator())


def test_cell_grids_per_preset():
    from harness.campaign import ablation_cells, bitflip_cells, noise_cells
    from harness.errors import UnknownNameError

    quick, full = bitflip_cells.grid("quick"), bitflip_cells.grid("full")
    assert len(quick) == 3 * len(bitflip_cells.CAMPAIGN_BITS) and {c.dtype for c in quick} == {"native"}
    assert len(full) == 4 * len(quick) and full[1].id == "uniform-sign-native-8flips"
    presets = bitflip_cells.PRESETS  # uniform: the relation's cells
    assert [quick[0].trials_in(presets[p]) for p in ("quick", "full")] == [20, 40]
    assert [c.id for c in noise_cells.grid("quick")] == ["gaussian-attention", "gaussian-mlp", "gaussian-linear"]
    assert [c.id for c in ablation_cells.grid("quick")] == ["zero-all", "zero-attention", "zero-mlp_down",
                                                            "zero-query"]
    assert ablation_cells.grid("full")[-1].mode == "mean" and noise_cells.grid("full")[-1].kind == "uniform"
    for module in (bitflip_cells, noise_cells, ablation_cells):
        with pytest.raises(UnknownNameError, match="preset"):
            module.grid("quik")


def test_component_cell_skips_a_component_the_family_lacks():
    from harness.campaign.noise_cells import NoiseCell
    from harness.models import load_model

    neox = load_model("tiny-gpt-neox")
    assert NoiseCell("gaussian", "mlp").skip_reason(neox) is None
    assert "mlp_gate" in NoiseCell("gaussian", "mlp_gate").skip_reason(neox)


def test_bitflip_cells_measure_once_record_nothing_and_restore(tiny_llama):
    from harness.campaign.bitflip_cells import BitflipCell, BitflipCells

    model, calls = tiny_llama.model, []
    windows = token_windows(tiny_llama.tokenizer, load_corpus().eval_docs, LENGTH, COUNT)
    cells = BitflipCells(tiny_llama, windows, preset="quick", seed=3, clean=_clean_of(calls),
                         trials=lambda name, count: 3)
    before = fingerprint(model)
    exp = cells.measure(BitflipCell("largest", "exp_msb"))
    assert cells.measure(BitflipCell("largest", "exp_msb")) is exp
    assert not changed(before, fingerprint(model))
    assert calls == [("tiny-llama", (2, LENGTH))]  # the quick preset's first 2 windows, the session's baseline
    assert exp.n == len(exp.trials) == 3 and exp.sizing.rule == "fixed" and exp.dtype == "fp32"
    assert [t.trial_seed for t in exp.trials] == [trial_seed(3, t) for t in range(3)]
    pool, source = cells.pool("largest")
    assert source == exp.source and {(t.sites[0].param, t.sites[0].index) for t in exp.trials} <= {
        (s.param, s.index) for s in pool}
    assert exp.kls == [math.inf if t.collapsed else t.kl for t in exp.trials]
    lsb = cells.measure(BitflipCell("largest", "mantissa_lsb"))
    # paired design: trial t hits the same weight in every bit class of a target
    assert [t.sites[0].index for t in lsb.trials] == [t.sites[0].index for t in exp.trials]
    rows = exp.rows()
    assert [r.metric for r in rows] == ["ppl_ratio", "kl"] * 3 + ["collapse_rate"]
    assert rows[0].clean_value == exp.clean_perplexity and rows[-1].value == exp.collapse_rate
    row = exp.trial_perturbation(exp.trials[0])
    assert row["n_flips"] == 1 and row["sites"] == [exp.trials[0].sites[0].to_dict()]
    assert BitflipCell("uniform", "sign", "bf16").skip_reason(tiny_llama) is None


def test_noise_and_ablation_cells_measure_a_curve_and_a_map(tiny_llama):
    from harness.campaign import ablation_cells, noise_cells

    model = tiny_llama.model
    windows = token_windows(tiny_llama.tokenizer, load_corpus().eval_docs, LENGTH, COUNT)
    esa = FakeSession(windows=windows, trials=2)
    before = fingerprint(model)
    noise = noise_cells.NoiseCells.of(esa, tiny_llama)
    curve = noise.measure(noise_cells.NoiseCell("gaussian", "mlp"))
    levels = noise_cells.PRESETS["quick"].levels
    assert [(t.trial, t.level) for t in curve.trials] == [(i, lv) for i in range(2) for lv in levels]  # trial-major
    assert len(curve.ratios(noise_cells.HIGH)) == 2 and curve.n_trials == 2  # --trials over the random model's one
    assert FakeSession(windows=windows).trials("tiny-llama", 3) == 1  # without --trials: one on random weights
    above, below = curve.growth()
    assert len(above) == len(below) == len(curve.above_floor) - 1
    layers = ablation_cells.AblationCells.of(esa, tiny_llama).measure(ablation_cells.AblationCell("zero", "all"))
    assert [a.layer for a in layers.layers] == list(range(model.config.num_hidden_layers))
    assert layers.ratios[layers.worst] == max(layers.ratios) and layers.ratios[layers.mildest] == min(layers.ratios)
    rows = layers.rows()
    assert [r.metric for r in rows] == ["ppl_ratio", "perplexity"] * len(layers.layers) + ["worst_layer"]
    assert rows[-1].value == layers.worst and rows[-1].extra["layers"] == len(layers.layers)
    # the session's clean baselines: the noise preset's first 2 windows, the ablation preset's first one
    assert sorted(k[2] for k in esa.memo if k[1] == "clean") == [(1, LENGTH), (2, LENGTH)]
    assert noise.sweep.clean.result.perplexity == curve.clean_perplexity
    assert not changed(before, fingerprint(model))


def test_the_list_target_falls_back_to_the_recipes_candidate(model, nothing):
    """No super weight detected: the list target flips the detector's strongest candidate, the one fallback of
    ``harness.recipes.super_weight_sites`` (as the recipes and the guided attack do); without sites it refuses."""
    from types import SimpleNamespace

    from harness.campaign.bitflip import site_pool
    from harness.campaign.bitflip_cells import BitflipCells
    from harness.recipes import super_weight_sites

    loaded = SimpleNamespace(name="tiny", model=model, dtype=torch.float32)
    windows = torch.zeros(1, 8, dtype=torch.long)
    cells = BitflipCells(loaded, windows, lambda: nothing, preset="quick", seed=0, clean=None,
                         trials=lambda name, count: 1)
    pool, source = cells.pool("list")
    assert pool == [nothing.candidate.site] == super_weight_sites(nothing)[0]
    assert source == f"candidate:{nothing.id}"
    blind = BitflipCells(loaded, windows, preset="quick", seed=0, clean=None, trials=lambda name, count: 1)
    with pytest.raises(HarnessError, match="needs the model's super-weight detection"):
        blind.pool("list")
    with pytest.raises(HarnessError, match="list target needs its sites"):
        site_pool(model, "list", [])


def test_the_candidate_standing_in_tells_the_rate_claim_why(model, nothing):
    """The list target's sites are the detector's candidate on a model without super weights: the result says why
    (its rate claims are not applicable); a pool of one site is drawn with replacement, trial after trial."""
    from types import SimpleNamespace

    from harness.campaign import clean_baseline
    from harness.campaign.bitflip_cells import BitflipCell, BitflipCells

    loaded = SimpleNamespace(name="tiny", model=model, dtype=torch.float32)
    windows = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    cells = BitflipCells(loaded, windows, lambda: nothing, preset="quick", seed=0, trials=lambda name, count: 3,
                         clean=lambda name, m, w: clean_baseline(m, w, keep_blocks=True))
    sign, exponent = (cells.measure(BitflipCell("list", b)) for b in ("sign", "exponent"))
    assert (sign.n, exponent.n) == (3, 3) and len({t.sites for t in sign.trials}) == 1
    assert sign.stand_in.startswith("no super weight detected") and "strongest candidate" in sign.stand_in
    assert cells.measure(BitflipCell("largest", "sign")).stand_in == ""
