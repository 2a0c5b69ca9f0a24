"""Fine-tuning: do super weights and robustness survive it, and does fault-aware fine-tuning harden a model?

Per model, full fine-tuning (``harness.finetune``) on the corpus's calibration documents, never its
evaluation documents, with the same budget, learning rate, schedule and seed for each variant:

- ``plain``: no hardening;
- ``noise``: relative weight noise ``w * (1 + 0.1 eps)`` on the decoder's linear weights, re-drawn every
  step (``TRAIN_NOISE``);
- ``clip`` (full preset): weight clipping to each matrix's pre-fine-tuning max |w| (``CLIP``; Stutz et
  al. 2021, see ``harness.finetune.hardening``).

Budget: ``--finetune-tokens`` (quick 2048 = 4 steps of 2 x 256 tokens, full 8192), ``--finetune-lr``
(default 5e-5, AdamW), ``--finetune-schedule`` (cosine). Each fine-tuned model is saved under
``<results-dir>/finetuned/`` and reused by a later run with the same settings (hash key).

Before (``base``) and after each variant, on the same evaluation windows (quick: the first
``QUICK_WINDOWS``, full: all), ``harness.finetune.compare.measure``: held-out perplexity; the super
weights (``harness.scoring.superweights``; the strongest candidate stands in where none is detected,
as on the random tiny models) and the perplexity ratio with them zeroed; the collapse rate of one
uniform exp-MSB flip in the linear weights (quick 5 trials, full 20); the perplexity ratio under
relative noise at ``NOISE_SIGMAS`` (quick 2 trials, full 5; paired across models by trial seed).
After vs before: does the top super weight keep its coordinates, Jaccard of the coordinate sets, drift
of each base super weight's value.

Records (suite ``finetune``, method = ``base`` or the variant): ``train_loss`` per step (extra step,
tokens, lr), ``seconds`` of training, ``training_perplexity`` (on the windows trained on; the base
model's as ``clean_value``), ``perplexity`` (held out), ``ppl_ratio`` (perturbation ``{kind: zero, target:
super_weights}`` or ``{kind: noise, level}``), ``collapse_rate`` (``{kind: bitflip, bit_class: exp_msb}``,
Wilson 95% in extra), ``jaccard``, ``top_super_weight_kept``, ``super_weight_drift`` (one per base
super weight). ``reports.finetune`` draws the loss curves and the before/after table from them.

Claims (relations, no per-model number; not applicable to the random-weight tiny models): fine-tuning
lowers the perplexity of the windows it trained on (each variant: the training did what it is for);
the top super weight keeps its coordinates (each variant);
noise-aware fine-tuning is non-inferior to plain under sigma=0.1 noise (every paired trial: its ratio
at most 1.05 x plain's). That it *lowers* the ratio was claimed until gemma3-270m (below) showed the
quick budget (4 steps) too small for a direction any model keeps: it is recorded
(``noise_ratio_difference``, both sides), not claimed. Held-out perplexity is recorded, not claimed,
for the same reason: on gemma3-270m 4 steps on the calibration documents raised it (24.74 -> 24.79
plain / 25.13 noise-aware at seed 0, -> 26.56 / 26.02 at seed 1), while the training-window perplexity
fell at both seeds (table below).

Measured on smollm2-135m (quick preset, seed 0, CPU, fp32, the first 2 eval windows = 512 tokens;
2026-12, ``pytest suites/test_finetune.py --model smollm2-135m``):

    measure                                  base      plain     noise
    held-out perplexity                      20.012    17.719    17.841
    ppl ratio, super weights zeroed (3)       5.196     4.193     4.000
    uniform exp-MSB collapse rate (5 trials)  1.0       1.0       1.0
    ppl ratio, relative noise sigma=0.1       1.248     1.279     1.255   (plain 1.261/1.297, noise 1.248/1.262)
    ppl ratio, relative noise sigma=0.2       3.645     3.852     3.588   (plain 3.949/3.755, noise 3.754/3.422)
    super weights: Jaccard vs base              -       1.0       1.0     (11,507,1229) (28,507,678) (29,507,999)
    max |relative drift| of a super weight      -       2.6e-5    4.3e-5
    train loss, first -> last step              -       2.952->2.529  3.104->2.776

So: fine-tuning lowers perplexity and leaves the super weights where they were (value drift ~1e-5 at
this budget); zeroing them hurts less after fine-tuning (x5.2 -> x4.2 / x4.0); plain fine-tuning makes the
model slightly *more* noise-sensitive, noise-aware less so than plain (every pair, both sigmas), but
that is one seed and 2 trials: the claim holds there, with effects of 2-9%. The exp-MSB collapse rate
is 1.0 everywhere (a flipped exponent MSB of an fp32 weight below 2 multiplies it by 2^128): fault-aware
training at this budget does not change it; recorded, not claimed.

Measured on gemma3-270m (same command and budget, ``--model gemma3-270m``, training windows starting
with its BOS as the evaluation windows do; no super weight is detected, its strongest candidate layer
0 [400, 1405] stands in and keeps its coordinates):

    measure                                  base      plain     noise
    perplexity on the training windows       19.968     7.672     8.379
    held-out perplexity                      24.740    24.788    25.131
    ppl ratio, strongest candidate zeroed     1.092     1.011     1.001
    uniform exp-MSB collapse rate (5 trials)  0.0       0.0       0.0
    ppl ratio, relative noise sigma=0.1       1.233     1.197     1.191   (plain 1.246/1.149, noise 1.232/1.150)
    ppl ratio, relative noise sigma=0.2       2.645     2.236     2.176   (plain 2.452/2.020, noise 2.376/1.977)
    train loss, first -> last step              -       3.319->2.505  3.485->2.618

At seed 1 the training-window perplexity falls the same way (19.97 -> 7.69 / 8.87) while held-out
perplexity rises to 26.56 / 26.02. At sigma=0.1 the pairs go both ways (seed 0: 1.232 vs 1.246, 1.150
vs 1.149; with the earlier windows without BOS, 1.242 vs 1.232): hence the non-inferiority claim.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness.claims import ClaimSet, Comparison, greater, paired_greater
from harness.finetune.compare import measure, super_weight_shift, training_perplexity
from harness.finetune.options import config_from_options
from harness.finetune.run import ensure_finetuned
from harness.stats import wilson

SUITE = "finetune"
TRAIN_NOISE = 0.1  # relative sigma of the noise variant's training noise
CLIP = 1.0  # clip variant: each matrix stays within its pre-fine-tuning max |w|
VARIANTS = {"plain": {"noise": 0.0, "clip": None}, "noise": {"noise": TRAIN_NOISE, "clip": None},
            "clip": {"noise": 0.0, "clip": CLIP}}
PRESET_VARIANTS = {"quick": ("plain", "noise"), "full": ("plain", "noise", "clip")}
NOISE_SIGMAS = (0.1, 0.2)
FLIP_TRIALS = {"quick": 5, "full": 20}
NOISE_TRIALS = {"quick": 2, "full": 5}
QUICK_WINDOWS = 2

CLAIMS = ClaimSet(SUITE)
TRAIN_EFFECT = 1.05  # training must lower its own windows' perplexity by more than 5% (measured: 2-3x lower)
LOWER_PPL = CLAIMS.relation(
    "finetune_lowers_training_perplexity",
    f"Fine-tuning lowers the perplexity of the calibration windows it trained on by more than "
    f"{TRAIN_EFFECT - 1:.0%} (plain and noise-aware alike)",
    statistic="perplexity", margin=f"before > {TRAIN_EFFECT} x after: a stated minimum effect; a no-op fails")
TOP_KEPT = CLAIMS.relation(
    "top_super_weight_keeps_coordinates",
    "The top super weight keeps its (layer, row, col) through fine-tuning",
    statistic="super weight coordinates", seeded=False, margin="exact coordinates")
NON_INFERIORITY = 1.05  # noise-aware may be at most 5% above plain in every pair
NOISE_AWARE = CLAIMS.relation(
    "noise_aware_no_more_noise_sensitive",
    f"Noise-aware fine-tuning leaves the model no more sensitive to sigma={TRAIN_NOISE} relative noise than plain "
    "fine-tuning at the same budget (non-inferiority; that it lowers the ratio is recorded, not claimed)",
    statistic="ppl_ratio",
    margin=f"every seeded noise trial pair (same unit noise): noise-aware <= {NON_INFERIORITY} x plain")


@pytest.fixture(autouse=True)
def _base_model_only(esa):
    if (esa.options.extra.get("finetune") or "none") != "none":
        pytest.skip("the finetune suite compares the base model with its own fine-tunes: run it without --finetune")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "variant" in metafunc.fixturenames:
        variants = PRESET_VARIANTS[metafunc.config.getoption("esa_preset")]
        metafunc.parametrize("variant", variants, ids=list(variants))


def _windows(esa, eval_windows: torch.Tensor) -> torch.Tensor:
    return eval_windows[: esa.pick(quick=QUICK_WINDOWS, full=None)]


def _measure(esa, name: str, loaded, windows, detection=None):
    """``name``: the base model's name (it sets the trial counts: one on a tiny random model)."""
    return measure(loaded, windows, seed=esa.options.seed, flip_trials=esa.trials(name, **FLIP_TRIALS),
                   noise_sigmas=NOISE_SIGMAS, noise_trials=esa.trials(name, **NOISE_TRIALS), detection=detection)


