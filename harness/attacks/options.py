"""pytest options of the attack and adversarial suites (added to the plugin's "esa" group)."""

from __future__ import annotations

from argparse import ArgumentTypeError
from collections.abc import Callable

WEIGHT_ATTACKS = ("progressive", "guided", "random")
DEFENSE_NAMES = ("none", "checksum", "clamp")
ATTACK_DTYPES = ("fp32", "bf16", "int8")
INPUT_ATTACK_NAMES = ("typo", "homoglyph", "insertion", "gcg", "hotflip")


def _flip_budget(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ArgumentTypeError(f"flip budget must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise ArgumentTypeError(f"flip budget must be an integer >= 1, got {value}")
    return value


def _names(allowed: tuple[str, ...], what: str) -> Callable[[str], tuple[str, ...]]:
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
        bad = [n for n in names if n not in allowed]
        if bad or not names:
            raise ArgumentTypeError(f"unknown {what} {bad[0] if bad else text!r}; "
                                    f"use a comma list of {', '.join(allowed)}")
        return names

    return parse


def add_options(group) -> None:
    group.addoption("--flip-budget", dest="esa_flip_budget", type=_flip_budget, default=None,
                    help="most bit flips per weight-attack run (default: the preset's, quick 12, full 64)")
    group.addoption("--attacks", dest="esa_attacks", type=_names(WEIGHT_ATTACKS, "weight attack"), default=None,
                    help=f"weight attacks of -k attack, comma list (default: {','.join(WEIGHT_ATTACKS)})")
    group.addoption("--defenses", dest="esa_defenses", type=_names(DEFENSE_NAMES, "defense"), default=None,
                    help=f"defenses of -k attack, comma list (default: {','.join(DEFENSE_NAMES)})")
    group.addoption("--attack-dtypes", dest="esa_attack_dtypes", type=_names(ATTACK_DTYPES, "attack dtype"),
                    default=None, help=f"weight dtypes of -k attack (default: {','.join(ATTACK_DTYPES)})")
    group.addoption("--input-attacks", dest="esa_input_attacks", type=_names(INPUT_ATTACK_NAMES, "input attack"),
                    default=None,
                    help=f"input attacks of -k adversarial, comma list (default: {','.join(INPUT_ATTACK_NAMES)})")
