"""pytest options of the attack and adversarial suites (added to the plugin's "esa" group).

The choices are the registries' names, read when the option is parsed: ``ATTACKS`` (weight attacks),
``DEFENSES`` and ``INPUT_ATTACKS`` (:mod:`harness.attacks`). A new attack registered with its
decorator is a valid choice and part of the default grid with no change here. The functions
:func:`weight_attacks`, :func:`defense_names` and :func:`input_attack_names` give the defaults; the
old constant names (``WEIGHT_ATTACKS``, ...) still resolve, to the same registry names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from harness.option_values import as_option_type, choices, positive_int

ATTACK_DTYPES = ("fp32", "bf16", "int8")  # the weight representations the attack suite attacks


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


_DEFAULTS: dict[str, Callable[[], tuple[str, ...]]] = {
    "WEIGHT_ATTACKS": weight_attacks, "DEFENSE_NAMES": defense_names, "INPUT_ATTACK_NAMES": input_attack_names,
}


def __getattr__(name: str) -> Any:  # the constants suites imported before the lists came from the registries
    if name in _DEFAULTS:
        return _DEFAULTS[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_options(group) -> None:
    """Add the attack options to the plugin's option group (choices read from the registries when parsed)."""
    attacks, defenses, inputs = weight_attacks(), defense_names(), input_attack_names()
    group.addoption("--flip-budget", dest="esa_flip_budget", type=as_option_type(positive_int, "flip budget"),
                    default=None,
                    help="most bit flips per weight-attack run (default: the preset's, quick 12, full 64)")
    group.addoption("--attacks", dest="esa_attacks", type=as_option_type(choices, weight_attacks, "weight attack"),
                    default=None,
                    help=f"weight attacks of -k attack, comma list (default: all registered: {','.join(attacks)})")
    group.addoption("--defenses", dest="esa_defenses", type=as_option_type(choices, defense_names, "defense"),
                    default=None,
                    help=f"defenses of -k attack, comma list (default: all registered: {','.join(defenses)})")
    group.addoption("--attack-dtypes", dest="esa_attack_dtypes",
                    type=as_option_type(choices, ATTACK_DTYPES, "attack dtype"), default=None,
                    help=f"weight dtypes of -k attack (default: {','.join(ATTACK_DTYPES)})")
    group.addoption("--input-attacks", dest="esa_input_attacks",
                    type=as_option_type(choices, input_attack_names, "input attack"), default=None,
                    help=f"input attacks of -k adversarial, comma list (default: all registered: {','.join(inputs)})")
