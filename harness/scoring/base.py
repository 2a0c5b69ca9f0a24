"""The scorer registry, the one output type (:class:`ScoreSet`) and the one library call (:func:`score`).

A scorer is one decorated function in one file::

    @scorer("magnitude")
    def magnitude(ctx: Context) -> ScoreSet: ...

It receives a :class:`Context` (the model, the selected :class:`ComponentRef` list, calibration
windows, a seeded generator) plus its own keyword options, and returns a :class:`ScoreSet`. A
``ScoreSet`` yields ``(ComponentRef, scores)`` one matrix at a time (``scores`` has the shape of the
selected rows of the parameter, float32, on the model's device) and picks the global top-k with a
bounded merge, so no consumer holds more than one matrix of scores beyond what the scorer keeps.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults.sites import FaultSite, find_tensor
from harness.models.archmap import ComponentRef, arch_map, select
from harness.models.device import input_device
from harness.registry import Registry

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

DEFAULT_COMPONENTS = "linear"  # the weight matrices of every block (attention + MLP)
DEFAULT_CALIB_WINDOWS, DEFAULT_CALIB_LENGTH = 8, 256  # calibration text when the caller passes none
DEFAULT_SEED = 0
TOKENS_PER_BATCH = 1024  # tokens per forward/backward call of the gradient scorers


@dataclass(frozen=True)
class Cost:
    """What a scoring run spent.

    Attributes:
        forward: model forward calls (each over one batch of windows or one prompt).
        backward: backward passes (a Hessian-vector product's second backward counts as one more).
        tokens: tokens through the forward calls.
        seconds: wall time of the whole scoring call, including one pass that computes every selected
            matrix's scores: scorers that compute at access (``magnitude``, ``z_score``, and the last
            elementwise step of the others) are timed doing that work, not only building the ScoreSet.
    """

    forward: int = 0
    backward: int = 0
    tokens: int = 0
    seconds: float = 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.forward + other.forward, self.backward + other.backward,
                    self.tokens + other.tokens, self.seconds + other.seconds)


@dataclass(frozen=True)
class ScoredSite:
    """One scored weight: where it is, its current value and its score."""

    site: FaultSite
    layer: int
    component: str
    value: float
    score: float

    @property
    def param(self) -> str:
        return self.site.param

    def to_dict(self) -> dict[str, Any]:
        index = list(self.site.index)
        return {
            "module": self.site.param, "layer": self.layer, "component": self.component,
            "row": index[0], "col": index[1] if len(index) > 1 else None, "index": index,
            "value": self.value, "score": self.score,
        }


def ref_shape(model: nn.Module, ref: ComponentRef) -> tuple[int, ...]:
    """Shape of the scores of ``ref``: the parameter's shape with dim 0 cut to the selected rows."""
    shape = tuple(model.get_parameter(ref.param).shape)
    return shape if ref.rows is None else (len(ref.rows), *shape[1:])


def ref_rows(ref: ComponentRef, device: torch.device) -> torch.Tensor | None:
    """The selected rows of ``ref`` as an index tensor on ``device``, or None for the whole matrix."""
    return None if ref.rows is None else torch.tensor(ref.rows, dtype=torch.long, device=device)


def ref_weight(model: nn.Module, ref: ComponentRef) -> torch.Tensor:
    """The selected rows of ``ref``'s parameter (a view for a whole matrix, a copy for fused rows)."""
    param = find_tensor(model, ref.param).detach()
    return param if ref.rows is None else param[ref_rows(ref, param.device)]


