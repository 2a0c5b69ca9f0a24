"""Sabotages for the claim-power tests (``tests/test_claim_power.py``): a pytest plugin that breaks one
thing in the harness or the model before the suites run, chosen by ``ESA_SABOTAGE`` (a comma list breaks each).

Load it with ``-p tests.sabotage``. Each sabotage is a small patch of the one place that does the work
(the bit flip, the noise draw, the pruning mask, the defense's repair, the learning rate, the input
attack, the model's super weight, the detectors' check), so that everything around it runs as usual and
only the claims can notice.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

SABOTAGES: dict[str, Callable[[pytest.MonkeyPatch], None]] = {}


def sabotage(name: str):
    def register(fn: Callable[[pytest.MonkeyPatch], None]):
        SABOTAGES[name] = fn
        return fn
    return register


@sabotage("flips_do_nothing")
def _flips(mp: pytest.MonkeyPatch) -> None:
    from harness.faults.injector import BitFlip

    mp.setattr(BitFlip, "_apply", lambda self: None)


@sabotage("noise_1000x_weaker")
def _noise(mp: pytest.MonkeyPatch) -> None:
    from harness.faults.noise import Noise

    draw = Noise._draw
    mp.setattr(Noise, "_draw", lambda self, shape: draw(self, shape) * 1e-3)


@sabotage("pruning_removes_nothing")
def _pruning(mp: pytest.MonkeyPatch) -> None:
    import importlib

    prune = importlib.import_module("harness.pruning.prune")  # the module, not the function it exports
    unpack = prune._unpack
    mp.setattr(prune, "_unpack", lambda packed, device: torch.zeros_like(unpack(packed, device)))


@sabotage("defenses_repair_nothing")
def _defenses(mp: pytest.MonkeyPatch) -> None:
    from harness.attacks import defenses

    mp.setattr(defenses.Repair, "_apply", lambda self: None)


@sabotage("finetune_lr_0")
def _finetune(mp: pytest.MonkeyPatch) -> None:
    from harness.finetune.config import FinetuneConfig

    mp.setattr(FinetuneConfig, "learning_rate", property(lambda self: 0.0))


@sabotage("attack_gives_up")
def _attack(mp: pytest.MonkeyPatch) -> None:
    from harness.attacks import input_attacks

    def give_up(model, tokenizer, prompt, target_ids, *, generator, edits: int = 2, tries: int = 8):
        return prompt, input_attacks.encode(tokenizer, prompt, "prompt"), 0, {"edits": 0, "tries": 0}

    get = input_attacks.INPUT_ATTACKS.get
    mp.setattr(input_attacks.INPUT_ATTACKS, "get", lambda name: give_up if name in ("typo", "homoglyph") else get(name))


@sabotage("super_weight_scaled_down")
def _super_weight(mp: pytest.MonkeyPatch) -> None:
    """The loaded model's super weights on record, each set to the median |w| of its row (a typical weight)."""
    import harness.models
    from harness.scoring.known import known_super_weights

    load = harness.models.load_model

    def scaled(name, *args, **kwargs):
        loaded = load(name, *args, **kwargs)
        for k in known_super_weights(loaded):
            from harness.models.archmap import select

            ref = select(loaded.model, components="mlp_down", layers=[k.layer])[0]
            w = loaded.model.get_parameter(ref.param).detach()
            w[k.row, k.col] = w[k.row].abs().median() * torch.sign(w[k.row, k.col])
        return loaded

    mp.setattr(harness.models, "load_model", scaled)


def _wrong_model(mp: pytest.MonkeyPatch, wrong: Callable[[torch.nn.Module], None]) -> None:
    """Every loaded model made wrong by ``wrong(model)`` after loading: it loads without an error (the kind of
    model a faulty conversion or a misread configuration gives), and only its own clean output can tell."""
    import harness.models

    load = harness.models.load_model

    def broken(name, *args, **kwargs):
        loaded = load(name, *args, **kwargs)
        with torch.no_grad():
            wrong(loaded.model)
        return loaded

    mp.setattr(harness.models, "load_model", broken)


@sabotage("model_layout_scrambled")
def _layout(mp: pytest.MonkeyPatch) -> None:
    """Gross: every MLP down-projection's rows in reverse order (a wrong tensor layout in a conversion)."""
    from harness.models.archmap import select

    def scramble(model):
        for ref in select(model, components="mlp_down"):
            w = model.get_parameter(ref.param)
            w.copy_(w.flip(0))

    _wrong_model(mp, scramble)


@sabotage("model_rope_base_misread")
def _rope(mp: pytest.MonkeyPatch) -> None:
    """A misread configuration value: the rotary base read as 10,000 instead of the model's own (smollm2-135m:
    100,000; clean perplexity +9%)."""

    def misread(model):
        rotary = model.model.rotary_emb
        dim = rotary.inv_freq.numel() * 2
        rotary.inv_freq.copy_(1.0 / 10_000.0 ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))

    _wrong_model(mp, misread)


@sabotage("model_final_norm_scaled")
def _norm(mp: pytest.MonkeyPatch) -> None:
    """A few percent: the final norm's weight scaled by 0.8 (the logits' temperature off by a quarter)."""
    _wrong_model(mp, lambda model: model.model.norm.weight.mul_(0.8))


@sabotage("protection_keeps_nothing")
def _protection(mp: pytest.MonkeyPatch) -> None:
    """Pruning's ``protect=`` keeps nothing: the protected sites are forgotten before the masks are made."""
    import importlib

    module = importlib.import_module("harness.pruning.prune")  # the package exports a function of that name
    mp.setattr(module, "protect_map", lambda protect: {})


def _detectors_fire(mp: pytest.MonkeyPatch, fires: bool) -> None:
    """Every registered detector's check answers ``fires`` whatever the model holds."""
    from harness.detection import DETECTORS

    for _, factory in DETECTORS.items():
        mp.setattr(factory, "fired", lambda self, model, *, batch=1: fires)


@sabotage("detector_never_fires")
def _never_fires(mp: pytest.MonkeyPatch) -> None:
    """A detector that is blind: every check says the model is clean."""
    _detectors_fire(mp, False)


@sabotage("detector_always_fires")
def _always_fires(mp: pytest.MonkeyPatch) -> None:
    """A detector that cries wolf: every check says the model was changed."""
    _detectors_fire(mp, True)


def pytest_configure(config: pytest.Config) -> None:
    names = os.environ.get("ESA_SABOTAGE", "").split(",")
    unknown = [n for n in names if n not in SABOTAGES]
    if unknown:
        raise pytest.UsageError(f"ESA_SABOTAGE={','.join(names)!r}: {', '.join(map(repr, unknown))} unknown; choose "
                                f"from {', '.join(SABOTAGES)} (a comma list applies each)")
    mp = pytest.MonkeyPatch()
    for name in names:
        SABOTAGES[name](mp)
    config.add_cleanup(mp.undo)
