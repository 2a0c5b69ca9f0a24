"""Claims: what a suite asserts about a model, declared in code next to the test that measures it.

Two kinds:

- a *relation* compares two quantities measured in the same run (super weights zeroed vs as many
  random weights; exp-MSB vs mantissa-LSB collapse rate; Wanda vs magnitude at equal sparsity). It
  needs no per-model number and is asserted on every model it applies to. Its margin comes from a
  statistic that holds at the preset's trial count (:func:`rate_greater`: non-overlapping Wilson
  intervals; :func:`paired_greater`: every seeded pair; :func:`greater`: a stated minimum effect).
- a *bound* is a regression bound: a model-specific number for one statistic, kept in
  ``suites/bounds/<suite>.toml`` (``[model] name = number``) and derived from that model's runs at
  several seeds (``python -m reports export-bounds``). ``side="max"`` holds when value <= bound,
  ``side="min"`` when value >= bound. A non-finite value (a collapse) compares as +inf: it never
  passes a ``max`` and NaN passes nothing.

Every checked claim has one of four outcomes (:class:`Outcome`): passed, failed, unverified (a bound
with no number for this model) and not applicable (the claim cannot apply: no super weight found,
random weights, a layer the model lacks), the last always with a reason.
"""

from __future__ import annotations

import itertools
import math
import statistics
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

from harness.data.corpus import DEFAULT_CORPUS
from harness.errors import HarnessError
from harness.records.store import HEALTH_SUITE  # the model-health claims' suite, judged first
from harness.stats import Z95, wilson

Z_BOUND = 3.290527  # two-sided 99.9% normal quantile: rate bounds hold at any seed but a one-in-a-thousand draw


class Outcome(StrEnum):
    """What checking a claim on one model gave."""

    PASSED = "passed"
    FAILED = "failed"
    UNVERIFIED = "unverified"
    NOT_APPLICABLE = "not_applicable"


@dataclass(frozen=True)
class Claim:
    """One declared claim of a suite.

    Attributes:
        suite: the analysis name (test file ``suites/test_<suite>.py``, bounds file ``<suite>.toml``).
        name: unique within the suite; the store's ``metric`` column of the claim row.
        statement: the claim in plain words.
        kind: ``"relation"`` or ``"bound"``.
        statistic: what is measured (a metric name or a short phrase).
        side: bound: ``"max"`` (value <= bound), ``"min"`` (value >= bound) or ``"within"`` (low <=
            value <= high, the bound a ``[low, high]`` pair: rates, whose regressions go either way);
            relation: ``"min"`` (the measured side must be the larger one).
        pretrained_only: not applicable on random-weight models (the tiny families), whose
            behaviour says nothing about trained models.
        margin: how the relation's margin or the bound's number is chosen, in words.
        seeded: the statistic depends on ``--seed`` (sampled sites, noise); a seed-independent one
            (an ablation map, a pruning curve) gets its bound from two agreeing seeds instead of five.
        null: the value the statistic takes when the perturbation does nothing (a ratio of 1, a delta of
            0), for a bound whose claim is that the perturbation acts. A bound that admits it is
            vacuous: refused at export (:func:`derive_bound`) and unverified when judged.
    """

    suite: str
    name: str
    statement: str
    kind: Literal["relation", "bound"]
    statistic: str
    side: Literal["max", "min", "within"] = "min"
    pretrained_only: bool = True
    margin: str = ""
    seeded: bool = True
    null: float | None = None

    @property
    def key(self) -> str:
        return f"{self.suite}.{self.name}"


_DECLARED: dict[str, dict[str, Claim]] = {}