def _base(esa, lm, windows):
    """The base model's measures, once per session."""
    from fixtures.superweights import shared_detection

    return esa.cached((lm.name, SUITE, "base", tuple(windows.shape)),
                      lambda: _measure(esa, lm.name, lm, windows, shared_detection(esa, lm)))


def _finetuned(esa, lm, variant: str):
    config = config_from_options(esa.options, method="full", **VARIANTS[variant])
    return config, esa.cached((lm.name, SUITE, "finetuned", config.key(lm.name)),
                              lambda: ensure_finetuned(lm.name, config, results_dir=esa.options.results_dir,
                                                       device=esa.options.device))


def _base_training_perplexity(esa, lm, config) -> float:
    """The base model's perplexity on the training windows (the same for every variant of one budget)."""
    return esa.cached((lm.name, SUITE, "base-training-ppl", config.corpus, config.windows, config.window),
                      lambda: training_perplexity(lm, config))


def _training_perplexity_after(esa, lm, config, done) -> float:
    """The fine-tuned model's perplexity on the windows it trained on, once per session."""
    from harness.models import load_model

    def make():
        return training_perplexity(load_model(done.path, device=esa.options.device, dtype=esa.options.dtype), config)

    return esa.cached((lm.name, SUITE, "after-training-ppl", config.key(lm.name)), make)


