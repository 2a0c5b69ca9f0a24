"""Bit-flip attacks on the weights: how many flips an attacker needs, against defenses and a random baseline.

Cells: model x attack (``--attacks``: progressive, guided, random) x weight dtype (``--attack-dtypes``:
fp32, bf16, int8) x defense (``--defenses``: none, checksum, clamp). Select with ``-k attack``. The
quick preset skips the defended bf16 cells unless ``--attack-dtypes`` or ``--defenses`` is given
(bf16 runs about 6x slower than fp32 on a CPU; the defenses are measured on fp32 and int8).

Every cell runs the attack with ``--flip-budget`` flips on the live model and puts it back
bit-exactly. Perplexity is measured after every flip on the first evaluation window(s) (quick: one
window of ``--window`` tokens); gradients and trial losses use the first calibration window (quick:
its first 128 tokens), so the attack does not fit the text it is judged on. Collapse: perplexity x10
of the clean model in the same dtype, or non-finite.

Models per dtype: the session model when it already has that dtype; bf16 otherwise is a second copy
loaded once per session (checked bit-identical after each test, like the session model); int8 is the
session model with every decoder linear swapped for per-channel int8 codes (``quantize_int8``) for
the test. Super weights for the guided attack are detected once per model on the fp32 weights.
The random baseline runs ``--trials`` seeds (``--seed``, ``--seed``+1, ...).

Records (suite ``attack``; ``method`` = attack; ``perturbation`` = {kind, attack, dtype, defense,
budget}): ``flips_to_collapse`` (inf and collapsed=0 when the budget ran out first), ``ppl_ratio``
after each measured flip (``extra.flips``), ``seconds``, ``flips_ratio_to_random`` (attack cells:
the attack's flips / the random baseline's median, censored values counted as budget+1), and the
claims ``<attack>_<dtype>_<defense>_flips_max`` (the attack collapses the model within the bound;
``_flips_min`` instead where the bounds file states that a defense holds it off) and
``random_<dtype>_<defense>_flips_min`` (fewest flips over the seeds), bounds in
``suites/bounds/attack.toml``.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from fixtures.session import bound_for
from harness.attacks import AttackResult, attack_targets, make_defense, run_attack
from harness.attacks.defenses import sensitive_sites
from harness.attacks.guided import detect_super_weights
from harness.attacks.options import ATTACK_DTYPES, DEFENSE_NAMES, WEIGHT_ATTACKS
from harness.faults import quantize_int8
from harness.fingerprint import changed, fingerprint
from harness.metrics import evaluate

SUITE = "attack"
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DETAILS = ("trials", "undone_trials", "iterations", "bits", "neighbours", "source")  # AttackResult.extra kept


QUICK_DEFENDED_DTYPES = ("fp32", "int8")  # quick preset: the defenses on these; bf16 undefended only


def cells(config: pytest.Config) -> list[tuple[str, str, str]]:
    """(attack, dtype, defense) cells: the full product, except that the quick preset (without
    --attack-dtypes or --defenses) runs bf16 without a defense (bf16 is ~6x slower than fp32 on CPU)."""
    opt = config.option
    out = []
    for dtype in opt.esa_attack_dtypes or ATTACK_DTYPES:
        for defense in opt.esa_defenses or DEFENSE_NAMES:
            thin = opt.esa_preset == "quick" and not (opt.esa_attack_dtypes or opt.esa_defenses)
            if thin and defense != "none" and dtype not in QUICK_DEFENDED_DTYPES:
                continue
            out.extend((attack, dtype, defense) for attack in opt.esa_attacks or WEIGHT_ATTACKS)
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "attack_name" in metafunc.fixturenames:
        chosen = cells(metafunc.config)
        metafunc.parametrize(("attack_name", "attack_dtype", "defense_name"), chosen,
                             ids=["-".join(c) for c in chosen])


@pytest.fixture
def attack_recorder(recorder):
    recorder.suite = SUITE  # the file is test_bitflip_attack.py; its records and bounds are "attack"
    return recorder


def _settings(esa) -> dict:
    o = esa.options
    return {
        "budget": o.extra.get("flip_budget") or esa.pick(quick=12, full=64),
        "eval_windows": esa.pick(quick=1, full=None),
        "attack_tokens": esa.pick(quick=128, full=None),
        "trials": o.trials or esa.pick(quick=2, full=10),
        "max_trials": esa.pick(quick=6, full=None),
        "protected": esa.pick(quick=1024, full=4096),
    }


@pytest.fixture
def super_weights(esa, lm, calib_windows):
    """(sites, source) of the session model's super weights, detected once per session before any int8
    swap; source ``magnitude`` where no spike is found (tiny random models)."""
    _, attack_w = _windows(esa, calib_windows, calib_windows)
    return esa.cached((lm.name, "attack-super-weights"),
                      lambda: detect_super_weights(lm.model, attack_w, count=4, max_rounds=3))


@pytest.fixture
def attacked(esa, lm, super_weights, attack_dtype):
    """The model to attack in ``attack_dtype`` (see the module docstring); checked unchanged afterwards."""
    if attack_dtype == "int8":
        targets = attack_targets(lm.model)
        with quantize_int8(lm.model, [t.module for t in targets]):
            yield lm.model
        return
    if lm.dtype == FLOAT_DTYPES[attack_dtype]:
        yield lm.model
        return
    from harness.models import load_model

    key = (lm.name, "attack-model", attack_dtype)
    other = esa.cached(key, lambda: load_model(lm.name, device=esa.options.device, dtype=attack_dtype).model)
    before = fingerprint(other)
    yield other
    leaked = changed(before, fingerprint(other))
    if leaked:
        esa._cache.pop(key, None)
        pytest.fail(f"attack left {len(leaked)} tensor(s) of the {attack_dtype} copy changed: {', '.join(leaked[:5])}",
                    pytrace=False)


def _windows(esa, eval_windows, calib_windows) -> tuple[torch.Tensor, torch.Tensor]:
    s = _settings(esa)
    ev = eval_windows if s["eval_windows"] is None else eval_windows[: s["eval_windows"]]
    at = calib_windows[:1] if s["attack_tokens"] is None else calib_windows[:1, : s["attack_tokens"]]
    return ev, at


@dataclass
class Cell:
    """What every run of one test shares: the model in the cell's dtype, the defense, the windows."""

    esa: Any
    name: str  # model name
    model: torch.nn.Module
    dtype: str
    defense: str
    eval_windows: torch.Tensor
    attack_windows: torch.Tensor
    super_weights: list  # FaultSites

    def make_defense(self):
        if self.defense != "checksum":
            return make_defense(self.defense)
        k = _settings(self.esa)["protected"]
        sites = self.esa.cached((self.name, "attack-protected", self.dtype, k),
                                lambda: sensitive_sites(self.model, attack_targets(self.model), self.attack_windows, k))
        return make_defense("checksum", sites=sites, k=k)

    def run(self, attack_name: str, seed: int | None = None) -> AttackResult:
        """One attack run, cached per session so the random baseline is shared by the cells comparing with it."""
        s = _settings(self.esa)
        options: dict[str, Any] = {}
        if attack_name == "random":
            options.update(generator=torch.Generator().manual_seed(seed), curve=False)
        elif attack_name == "guided":
            options["super_weights"] = self.super_weights
        elif attack_name == "progressive":
            options["max_trials"] = s["max_trials"]
        clean = self.esa.cached((self.name, "attack-clean", self.dtype, tuple(self.eval_windows.shape)),
                                lambda: evaluate(self.model, self.eval_windows).perplexity)
        key = (self.name, "attack-run", attack_name, self.dtype, self.defense, s["budget"], seed)
        return self.esa.cached(key, lambda: run_attack(
            self.model, attack_name, eval_windows=self.eval_windows, attack_windows=self.attack_windows,
            budget=s["budget"], defense=self.make_defense(), clean_perplexity=clean, **options))