class ClaimSet:
    """The claims of one suite; declare them at module level of ``suites/test_<suite>.py``.

    Args:
        suite: the analysis name.
    """

    def __init__(self, suite: str) -> None:
        self.suite = suite
        self.claims: dict[str, Claim] = _DECLARED.setdefault(suite, {})

    def _add(self, claim: Claim) -> Claim:
        known = self.claims.get(claim.name)
        if known is not None and known != claim:
            raise HarnessError(f"claim {claim.key} is declared twice with different definitions")
        self.claims[claim.name] = claim
        return claim

    def relation(self, name: str, statement: str, *, statistic: str, pretrained_only: bool = True,
                 margin: str = "", seeded: bool = True) -> Claim:
        """Declare a relational claim (no per-model number)."""
        return self._add(Claim(self.suite, name, statement, "relation", statistic, "min", pretrained_only, margin,
                               seeded))

    def bound(self, name: str, statement: str, *, side: Literal["max", "min", "within"], statistic: str,
              pretrained_only: bool = False, margin: str = "", seeded: bool = True,
              null: float | None = None) -> Claim:
        """Declare a regression bound (its number per model lives in ``suites/bounds/<suite>.toml``);
        ``null``: what a perturbation that does nothing measures, when the claim is that it acts."""
        if side not in ("max", "min", "within"):
            raise HarnessError(f"claim {self.suite}.{name}: side must be 'max', 'min' or 'within', got {side!r}")
        return self._add(Claim(self.suite, name, statement, "bound", statistic, side, pretrained_only, margin,
                               seeded, null))

    def effect(self, cell: str, what: str, *, pretrained_only: bool = False) -> Claim:
        """Declare the effect guard ``<cell>_has_effect``: the perturbation ``what`` changed the output in
        at least one trial (judged by :func:`has_effect`). It applies to random-weight models too, unless
        ``pretrained_only`` (a single flip can be rounded away in a tiny random model's small activations)."""
        return self.relation(f"{cell}_has_effect", f"{what} changes the model's output in at least one trial "
                             "(not masked: perplexity ratio != 1 or KL > 0)", statistic="trials with an effect",
                             pretrained_only=pretrained_only, margin="at least one trial of the cell")

    def __iter__(self) -> Iterator[Claim]:
        return iter(self.claims.values())


def declared(suite: str | None = None) -> dict[str, Claim]:
    """Declared claims by key (``suite.name``), of one suite or of every suite imported so far."""
    return {c.key: c for s, claims in _DECLARED.items() if suite in (None, s) for c in claims.values()}


# -- comparisons (the evidence of a relation) -----------------------------------------------------


@dataclass(frozen=True)
class Comparison:
    """Both sides of a relation and whether it holds.

    Attributes:
        holds: the relation holds with its margin.
        value: the side that must be larger (recorded as the claim's value).
        other: the side it is compared with (recorded as the claim's ``bound`` column).
        detail: what decided it (intervals, pair counts, factor), recorded in the row's extra.
        undecidable: why the measurement cannot decide the relation at all (e.g. too few trials for
            any two rates to be apart); the claim is then unverified with this reason, and fails under
            ``--strict-claims`` (:func:`undecided`).
    """

    holds: bool
    value: float
    other: float
    detail: dict = field(default_factory=dict)
    undecidable: str = ""


def _big(x: float) -> float:
    """A collapse (non-finite) compares as +inf; NaN stays NaN."""
    x = float(x)
    return math.inf if math.isinf(x) else x


def greater(value: float, other: float, *, factor: float = 1.0) -> Comparison:
    """``value > factor * other``, strictly: a tie never holds, so a no-op (both sides equal) fails.

    A collapse is +inf and NaN never holds. Two collapses (inf vs inf) never hold: neither side is
    larger. With ``factor > 1`` the other side must be positive: a factor cannot scale 0 or a negative
    number into a minimum effect, so ``other <= 0`` does not hold (the detail says why).
    """
    v, o = _big(value), _big(other)
    detail: dict = {"test": "min_effect", "factor": factor}
    if math.isnan(v) or math.isnan(o):
        holds = False
    elif math.isinf(o):
        holds = False
    elif factor > 1.0 and o <= 0.0:
        holds = False
        detail["refused"] = f"the other side is {o:g} <= 0: a factor {factor:g} states no minimum effect on it"
    else:
        holds = v > factor * o
    return Comparison(holds, v, o, detail)


def has_effect(changed: Sequence[bool]) -> Comparison:
    """The effect guard: at least one trial changed the output (``changed[i]``: trial i was not masked
    and moved the perplexity ratio off 1 or the KL off 0). Recorded sides: the trials with an effect
    and 0. Every trial unchanged (a perturbation that does nothing) fails.
    """
    if not changed:
        raise HarnessError("an effect guard needs at least one trial")
    hits = sum(bool(c) for c in changed)
    return Comparison(hits > 0, float(hits), 0.0, {"test": "effect", "trials": len(changed), "with_effect": hits})


def trial_changed(ratio: float, kl: float | None, masked: bool = False) -> bool:
    """Whether one trial moved the output at all: not masked, and its ratio is not exactly 1 or its KL is
    above 0 (a collapse, non-finite, counts as moved)."""
    if masked:
        return False
    r = float(ratio)
    return (not math.isnan(r) and r != 1.0) or (kl is not None and not (float(kl) <= 0.0))


