"""Bit-flip campaigns on the stored bits of the weights: model x target x bit class x dtype.

A cell runs ``--trials`` seeded trials (preset quick: 5, full: 20). Each trial draws its sites with a
``torch.Generator`` seeded from (``--seed``, trial number), flips them in place
(``harness.faults.flip_bits``), evaluates, and restores; positions are drawn before bits, so trial
t hits the same weights in every bit class of a target (a paired design).

- bit class (``harness.faults.BIT_CLASSES``): sign, exp_msb, exponent (one exponent bit drawn per
  site), mantissa_msb, mantissa_lsb.
- target, where the flipped weights are:
  ``uniform``  uniform over the decoder blocks' linear weights (archmap group ``linear``; embeddings,
               norms and the LM head are not targeted);
  ``largest``  drawn among the ``POOL`` largest-|w| of those weights;
  ``list``     drawn from a given list: the super weights the ``activation`` scorer detects
               (``harness.scoring``); where it finds none (tiny random models), the ``POOL``
               largest-|w| of the ``mlp_down`` matrices, the usual super-weight candidates. The
               source is recorded as ``target_source``.
- dtype: the model's own (``native``); the full preset adds ``bf16``, a second copy of the model
  loaded once per module (skipped when the model already is bf16).
- flips per trial: 1; the full preset adds 8 (distinct sites, at most the size of the pool).

Evaluation: quick preset the first ``QUICK_WINDOWS`` eval windows (512 tokens at the default
``--window 256``), full preset all of them; the ratio and KL are against the clean model of the same
dtype on the same windows. Collapse: non-finite output or ppl ratio >= 10
(``harness.faults.campaign``).

Records (suite ``bitflip``, method = target): per trial ``ppl_ratio`` and ``kl`` with perturbation
``{kind: bitflip, bit_class, target, target_source, dtype, n_flips, sites}`` and extra
``{trial, trial_seed}``; per cell ``collapse_rate`` with extra ``{ci_low, ci_high, trials,
collapses}`` (Wilson 95%) and ``seconds``. Claims: the cell's name (``fp32_uniform_exp_msb``, with
``_8flips`` for multi-flip cells) + ``_collapse_rate_min``, ``_collapse_rate_max`` or
``_ppl_ratio_max`` (largest ratio over the trials, inf when one collapsed) — stated for the cells
whose name appears in ``suites/bounds/bitflip.toml``, where each bound says how it was measured.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.faults import distinct_positions, flip_bits, target_sites, top_magnitude_sites, uniform_sites
from harness.faults.campaign import clean_baseline, run_trial, wilson
from harness.fingerprint import changed, fingerprint
from harness.models.archmap import select

BIT_CLASSES = ("sign", "exp_msb", "exponent", "mantissa_msb", "mantissa_lsb")
TARGETS = ("uniform", "largest", "list")
POOL = 64  # candidates of the largest / fallback list targets
QUICK_WINDOWS = 2
TRIALS = {"quick": 5, "full": 20}
SHORT_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
SUITE = "bitflip"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bit_class" not in metafunc.fixturenames:
        return
    full = metafunc.config.getoption("esa_preset") == "full"
    dtypes = ("native", "bf16") if full else ("native",)
    flips = (1, 8) if full else (1,)
    cells = [(t, b, d, n) for t in TARGETS for b in BIT_CLASSES for d in dtypes for n in flips]
    ids = [f"{t}-{b}-{d}-{n}flip{'s' if n > 1 else ''}" for t, b, d, n in cells]
    metafunc.parametrize(("target", "bit_class", "cell_dtype", "n_flips"), cells, ids=ids)


@pytest.fixture(scope="module")
def bf16_copies(esa):
    """``name -> LoadedModel`` in bf16, loaded on first use (full preset); dropped with the module."""
    copies: dict = {}
    yield copies
    copies.clear()


def _model_for(esa, lm, cell_dtype: str, copies: dict):
    if cell_dtype == "native":
        return lm
    if lm.dtype == torch.bfloat16:
        pytest.skip("the model already is bf16: the native cell covers it")
    if lm.name not in copies:
        from harness.models import load_model

        copies.clear()  # one extra model at a time
        copies[lm.name] = load_model(lm.name, device=esa.options.device, dtype="bf16")
    return copies[lm.name]


def _pool(esa, loaded, target: str) -> tuple[list, str]:
    """(candidate sites, where they come from) of the ``largest`` or ``list`` target, cached."""

    def make():
        model = loaded.model
        if target == "largest":
            return top_magnitude_sites(model, select(model, components="linear"), POOL), f"top{POOL}_abs_linear"
        from harness.scoring import score

        found = [s.site for s in score(loaded, "activation").top_k(POOL)]
        if found:
            return found, "activation_scorer"
        return top_magnitude_sites(model, select(model, components="mlp_down"), POOL), f"top{POOL}_abs_mlp_down"

    return esa.cached((loaded.name, SUITE, "pool", target, str(loaded.dtype)), make)


def _sites(loaded, target: str, bit_class: str, n: int, *, generator: torch.Generator, pool: list | None) -> list:
    if target == "uniform":
        refs = select(loaded.model, components="linear")
        return uniform_sites(loaded.model, refs, n, generator=generator, bits=bit_class)
    picks = distinct_positions(len(pool), min(n, len(pool)), generator).tolist()
    return target_sites(loaded.model, [pool[i] for i in picks], bits=bit_class, generator=generator)



def test_bitflip_campaign(lm, eval_windows, esa, recorder, timer, bf16_copies, target, bit_class, cell_dtype,
                          n_flips):
    loaded = _model_for(esa, lm, cell_dtype, bf16_copies)
    model = loaded.model
    windows = eval_windows[: esa.pick(quick=QUICK_WINDOWS, full=None)]
    clean = esa.cached((loaded.name, SUITE, "clean", str(loaded.dtype), tuple(windows.shape), esa.options.corpus),
                       lambda: clean_baseline(model, windows))
    pool, source = _pool(esa, loaded, target) if target != "uniform" else (None, "uniform_linear")
    trials = esa.options.trials or esa.pick(**TRIALS)
    dtype = SHORT_DTYPE.get(loaded.dtype, str(loaded.dtype).removeprefix("torch."))
    cell = f"{dtype}_{target}_{bit_class}" + (f"_{n_flips}flips" if n_flips > 1 else "")
    before = fingerprint(model) if loaded is not lm else None

    ratios, collapses = [], 0
    with timer() as t:
        for trial in range(trials):
            trial_seed = esa.options.seed * 100_003 + trial
            g = torch.Generator().manual_seed(trial_seed)
            sites = _sites(loaded, target, bit_class, n_flips, generator=g, pool=pool)
            result = run_trial(model, windows, clean, flip_bits(model, sites))
            ratios.append(result.ratio)
            collapses += result.collapsed
            perturbation = {"kind": "bitflip", "bit_class": bit_class, "target": target, "target_source": source,
                            "dtype": dtype, "n_flips": len(sites), "sites": [s.to_dict() for s in sites]}
            columns = dict(method=target, perturbation=perturbation, dtype=str(loaded.dtype).removeprefix("torch."),
                           collapsed=result.collapsed, extra={"trial": trial, "trial_seed": trial_seed})
            recorder.record("ppl_ratio", result.ratio, clean_value=clean.result.perplexity, **columns)
            recorder.record("kl", result.result.kl, **columns)
    if before is not None:
        assert not changed(before, fingerprint(model)), f"the {dtype} copy of {lm.name} was not restored"

    low, high = wilson(collapses, trials)
    cell_columns = dict(method=target, dtype=str(loaded.dtype).removeprefix("torch."),
                        perturbation={"kind": "bitflip", "bit_class": bit_class, "target": target,
                                      "target_source": source, "dtype": dtype, "n_flips": n_flips})
    rate = collapses / trials
    recorder.record("collapse_rate", rate, extra={"ci_low": low, "ci_high": high, "trials": trials,
                                                  "collapses": collapses, "cell": cell}, **cell_columns)
    recorder.record("seconds", t.seconds, extra={"trials": trials, "cell": cell}, **cell_columns)

    values = {"collapse_rate_min": rate, "collapse_rate_max": rate,
              "ppl_ratio_max": max(ratios) if all(map(math.isfinite, ratios)) else math.inf}
    stated = recorder.stated()
    for suffix, value in values.items():
        if f"{cell}_{suffix}" in stated:
            recorder.claim(f"{cell}_{suffix}", value, extra={"trials": trials, "collapses": collapses},
                           **cell_columns)