def _after(esa, lm, windows, variant: str):
    """(fine-tuning config, the fine-tuned model's measures, super-weight shift against the base), once per
    session."""
    from harness.models import load_model

    config, done = _finetuned(esa, lm, variant)

    def make():
        loaded = load_model(done.path, device=esa.options.device, dtype=esa.options.dtype)
        after = _measure(esa, lm.name, loaded, windows)
        return after, super_weight_shift(_base(esa, lm, windows), after, loaded.model)

    after, shift = esa.cached((lm.name, SUITE, "after", config.key(lm.name), tuple(windows.shape)), make)
    return config, after, shift


def _record_measures(recorder, m, method: str, base=None, **common) -> None:
    clean = None if base is None else base.perplexity
    recorder.record("perplexity", m.perplexity, method=method, clean_value=clean, perturbation={"kind": "none"},
                    **common)
    recorder.record("ppl_ratio", m.zeroed_ratio, method=method,
                    perturbation={"kind": "zero", "target": "super_weights", "count": len(m.super_weights),
                                  "target_source": m.sw_source, **m.detection}, **common)
    low, high = wilson(m.exp_msb_collapses, m.exp_msb_trials)
    recorder.record("collapse_rate", m.exp_msb_rate, method=method,
                    perturbation={"kind": "bitflip", "bit_class": "exp_msb", "target": "uniform", "n_flips": 1},
                    extra={"ci_low": low, "ci_high": high, "trials": m.exp_msb_trials,
                           "collapses": m.exp_msb_collapses}, **common)
    for sigma, ratios in m.noise_ratios.items():
        recorder.record("ppl_ratio", m.noise_ratio(sigma), method=method,
                        perturbation={"kind": "noise", "noise": "gaussian", "scale": "relative", "level": sigma,
                                      "target": "linear"}, extra={"trials": ratios}, **common)


def test_before(lm, eval_windows, esa, recorder):
    windows = _windows(esa, eval_windows)
    base = _base(esa, lm, windows)
    _record_measures(recorder, base, "base")
    assert math.isfinite(base.perplexity), f"the base model's held-out perplexity is {base.perplexity}"


def _perturbation(lm, config, variant: str) -> dict:
    return {"kind": "finetune", "method": config.method, "variant": variant, "tokens": config.tokens,
            "lr": config.learning_rate, "schedule": config.schedule, "noise": config.noise, "clip": config.clip,
            "key": config.key(lm.name)}