def rate_greater(hits: int, trials: int, other_hits: int, other_trials: int, *, z: float = Z95) -> Comparison:
    """The rate ``hits/trials`` is above ``other_hits/other_trials`` with non-overlapping Wilson intervals.

    At 5 trials a side this needs e.g. 4/5 vs 0/5 (z = 1.96); it holds at any seed for rates far apart.
    """
    low, high = wilson(hits, trials, z)
    o_low, o_high = wilson(other_hits, other_trials, z)
    detail = {"test": "wilson", "z": z, "ci": [low, high], "other_ci": [o_low, o_high],
              "hits": hits, "trials": trials, "other_hits": other_hits, "other_trials": other_trials}
    undecidable = ""
    if wilson(trials, trials, z)[0] <= wilson(0, other_trials, z)[1]:
        undecidable = (f"{trials} vs {other_trials} trials cannot separate any two rates at this confidence "
                       "(even all vs none overlap): run the preset's trial count")
    return Comparison(low > o_high, hits / trials, other_hits / other_trials, detail, undecidable)


def paired_greater(values: Sequence[float], others: Sequence[float], *, factor: float = 1.0) -> Comparison:
    """Every seeded pair has ``value > factor * other`` (:func:`greater`: strict; a collapse is +inf).

    The recorded sides are the smallest ``value`` and the largest ``other``.
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    pairs = [greater(v, o, factor=factor).holds for v, o in zip(values, others, strict=True)]
    vs, os_ = [_big(v) for v in values], [_big(o) for o in others]
    return Comparison(all(pairs), min(vs), max(os_),
                      {"test": "paired", "factor": factor, "pairs": len(pairs), "pairs_holding": sum(pairs),
                       "values": vs, "others": os_})


def paired_majority(values: Sequence[float], others: Sequence[float], *, z: float = Z95) -> Comparison:
    """In most seeded pairs ``value > other`` (a sign test; a collapse is +inf, two collapses are a tie).

    Holds when the Wilson interval of the share of pairs with ``value > other`` lies above 1/2 (at
    20 pairs: 15 or more). Recorded sides: the medians of ``values`` and ``others``. Undecidable
    below 4 pairs (3 of 3 is not above 1/2 at this confidence; 4 of 4 is).
    """
    if len(values) != len(others) or not values:
        raise HarnessError(f"paired comparison needs equal, non-empty sides, got {len(values)} and {len(others)}")
    vs, os_ = [_big(v) for v in values], [_big(o) for o in others]
    wins = sum(v > o for v, o in zip(vs, os_, strict=True))  # NaN and inf-vs-inf never win
    n = len(vs)
    low, high = wilson(wins, n, z)
    undecidable = "" if wilson(n, n, z)[0] > 0.5 else f"{n} pairs cannot show a majority at this confidence"
    return Comparison(low > 0.5, statistics.median(vs), statistics.median(os_),
                      {"test": "sign", "z": z, "pairs": n, "pairs_holding": wins, "ci": [low, high]}, undecidable)


def increasing(xs: Sequence[float], values: Sequence[float], *, factor: float = 1.0) -> Comparison:
    """``values`` grow with ``xs``: each step strictly above ``factor`` times the previous one (collapse = +inf).

    Recorded sides: the last value and the first one.
    """
    if len(xs) != len(values) or len(values) < 2:
        raise HarnessError(f"a trend needs two or more points with an x each, got {len(xs)} x, {len(values)} values")
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    ys = [_big(values[i]) for i in order]
    steps = [greater(b, a, factor=factor).holds for a, b in itertools.pairwise(ys)]
    return Comparison(all(steps), ys[-1], ys[0],
                      {"test": "increasing", "factor": factor, "xs": [xs[i] for i in order], "values": ys})


# -- bounds ---------------------------------------------------------------------------------------


def _bounds_file(path: Path) -> dict[str, dict[str, float | tuple[float, float]]]:
    """The parsed bounds file (``{}`` when missing), re-read when the file changes."""
    return _cached_toml(path, _parse_bounds)


def _cached_toml(path: Path, parse):
    """``parse(path, text, data)`` of a TOML file (``{}`` when missing), parsed again only when it changes."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return {}
    return _parse_toml(path, stat.st_mtime_ns, stat.st_size, parse)


@cache
def _parse_toml(path: Path, mtime_ns: int, size: int, parse):
    """Read ``path`` once per version; a syntax error is one line ``<path>:<line>: not valid TOML (...)``."""
    import re

    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = re.search(r"\(at line (\d+), column \d+\)", str(err))
        where, what = (f"{path}:{line[1]}", str(err)[:line.start()].strip()) if line else (str(path), str(err))
        raise HarnessError(f"{where}: not valid TOML ({what}); fix that line") from None
    return parse(path, text, data)