def _censored(result: AttackResult) -> float:
    n = result.flips_to_collapse
    return float(result.budget + 1) if n is None else float(n)


def _record(rec, result: AttackResult, seed: int, perturbation: dict) -> None:
    n = result.flips_to_collapse
    details = {k: v for k, v in result.extra.items() if k in DETAILS}
    extra = {"flips": len(result.flips), "forwards": result.forwards, "repaired": result.repaired,
             "censored": n is None, "clean_perplexity": result.curve[0], **details}
    rec.record("flips_to_collapse", math.inf if n is None else n, method=result.method, seed=seed,
               perturbation=perturbation, collapsed=n is not None, extra=extra)
    for flips, ratio in enumerate(result.ratios[1:], 1):
        if math.isnan(ratio):  # not measured (the random baseline measures only what it needs)
            continue
        rec.record("ppl_ratio", ratio, method=result.method, seed=seed, perturbation=perturbation,
                   clean_value=result.curve[0], extra={"flips": flips, "site": result.flips[flips - 1].to_dict()})
    rec.record("seconds", result.seconds, method=result.method, seed=seed, perturbation=perturbation, extra=extra)


def test_attack(esa, lm, attacked, super_weights, eval_windows, calib_windows, attack_recorder, attack_name,
                attack_dtype, defense_name):
    s = _settings(esa)
    sites, source = super_weights
    cell = Cell(esa, lm.name, attacked, attack_dtype, defense_name, *_windows(esa, eval_windows, calib_windows),
                sites)
    perturbation = {"kind": "bitflip_attack", "attack": attack_name, "dtype": attack_dtype,
                    "defense": defense_name, "budget": s["budget"]}
    if attack_name == "guided":
        perturbation["super_weights"] = source
    seeds = [esa.options.seed + i for i in range(s["trials"])]
    censored_as = s["budget"] + 1
    baseline = [cell.run("random", seed) for seed in seeds]
    if attack_name == "random":
        for seed, result in zip(seeds, baseline, strict=True):
            _record(attack_recorder, result, seed, perturbation)
        attack_recorder.claim(f"random_{attack_dtype}_{defense_name}_flips_min", min(map(_censored, baseline)),
                              method="random", perturbation=perturbation,
                              extra={"seeds": seeds, "censored_as": censored_as})
        return
    result = cell.run(attack_name)
    _record(attack_recorder, result, esa.options.seed, perturbation)
    random_median = statistics.median(map(_censored, baseline))
    attack_recorder.record("flips_ratio_to_random", _censored(result) / random_median, method=attack_name,
                           perturbation=perturbation,
                           extra={"random_median": random_median, "seeds": seeds, "censored_as": censored_as})
    # an attack that collapses the model has a _max bound; one a defense stops within the budget a _min
    name = f"{attack_name}_{attack_dtype}_{defense_name}_flips"
    side = "_min" if bound_for(esa.options.bounds_dir, SUITE, lm.name, name + "_min") is not None else "_max"
    attack_recorder.claim(name + side, _censored(result), method=attack_name, perturbation=perturbation,
                          extra={"censored_as": censored_as})
