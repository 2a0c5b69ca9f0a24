"""Cells of the adversarial suite: one input attack on the session's prompts, measured prompt by prompt.

The grid is data: :data:`PRESETS` gives each preset's prompt count, greedy tokens compared and attack sizes
(:class:`Preset`). Prompts (:func:`prompt_pairs`) are the opening words
of the first evaluation documents (``harness.data.generation_prompts``): the first :data:`PROMPT_WORDS`
words are the prompt and the next :data:`TARGET_WORDS` the target continuation whose log-probability
the attack lowers. :meth:`InputAttackCells.measure` attacks every prompt (prompt ``i`` seeded with
``trial_seed(seed, i, stream="adversarial.<attack>")``) and, for a suffix attack, appends as many
uniformly random tokens with the same seed (:func:`~harness.attacks.random_suffix.random_suffix_logprob`:
what mere extra tokens do). Weights are never touched. The measurement carries its records
(:meth:`InputAttackMeasurement.rows`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.attacks.input_attacks import InputAttackResult, run_input_attack
from harness.attacks.random_suffix import random_suffix_logprob
from harness.option_values import pick_preset
from harness.records.row import Row
from harness.stats import trial_seed

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

PROMPT_WORDS, TARGET_WORDS = 10, 6
SUFFIX_ATTACKS = ("gcg", "hotflip")  # token-level suffix searches (the others edit characters)


@dataclass(frozen=True)
class Preset:
    """Sizes of one depth preset (quick fits CI on two CPU cores, full is for GPU runners).

    Attributes:
        prompts: prompts per attack.
        greedy: greedy tokens compared before and after the attack.
        character: character attacks: the best of ``tries`` random prompts with ``edits`` character edits.
        suffix: suffix attacks: a suffix of ``length`` tokens searched for ``steps`` steps of ``batch`` candidates.
        gcg_topk: gcg: candidate tokens per suffix position.
    """

    prompts: int
    greedy: int
    character: dict[str, int]
    suffix: dict[str, int]
    gcg_topk: int

    def options(self, method: str) -> dict[str, int]:
        """The options of input attack ``method`` at this preset."""
        if method not in SUFFIX_ATTACKS:
            return dict(self.character)
        return {**self.suffix, "topk": self.gcg_topk} if method == "gcg" else dict(self.suffix)


PRESETS = {
    "quick": Preset(prompts=3, greedy=6, character={"edits": 2, "tries": 6},
                    suffix={"length": 6, "steps": 4, "batch": 8}, gcg_topk=32),
    "full": Preset(prompts=8, greedy=16, character={"edits": 3, "tries": 32},
                   suffix={"length": 12, "steps": 32, "batch": 64}, gcg_topk=128),
}


def preset_options(method: str, preset: str) -> dict[str, int]:
    """The options of input attack ``method`` at ``preset`` (:meth:`Preset.options`)."""
    return pick_preset(PRESETS, preset).options(method)


def prompt_pairs(corpus: Any, count: int) -> list[tuple[str, str]]:
    """(prompt, target) of the first ``count`` evaluation documents of ``corpus`` with enough prose: the first
    :data:`PROMPT_WORDS` words and the next :data:`TARGET_WORDS` (with a leading space)."""
    from harness.data import generation_prompts

    pairs = []
    for text in generation_prompts(corpus, count, words=PROMPT_WORDS + TARGET_WORDS):
        words = text.split()
        if len(words) == PROMPT_WORDS + TARGET_WORDS:
            pairs.append((" ".join(words[:PROMPT_WORDS]), " " + " ".join(words[PROMPT_WORDS:])))
    return pairs


@dataclass(frozen=True)
class PromptAttack:
    """One prompt attacked.

    Attributes:
        index: the prompt's index.
        seed: its seed.
        result: the attack's measurement.
        control: suffix attacks: (target log-probability, text) with a random suffix of the same length instead.
    """

    index: int
    seed: int
    result: InputAttackResult
    control: tuple[float, str] | None = None

    @property
    def control_delta(self) -> float:
        """The random suffix's target log-probability - the clean one (nats)."""
        return self.control[0] - self.result.clean_logprob

    @property
    def start_logprob(self) -> float:
        """Suffix attacks: the target log-probability with the suffix the search starts from."""
        return self.result.extra["trace"][0]