def _parse_bounds(path: Path, text: str, data: dict) -> dict[str, dict[str, float | tuple[float, float]]]:
    """The tables of a bounds file; every error is one line ``<path>:<line>: what is wrong; what to do``."""

    def at(table: str | None, key: str) -> str:  # "path:line" of `key` in [table] (None: above every table)
        current = None
        for n, line in enumerate(text.splitlines(), 1):
            stripped = line.split("#", 1)[0].strip()
            if stripped.startswith("["):
                current = stripped.strip("[] ").strip("\"'")
            elif current == table and stripped.split("=", 1)[0].strip().strip("\"'").split(".")[0] == key:
                return f"{path}:{n}"
        return str(path)

    out: dict[str, dict[str, float | tuple[float, float]]] = {}
    for model, table in data.items():
        if not isinstance(table, dict):
            raise HarnessError(f"{at(None, model)}: top-level key {model!r} must be a [model] table of "
                               "claim = number; put it under its model's [name] line")
        nested = [name for name, value in table.items() if isinstance(value, dict)]
        if nested:  # TOML reads a bare key with a dot as a table: `a_0.01_max = 1` is {"a_0": {"01_max": 1}}
            raise HarnessError(f"{at(model, nested[0])}: [{model}] has dotted claim names ({', '.join(nested)}...): "
                               f'quote them, e.g. "noise_0.01_ppl_ratio" = 1.0')
        out[model] = {}
        for name, value in table.items():
            if isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value):
                out[model][name] = (float(value[0]), float(value[1]))
            elif _is_number(value):
                out[model][name] = float(value)
            else:
                raise HarnessError(f"{at(model, name)}: [{model}] {name} = {value!r} must be a number, or "
                                   "[low, high] for a 'within' bound")
    return out


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def bounds_path(bounds_dir: Path, suite: str) -> Path:
    return Path(bounds_dir) / f"{suite}.toml"


def check_bounds_file(bounds_dir: Path, suite: str) -> None:
    """Every name in ``<suite>.toml`` must be a declared bound of the suite.

    Raises:
        HarnessError: one line naming the suite, the offending name and the bounds it declares.
    """
    path = bounds_path(bounds_dir, suite)
    claims = _DECLARED.get(suite, {})
    bounds = sorted(n for n, c in claims.items() if c.kind == "bound")
    for model, table in _bounds_file(path).items():
        for name in table:
            claim = claims.get(name)
            if claim is None or claim.kind != "bound":
                what = "a relation, which takes no number" if claim is not None else "not declared"
                shown = ", ".join(bounds[:12]) + (f", ... ({len(bounds)} in all)" if len(bounds) > 12 else "")
                raise HarnessError(f"{path}: [{model}] {name} is {what}; suite {suite} declares the bounds "
                                   f"{shown or '(none)'}")
            if (claim.side == "within") != isinstance(table[name], tuple):
                want = "a [low, high] pair" if claim.side == "within" else "one number"
                raise HarnessError(f"{path}: [{model}] {name} is a '{claim.side}' bound and takes {want}")


def bound_for(bounds_dir: Path, claim: Claim, model: str) -> float | tuple[float, float] | None:
    """The number of bound ``claim`` for ``model``, or None (then the claim is unverified)."""
    return _bounds_file(bounds_path(bounds_dir, claim.suite)).get(model, {}).get(claim.name)


# -- the configuration bounds were derived under -------------------------------------------------------

CONFIG_FILE = "config.toml"  # suites/bounds/config.toml: [model] key = value, the options of the bound runs
BOUND_CONFIG = ("preset", "trials", "eval_tokens", "window", "calib_tokens", "dtype", "corpus", "flip_budget")
WEIGHTS_KEY = "weights"  # config.toml: the digest of the weights the bounds were measured on (harness.models.identity)
WEIGHTS_DIFFER = "weights differ from those the bounds were measured on"


def bound_config(info: dict) -> dict[str, str | int]:
    """The options a regression bound depends on, from a run's info (``runs`` row): None reads as the
    preset's (trials, flip budget) or the model's (dtype) default."""
    defaults = {"trials": "preset", "flip_budget": "preset", "dtype": "model default", "corpus": DEFAULT_CORPUS}
    return {k: info.get(k) if info.get(k) is not None else defaults.get(k, "") for k in BOUND_CONFIG}


