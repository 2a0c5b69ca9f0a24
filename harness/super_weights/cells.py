"""Cells of the super-weights suite: each named ablation of the model's super weights, measured on the evaluation
windows against the clean model and restored bit-exactly.

An ablation is a recipe of :mod:`harness.recipes` (``zero_super_weights``, ``zero_top_super_weight``, the random
control ``zero_random``, ``zero_largest_others``, ``row_mean_super_weights``); :class:`SuperWeightCells` measures
one and returns an :class:`Ablated` whose ``method`` is the recipe's target (``super_weights``, ``candidate`` where
nothing is detected, ``top_super_weight``, ``random``, ``largest_others``). The per-preset sizes are
:data:`PRESETS`; :func:`top_scores` and :func:`known_check` are the scorer and known-coordinates checks. Every
result carries its records as :class:`~harness.records.row.Row` (``rows()``; :func:`detection_rows` for the
detection itself), which the suite commits with ``recorder.rows``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from harness.claims import Comparison
from harness.option_values import pick_preset
from harness.recipes import Subject, prepare, super_weight_sites
from harness.records.row import Row
from harness.stats import trial_seed

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel
    from harness.session import Session

TOP_K = 16  # weights per scorer recorded by the scorer check
MIN_EFFECT = 2.0  # zeroing the super weights raises perplexity >= 2x as much as the random control
DETECTOR = "activation"  # the scorer whose method the detection's records carry


@dataclass(frozen=True)
class Preset:
    """Sizes of one depth preset.

    Attributes:
        random_draws: seeded draws of the random control.
        calib_windows: calibration windows of the calibrated scorers (None: all).
    """

    random_draws: int
    calib_windows: int | None


PRESETS = {"quick": Preset(random_draws=3, calib_windows=2), "full": Preset(random_draws=10, calib_windows=None)}


@dataclass(frozen=True)
class Ablated:
    """One measured ablation.

    Attributes:
        method: the record's method, the recipe's target (``super_weights``, ``candidate``, ``random``, ...).
        perturbation: the recipe's description.
        result: the evaluation under the ablation (``harness.metrics.EvalResult``).
        ratio: its perplexity over the clean model's.
        clean_perplexity: the clean model's perplexity (the ratio's ``clean_value``).
        extra: the record's extra (the candidate's site; the random control's draw and seed).
    """

    method: str
    perturbation: dict[str, Any]
    result: Any
    ratio: float
    clean_perplexity: float
    extra: dict[str, Any] = field(default_factory=dict)

    def claim_columns(self) -> dict[str, Any]:
        """The ``method`` and ``perturbation`` columns of a claim judged on this ablation."""
        return {"method": self.method, "perturbation": self.perturbation}

    def rows(self) -> list[Row]:
        """The ablation's records: ``ppl_ratio`` (against the clean perplexity) and ``kl``."""
        columns = {"method": self.method}
        return [Row("ppl_ratio", self.ratio, self.perturbation, self.extra, self.clean_perplexity, columns),
                Row("kl", self.result.kl, self.perturbation, self.extra, columns=columns)]


@dataclass(frozen=True)
class RestoreCheck:
    """Zeroing then row-mean ablating the super weights (nested), and what was left after."""

    sites: int
    changed: bool  # the model differed inside
    restored: bool  # the fingerprint after equals the one before
    perplexity: float  # after restore
    clean_perplexity: float
    detection: str  # the detection's id

    def rows(self) -> list[Row]:
        """The perplexity after restore, against the clean model's."""
        return [Row("perplexity", self.perplexity, {"kind": "restored", "target": "super_weights", "count": self.sites,
                                                    "detection": self.detection},
                    clean_value=self.clean_perplexity, columns={"method": "super_weights"})]


@dataclass
class SuperWeightCells:
    """The super-weight ablations of one model.

    Attributes:
        model: the model, ablated in place and restored after each cell.
        eval_windows: evaluation windows (count, length).
        clean: the clean baseline (``result``: its EvalResult, ``reference``: the KL reference).
        detection: the session's super-weight detection.
        seed: ``--seed`` (the random control's draws are ``trial_seed(seed, draw)``).
        preset: the depth preset's name (``PRESETS``).
    """

    model: torch.nn.Module
    eval_windows: torch.Tensor
    clean: Any
    detection: Any
    seed: int
    preset: str = "quick"

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> SuperWeightCells:
        """``loaded``'s ablations in the session ``esa``: on its evaluation windows, against its clean baseline, with
        the session's one detection."""
        windows = esa.windows(loaded, "eval")
        return cls(loaded.model, windows, esa.clean(loaded.name, loaded.model, windows), esa.detection(loaded),
                   esa.options.seed, esa.options.preset)

    def measure(self, recipe: str, *, generator: torch.Generator | None = None, extra: dict[str, Any] | None = None,
                **params: Any) -> Ablated:
        """Apply recipe ``recipe`` to the super weights, evaluate, restore."""
        from harness.metrics import evaluate

        prepared = prepare(recipe, Subject(self.model, self.detection, generator=generator), **params)
        with prepared.perturbation:
            result = evaluate(self.model, self.eval_windows, self.clean.reference)
        method = prepared.description["target"]
        if method == "candidate":  # the negative control: which weight stood in
            extra = {"site": self.detection.candidate.to_dict(), **(extra or {})}
        return Ablated(method, prepared.description, result, result.ratio_to(self.clean.result),
                       self.clean.result.perplexity, extra or {})

    def random_control(self) -> list[Ablated]:
        """The random control, one seeded draw after another (``extra``: ``draw``, ``draw_seed``)."""
        out = []
        for draw in range(pick_preset(PRESETS, self.preset).random_draws):
            seed = trial_seed(self.seed, draw)
            out.append(self.measure("zero_random", generator=torch.Generator().manual_seed(seed),
                                    extra={"draw": draw, "draw_seed": seed}))
        return out

    def restore_check(self) -> RestoreCheck:
        """Zero the super weights (the candidate where none is detected) and, inside, set them to their row means;
        fingerprint inside and after, evaluate after."""
        from harness.fingerprint import changed, fingerprint
        from harness.metrics import evaluate

        sites, _ = super_weight_sites(self.detection)
        subject = Subject(self.model, self.detection)
        before = fingerprint(self.model)
        zero, row_mean = (prepare(r, subject).perturbation for r in ("zero_super_weights", "row_mean_super_weights"))
        with zero, row_mean:
            inside = changed(before, fingerprint(self.model))
        restored = not changed(before, fingerprint(self.model))
        after = evaluate(self.model, self.eval_windows, self.clean.reference)
        return RestoreCheck(len(sites), bool(inside), restored, after.perplexity, self.clean.result.perplexity,
                            self.detection.id)


