"""pytest options of the attack and adversarial suites (added to the plugin's "esa" group).

The choices are the registries' names, read when the option is parsed: ``ATTACKS`` (weight attacks),
``DEFENSES`` and ``INPUT_ATTACKS`` (:mod:`harness.attacks`). A new attack registered with its
decorator is a valid choice and part of the default grid with no change here. The functions
:func:`weight_attacks`, :func:`defense_names` and :func:`input_attack_names` give the defaults.
:data:`ATTACK_DTYPES` are the weight representations attacked, :func:`floating_point` says which are floating point.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.option_values import choices, option, positive_int

FLOAT_DTYPES = ("fp32", "bf16")  # attacked as floating-point weights
ATTACK_DTYPES = (*FLOAT_DTYPES, "int8")  # the weight representations the attack suite attacks (int8: integer codes)


def floating_point(dtype: str) -> bool:
    """Whether weights attacked in ``dtype`` (one of :data:`ATTACK_DTYPES`) are floating point (``fp32``, ``bf16``),
    not integer codes (``int8``: a flip moves a weight by at most 255 steps of its channel's scale)."""
    return dtype in FLOAT_DTYPES


@dataclass(frozen=True)
class AttackSizes:
    """How much one weight-attack cell measures.

    Attributes:
        budget: most flips per run (``--flip-budget``).
        eval_windows: evaluation windows the damage curve is measured on (None: all).
        attack_tokens: tokens of the first calibration window for gradients and trial losses (None: all).
        trials: seeds of the random baseline (``--trials``).
        max_trials: progressive attack: most trials per flip (None: its default).
        protected: checksum defense: how many sensitive weights it protects.
    """

    budget: int
    eval_windows: int | None
    attack_tokens: int | None
    trials: int
    max_trials: int | None
    protected: int


# quick fits CI on two CPU cores, full is for GPU runners
SIZES = {"quick": AttackSizes(budget=12, eval_windows=1, attack_tokens=128, trials=2, max_trials=6, protected=1024),
         "full": AttackSizes(budget=64, eval_windows=None, attack_tokens=None, trials=10, max_trials=None,
                             protected=4096)}


def weight_attacks() -> tuple[str, ...]:
    """Every registered weight attack of the default grid (``harness.attacks.ATTACKS``, tag ``grid``), in
    registration order."""
    from harness.attacks import ATTACKS

    return tuple(ATTACKS.names(tag="grid"))


def defense_names() -> tuple[str, ...]:
    """Every registered defense (``harness.attacks.DEFENSES``), ``none`` first."""
    from harness.attacks import DEFENSES

    return tuple(DEFENSES.names())


def input_attack_names() -> tuple[str, ...]:
    """Every registered input attack (``harness.attacks.INPUT_ATTACKS``), in registration order."""
    from harness.attacks import INPUT_ATTACKS

    return tuple(INPUT_ATTACKS.names())


@dataclass(frozen=True)
class AttackOptions:
    """Options of the attack and adversarial suites (``esa.options.attack``); None: the preset's, or every
    registered name."""

    flip_budget: int | None = option(
        "--flip-budget", lambda: "most bit flips per weight-attack run (default: the preset's, "
                                 f"{', '.join(f'{p} {s.budget}' for p, s in SIZES.items())})",
        parse=positive_int, args=("flip budget",))
    attacks: tuple[str, ...] | None = option(
        "--attacks", lambda: "weight attacks of -k attack, comma list (default: all registered: "
                             f"{','.join(weight_attacks())})",
        parse=choices, args=(weight_attacks, "weight attack"))
    defenses: tuple[str, ...] | None = option(
        "--defenses", lambda: f"defenses of -k attack, comma list (default: all registered: "
                              f"{','.join(defense_names())})",
        parse=choices, args=(defense_names, "defense"))
    dtypes: tuple[str, ...] | None = option(
        "--attack-dtypes", f"weight dtypes of -k attack (default: {','.join(ATTACK_DTYPES)})",
        parse=choices, args=(ATTACK_DTYPES, "attack dtype"))
    input_attacks: tuple[str, ...] | None = option(
        "--input-attacks", lambda: "input attacks of -k adversarial, comma list (default: all registered: "
                                   f"{','.join(input_attack_names())})",
        parse=choices, args=(input_attack_names, "input attack"))
