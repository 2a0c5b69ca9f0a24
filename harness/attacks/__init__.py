"""Bit-flip attacks on the weights, input attacks on the prompt, and defenses, all measured.

    from harness.attacks import run_attack, make_defense
    result = run_attack(loaded, "progressive", eval_windows=w, attack_windows=a, budget=16,
                        defense=make_defense("clamp"))
    result.flips_to_collapse, result.curve
    with result.replay(loaded.model): ...

Weight attacks (``ATTACKS``): ``progressive`` (progressive bit search), ``guided`` (super-weight
exponent flips), ``random`` (seeded baseline). Defenses (``DEFENSES``): ``none``, ``checksum``,
``clamp``. Input attacks (``INPUT_ATTACKS``): ``typo``, ``homoglyph``, ``insertion`` (character
level) and ``gcg``, ``hotflip`` (token-level suffix search).
"""

from __future__ import annotations

# importing the package registers every attack: gcg and hotflip live in suffix_search, which builds on
# input_attacks (the registry of input attacks), so input_attacks never imports it back
from harness.attacks import guided, progressive, random_flips, suffix_search  # noqa: F401 - register
from harness.attacks.base import (
    ATTACKS,
    COLLAPSE_RATIO,
    SUPPORTED_DTYPES,
    AttackSession,
    Target,
    attack,
    attack_options,
    attack_targets,
    run_attack,
)
from harness.attacks.defenses import DEFENSES, ChecksumDefense, ClampDefense, Defense, make_defense
from harness.attacks.guided import detect_super_weights
from harness.attacks.input_attacks import INPUT_ATTACKS, InputAttackResult, run_input_attack
from harness.attacks.result import AttackResult

__all__ = [
    "ATTACKS", "COLLAPSE_RATIO", "DEFENSES", "INPUT_ATTACKS", "SUPPORTED_DTYPES", "AttackResult", "AttackSession",
    "ChecksumDefense", "ClampDefense", "Defense", "InputAttackResult", "Target", "attack", "attack_options",
    "attack_targets", "detect_super_weights", "make_defense", "run_attack", "run_input_attack",
]