@dataclass(frozen=True)
class InputAttackMeasurement:
    """Every prompt of one input-attack cell, and the suite's statistics over them."""

    cell: InputAttackCell
    attacks: list[PromptAttack]

    @property
    def perturbation(self) -> dict[str, Any]:
        """The records' perturbation column: the attack and its options."""
        return {"kind": "input_attack", "attack": self.cell.method, "options": self.cell.options}

    def rows(self) -> list[Row]:
        """Per prompt (seed and the attack's texts and log-probabilities in extra): ``target_logprob_delta``
        (against the clean log-probability), ``greedy_changed``, ``greedy_agreement``, ``seconds`` and, for a suffix
        attack, ``random_suffix_logprob_delta`` (the control's text and log-probability in extra)."""
        out, pert = [], self.perturbation
        for a in self.attacks:
            r = a.result
            extra = {"prompt_index": a.index, "prompt": r.prompt, "target": r.target, "adversarial": r.adversarial,
                     "clean_logprob": r.clean_logprob, "attacked_logprob": r.attacked_logprob, "queries": r.queries}
            columns = {"method": self.cell.method, "seed": a.seed}
            out += [Row("target_logprob_delta", r.logprob_delta, pert, extra, r.clean_logprob, columns),
                    Row("greedy_changed", float(r.greedy_changed), pert, extra, columns=columns),
                    Row("greedy_agreement", r.greedy_agreement, pert, extra, columns=columns),
                    Row("seconds", r.seconds, pert, extra, columns=columns)]
            if a.control is not None:
                lp, text = a.control
                out.append(Row("random_suffix_logprob_delta", a.control_delta, pert,
                               {**extra, "adversarial": text, "attacked_logprob": lp}, r.clean_logprob, columns))
        return out

    @property
    def deltas(self) -> list[float]:
        """attacked - clean target log-probability per prompt (nats; negative = damage)."""
        return [a.result.logprob_delta for a in self.attacks]

    @property
    def mean_delta(self) -> float:
        return statistics.mean(self.deltas)

    @property
    def start_logprobs(self) -> list[float]:
        return [a.start_logprob for a in self.attacks]

    @property
    def attacked_logprobs(self) -> list[float]:
        return [a.result.attacked_logprob for a in self.attacks]

    @property
    def search_gains(self) -> list[float]:
        """Suffix attacks, per prompt: how far the search lowered the target below its starting suffix (nats)."""
        return [s - a for s, a in zip(self.start_logprobs, self.attacked_logprobs, strict=True)]

    @property
    def control_deltas(self) -> list[float]:
        return [a.control_delta for a in self.attacks if a.control is not None]


@dataclass(frozen=True)
class InputAttackCell:
    """One input attack with its options.

    Attributes:
        method: a name of ``harness.attacks.INPUT_ATTACKS``.
        options: the attack's options (:func:`preset_options`).
    """

    method: str
    options: dict[str, int]


class InputAttackCells:
    """The input-attack cells of a session's model: the preset's prompts, each attack measured once.

    Args:
        loaded: the session's ``LoadedModel`` (never changed).
        preset: the depth preset (options per attack, greedy tokens compared).
        prompts: (prompt, target) pairs.
        seed: the session's seed.
    """

    def __init__(self, loaded: LoadedModel, preset: Preset, prompts: list[tuple[str, str]], seed: int) -> None:
        self.loaded, self.preset, self.prompts, self.seed = loaded, preset, prompts, seed
        self._done: dict[str, InputAttackMeasurement] = {}

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> InputAttackCells:
        """``loaded``'s cells at the session's preset, on prompts of the session's corpus (kept by the session)."""
        p = esa.preset(PRESETS)
        return esa.cached((loaded.name, "input-attack-cells"), lambda: cls(
            loaded, p, prompt_pairs(esa.corpus(), p.prompts), esa.options.seed))

    def cell(self, method: str) -> InputAttackCell:
        """The cell of ``method`` with the preset's options."""
        return InputAttackCell(method, self.preset.options(method))

    def measure(self, method: str) -> InputAttackMeasurement:
        """Attack every prompt with ``method`` (once), with the random-suffix control of a suffix attack."""
        if method not in self._done:
            self._done[method] = self._run(self.cell(method))
        return self._done[method]

    def _run(self, cell: InputAttackCell) -> InputAttackMeasurement:
        attacks = []
        for i, (prompt, target) in enumerate(self.prompts):
            seed = trial_seed(self.seed, i, stream=f"adversarial.{cell.method}")
            r = run_input_attack(self.loaded, cell.method, prompt, target,
                                 generator=torch.Generator().manual_seed(seed), greedy=self.preset.greedy,
                                 **cell.options)
            control = None
            if cell.method in SUFFIX_ATTACKS:
                control = random_suffix_logprob(self.loaded, prompt, target, cell.options["length"],
                                                torch.Generator().manual_seed(seed))
            attacks.append(PromptAttack(i, seed, r, control))
        return InputAttackMeasurement(cell, attacks)
