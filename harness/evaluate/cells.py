"""Cells of the evaluate suite: each lm-eval task of ``--tasks`` evaluated clean and under the ``--perturb``
perturbation, in place on the session model (no reload, no copy).

Grid: :func:`grid` expands ``--tasks`` (aliases such as ``offline``) into task names, in order, duplicates dropped
(unchecked there: checking a hub name builds lm-eval's index, ~10 s; a hub task skips without the hub,
:func:`unavailable`). A task is evaluated whole at every depth preset, so the grid has no preset.

The perturbation is a recipe of :mod:`harness.recipes` (:data:`RECIPE_OF`): ``super_weight_zero`` zeroes the
strongest super weight of the session's one detection (``zero_top_super_weight``; where none is detected, its
strongest candidate, and :attr:`Perturbed.raise_not_claimed` says why the raise is not claimed); ``noise:STD`` adds
Gaussian noise of STD x each matrix's own standard deviation to every linear weight of every block
(``std_noise_linear``), seeded by ``--seed``.

:class:`EvalCells` (one per model, :meth:`EvalCells.of`) holds the evaluator and each task's clean evaluation.
The clean evaluation keeps, for each of its forward passes, the input of the first block the perturbation touches,
and the perturbed evaluation starts there (``harness.campaign.prefix.CallPrefix``; bit-identical to a full
recompute: smollm2-135m's super weight is in block 11 of 30, so its perturbed forwards skip 11 blocks).

Statistics: :meth:`Evaluation.above_chance` (Wilson 95% lower limit of acc above the chance level),
:meth:`Perturbed.acc_drop`, :meth:`Perturbed.word_ppl_ratio` and :meth:`Perturbed.raises_word_ppl`. Records:
:meth:`Evaluation.rows` (clean) and :meth:`Perturbed.rows`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.claims import Comparison, greater
from harness.errors import HarnessError, OfflineError
from harness.metrics import lmeval
from harness.metrics.chance import chance_accuracy
from harness.metrics.lmeval_options import PerturbSpec
from harness.recipes import RECIPES, Prepared, Subject, prepare
from harness.records.row import Row
from harness.stats import wilson

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

RECIPE_OF = {"super_weight_zero": "zero_top_super_weight", "noise": "std_noise_linear"}  # --perturb kind -> recipe
SUPER_WEIGHT_ZERO = "super_weight_zero"  # the --perturb kind the super-weight claims are about


def grid(names: Iterable[str]) -> list[str]:
    """The tasks of ``--tasks``: aliases expanded (``offline`` -> both offline tasks), order kept, duplicates
    dropped."""
    return list(dict.fromkeys(t for n in names for t in lmeval.ALIASES.get(n, (n,))))


def unavailable(task: str) -> str | None:
    """Why ``task`` cannot be loaded here (a hub task without the hub), as a skip reason; None when it loads."""
    try:
        lmeval.load_task(task)
    except OfflineError as err:
        return str(err)
    return None


def above_chance(acc: float, items: int, chance: float) -> Comparison:
    """Wilson 95% lower limit of ``acc`` over ``items`` above ``chance``."""
    low, high = wilson(round(acc * items), items)
    return Comparison(low > chance, acc, chance, {"test": "wilson_vs_chance", "ci": [low, high], "items": items})


@dataclass(frozen=True)
class Evaluation:
    """One lm-eval evaluation of one task.

    Attributes:
        task: the task evaluated.
        metrics: every task metric (a group task's subtasks included).
        seconds: of the evaluation.
    """

    task: str
    metrics: tuple[lmeval.TaskMetric, ...]
    seconds: float

    def value(self, metric: str) -> float:
        """The task's own ``metric``."""
        return next(m.value for m in self.metrics if m.task == self.task and m.metric == metric)

    def values(self) -> dict[tuple[str, str], float]:
        """Every metric's value by (task, metric)."""
        return {(m.task, m.metric): m.value for m in self.metrics}

    def finite(self) -> bool:
        """Whether the evaluation gave metrics and every one is finite."""
        return bool(self.metrics) and all(math.isfinite(m.value) for m in self.metrics)

    def above_chance(self) -> Comparison:
        """:func:`above_chance` of the task's ``acc`` over its documents, against the chance level of a
        multiple-choice task (:func:`harness.metrics.chance.chance_accuracy`)."""
        acc = next(m for m in self.metrics if m.task == self.task and m.metric == "acc")
        return above_chance(acc.value, int(acc.extra["n_docs"]), chance_accuracy(self.task))

    def rows(self) -> list[Row]:
        """The clean evaluation's records: every metric's (:meth:`harness.metrics.lmeval.TaskMetric.row`), then the
        ``seconds`` of the evaluation (method: the task)."""
        return self.evaluated_rows(None, None)

    def evaluated_rows(self, perturbation: dict[str, Any] | None, clean: Evaluation | None) -> list[Row]:
        """Every metric's record under ``perturbation`` (None: clean), each against ``clean``'s value of the same
        (task, metric) where it has one, then the ``seconds`` of the evaluation."""
        before = {} if clean is None else clean.values()
        return [*(m.row(perturbation, before.get((m.task, m.metric))) for m in self.metrics),
                Row("seconds", self.seconds, perturbation, columns={"method": self.task})]


@dataclass(frozen=True)
class Perturbed:
    """One task evaluated under the perturbation, beside its clean evaluation.

    Attributes:
        evaluation: the perturbed evaluation.
        clean: the clean evaluation of the same task.
        description: the perturbation's JSON description (the records' ``perturbation``).
        off_target: why the super-weight claims do not apply (``--perturb`` is not ``super_weight_zero``); None
            when they do.
        raise_not_claimed: why the raise is not claimed (no super weight detected: the candidate was zeroed); None
            when a detected super weight was zeroed.
    """

    evaluation: Evaluation
    clean: Evaluation
    description: dict[str, Any]
    off_target: str | None = None
    raise_not_claimed: str | None = None

    def rows(self) -> list[Row]:
        """The perturbed evaluation's records: every metric's, against the clean value of the same (task, metric)
        where the clean evaluation has one, then the ``seconds`` of the evaluation; perturbation: the
        :attr:`description`."""
        return self.evaluation.evaluated_rows(self.description, self.clean)

    def acc_drop(self) -> float:
        """Clean acc minus perturbed acc."""
        return self.clean.value("acc") - self.evaluation.value("acc")

    def word_ppl_ratio(self) -> float:
        """Perturbed word perplexity over clean."""
        return self.evaluation.value("word_perplexity") / self.clean.value("word_perplexity")

    def raises_word_ppl(self, factor: float) -> Comparison:
        """Perturbed word perplexity at least ``factor`` x clean."""
        return greater(self.evaluation.value("word_perplexity"), self.clean.value("word_perplexity"), factor=factor)


def first_block(model: torch.nn.Module, perturbation: Any) -> int:
    """The first decoder block ``perturbation`` touches (0 where it touches a parameter outside the blocks, or
    where what it touches is not known): the campaign engine's rule, :func:`harness.campaign.prefix.fault_blocks`."""
    from harness.campaign import touched_params
    from harness.campaign.prefix import fault_blocks
    from harness.models.archmap import arch_map

    return fault_blocks(arch_map(model).blocks, touched_params(perturbation))[0]


def replayable(prefix: Any, perturbation: Any) -> bool:
    """Whether ``perturbation`` leaves blocks ``0..prefix.start-1`` of ``prefix`` (a ``CallPrefix``) untouched, so
    the kept prefix holds (every parameter it touches is known and in a block from ``prefix.start`` on)."""
    from harness.campaign import touched_params
    from harness.campaign.prefix import fault_blocks
    from harness.models.archmap import arch_map

    start, last = fault_blocks(arch_map(prefix.model).blocks, touched_params(perturbation))
    return last is not None and start >= prefix.start


@dataclass
class EvalCells:
    """One model's evaluations (memoized per task).

    Attributes:
        loaded: the ``LoadedModel`` evaluated (perturbed in place and restored after each perturbed evaluation).
        evaluator: its lm-eval evaluator, built on the clean model.
        spec: the ``--perturb`` spec.
        seed: ``--seed``; each perturbed evaluation draws from a fresh generator seeded with it.
        detection: called on first need: the session's super-weight detection of the model.
    """

    loaded: LoadedModel
    evaluator: lmeval.LMEvaluator
    spec: PerturbSpec
    seed: int
    detection: Callable[[], Any]
    _clean: dict[str, tuple[Evaluation, Any]] = field(default_factory=dict)

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> EvalCells:
        """``loaded``'s cells in the pytest session ``esa`` (made once per model; the evaluator is the session's,
        shared with the lm-eval benchmark; the detection is the session's, asked for on first need)."""
        o = esa.options
        spec = o.lmeval.perturb
        evaluator = esa.cached((loaded.name, "lmeval-evaluator"),
                               lambda: lmeval.LMEvaluator(loaded.model, loaded.tokenizer))
        return esa.cached((loaded.name, "lmeval-cells", str(spec), o.seed),
                          lambda: cls(loaded, evaluator, spec, o.seed, lambda: esa.detection(loaded)))

    @property
    def recipe(self) -> str:
        return RECIPE_OF[self.spec.kind]

    def _prepare(self) -> Prepared:
        """The ``--perturb`` recipe on the model, with a fresh generator seeded with ``--seed``."""
        params = {} if self.spec.level is None else {"level": self.spec.level}
        detection = self.detection() if "super_weights" in RECIPES.tags(self.recipe) else None
        subject = Subject(self.loaded.model, detection=detection, generator=torch.Generator().manual_seed(self.seed))
        return prepare(self.recipe, subject, **params)

    def unperturbable(self) -> str | None:
        """Why the perturbation cannot be built on this model (the detector scanned no block), as a skip reason;
        None when it can."""
        try:
            self._prepare()
        except HarnessError as err:
            return str(err)
        return None

    def _first_block(self) -> int:
        try:
            return first_block(self.loaded.model, self._prepare().perturbation)
        except HarnessError:
            return 0

    def clean(self, task: str) -> Evaluation:
        """The clean evaluation of ``task`` (once; it keeps the prefix the perturbed evaluation starts from)."""
        return self._clean_run(task)[0]

    def _clean_run(self, task: str) -> tuple[Evaluation, Any]:
        if task not in self._clean:
            from harness.campaign.prefix import CallPrefix

            prefix = CallPrefix(self.loaded.model, self._first_block())
            start = time.perf_counter()
            with prefix.record():
                rows = self.evaluator.run([task])
            self._clean[task] = Evaluation(task, tuple(rows), time.perf_counter() - start), prefix
        return self._clean[task]

    def perturbed(self, task: str) -> Perturbed:
        """``task`` evaluated under the perturbation (restored bit-exactly after), from the kept clean prefix
        where the perturbation leaves the blocks before it untouched.

        Raises:
            HarnessError: the perturbation cannot be built (see :meth:`unperturbable`).
        """
        clean, prefix = self._clean_run(task)
        prepared = self._prepare()
        description, raise_not_claimed = self._describe(prepared)
        start = time.perf_counter()
        replay = prefix.replay() if replayable(prefix, prepared.perturbation) else contextlib.nullcontext()
        with prepared.perturbation, replay:
            rows = self.evaluator.run([task])
        seconds = time.perf_counter() - start
        prefix.calls.clear()  # the kept outputs served their one perturbed evaluation
        off_target = (None if self.spec.kind == SUPER_WEIGHT_ZERO
                      else f"--perturb is {self.spec}, the claim is about {SUPER_WEIGHT_ZERO}")
        return Perturbed(Evaluation(task, tuple(rows), seconds), clean, description, off_target, raise_not_claimed)

    def _describe(self, prepared: Prepared) -> tuple[dict[str, Any], str | None]:
        """(the records' description of ``prepared``, why the raise is not claimed or None)."""
        described = {**prepared.perturbation.describe(), "name": str(self.spec)}
        if "super_weights" not in RECIPES.tags(self.recipe):
            return {**described, "components": prepared.description["components"]}, None
        detection = self.detection()
        site = {"site": prepared.sites[0].to_dict(), **detection.describe()}
        if prepared.description["target"] != "candidate":
            return {**described, **site, "source": "detected"}, None
        why = (f"{detection.none_reason()}: the candidate was zeroed (its ratio is recorded, the raise is not "
               "claimed)")
        return {**described, **site, "source": "candidate below the detector's factor",
                "strength": detection.candidate.strength}, why

