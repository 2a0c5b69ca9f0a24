"""The weight-attack registry and the live attack state every attack works through.

An attack is one decorated function ``fn(session, **options)`` that chooses flips and hands them to
the :class:`AttackSession`: ``with session.trying(site): session.loss()`` tries a flip and takes it back,
``session.commit(site)`` keeps it and measures perplexity on the evaluation windows. The session
applies every flip through the injector (:func:`harness.faults.flip_bits`), lets the defense repair
after each one, and on close undoes everything, last first, so the model is bit-identical to before
(also when the attack raises). :func:`run_attack` is the one library call.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.attacks.gradients import loss_of
from harness.attacks.result import AttackResult
from harness.errors import HarnessError
from harness.faults import FaultSite, flip_bits, stored_bits
from harness.metrics import COLLAPSE_RATIO, evaluate, is_collapse
from harness.models.archmap import select
from harness.models.device import dtype_name
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.int8)
DEFAULT_COMPONENTS = "linear"

ATTACKS: Registry[Callable[..., None]] = Registry("weight attack")


def attack(name: str, *, grid: bool = True) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register ``fn(session, **options)`` as weight attack ``name``; ``grid``: part of the suite's default
    grid (tag ``grid``; the replay of another run's flips is not)."""
    return ATTACKS.register(name, tags=("grid",) if grid else ())


@dataclass(frozen=True)
class Target:
    """One weight matrix an attack may flip bits in."""

    layer: int
    component: str
    module: str
    param: str


def attack_options(method: str) -> dict[str, Any]:
    """The keyword options of attack ``method`` with their defaults."""
    params = inspect.signature(ATTACKS.get(method)).parameters.values()
    return {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY and p.name != "loaded"}


def supported_dtypes() -> str:
    return ", ".join(dtype_name(d) for d in SUPPORTED_DTYPES)


def attack_targets(model: nn.Module, layers: Any = None, components: Any = DEFAULT_COMPONENTS) -> list[Target]:
    """The weight matrices of the selected layers and components (a fused matrix once).

    Raises:
        HarnessError: bad layers/components (from the architecture map), or a weight whose dtype no
            attack supports (the message lists the supported ones).
    """
    targets: dict[str, Target] = {}
    for ref in select(model, layers, components):
        if ref.param not in targets:
            targets[ref.param] = Target(ref.layer, ref.component, ref.module, ref.param)
    for t in targets.values():
        dtype = stored_bits(model, t.param).dtype
        if dtype not in SUPPORTED_DTYPES:
            raise HarnessError(f"bit-flip attacks support {supported_dtypes()} weights; "
                               f"{t.param} is {dtype_name(dtype)}")
    return list(targets.values())


def check_budget(budget: Any) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise HarnessError(f"flip budget must be an integer >= 1, got {budget!r}")
    return budget


class AttackSession:
    """The attacked model while an attack runs: committed flips, the damage curve, the defense.

    Use as a context manager; on exit every flip and every repair is undone, last first.

    Args:
        model: the model, edited in place.
        targets: the matrices the attack may touch.
        eval_windows: (count, length) tokens for the damage curve and the collapse test.
        attack_windows: (count, length) tokens for the attack's gradients and trial losses.
        budget: most flips to commit.
        defense: a :class:`harness.attacks.defenses.Defense` or None.
        threshold: collapse ratio (perplexity x clean).
        clean_perplexity: the clean model's perplexity on ``eval_windows`` if already measured
            (saves one pass); measured on entry otherwise.
    """

    def __init__(self, model: nn.Module, targets: list[Target], *, eval_windows: torch.Tensor,
                 attack_windows: torch.Tensor, budget: int, defense: Any = None,
                 threshold: float = COLLAPSE_RATIO, clean_perplexity: float | None = None) -> None:
        self.model = model
        self.targets = targets
        self.eval_windows = eval_windows
        self.attack_windows = attack_windows
        self.budget = check_budget(budget)
        self.defense = defense
        self.threshold = threshold
        self.clean_perplexity = clean_perplexity
        self.flips: list[FaultSite] = []
        self.curve: list[float] = []
        self.forwards = 0
        self.repaired = 0
        self._stack = ExitStack()
        self._guard = None

    def __enter__(self) -> AttackSession:
        try:
            if self.defense is not None:
                self._guard = self._stack.enter_context(self.defense.guard(self.model, self.targets))
            self.curve.append(self._perplexity() if self.clean_perplexity is None else self.clean_perplexity)
        except BaseException:
            self._stack.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    # -- state ------------------------------------------------------------------------------------

    @property
    def collapsed(self) -> bool:
        """The last measured point collapsed (NaN = not measured)."""
        return self.collapses(next((c for c in reversed(self.curve) if not math.isnan(c)), self.curve[0]))

    def collapses(self, perplexity: float) -> bool:
        """``perplexity`` is a collapse against the clean one (:func:`harness.metrics.is_collapse` at
        ``threshold``)."""
        return is_collapse(perplexity / self.curve[0], self.threshold)

    @property
    def done(self) -> bool:
        return self.collapsed or len(self.flips) >= self.budget

    def bounds(self) -> dict[str, tuple[float, float]]:
        """Per parameter, the (lo, hi) the active defense clamps weights to (empty without one).

        The attacker is white-box: it knows the clamp ranges (they are the weights' own min/max).
        """
        return self._guard.bounds() if self._guard is not None and hasattr(self._guard, "bounds") else {}

    def dtype_of(self, param: str) -> torch.dtype:
        return stored_bits(self.model, param).dtype

    # -- actions ----------------------------------------------------------------------------------

    def _scrub(self, params: set[str]):
        """The defense's repair after a flip (an applied, restorable perturbation) or a no-op."""
        return self._guard.scrub(params) if self._guard is not None else ExitStack()

    def _perplexity(self) -> float:
        self.forwards += 1
        return evaluate(self.model, self.eval_windows).perplexity

    @contextmanager
    def trying(self, site: FaultSite) -> Iterator[None]:
        """Inside the block ``site`` is flipped and the defense has repaired; both are undone after."""
        with flip_bits(self.model, [site]), self._scrub({site.param}):
            yield

    def loss(self) -> float:
        """The attack loss (mean NLL on the attack windows) of the model as it is now."""
        self.forwards += 1
        return loss_of(self.model, self.attack_windows)

    def probe(self, sites: list[FaultSite]) -> float:
        """Perplexity with ``sites`` flipped one after another (the defense repairing after each),
        then all taken back; committed flips stay. Costs one evaluation."""
        with ExitStack() as stack:
            for site in sites:
                stack.enter_context(flip_bits(self.model, [site]))
                stack.enter_context(self._scrub({site.param}))
            return self._perplexity()

    def commit(self, site: FaultSite, measure: bool = True, perplexity: float | None = None) -> float:
        """Keep the flip ``site`` (one bit), let the defense repair, and measure perplexity.

        With ``measure=False`` the curve gets NaN (not measured) for this flip and no pass is spent;
        ``perplexity`` is a value :meth:`probe` already measured for exactly this state.
        """
        if len(site.bits) != 1:
            raise HarnessError(f"an attack commits one bit per flip, got bits {site.bits} at {site.param}")
        if len(self.flips) >= self.budget:
            raise HarnessError(f"flip budget of {self.budget} is spent")
        self._stack.enter_context(flip_bits(self.model, [site]))
        repair = self._stack.enter_context(self._scrub({site.param}))
        self.repaired += int(getattr(repair, "n_repaired", 0) > 0)
        self.flips.append(site)
        if perplexity is None:
            perplexity = self._perplexity() if measure else math.nan
        self.curve.append(perplexity)
        log.debug("flip %d: %s bit %d -> perplexity %.4g", len(self.flips), site.param, site.bits[0], self.curve[-1])
        return self.curve[-1]