def config_mismatch(bounds_dir: Path, model: str, config: dict) -> str:
    """Why ``model``'s bounds do not apply to a run under ``config`` (its :func:`bound_config`, and ``weights``: the
    digest of the weights it loaded, ``harness.models.identity``), or ""."""
    path = Path(bounds_dir) / CONFIG_FILE
    recorded = _cached_toml(path, _parse_config).get(model)
    if not recorded:
        return ""
    differ = [f"{k} {recorded[k]} (this run: {config.get(k)})" for k in BOUND_CONFIG
              if k in recorded and str(recorded[k]) != str(config.get(k))]
    if differ:
        return (f"the bounds of {model} were derived under another configuration: {', '.join(differ)} "
                f"({path}); run with those options, or measure this configuration at five seeds (`make bounds`)")
    weights, loaded = recorded.get(WEIGHTS_KEY), config.get(WEIGHTS_KEY)
    if weights and loaded and weights != loaded:
        return (f"{WEIGHTS_DIFFER} of {model} (bounds: {weights}, this run: {loaded}; {path}): a new conversion, "
                "library release or fine-tune; check the model (`python -m harness models`), then derive its bounds "
                "again (`make bounds`)")
    return ""


def _parse_config(path: Path, text: str, data: dict) -> dict[str, dict]:
    for model, table in data.items():
        unknown = sorted(set(table) - {*BOUND_CONFIG, WEIGHTS_KEY}) if isinstance(table, dict) else [model]
        if unknown:
            raise HarnessError(f"{path}: [{model}] has {unknown[0]!r}; a model's table takes "
                               f"{', '.join((*BOUND_CONFIG, WEIGHTS_KEY))}")
    return data


# -- judging --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """A claim checked on one model: its outcome, both sides, and why."""

    claim: Claim
    outcome: Outcome
    value: float | None
    other: float | tuple[float, float] | None  # the bound ([low, high] for 'within'), or the relation's other side
    reason: str = ""
    detail: dict = field(default_factory=dict)

    @property
    def message(self) -> str:
        c = self.claim
        if self.outcome is Outcome.NOT_APPLICABLE:
            return f"claim {c.key} not applicable: {self.reason}"
        if self.outcome is Outcome.UNVERIFIED:
            return f"claim {c.key} unverified: {self.reason}"
        if c.kind == "bound" and c.side == "within":
            low, high = self.other
            where = "in" if self.outcome is Outcome.PASSED else "outside"
            return f"claim {c.key} {self.outcome}: {self.value:.6g} {where} [{low:.6g}, {high:.6g}]"
        if c.kind == "bound":
            side = "<=" if c.side == "max" else ">="
            if self.outcome is Outcome.PASSED:
                return f"claim {c.key} holds: {self.value:.6g} {side} {self.other:.6g}"
            return f"claim {c.key} failed: {self.value:.6g} is not {side} {self.other:.6g}"
        if self.reason.startswith("undecided"):
            return f"claim {c.key} {self.outcome} ({c.statement}): {self.reason}"
        verb = "holds" if self.outcome is Outcome.PASSED else "failed"
        return f"claim {c.key} {verb} ({c.statement}): {self.value:.6g} vs {self.other:.6g} {self.detail}"


VACUOUS_RATE = ("the bound [0, 1] admits every rate: no run can break it; measure the cell at five seeds and "
                "export the bound again (`make bounds`)")


def vacuous_reason(claim: Claim, bound: float | tuple[float, float]) -> str:
    """Why ``bound`` cannot fail the way its claim needs, or "" when it can.

    A rate interval of [0, 1] admits every rate; a bound that admits the claim's ``null`` (what a
    perturbation that does nothing measures) would pass a no-op although the claim is that it acts.
    """
    if claim.side == "within" and bound[0] <= 0.0 and bound[1] >= 1.0 and "rate" in claim.statistic:
        return VACUOUS_RATE
    if claim.null is not None and _passes(claim, claim.null, bound):
        return (f"vacuous: a perturbation that does nothing (value {claim.null:g}) would pass the bound {bound}; "
                "derive it again from five seeds (`make bounds`) or state the claim as a relation")
    return ""


def _passes(claim: Claim, value: float, bound: float | tuple[float, float]) -> bool:
    if math.isnan(value):
        return False
    if claim.side == "within":
        return bound[0] <= value <= bound[1]
    return value <= bound if claim.side == "max" else value >= bound


