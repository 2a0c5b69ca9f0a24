"""Cells of the detection suite: seeded random bit flips over every stored weight, each judged for harm and shown
to every detector.

A cell is a flip pattern in one dtype (:class:`DetectionCell`): one bit of a campaign bit class
(``harness.faults.BIT_CLASSES``, tag ``campaign``: sign, exp_msb, exponent, mantissa_msb, mantissa_lsb) of one
weight, or a multi-bit pattern (:data:`MULTI_BIT`: two bits of one weight; one bit in each of eight weights).
Trial t draws its weights uniformly over every parameter (``UniformSampler``: the embedding, norms and every
linear weight, by element) from a generator seeded with ``trial_seed(seed, t)`` (positions before bits: trial t
hits the same weights in every single-bit class). With the flip in place each detector of :data:`DETECTORS`
(calibrated once on the clean model) says whether it fired; then the campaign engine's trial judges the harm on
the preset's first evaluation windows (``harness.detection.outcomes.HARM_RATIO``) and restores the model.

Trials per cell: the preset's (``--trials``; one on a random-weight model), or sized sequentially by
``--margin/--confidence`` on the cell's harm rate (``harness.campaign.sizing``). The clean model's checks
(:meth:`DetectionCells.clean_checks`) repeat every detector ``clean_repeats`` times and once at another batch
size, and time it against a plain forward of one evaluation window. :meth:`DetectionCells.recovery` flips one
seeded bit of the model's own dtype, restores the tensors the checksum detector flags from the weights files and
times that against reloading the model (``harness.detection.recovery``).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from harness.campaign.bitflip_cells import short_dtype
from harness.campaign.engine import Campaign, trial_specs
from harness.campaign.sizing import Precision, sequential
from harness.detection.detectors import DETECTORS, Detector, make_detector
from harness.detection.outcomes import CellResult, CleanChecks, FlipOutcome, Sample
from harness.detection.recovery import Recovery, measure_recovery
from harness.errors import HarnessError
from harness.faults import BIT_CLASSES, bit_class, flip_bits
from harness.faults.samplers import UniformSampler
from harness.models.device import dtype_name, input_device
from harness.option_values import pick_preset
from harness.stats import Z95, trial_seed

if TYPE_CHECKING:
    from collections.abc import Callable

    from harness.campaign.trial import Clean
    from harness.models.copies import DtypeCopy
    from harness.models.loading import LoadedModel
    from harness.session import Session


@dataclass(frozen=True)
class FlipPattern:
    """Which bits a trial flips: ``bits_per_weight`` bits of class ``bits`` in each of ``weights`` weights."""

    name: str
    bits: str
    weights: int = 1
    bits_per_weight: int = 1

    @property
    def single_bit(self) -> bool:
        return self.weights == 1 and self.bits_per_weight == 1


INT8 = "int8"  # the session model with every untied linear stored as per-channel int8 codes (quantize_int8)
INT8_TARGET = "int8_codes"  # where an int8 cell's flips land: the quantized linears' codes (the weights it stores)
SINGLE_BIT = tuple(FlipPattern(b, b) for b in BIT_CLASSES.names(tag="campaign"))
MULTI_BIT = (FlipPattern("two_bits_one_weight", "any", 1, 2), FlipPattern("one_bit_eight_weights", "any", 8, 1))
PATTERNS = {p.name: p for p in SINGLE_BIT + MULTI_BIT}


@dataclass(frozen=True)
class DetectionPreset:
    """The detection grid and sizes of one depth preset.

    Attributes:
        dtypes: ``native`` (the model's own), ``bf16`` (the session's second copy) and/or ``int8`` (the session
            model with every untied linear as per-channel int8 codes, for the cell; its flips hit the codes).
        trials: flips per single-bit cell (before the session's trial rule).
        multi_trials: flips per multi-bit cell.
        windows: the first this many evaluation windows judge the harm (None: all).
        clean_repeats: checks of the clean model per detector (plus one at ``other_batch``).
        other_batch: the batch size of the extra clean check (a test vector run as that many copies).
    """

    dtypes: tuple[str, ...]
    trials: int
    multi_trials: int
    windows: int | None
    clean_repeats: int
    other_batch: int


PRESETS = {
    "quick": DetectionPreset(dtypes=("native",), trials=4, multi_trials=2, windows=1, clean_repeats=2, other_batch=2),
    "full": DetectionPreset(dtypes=("native", "bf16", INT8), trials=40, multi_trials=20, windows=None, clean_repeats=10,
                            other_batch=4),
}


@dataclass(frozen=True)
class DetectionCell:
    """One cell: flips of ``pattern`` in ``dtype`` (``native``: the model's own)."""

    pattern: str
    dtype: str = "native"

    @property
    def id(self) -> str:
        return f"{self.pattern}-{self.dtype}"

    def skip_reason(self, loaded: LoadedModel) -> str | None:
        """Why this cell does not apply to ``loaded`` (a bf16 cell of a bf16 model; an exponent pattern of int8
        codes), else None."""
        return skip_reason(loaded, self.dtype) or self.undefined()

    def undefined(self) -> str | None:
        """Why the pattern's bits do not exist in the cell's dtype (exponent bits of int8 codes), else None."""
        if self.dtype == INT8:
            try:
                bit_class(PATTERNS[self.pattern].bits, torch.int8)
            except HarnessError:
                bits = PATTERNS[self.pattern].bits
                return f"int8 codes have no {bits} bits (two's complement: sign and 7 value bits)"
        return None


def skip_reason(loaded: LoadedModel, dtype: str) -> str | None:
    """Why ``dtype``'s cells do not apply to ``loaded`` (bf16 of a bf16 model: ``native`` covers it), else None."""
    if dtype == "bf16" and loaded.dtype == torch.bfloat16:
        return "the model already is bf16: the native cells cover it"
    return None


def grid(preset: str) -> list[DetectionCell]:
    """Every cell of ``preset``: dtype x pattern, where the pattern's bits exist in the dtype."""
    return [c for d in dtypes(preset) for p in PATTERNS if not (c := DetectionCell(p, d)).undefined()]


def dtypes(preset: str) -> tuple[str, ...]:
    """The dtypes of ``preset`` (the clean checks and the claims are per dtype)."""
    return pick_preset(PRESETS, preset).dtypes


class DetectionCells:
    """The detection cells of a session's model: detectors calibrated once per dtype, each cell measured once.

    Args:
        loaded: the session's model (flipped in place and restored; a bf16 cell flips its copy, an int8 cell its
            int8 swap).
        windows: the evaluation windows (count, length); the preset's first ones judge the harm.
        preset: the depth preset's sizes.
        seed: the campaign seed (trial t draws from ``trial_seed(seed, t)``).
        clean: ``clean(name, model, windows) -> Clean``, the session's clean baseline.
        trials: ``trials(model_name, preset_count) -> int``, the session's trial rule.
        copies: the model's second copy in another dtype.
        precision: size each cell's harm rate to this precision (None: the preset's trials).
        detectors: detector names (default: every registered one).
        reload: ``reload(loaded) -> LoadedModel``, the whole model loaded again as the session loads it (the
            recovery's reference); None: no recovery is measured.
    """

    def __init__(self, loaded: LoadedModel, windows: torch.Tensor, *, preset: DetectionPreset, seed: int,
                 clean: Callable[..., Clean], trials: Callable[[str, int], int], copies: DtypeCopy,
                 precision: Precision | None = None, detectors: tuple[str, ...] | None = None,
                 reload: Callable[[LoadedModel], LoadedModel] | None = None) -> None:
        self.loaded, self.windows = loaded, windows[: preset.windows]
        self.preset, self.seed, self.clean, self.trials = preset, seed, clean, trials
        self.copies, self.precision, self.reload = copies, precision, reload
        self._recovery: dict[str, Recovery | str] = {}
        self.names = tuple(detectors or DETECTORS.names())
        self.z = precision.z if precision is not None else Z95
        self._detectors: dict[tuple[str, str], dict[str, Detector]] = {}
        self._done: dict[DetectionCell, CellResult] = {}
        self._clean: dict[str, dict[str, CleanChecks]] = {}

    @classmethod
    def of(cls, esa: Session, loaded: LoadedModel) -> DetectionCells:
        """``loaded``'s cells on the session's evaluation windows, kept by the session (forgotten with the model)."""
        o = esa.options
        return esa.cached((loaded.name, "detection-cells"), lambda: cls(loaded, esa.windows(loaded, "eval"),
            preset=esa.preset(PRESETS), seed=o.seed, clean=esa.clean, trials=esa.trials, copies=esa.copies,
            precision=o.precision, reload=lambda lm: _load_again(lm, o)))

    def detectors(self, loaded: LoadedModel, word: str | None = None) -> dict[str, Detector]:
        """The detectors calibrated on ``loaded``'s clean model (once per model and dtype ``word``, by default the
        model's own)."""
        key = (loaded.name, word or short_dtype(loaded.dtype))
        if key not in self._detectors:
            self._detectors[key] = {n: make_detector(n).calibrate(loaded.model) for n in self.names}
        return self._detectors[key]

    def measure(self, cell: DetectionCell) -> CellResult:
        """The cell's flips on the model (or its copy in the cell's dtype), measured once; check
        :meth:`DetectionCell.skip_reason` first."""
        if cell not in self._done:
            with self.model_in(cell.dtype, what=f"detection cell {cell.id}") as (used, word):
                self._done[cell] = self._run(used, word, PATTERNS[cell.pattern])
        return self._done[cell]

    @contextmanager
    def model_in(self, dtype: str, what: str) -> Iterator[tuple[LoadedModel, str]]:
        """(the model in ``dtype``, its dtype word): ``native`` the model itself; ``int8`` the model with every
        untied linear swapped for per-channel int8 codes for the body (``harness.faults.quantize_int8``, swapped
        back after); another float dtype the session's second copy, checked unchanged after the body."""
        loaded = self.loaded
        if dtype == INT8:
            from harness.faults import quantize_int8

            with quantize_int8(loaded.model):
                yield loaded, INT8
            return
        word = short_dtype(loaded.dtype) if dtype == "native" else dtype
        with self.copies.use(loaded, word, what=what) as used:
            yield used, word

    def _run(self, loaded: LoadedModel, word: str, pattern: FlipPattern) -> CellResult:
        name, model, detectors, windows = loaded.name, loaded.model, self.detectors(loaded, word), self.windows
        campaign = Campaign(model, windows, self.clean(loaded.name, model, windows))
        codes = [n for n, p in model.named_parameters() if p.dtype == torch.int8] if word == INT8 else None
        sampler = UniformSampler(model, codes)

        def run(first: int, count: int):
            for spec in trial_specs(self.seed, count, first=first):
                sites = tuple(sampler.draw(pattern.weights, generator=torch.Generator().manual_seed(spec.seed),
                                           bits=pattern.bits, bits_per_site=pattern.bits_per_weight))
                with flip_bits(model, sites):
                    fired = {n: d.fired(model) for n, d in detectors.items()}
                trial = campaign.trial(flip_bits(model, sites))
                yield FlipOutcome(spec.trial, spec.seed, sites, trial.ratio, trial.collapsed, fired)

        count = self.preset.trials if pattern.single_bit else self.preset.multi_trials
        flips, sizing = [], None
        for rec in sequential(run, lambda f: f.harmful, start=self.trials(name, count), precision=self.precision,
                              population=sampler.total):
            if isinstance(rec, FlipOutcome):
                flips.append(rec)
            else:
                sizing = rec
        stored = torch.int8 if word == INT8 else loaded.dtype
        return CellResult(pattern.name, pattern.single_bit, word, dtype_name(stored), tuple(flips), sizing, self.z,
                          INT8_TARGET if word == INT8 else "every_weight")

    def sample(self, dtype: str) -> Sample:
        """Every cell of ``dtype`` that applies measured (once), as one sample for the claims."""
        cells = [DetectionCell(p, dtype) for p in PATTERNS]
        return Sample(tuple(self.measure(c) for c in cells if not c.undefined()))

    def clean_checks(self, dtype: str) -> dict[str, CleanChecks]:
        """Each detector (by name) on the clean model: ``clean_repeats`` checks and one at ``other_batch``, timed
        against a plain forward of the first evaluation window (median of two)."""
        if dtype not in self._clean:
            with self.model_in(dtype, what=f"detection clean checks ({dtype})") as (used, word):
                self._clean[dtype] = self._checks(used, word, self.windows[:1])
        return self._clean[dtype]

    def recovery(self, dtype: str = "native") -> Recovery | str:
        """One seeded single-bit flip (trial 0's seed, uniform over every weight) in ``dtype`` (``native``: the
        model's own; ``bf16``: the session's copy, restored from the same files cast as the copy was loaded), found
        and restored from the weights files, against reloading the model in that dtype (measured once per model and
        dtype); or why it does not apply (no weights file on disk, no reload given, int8 codes)."""
        if dtype not in self._recovery:
            self._recovery[dtype] = self._recover(dtype)
        return self._recovery[dtype]

    def _recover(self, dtype: str) -> Recovery | str:
        if dtype == INT8:
            return ("int8 codes are not in the weights files: restoring them means quantizing the stored weights "
                    "again (not measured)")
        if self.reload is None:
            return "no reload given: the recovery has no reference to be timed against"
        with self.model_in(dtype, what=f"detection recovery ({dtype})") as (used, word):
            model = used.model
            checksum = self.detectors(used, word).get("checksum") or make_detector("checksum").calibrate(model)
            generator = torch.Generator().manual_seed(trial_seed(self.seed, 0))
            sites = UniformSampler(model).draw(1, generator=generator)
            return measure_recovery(used, checksum, sites, lambda: self.reload(used))

    @torch.no_grad()
    def _checks(self, loaded: LoadedModel, word: str, window: torch.Tensor) -> dict[str, CleanChecks]:
        model, p = loaded.model, self.preset
        forward = _median_seconds(lambda: model(input_ids=window.to(input_device(model)), use_cache=False), 2)
        out = {}
        for name, detector in self.detectors(loaded, word).items():
            seconds, alarms = [], 0
            for batch in (1,) * p.clean_repeats + (p.other_batch,):
                start = time.perf_counter()
                alarms += detector.fired(model, batch=batch)
                if batch == 1:
                    seconds.append(time.perf_counter() - start)
            out[name] = CleanChecks(name, alarms, p.clean_repeats + 1, p.other_batch, statistics.median(seconds),
                                    forward, detector.cost().to_dict(), word,
                                    dtype_name(torch.int8 if word == INT8 else loaded.dtype), self.z)
        return out


def _load_again(loaded: LoadedModel, options: Any) -> LoadedModel:
    """``loaded``'s model loaded again as the session loads it (``EsaSession.model``): same name, device, placement
    and dtype."""
    from harness.models import load_model

    return load_model(loaded.name, device=options.device, dtype=loaded.dtype, device_map=options.device_map,
                      max_memory=options.max_memory, offload_dir=options.offload_dir)


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) if times else math.nan