def detection_rows(detection: Any) -> list[Row]:
    """``super_weight_score`` (|output spike|) of each detected super weight, strongest first (method: the
    caller's, the detector)."""
    perturbation = {"kind": "score", **detection.describe()}
    return [Row("super_weight_score", abs(s.output_spike), perturbation,
                {"module": s.param, "layer": s.layer, "component": "mlp_down", "row": s.row, "col": s.col,
                 "weight_value": s.value, "rank": rank, "round": s.round, "strength": s.strength,
                 "input_spike": s.input_spike})
            for rank, s in enumerate(detection.sites)]


@dataclass(frozen=True)
class ScoredTop:
    """A scorer's top ``k`` weights, best first, and what scoring cost."""

    k: int
    top: list[Any]  # harness.scoring ScoredSite
    seconds: float  # scoring plus the top-k pass
    forward: int
    backward: int
    signed: bool  # ranked by |score|

    def best_first(self) -> bool:
        key = [abs(s.score) if self.signed else s.score for s in self.top]
        return key == sorted(key, reverse=True)

    def rows(self) -> list[Row]:
        """``super_weight_score`` of each top weight, best first, then the scoring's ``seconds`` (method: the
        caller's, the scorer)."""
        out = []
        for rank, s in enumerate(self.top):
            row, col = s.site.index[0], s.site.index[1] if len(s.site.index) > 1 else None
            out.append(Row("super_weight_score", s.score, {"kind": "score"},
                           {"module": s.site.param, "layer": s.layer, "component": s.component, "row": row, "col": col,
                            "weight_value": s.value, "rank": rank}))
        out.append(Row("seconds", self.seconds, {"kind": "score", "k": self.k},
                       {"found": len(self.top), "forward": self.forward, "backward": self.backward}))
        return out


def top_scores(loaded: LoadedModel, method: str, calib_windows: torch.Tensor, preset: str = "quick",
               k: int = TOP_K) -> ScoredTop:
    """Score ``loaded`` with scorer ``method`` on the preset's first calibration windows; keep its top ``k``."""
    from harness.scoring import score

    start = time.perf_counter()
    found = score(loaded, method, windows=calib_windows[: pick_preset(PRESETS, preset).calib_windows])
    top = found.top_k(min(k, found.numel()))
    return ScoredTop(k, top, time.perf_counter() - start, found.cost.forward, found.cost.backward, found.signed)


@dataclass(frozen=True)
class KnownCheck:
    """The super weights on record for a model (``harness.scoring.known``) against the detection."""

    known: list[tuple[int, int, int]]  # (layer, row, col)
    missing: list[tuple[int, int, int]]
    source: str
    detection: Any

    @property
    def found_fraction(self) -> float:
        return 1 - len(self.missing) / len(self.known)

    def extra(self) -> dict[str, Any]:
        return {"known": self.known, "missing": self.missing, "source": self.source}

    def columns(self) -> dict[str, Any]:
        """The records' and claims' ``method`` and ``perturbation`` (:func:`known_columns`)."""
        return known_columns(self.detection)

    def rows(self) -> list[Row]:
        """The fraction of the super weights on record that the detection found."""
        columns = self.columns()
        return [Row("known_found_fraction", self.found_fraction, columns["perturbation"], self.extra(),
                    columns={"method": columns["method"]})]

    def detected(self) -> Comparison:
        """At least one super weight detected (the reason names the strongest candidate when none is)."""
        n = len(self.detection.sites)
        why = "" if n else self.detection.none_reason()
        return Comparison(n > 0, float(n), 0.0, {"test": "detected", "reason": why})

    def all_found(self) -> Comparison:
        """Every super weight on record is among the detected sites."""
        return Comparison(not self.missing, self.found_fraction, 1.0, {"test": "exact", "missing": self.missing})


def known_columns(detection: Any) -> dict[str, Any]:
    """The ``method`` and ``perturbation`` columns of the known-coordinates records and claims."""
    return {"method": DETECTOR, "perturbation": {"kind": "score", "detection": detection.id}}


def known_check(loaded: LoadedModel, detection: Any) -> KnownCheck | None:
    """Which super weights on record for ``loaded`` the detection misses; None when none is on record."""
    from harness.scoring import known_super_weights

    known = known_super_weights(loaded)
    if not known:
        return None
    found = {s.coords for s in detection.sites}
    coords = [(k.layer, k.row, k.col) for k in known]
    return KnownCheck(coords, [c for c in coords if c not in found], known[0].source, detection)