def test_finetune_trains(lm, esa, recorder, variant):
    """Training lowers the perplexity of the windows it trained on (the fine-tune alone, no measures)."""
    config, done = _finetuned(esa, lm, variant)
    pert = _perturbation(lm, config, variant)
    for point in done.log.points:
        recorder.record("train_loss", point["loss"], method=variant, perturbation=pert, extra=point)
    recorder.record("seconds", done.log.seconds, method=variant, perturbation=pert,
                    extra={"tokens": done.log.tokens, "steps": len(done.log.points), "reused": done.reused})
    assert len(done.log.points) == config.steps and all(map(math.isfinite, done.log.losses)), (
        f"training diverged or stopped: losses {done.log.losses}")
    base_train_ppl = _base_training_perplexity(esa, lm, config)
    train_ppl = _training_perplexity_after(esa, lm, config, done)
    recorder.record("training_perplexity", train_ppl, method=variant, clean_value=base_train_ppl, perturbation=pert,
                    extra={"windows": config.windows, "window": config.window, "corpus": config.corpus})
    recorder.claim(LOWER_PPL, greater(base_train_ppl, train_ppl, factor=TRAIN_EFFECT), clean_value=base_train_ppl,
                   method=variant, perturbation=pert)


def test_finetune(lm, eval_windows, esa, recorder, variant):
    """The fine-tuned model's measures against the base model's: super weights kept, noise, flips."""
    windows = _windows(esa, eval_windows)
    base = _base(esa, lm, windows)
    config, after, shift = _after(esa, lm, windows, variant)
    pert = _perturbation(lm, config, variant)
    _record_measures(recorder, after, variant, base)  # held-out perplexity: after, with the base's as clean value
    recorder.record("jaccard", shift.jaccard, method=variant,
                    perturbation={"kind": "super_weights", "before": base.sw_source, "after": after.sw_source},
                    extra={"before": [sw[:3] for sw in base.super_weights],
                           "after": [sw[:3] for sw in after.super_weights]})
    recorder.record("top_super_weight_kept", float(shift.top_kept), method=variant,
                    perturbation={"kind": "super_weights"})
    for layer, row, col, before, now, drift in shift.drift:
        recorder.record("super_weight_drift", drift, method=variant, perturbation={"kind": "super_weights"},
                        extra={"layer": layer, "row": row, "col": col, "before": before, "after": now})

    if base.sw_source != "detected":
        recorder.not_applicable(TOP_KEPT, f"{base.none_reason} in the base model", method=variant)
    else:
        recorder.claim(TOP_KEPT, Comparison(shift.top_kept, float(shift.top_kept), 1.0,
                                            {"before": base.super_weights[0][:3],
                                             "after": after.super_weights[0][:3] if after.super_weights else None}),
                       method=variant, perturbation=pert)


def test_fault_aware_vs_plain(lm, eval_windows, esa, recorder):
    """Noise-aware against plain fine-tuning at the same budget (the collapse rate and sigma=0.2 recorded only)."""
    windows = _windows(esa, eval_windows)
    _, plain, _ = _after(esa, lm, windows, "plain")
    _, noisy, _ = _after(esa, lm, windows, "noise")
    for sigma in NOISE_SIGMAS:
        recorder.record("noise_ratio_difference", plain.noise_ratio(sigma) - noisy.noise_ratio(sigma),
                        method="plain-noise", perturbation={"kind": "noise", "scale": "relative", "level": sigma},
                        extra={"plain": plain.noise_ratios[sigma], "noise": noisy.noise_ratios[sigma]})
    recorder.record("collapse_rate_difference", plain.exp_msb_rate - noisy.exp_msb_rate, method="plain-noise",
                    perturbation={"kind": "bitflip", "bit_class": "exp_msb", "target": "uniform"},
                    extra={"plain": plain.exp_msb_collapses, "noise": noisy.exp_msb_collapses,
                           "trials": plain.exp_msb_trials})
    recorder.claim(NOISE_AWARE, paired_greater(plain.noise_ratios[TRAIN_NOISE], noisy.noise_ratios[TRAIN_NOISE],
                                               factor=1 / NON_INFERIORITY),
                   method="plain-noise", perturbation={"kind": "noise", "scale": "relative", "level": TRAIN_NOISE})
