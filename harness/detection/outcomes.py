"""What the detection cells measure: each flip's harm and which detectors fired, their rates with Wilson intervals,
the clean model's checks, the claims' evidence over a sample of flips, and the rows a suite records.

Harm: a flip is *harmful* when the campaign engine's trial collapses (``harness.metrics.is_collapse``: non-finite
output or perplexity ratio >= 10) or raises perplexity by at least :data:`HARM_RATIO` (1%) on the evaluation
windows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.campaign.sizing import Sizing
from harness.claims import Comparison
from harness.faults import FaultSite
from harness.records.row import Row
from harness.stats import Z95, wilson

HARM_RATIO = 1.01  # perplexity x1.01 or more (or a collapse) is a harmful flip
EXP_MSB = "exp_msb"
RANGE = "range"


@dataclass(frozen=True)
class Rate:
    """``hits`` of ``n`` with its Wilson interval (at ``z``)."""

    hits: int
    n: int
    z: float = Z95

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def ci(self) -> tuple[float, float] | None:
        return wilson(self.hits, self.n, self.z) if self.n else None

    def extra(self) -> dict[str, Any]:
        low, high = self.ci or (None, None)
        return {"hits": self.hits, "n": self.n, "ci_low": low, "ci_high": high}


@dataclass(frozen=True)
class FlipOutcome:
    """One seeded flip: where, what it did to the output, and which detectors fired while it was in place."""

    trial: int
    trial_seed: int
    sites: tuple[FaultSite, ...]
    ratio: float  # perplexity / clean perplexity on the evaluation windows (inf: non-finite)
    collapsed: bool
    fired: dict[str, bool]

    @property
    def harmful(self) -> bool:
        return self.collapsed or self.ratio >= HARM_RATIO


@dataclass(frozen=True)
class CellResult:
    """The flips of one cell (a bit class or a multi-bit pattern, in one dtype)."""

    pattern: str
    single_bit: bool
    dtype: str  # fp32, bf16, int8 (records)
    torch_dtype: str
    flips: tuple[FlipOutcome, ...]
    sizing: Sizing
    z: float = Z95
    target: str = "every_weight"  # where the flips land: every weight, or ``int8_codes`` (the quantized linears)

    def rate(self, detector: str, among: str) -> Rate:
        """``detector``'s detection rate among ``harmful`` flips or ``all`` flips."""
        pool = [f for f in self.flips if among == "all" or f.harmful]
        return Rate(sum(f.fired[detector] for f in pool), len(pool), self.z)

    @property
    def harm(self) -> Rate:
        """The share of the cell's flips that were harmful."""
        return Rate(sum(f.harmful for f in self.flips), len(self.flips), self.z)

    @property
    def perturbation(self) -> dict[str, Any]:
        return {"kind": "bitflip", "target": self.target, "pattern": self.pattern, "dtype": self.dtype}

    def rows(self) -> list[Row]:
        """Per flip its ``ppl_ratio`` (fired detectors in extra); the harm rate; per detector its detection
        rate among harmful flips and among all (value None when the cell drew no harmful flip)."""
        pert = self.perturbation
        rows = [Row("ppl_ratio", f.ratio, {**pert, "sites": [s.to_dict() for s in f.sites]},
                    {"trial": f.trial, "trial_seed": f.trial_seed, "harmful": f.harmful, "fired": f.fired},
                    columns={"collapsed": f.collapsed, "method": "flip"}) for f in self.flips]
        harm = self.harm
        rows.append(Row("harm_rate", harm.value, pert, {**harm.extra(), **self.sizing.to_dict(),
                                                         "harm_ratio": HARM_RATIO}, columns={"method": "flip"}))
        for detector in self.flips[0].fired:
            for among in ("harmful", "all"):
                r = self.rate(detector, among)
                rows.append(Row("detection_rate", r.value, {**pert, "among": among}, r.extra(),
                                columns={"method": detector}))
        return rows


@dataclass(frozen=True)
class CleanChecks:
    """A detector on the clean model: repeated checks and one at another batch size, and their timing."""

    detector: str
    alarms: int
    checks: int
    other_batch: int
    seconds: float  # median seconds of one check
    forward_seconds: float  # one plain forward of one evaluation window
    cost: dict[str, int]
    dtype: str  # fp32, bf16 (records)
    torch_dtype: str  # the records' dtype column
    z: float = Z95

    @property
    def overhead(self) -> float:
        return self.seconds / self.forward_seconds

    def rows(self) -> list[Row]:
        """The false-alarm rate (Wilson interval in extra) and the overhead ratio (cost in extra)."""
        rate = Rate(self.alarms, self.checks, self.z)
        pert = {"kind": "none", "dtype": self.dtype}
        method = {"method": self.detector}
        return [Row("false_alarm_rate", rate.value, pert, {**rate.extra(), "other_batch": self.other_batch},
                    columns=method),
                Row("overhead_ratio", self.overhead, pert, {"seconds": self.seconds,
                                                            "forward_seconds": self.forward_seconds, **self.cost},
                    columns=method)]

    def silent(self) -> Comparison:
        """The evidence that the detector never fired on the clean model (every check silent)."""
        quiet = self.checks - self.alarms
        return Comparison(self.alarms == 0, float(quiet), float(self.checks),
                          {"test": "every", "checks": self.checks, "alarms": self.alarms,
                           "other_batch": self.other_batch})


@dataclass(frozen=True)
class Sample:
    """Every measured cell of one dtype: the claims' evidence over all its flips. An evidence method returns a
    :class:`Comparison`, or a string (why the claim does not apply: the sample holds no flip it is about)."""

    cells: tuple[CellResult, ...]

    @property
    def torch_dtype(self) -> str:
        """The records' dtype column of the sample's cells."""
        return self.cells[0].torch_dtype

    def flips(self, among: str = "all", *, single_bit: bool = False) -> list[FlipOutcome]:
        pick = {"all": lambda f: True, "harmful": lambda f: f.harmful, "collapsed": lambda f: f.collapsed}[among]
        return [f for c in self.cells if c.single_bit or not single_bit for f in c.flips if pick(f)]

    def every(self, detector: str, among: str) -> Comparison | str:
        """``detector`` fired on every flip of the sample ``among`` ``all`` / ``harmful`` / ``collapsed`` ones."""
        flips = self.flips(among)
        if not flips:
            return f"no {among} flip in the sample of {len(self.flips())}"
        missed = [f for f in flips if not f.fired[detector]]
        return Comparison(not missed, float(len(flips) - len(missed)), float(len(flips)),
                          {"test": "every", "among": among, "flips": len(flips), "missed": len(missed),
                           "missed_sites": [s.to_dict() for f in missed[:5] for s in f.sites]})

    def range_vs_exp_msb(self) -> Comparison | str:
        """The range check's coverage of the harmful single-bit flips against the exp-MSB flips' share of them."""
        if not any(c.pattern == EXP_MSB for c in self.cells):
            return (f"the {self.cells[0].dtype} sample has no exp-MSB flips to compare with (integer codes have no "
                    "exponent)")
        harmful = [(c.pattern, f) for c in self.cells if c.single_bit for f in c.flips if f.harmful]
        if not harmful:
            return f"no harmful single-bit flip in the sample of {len(self.flips(single_bit=True))}"
        caught = sum(f.fired[RANGE] for _, f in harmful)
        exp_msb = sum(p == EXP_MSB for p, _ in harmful)
        n = len(harmful)
        return Comparison(caught >= exp_msb, caught / n, exp_msb / n,
                          {"test": "at_least", "harmful": n, "range_caught": caught, "exp_msb_harmful": exp_msb})