def judge_bound(claim: Claim, value: float, bound: float | tuple[float, float] | None, *,
                trials: int | None = None) -> Verdict:
    """Check a regression bound.

    No number for the model -> unverified; a vacuous bound (:func:`vacuous_reason`) -> unverified with
    the reason. A rate bound (``side="within"``, a collapse-rate statistic) is an interval on the rate
    itself (:func:`derive_bound`); with ``trials`` given the run passes when its own Wilson 95% interval
    (``value * trials`` hits) meets that interval, and fails when the two lie apart.
    """
    if claim.kind != "bound":
        raise HarnessError(f"claim {claim.key} is a relation: pass a Comparison, not a number")
    v = _big(value)
    if bound is None:
        return Verdict(claim, Outcome.UNVERIFIED, v, None,
                       f"no number for this model in suites/bounds/{claim.suite}.toml")
    shown = tuple(bound) if isinstance(bound, tuple) else float(bound)
    vacuous = vacuous_reason(claim, bound)
    if vacuous:
        return Verdict(claim, Outcome.UNVERIFIED, v, shown, vacuous)
    detail: dict = {}
    if claim.side == "within" and trials and not math.isnan(v) and "rate" in claim.statistic:
        hits = round(v * trials)
        low, high = wilson(hits, trials)
        ok = low <= bound[1] and high >= bound[0]
        detail = {"test": "wilson_overlap", "ci": [low, high], "hits": hits, "trials": trials}
    else:
        ok = _passes(claim, v, bound)
    return Verdict(claim, Outcome.PASSED if ok else Outcome.FAILED, v, shown, detail=detail)


def judge_relation(claim: Claim, comparison: Comparison) -> Verdict:
    """Check a relation from its :class:`Comparison`."""
    if claim.kind != "relation":
        raise HarnessError(f"claim {claim.key} is a bound: pass its measured number, not a Comparison")
    outcome = Outcome.PASSED if comparison.holds else Outcome.FAILED
    return Verdict(claim, outcome, comparison.value, comparison.other, claim.statement, dict(comparison.detail))


def undecided(claim: Claim, comparison: Comparison, *, strict: bool) -> Verdict:
    """A relation the measurement could not decide (too few trials, nothing to compare at this budget).

    It is never passed and never "not applicable" (that is for structural reasons): unverified with
    the reason, and failed under ``--strict-claims``.
    """
    outcome = Outcome.FAILED if strict else Outcome.UNVERIFIED
    reason = f"undecided: {comparison.undecidable}"
    return Verdict(claim, outcome, comparison.value, comparison.other, reason, dict(comparison.detail))


def not_applicable(claim: Claim, reason: str) -> Verdict:
    if not reason:
        raise HarnessError(f"claim {claim.key}: not applicable needs a reason")
    return Verdict(claim, Outcome.NOT_APPLICABLE, None, None, reason)


# -- deriving bounds from measured runs ------------------------------------------------------------


@dataclass(frozen=True)
class DerivedBound:
    """A regression bound derived from the values of several seeds, and how."""

    value: float | tuple[float, float] | None  # None: no honest bound (censored, collapsed, too few seeds)
    how: str


PREDICTIVE_K = 3.0  # the predictive half-width in standard deviations of the seeds
MAX_LOOSENESS = 10.0  # a ratio bound is never more than 10x looser than the worst seed (log scale)
REL_MARGIN = 0.05  # the least margin: 5% of the worst seed's value


def widen(claim: Claim, worst: float, sd: float, n: int, *, log_scale: bool) -> tuple[float, str]:
    """The one derivation of a non-rate bound: a predictive interval for the next run, from the worst of
    ``n`` seeds (on the log scale for ratios and perplexities, ``worst`` and ``sd`` already logged).

    Margin: ``PREDICTIVE_K`` x ``sd`` x sqrt(1 + 1/n) (the spread of one more run around seeds that
    scatter by ``sd``), at least ``REL_MARGIN`` of the worst value and, on the log scale, at most a
    factor ``MAX_LOOSENESS``. Returns the bound on the statistic's own scale and how it was chosen.
    """
    predictive = PREDICTIVE_K * sd * math.sqrt(1 + 1 / n)
    rel = math.log1p(REL_MARGIN) if log_scale else REL_MARGIN * abs(worst)
    margin = max(predictive, rel)
    capped = log_scale and margin > math.log(MAX_LOOSENESS)
    if capped:
        margin = math.log(MAX_LOOSENESS)
    x = worst + margin if claim.side == "max" else worst - margin
    bound = math.exp(x) if log_scale else x
    scale = "log " if log_scale else ""
    how = (f"margin max({PREDICTIVE_K:g} sd x sqrt(1+1/{n}), {REL_MARGIN:g} relative) = {scale}{margin:.3g} beyond "
           f"the worst seed" + (f", capped at {MAX_LOOSENESS:g}x" if capped else ""))
    return float(f"{bound:.6g}"), how


def rate_interval(hits: int, total: int) -> tuple[float, float]:
    """A rate bound: the Wilson 99.9% interval of the pooled collapse rate, rounded outward (one interval)."""
    low, high = wilson(hits, total, Z_BOUND)
    return math.floor(low * 1e4) / 1e4, math.ceil(high * 1e4) / 1e4