class ScoreSet:
    """Per-weight scores of one method over the selected matrices, produced one matrix at a time.

    Args:
        method: scorer name.
        refs: the scored components, in layer order.
        cost: forward/backward passes, tokens and seconds the scoring spent.
        model: the scored model (for values of the top-k weights and shapes).
        compute: ``ref -> scores`` (float32, shape :func:`ref_shape`); called lazily per matrix.
        sites: for sparse methods (``activation``): the found weights, best first; ``compute`` may be
            None and then iteration yields zeros except at these sites.
        threshold: ``top_k`` keeps only weights whose ``|score| >= threshold`` (None: no cut).
        signed: scores can be negative (``hessian``, ``integrated``); ranking uses ``|score|``.
        details: method-specific extras (the spikes of ``activation``, options used).
    """

    def __init__(self, method: str, refs: list[ComponentRef], cost: Cost, model: nn.Module,
                 compute: Callable[[ComponentRef], torch.Tensor] | None = None, *,
                 sites: list[ScoredSite] | None = None, threshold: float | None = None,
                 signed: bool = False, details: dict[str, Any] | None = None) -> None:
        if compute is None and sites is None:
            raise ValueError("a ScoreSet needs compute or sites")
        self.method = method
        self.refs = list(refs)
        self.cost = cost
        self.model = model
        self._compute = compute
        self.sites = sites
        self.threshold = threshold
        self.signed = signed
        self.details = details or {}

    def __repr__(self) -> str:
        return (f"ScoreSet(method={self.method!r}, matrices={len(self.refs)}, weights={self.numel():,}, "
                f"cost={self.cost})")

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self) -> Iterator[tuple[ComponentRef, torch.Tensor]]:
        for ref in self.refs:
            yield ref, self.scores(ref)

    def materialize(self) -> None:
        """Compute every selected matrix's scores once and drop them (what :func:`score` times in
        ``cost.seconds``); a no-op for sparse sets (``sites`` without ``compute``)."""
        if self._compute is None:
            return
        device = None
        for ref in self.refs:
            device = self._compute(ref).device
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)

    def numel(self) -> int:
        """Number of scored weights."""
        return sum(math.prod(ref_shape(self.model, ref)) for ref in self.refs)

    def scores(self, ref: ComponentRef) -> torch.Tensor:
        """The scores of one selected component (float32, shape :func:`ref_shape`)."""
        if self._compute is not None:
            return self._compute(ref)
        param = self.model.get_parameter(ref.param)
        out = torch.zeros(ref_shape(self.model, ref), dtype=torch.float32, device=param.device)
        rows = {r: i for i, r in enumerate(ref.rows)} if ref.rows is not None else None
        for s in self.sites or ():
            if s.site.param == ref.param and (rows is None or s.site.index[0] in rows):
                index = s.site.index if rows is None else (rows[s.site.index[0]], *s.site.index[1:])
                out[index] = s.score
        return out

    def top_k(self, k: int) -> list[ScoredSite]:
        """The ``k`` highest-ranked weights across all selected matrices, best first.

        Ranking is by score (by ``|score|`` for signed methods); ties go to the earlier matrix, then
        the lower flat index, so the result is deterministic. With a ``threshold``, weights below it
        are left out, so fewer than ``k`` (or none, logged) can come back. Memory: O(k) beyond one
        matrix of scores. For large k (pruning, top 1%), :meth:`top_k_indices` avoids one Python
        object per weight.

        Raises:
            HarnessError: ``k`` below 1 or larger than the number of scored weights.
        """
        self._check_k(k)
        if self.sites is not None:
            picked = [s for s in self.sites if self._passes(s.score)][:k]
        else:
            picked = self._to_sites(*self._dense_top_k(k))
        self._log_short(len(picked), k)
        return picked

    def top_k_indices(self, k: int) -> dict[ComponentRef, tuple[torch.Tensor, torch.Tensor]]:
        """The same selection as :meth:`top_k` as tensors, grouped by component.

        Returns:
            ``ref -> (index, scores)``: ``index`` (n, ndim) LongTensor of parameter coordinates (fused
            rows mapped to the parameter's rows), ``scores`` (n,) float32, both on the CPU, best first
            within each component; components with no selected weight are left out.

        Raises:
            HarnessError: as :meth:`top_k`.
        """
        self._check_k(k)
        if self.sites is not None:
            picked = [s for s in self.sites if self._passes(s.score)][:k]
            self._log_short(len(picked), k)
            out: dict[ComponentRef, tuple[torch.Tensor, torch.Tensor]] = {}
            for ref in self.refs:
                mine = [s for s in picked if s.site.param == ref.param]
                if mine:
                    out[ref] = (torch.tensor([s.site.index for s in mine], dtype=torch.long),
                                torch.tensor([s.score for s in mine], dtype=torch.float32))
            return out
        ref_i, flat, score = self._dense_top_k(k)
        self._log_short(flat.numel(), k)
        out = {}
        for i in ref_i.unique().tolist():
            at = (ref_i == i).nonzero().reshape(-1)
            out[self.refs[i]] = (self._coords(self.refs[i], flat[at]), score[at])
        return out

    def _check_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise HarnessError(f"top_k needs a positive integer k, got {k!r}")
        total = self.numel()
        if k > total:
            raise HarnessError(f"k={k:,} is larger than the {total:,} weights scored by {self.method} "
                               f"in {len(self.refs)} matrices; use k <= {total:,}")

    def _log_short(self, n: int, k: int) -> None:
        what = "was found" if self.sites is not None else f"reaches the threshold {self.threshold}"
        if n == 0:
            log.warning("%s: no weight %s; found nothing", self.method, what)
        elif n < k:
            log.info("%s: %d of the %d weights asked for; no other %s", self.method, n, k, what)

    def _passes(self, s: float) -> bool:
        return self.threshold is None or (abs(s) if self.signed else s) >= self.threshold

    def _dense_top_k(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(ref position, flat index in the ref's scores, score) of the global top k, best first, on CPU."""
        best_key = torch.empty(0)
        best_ref = torch.empty(0, dtype=torch.long)
        best_idx = torch.empty(0, dtype=torch.long)
        best_score = torch.empty(0)
        for i, ref in enumerate(self.refs):
            scores = self.scores(ref).detach().reshape(-1)
            key = scores.abs() if self.signed else scores
            idx = _stable_top(key, min(k, key.numel()))
            if self.threshold is not None:
                idx = idx[key[idx] >= self.threshold]
            # this matrix's candidates after the running best, so earlier entries win ties
            best_key = torch.cat([best_key, key[idx].float().cpu()])
            best_score = torch.cat([best_score, scores[idx].float().cpu()])
            best_ref = torch.cat([best_ref, torch.full((idx.numel(),), i, dtype=torch.long)])
            best_idx = torch.cat([best_idx, idx.cpu()])
            keep = _stable_top(best_key, min(k, best_key.numel()))
            best_key, best_score, best_ref, best_idx = best_key[keep], best_score[keep], best_ref[keep], best_idx[keep]
        return best_ref, best_idx, best_score

    def _coords(self, ref: ComponentRef, flat: torch.Tensor) -> torch.Tensor:
        """(n, ndim) parameter coordinates of flat indices into ``ref``'s scores."""
        coords = torch.stack(torch.unravel_index(flat, ref_shape(self.model, ref)), dim=1)
        if ref.rows is not None:
            coords[:, 0] = torch.tensor(ref.rows, dtype=torch.long)[coords[:, 0]]
        return coords

    def _to_sites(self, ref_i: torch.Tensor, flat: torch.Tensor, score: torch.Tensor) -> list[ScoredSite]:
        values = torch.empty(flat.numel(), dtype=torch.float64)
        index: list[tuple[int, ...]] = [()] * flat.numel()
        for i in ref_i.unique().tolist():
            ref = self.refs[i]
            at = (ref_i == i).nonzero().reshape(-1)
            param = find_tensor(self.model, ref.param).detach()
            coords = self._coords(ref, flat[at])
            values[at] = param[tuple(coords.to(param.device).T)].double().cpu()
            for j, c in zip(at.tolist(), coords.tolist(), strict=True):
                index[j] = tuple(c)
        out = []
        for j, (i, s) in enumerate(zip(ref_i.tolist(), score.tolist(), strict=True)):
            ref = self.refs[i]
            out.append(ScoredSite(FaultSite(ref.param, index[j]), ref.layer, ref.component, float(values[j]), s))
        return out


def _stable_top(key: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of the 1-D ``key``, ties broken by lower index (NaN last)."""
    if k == 0:
        return torch.empty(0, dtype=torch.long, device=key.device)
    key = torch.nan_to_num(key.float(), nan=-math.inf)
    kth = key.topk(k).values[-1]
    candidates = (key >= kth).nonzero().reshape(-1)  # ascending index; more than k when tied at kth
    order = key[candidates].sort(descending=True, stable=True).indices[:k]
    return candidates[order]


# -- registry ------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a scorer works on (built by :func:`score`).

    Attributes:
        model: the transformers model.
        tokenizer: its tokenizer, or None when a bare module was given.
        family: architecture family.
        refs: the selected components.
        windows: calibration token windows (count, length), on the model's device; None for
            scorers that need none.
        generator: a seeded ``torch.Generator`` (CPU unless the caller gave another).
        batch_size: windows per forward/backward call.
    """

    model: nn.Module
    tokenizer: Any
    family: str
    refs: list[ComponentRef]
    windows: torch.Tensor | None
    generator: torch.Generator
    batch_size: int

    @property
    def device(self) -> torch.device:
        return input_device(self.model)

    def batches(self) -> Iterator[torch.Tensor]:
        assert self.windows is not None
        for start in range(0, self.windows.shape[0], self.batch_size):
            yield self.windows[start:start + self.batch_size]


@dataclass(frozen=True)
class Scorer:
    """A registered scoring method.

    Attributes:
        name: registry name (also the ``method`` column of records).
        fn: ``fn(ctx, **options) -> ScoreSet``.
        needs_windows: uses calibration windows.
        signed: scores can be negative (rank by ``|score|``).
        components: the only component group it scores (``activation``: ``mlp_down``), or None.
        options: the keyword options ``fn`` takes, with their defaults.
    """

    name: str
    fn: Callable[..., ScoreSet]
    needs_windows: bool = False
    signed: bool = False
    components: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.splitlines()[0] if doc else ""


SCORERS: Registry[Scorer] = Registry("scorer")


def scorer(name: str, *, needs_windows: bool = False, signed: bool = False,
           components: str | None = None) -> Callable[[Callable[..., ScoreSet]], Callable[..., ScoreSet]]:
    """Register ``fn(ctx, **options) -> ScoreSet`` as scoring method ``name``."""

    def add(fn: Callable[..., ScoreSet]) -> Callable[..., ScoreSet]:
        params = list(inspect.signature(fn).parameters.values())[1:]
        options = {p.name: p.default for p in params if p.kind is p.KEYWORD_ONLY}
        SCORERS.register(name, Scorer(name, fn, needs_windows, signed, components, options))
        return fn

    return add


# -- the library call ----------------------------------------------------------------------------


def _unwrap(model_or_loaded: LoadedModel) -> tuple[nn.Module, Any]:
    if isinstance(model_or_loaded, nn.Module):
        return model_or_loaded, None
    model = getattr(model_or_loaded, "model", None)
    if not isinstance(model, nn.Module):
        raise HarnessError("score() needs a transformers model or a LoadedModel, "
                           f"not a {type(model_or_loaded).__name__}")
    return model, getattr(model_or_loaded, "tokenizer", None)


def _calibration(model: nn.Module, tokenizer: Any, method: str) -> torch.Tensor:
    if tokenizer is None:
        raise HarnessError(f"scorer {method!r} needs calibration windows: pass windows=... "
                           "(a LongTensor (count, length)) or a LoadedModel with a tokenizer")
    from harness.data import load_corpus, token_windows

    corpus = load_corpus()
    log.info("%s: no windows given; using %d x %d calibration tokens of %s",
             method, DEFAULT_CALIB_WINDOWS, DEFAULT_CALIB_LENGTH, corpus.name)
    return token_windows(tokenizer, corpus.calib_docs, DEFAULT_CALIB_LENGTH, DEFAULT_CALIB_WINDOWS, corpus.name)


def _check_windows(windows: Any) -> torch.Tensor:
    if not isinstance(windows, torch.Tensor) or windows.dim() != 2 or windows.dtype != torch.long:
        raise HarnessError("windows must be a LongTensor (count, length) of token ids, "
                           f"got {getattr(windows, 'dtype', type(windows).__name__)} "
                           f"{tuple(getattr(windows, 'shape', ()))}")
    if windows.shape[0] < 1 or windows.shape[1] < 2:
        raise HarnessError(f"windows need at least one window of 2 or more tokens, got shape {tuple(windows.shape)}")
    return windows


def score(model_or_loaded: LoadedModel, method: str, *, layers: Any = None, components: Any = None,
          windows: torch.Tensor | None = None, generator: torch.Generator | None = None,
          batch_size: int | None = None, **options: Any) -> ScoreSet:
    """Score the weights of the selected components with one method.

    Args:
        model_or_loaded: a ``LoadedModel`` (its tokenizer is used for prompts and default
            calibration text) or a transformers model.
        method: a name in ``SCORERS`` (``activation``, ``z_score``, ``magnitude``, ``gradient``,
            ``taylor``, ``fisher``, ``hessian``, ``integrated``, ``wanda``).
        layers: layers as :func:`harness.models.archmap.parse_layers` takes them (None: all).
        components: components or groups (default ``linear``: every weight matrix of each block;
            ``activation`` always scores ``mlp_down``).
        windows: calibration windows (count, length); default: 8 x 256 tokens of the offline corpus.
        generator: seeded ``torch.Generator`` for random probes (default: seeded with 0).
        batch_size: windows per forward/backward call (default: about 1024 tokens per call).
        **options: the method's own options (``SCORERS.get(method).options`` lists them).

    Returns:
        A :class:`ScoreSet`; its ``cost`` says how many passes the scoring took.

    Raises:
        UnknownNameError: unknown method (lists the known ones).
        HarnessError: an unknown option, bad layers/components, bad windows, or a model family
            whose parts the architecture map cannot locate.
    """
    entry = SCORERS.get(method)
    model, tokenizer = _unwrap(model_or_loaded)
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        allowed = ", ".join(f"{k}={v!r}" for k, v in entry.options.items()) or "none"
        raise HarnessError(f"scorer {method!r} has no option {unknown[0]!r}; its options: {allowed}")
    family = arch_map(model).family  # raises for a model type the map does not cover
    if entry.components is not None:
        if components not in (None, entry.components, [entry.components], (entry.components,)):
            raise HarnessError(f"scorer {method!r} scores only {entry.components!r}, not {components!r}")
        refs = select(model, layers=layers, components=entry.components)
    else:
        refs = select(model, layers=layers, components=DEFAULT_COMPONENTS if components is None else components)
    if windows is None and entry.needs_windows:
        windows = _calibration(model, tokenizer, method)
    if windows is not None:
        windows = _check_windows(windows).to(input_device(model))
    if batch_size is None:
        length = windows.shape[1] if windows is not None else 1
        batch_size = max(1, TOKENS_PER_BATCH // length)
    elif batch_size < 1:
        raise HarnessError(f"batch_size must be at least 1, got {batch_size}")
    if generator is None:
        generator = torch.Generator().manual_seed(DEFAULT_SEED)
    ctx = Context(model, tokenizer, family, refs, windows, generator, batch_size)
    training = model.training
    start = time.perf_counter()
    try:
        if training:
            model.eval()  # no dropout: scores must not depend on the RNG
        result = entry.fn(ctx, **options)
        result.materialize()  # lazy scorers do their work at access: time it as part of the scoring
    finally:
        if training:
            model.train()
    result.cost = replace(result.cost, seconds=time.perf_counter() - start)
    result.signed = entry.signed
    if log.isEnabledFor(logging.INFO):
        log.info("%s: scored %d matrices (%s weights) in %.2fs, %d forward / %d backward", method, len(refs),
                 f"{result.numel():,}", result.cost.seconds, result.cost.forward, result.cost.backward)
    return result