def run_attack(model_or_loaded: LoadedModel, method: str, *, eval_windows: torch.Tensor,
               attack_windows: torch.Tensor | None = None, budget: int = 16, defense: Any = None,
               threshold: float = COLLAPSE_RATIO, layers: Any = None, components: Any = DEFAULT_COMPONENTS,
               clean_perplexity: float | None = None, **options: Any) -> AttackResult:
    """Run one weight attack on the live model and put the model back bit-exactly.

    Args:
        model_or_loaded: a transformers model or a ``LoadedModel`` (the guided attack needs its
            tokenizer to detect super weights unless ``super_weights=`` is given).
        method: a name in :data:`ATTACKS` (``progressive``, ``guided``, ``random``).
        eval_windows: (count, length) tokens; the damage curve is perplexity on them.
        attack_windows: tokens for gradients and trial losses (default: ``eval_windows``); use
            separate text to keep the attack from fitting the evaluation text.
        budget: most flips (>= 1).
        defense: a defense object (:func:`harness.attacks.defenses.make_defense`) or None.
        threshold: collapse when perplexity >= threshold x clean (default 10), or non-finite.
        layers, components: where flips may go (default: every block's weight matrices).
        clean_perplexity: the clean model's perplexity on ``eval_windows``, if already measured
            (this model, these windows, this dtype); saves one evaluation.
        **options: the attack's own options (``generator`` for the seeded ones).

    Returns:
        An :class:`AttackResult` with the flips in order and the damage curve.

    Raises:
        HarnessError: unknown method, budget < 1, an unsupported dtype, bad layers/components, or
            an option the attack does not take.
    """
    fn = ATTACKS.get(method)
    check_budget(budget)
    allowed = attack_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise HarnessError(f"attack {method!r} has no option {unknown[0]!r}; it takes: {', '.join(allowed) or 'none'}")
    model = model_or_loaded if isinstance(model_or_loaded, nn.Module) else model_or_loaded.model
    targets = attack_targets(model, layers, components)
    dtypes = sorted({dtype_name(stored_bits(model, t.param).dtype) for t in targets})
    start = time.perf_counter()
    attack_windows = eval_windows if attack_windows is None else attack_windows
    with AttackSession(model, targets, eval_windows=eval_windows, attack_windows=attack_windows, budget=budget,
                       defense=defense, threshold=threshold, clean_perplexity=clean_perplexity) as session:
        extra = fn(session, loaded=model_or_loaded, **options) or {}
        result = AttackResult(
            method=method, flips=tuple(session.flips), curve=tuple(session.curve), threshold=threshold,
            budget=budget, defense=getattr(defense, "name", "none"), dtype=",".join(dtypes),
            seconds=time.perf_counter() - start, forwards=session.forwards, repaired=session.repaired,
            extra=extra,
        )
    log.info("%s attack (%s, defense %s): %s flips, perplexity %.4g -> %.4g, %d forwards, %.1f s",
             method, result.dtype, result.defense, len(result.flips), result.curve[0], result.curve[-1],
             result.forwards, result.seconds)
    return result