def derive_bound(claim: Claim, values: Sequence[float], *, rate_trials: int | None = None,
                 min_seeds: int = 5, censored: Sequence[float] = ()) -> DerivedBound:
    """A bound for ``claim`` from its values at several seeds.

    Rates (``rate_trials`` given): the pooled rate's Wilson 99.9% interval (:func:`rate_interval`), an
    interval on the rate itself; a run is judged by whether its own interval meets it
    (:func:`judge_bound`). Other statistics: :func:`widen` from the worst seed; ratios and perplexities
    (positive, multiplicative) on a log scale. A seed-independent claim (``claim.seeded`` False) needs
    two agreeing seeds, not five. No bound when a value equals a censoring value (``censored``: a budget
    + 1, a cap), when a seed collapsed under a ``max``, or when the result is vacuous
    (:func:`vacuous_reason`: it would pass a no-op).
    """
    vals = [float(v) for v in values]
    n = len(vals)
    need = min_seeds if claim.seeded else min(2, min_seeds)
    if n < need:
        return DerivedBound(None, f"only {n} seed(s) measured; need {need}")
    if not claim.seeded and len(set(vals)) > 1:
        return DerivedBound(None, f"declared seed-independent but the seeds disagree: {vals}")
    if any(math.isnan(v) for v in vals):
        return DerivedBound(None, f"a seed measured nothing (NaN) among {vals}")
    if any(math.isinf(v) for v in vals) and claim.side != "min":
        return DerivedBound(None, f"a seed collapsed (values {vals}): no finite bound describes it")
    if any(v in censored for v in vals):
        return DerivedBound(None, f"a seed hit a censoring value {sorted(set(censored))}: the statistic is censored")
    if rate_trials is not None:
        hits = round(sum(vals) * rate_trials)
        total = n * rate_trials
        bound: float | tuple[float, float] = rate_interval(hits, total)
        how = (f"Wilson 99.9% of the pooled rate {hits / total:.3f} ({hits}/{total}, {n} seeds): an interval on the "
               "rate; a run passes when its Wilson 95% interval meets it")
        if claim.side != "within":
            bound = bound[0] if claim.side == "min" else bound[1]
    else:
        finite = [v for v in vals if math.isfinite(v)]
        if claim.side == "min" and len(finite) < len(vals):
            vals = finite  # a collapse is +inf: it cannot be the worst value of a 'min' statistic
            if len(vals) < need:
                return DerivedBound(None, f"fewer than {need} seeds stayed finite")
        log_scale = all(v > 0 for v in vals) and ("ratio" in claim.statistic or "perplexity" in claim.statistic)
        xs = [math.log(v) for v in vals] if log_scale else vals
        mean = sum(xs) / len(xs)
        sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
        back = math.exp if log_scale else (lambda x: x)
        kind = "" if claim.seeded else " (seed-independent)"
        head = (f"{len(vals)} seeds{kind}: range {back(min(xs)):.6g}..{back(max(xs)):.6g}, "
                f"{'log ' if log_scale else ''}sd {sd:.3g}; ")
        if claim.side == "within":
            low, how_low = widen(replace(claim, side="min"), min(xs), sd, len(xs), log_scale=log_scale)
            high, _ = widen(replace(claim, side="max"), max(xs), sd, len(xs), log_scale=log_scale)
            bound, how = (low, high), head + how_low
        else:
            worst = max(xs) if claim.side == "max" else min(xs)
            bound, how = widen(claim, worst, sd, len(xs), log_scale=log_scale)
            how = head + how
    vacuous = vacuous_reason(claim, bound)
    if vacuous:
        return DerivedBound(None, f"{how}: {vacuous}")
    return DerivedBound(bound, how)


# -- the session's summary ----------------------------------------------------------------------------

OUTCOMES = ("passed", "failed", "unverified", "not_applicable")


@dataclass
class Summary:
    """The claims of one run: counts by outcome and suite, and the selected tests that checked none.

    Attributes:
        rows: the run's claim rows (``suite``, ``model``, ``metric``, ``outcome``, ``value``, ``bound``,
            ``test_id``, ``extra``); the model-health rows once per model and claim (xdist workers each judge it).
        unchecked: test ids of selected tests of claim-declaring suites that ended skipped, errored or
            failed without writing a single claim row: their claims were never decided.
        store_error: why the store could not be read ("" when it was): then nothing is known.
        skipped_unhealthy: selected tests skipped because their model failed its health claims.
    """

    rows: list[dict]
    unchecked: list[str] = field(default_factory=list)
    store_error: str = ""
    skipped_unhealthy: int = 0

    def __post_init__(self) -> None:
        seen: set[tuple] = set()
        kept = []
        for r in self.rows:
            key = (r["model"], r["metric"])
            if r["suite"] == HEALTH_SUITE:
                if key in seen:
                    continue
                seen.add(key)
            kept.append(r)
        self.rows = kept

    @property
    def counts(self) -> dict[str, int]:
        out = {o: sum(r["outcome"] == o for r in self.rows) for o in OUTCOMES}
        out["unchecked"] = len(self.unchecked)
        return out

    def by_suite(self) -> dict[str, dict[str, int]]:
        """Counts per suite, the model-health claims first."""
        out: dict[str, dict[str, int]] = {}
        for r in self.rows:
            out.setdefault(r["suite"], dict.fromkeys((*OUTCOMES, "unchecked"), 0))[r["outcome"]] += 1
        for test_id in self.unchecked:
            suite = Path(test_id.split("::")[0]).stem.removeprefix("test_")
            out.setdefault(suite, dict.fromkeys((*OUTCOMES, "unchecked"), 0))["unchecked"] += 1
        return dict(sorted(out.items(), key=lambda kv: (kv[0] != HEALTH_SUITE, kv[0])))

    def unhealthy(self) -> list[str]:
        """One line per model that failed a health claim (its value and bound): each fails the session."""
        failed: dict[str, list[str]] = {}
        for r in self.rows:
            if r["suite"] == HEALTH_SUITE and r["outcome"] == "failed":
                failed.setdefault(r["model"], []).append(health_failure(r))
        skipped = f"; {self.skipped_unhealthy} test(s) skipped" if self.skipped_unhealthy else ""
        return [f"model {m} is not healthy: {'; '.join(lines)}{skipped}" for m, lines in failed.items()]

    def strict_failures(self) -> list[str]:
        """Why ``--strict-claims`` fails this run (empty: it does not)."""
        c = self.counts
        out = []
        if self.store_error:
            out.append(f"the results store could not be read ({self.store_error}): no claim can be confirmed")
        if c["unverified"]:
            out.append(f"{c['unverified']} unverified claim(s)")
        if c["unchecked"]:
            out.append(f"{c['unchecked']} selected test(s) checked none of their claims (skipped or errored)")
        return out

    def lines(self, *, verbose: bool = False) -> list[str]:
        """The terminal's "claims" section: an unhealthy model first."""
        c = self.counts
        if self.store_error:
            return [f"claims: the results store could not be read: {self.store_error}"]
        decided = sum(c[o] for o in OUTCOMES)
        share = c["not_applicable"] / decided if decided else 0.0
        out = [f"UNHEALTHY {line}" for line in self.unhealthy()]
        out.append(f"claims: {c['passed']} passed, {c['failed']} failed, {c['unverified']} unverified, "
                   f"{c['not_applicable']} not applicable ({share:.0%}), {c['unchecked']} unchecked")
        for suite, n in self.by_suite().items():
            total = sum(n[o] for o in OUTCOMES)
            out.append(f"  {suite}: {n['passed']} passed, {n['failed']} failed, {n['unverified']} unverified, "
                       f"{n['not_applicable']} n/a ({n['not_applicable'] / total if total else 0:.0%}), "
                       f"{n['unchecked']} unchecked")
        for outcome in ("failed", "unverified"):
            for r in sorted(self.rows, key=lambda r: r["suite"] != HEALTH_SUITE):
                if r["outcome"] == outcome:
                    reason = _reason(r) if outcome == "unverified" else ""
                    out.append(f"{outcome.upper()} {r['suite']}.{r['metric']} [{r['model']}] value={r['value']}"
                               + (f" bound={r['bound']}" if r["bound"] is not None and outcome == "failed" else "")
                               + (f": {reason}" if reason else ""))
        for test_id in self.unchecked:
            out.append(f"UNCHECKED {test_id}: ended without deciding any claim")
        if verbose:
            out += [f"NOT APPLICABLE {r['suite']}.{r['metric']} [{r['model']}]: {_reason(r)}"
                    for r in self.rows if r["outcome"] == "not_applicable"]
        return out


def health_failure(row: dict) -> str:
    """A failed health claim's row in a few words: the line it was recorded with (``harness.health.failure``)."""
    import json

    extra = row.get("extra")
    extra = json.loads(extra) if isinstance(extra, str) else dict(extra or {})
    return extra.get("failure") or f"{row['metric']} {row['value']} vs {row['bound']}"


def _reason(row: dict) -> str:
    import json

    extra = row.get("extra")
    return (json.loads(extra) if isinstance(extra, str) else dict(extra or {})).get("reason", "")
