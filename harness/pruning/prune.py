"""Pruning: masks from scores, applied in place, undone bit-exactly (or kept, for saving).

``with prune(model, scores, sparsity=0.5) as report:`` prunes the scored matrices and restores them
on exit, even when the body raises; ``prune(...).commit()`` keeps the edit (to save the model).
Contexts nest; each one restores what it changed.

How it runs, and what it holds:

1. Masks. Every matrix's scores are read once (twice for ``global``), one matrix at a time, and its
   mask is kept packed on the CPU (1 bit per selected element). No weight changes before all masks
   exist, so scorers that work lazily, layer by layer, score the unpruned model.
2. Edit. Per matrix: the original values are saved, the masked elements are replaced in place under
   ``torch.no_grad()`` by the prune method (``zero``, ``mean``, ``noise``), and the sparsity reached
   is counted. The model is never copied.
3. Restore (context manager only). The saved values are written back: the same bits as before.

Memory of the saved originals, per matrix, on ``backup_device`` (default cpu): the smaller of
``pruned * (index bytes + element bytes)`` (the pruned elements and their int32/int64 positions) and
``elements * element bytes`` (a copy of the matrix's selected rows), so at most one copy of the
touched matrices: at 50% sparsity of fp32 weights, a full copy (4 bytes/element); at 10%,
1.2 bytes/element. ``SparsityReport.backup_bytes`` states the amount. ``commit()`` saves nothing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.faults.base import Perturbation
from harness.faults.sites import FaultSite, find_tensor
from harness.pruning import masks as M
from harness.pruning.methods import PRUNE_METHODS

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

TARGETS = ("least", "most")  # prune the least important weights (pruning) or the most (ablation)


@dataclass(frozen=True)
class MatrixSparsity:
    """What pruning did to one matrix (the selected rows of one parameter).

    Attributes:
        param: full parameter name. layer, component: from the architecture map.
        numel: elements in the selected region; pruned: elements the mask selected;
        zeros: exact zeros in the region after the edit (pre-existing zeros included);
        protected: protected elements inside the region (never pruned).
    """

    param: str
    layer: int
    component: str
    numel: int
    pruned: int
    zeros: int
    protected: int = 0

    @property
    def sparsity(self) -> float:
        """Share of the region that was pruned."""
        return self.pruned / self.numel if self.numel else 0.0

@dataclass
class SparsityReport:
    """The sparsity actually reached, per matrix and overall."""

    scorer: str | None
    granularity: str
    method: str
    target_sparsity: float | None
    threshold: float | None
    matrices: list[MatrixSparsity] = field(default_factory=list)
    backup_bytes: int = 0
    model_params: int = 0

    @property
    def numel(self) -> int:
        return sum(m.numel for m in self.matrices)

    @property
    def pruned(self) -> int:
        return sum(m.pruned for m in self.matrices)

    @property
    def sparsity(self) -> float:
        """Pruned share of the selected matrices."""
        return self.pruned / self.numel if self.numel else 0.0

    @property
    def model_sparsity(self) -> float:
        """Pruned share of all parameters of the model."""
        return self.pruned / self.model_params if self.model_params else 0.0

    @property
    def protected(self) -> int:
        return sum(m.protected for m in self.matrices)

    def to_dict(self, per_matrix: bool = True) -> dict[str, Any]:
        """JSON-ready summary (``per_matrix=False`` drops the per-matrix list)."""
        out = {
            "scorer": self.scorer, "granularity": self.granularity, "method": self.method,
            "target_sparsity": self.target_sparsity, "threshold": self.threshold,
            "sparsity": self.sparsity, "model_sparsity": self.model_sparsity, "pruned": self.pruned,
            "numel": self.numel, "protected": self.protected, "backup_bytes": self.backup_bytes,
            "matrices": len(self.matrices),
            "min_matrix_sparsity": min((m.sparsity for m in self.matrices), default=0.0),
            "max_matrix_sparsity": max((m.sparsity for m in self.matrices), default=0.0),
        }
        if per_matrix:
            out["per_matrix"] = [dict(asdict(m), sparsity=m.sparsity) for m in self.matrices]
        return out


@dataclass
class _Saved:
    param: str
    rows: torch.Tensor | None  # row indices of a fused matrix, else None
    flat: torch.Tensor | None  # positions in the region of the saved values; None: values is the region
    values: torch.Tensor


def _module(model_or_loaded: LoadedModel) -> torch.nn.Module:
    return model_or_loaded if isinstance(model_or_loaded, torch.nn.Module) else model_or_loaded.model


def protect_map(protect: Iterable[Any] | None) -> dict[str, list[tuple[int, ...]]]:
    """Protected element indices by parameter name.

    Args:
        protect: ``FaultSite``s, objects with ``.site`` (``ScoredSite``), or dicts with ``param``
            (or ``module``) and ``index`` (or ``row``/``col``), as in ``super_weights.json``.
    """
    out: dict[str, list[tuple[int, ...]]] = {}
    for item in protect or ():
        site = getattr(item, "site", item)
        if isinstance(site, dict):
            param = site.get("param") or site.get("module")
            if param and not param.endswith(".weight") and "index" not in site:
                param = f"{param}.weight"
            index = site.get("index") or [site.get("row"), site.get("col")]
            site = FaultSite(param, tuple(i for i in index if i is not None))
        if not isinstance(site, FaultSite):
            raise HarnessError(f"cannot protect {item!r}: give FaultSites or dicts with param/index "
                               "(or module/row/col)")
        out.setdefault(site.param, []).append(site.index)
    return out


def _pack(mask: torch.Tensor) -> tuple[np.ndarray, torch.Size]:
    """A bool mask as 1 bit per element on the CPU."""
    return np.packbits(mask.reshape(-1).cpu().numpy(), bitorder="little"), mask.shape


def _unpack(packed: tuple[np.ndarray, torch.Size], device: torch.device) -> torch.Tensor:
    bits, shape = packed
    flat = np.unpackbits(bits, count=math.prod(shape), bitorder="little").view(np.bool_)
    return torch.from_numpy(flat).view(shape).to(device)


class Pruning(Perturbation):
    """Prune ``scores``' matrices of ``model``; a context manager (restores) or ``commit()`` (keeps).

    A :class:`~harness.faults.Perturbation`: ``with`` applies and restores in ``finally``, bit-exactly,
    from a compact backup (only the pruned elements, or the whole region where that is smaller,
    on ``backup_device``); ``with`` yields the :class:`SparsityReport`.

    Args:
        model: a transformers model or a ``LoadedModel``.
        scores: a ``ScoreSet`` from :func:`harness.scoring.score` (or any re-iterable of
            ``(ComponentRef, scores)``).
        sparsity: share of each group to prune, in [0, 1); fixed by an N:M granularity.
        granularity: ``matrix``, ``row``, ``global``, ``N:M`` (``2:4``), ``head`` or ``neuron``
            (see :mod:`harness.pruning.masks`).
        method: a name in ``PRUNE_METHODS`` (``zero``, ``mean``, ``noise``).
        threshold: also (or only) prune elements whose score over the matrix's largest |score| is
            below this value, in [0, 1] (matrix, row, global and N:M granularities).
        protect: sites never pruned (FaultSites, ScoredSites or ``super_weights.json`` entries).
        generator: CPU ``torch.Generator`` for the noise method (default: seeded with 0).
        target: ``least`` prunes the lowest scores (pruning); ``most`` the highest (ablation of the
            most important weights, as the research framework's selective pruning did).
        backup_device: where the saved originals live (default cpu).

    Raises:
        HarnessError: sparsity outside [0, 1), N:M with N >= M or a width not divisible by M (when
            the masks are made), an unknown method or granularity, scores of the wrong shape or NaN.
    """

    kind = "pruning"

    def __init__(self, model: Any, scores: Any, *, sparsity: float | None = None, granularity: str = "row",
                 method: str = "zero", threshold: float | None = None, protect: Iterable[Any] | None = None,
                 generator: torch.Generator | None = None, target: str = "least",
                 backup_device: str | torch.device = "cpu", allow_full: bool = False) -> None:
        super().__init__(_module(model))
        self.scores = scores
        self.granularity = M.parse_granularity(granularity)
        self.method_name = method
        self.method = PRUNE_METHODS.get(method)
        if target not in TARGETS:
            raise HarnessError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
        self.target = target
        fixed = self.granularity.fixed_sparsity
        if fixed is not None:
            if sparsity is not None and abs(float(sparsity) - fixed) > 1e-9:
                raise HarnessError(f"{self.granularity} sparsity is {fixed:g} by definition; got sparsity={sparsity}")
            sparsity = fixed
        if sparsity is None and threshold is None:
            raise HarnessError("give a sparsity in [0, 1) (or a percentile) and/or a threshold in [0, 1]")
        self.sparsity = None if sparsity is None else M.check_fraction(sparsity, allow_one=allow_full)
        if threshold is not None:
            threshold = M.check_fraction(threshold, "threshold", allow_one=True)
            if self.granularity.structured:
                raise HarnessError(f"threshold applies to unstructured granularities, not {self.granularity}")
        self.threshold = threshold
        self.protect = protect_map(protect)
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.backup_device = torch.device(backup_device)
        self.report: SparsityReport | None = None

    # -- context manager / commit ----------------------------------------------------------------

    def __enter__(self) -> SparsityReport:  # type: ignore[override]
        self.apply()
        assert self.report is not None
        return self.report

    def _apply(self) -> None:
        self._run(save=True)

    def commit(self) -> SparsityReport:
        """Prune permanently (nothing saved, nothing restored); for saving a pruned model."""
        return self._run(save=False)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "scorer": getattr(self.scores, "method", None),
                "granularity": self.granularity.name, "method": self.method_name, "sparsity": self.sparsity,
                "threshold": self.threshold, "target": self.target}

    def _restore_one(self, s: _Saved) -> None:
        """Write one saved original back (bit-exact: same dtype, no arithmetic)."""
        param = find_tensor(self.model, s.param).detach()
        region = param if s.rows is None else param[s.rows.to(param.device)]
        if s.flat is None:
            region.copy_(s.values.view(region.shape))
        else:
            region.view(-1)[s.flat.to(param.device).long()] = s.values.to(param.device)
        if s.rows is not None:
            param.index_copy_(0, s.rows.to(param.device), region)

    # -- masks -----------------------------------------------------------------------------------

    def _prepared(self, ref: Any, scores: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Scores as (R, C) float32, negated for target=most, protected elements at +inf."""
        param = self.model.get_parameter(ref.param)
        shape = param.shape if ref.rows is None else (len(ref.rows), *param.shape[1:])
        if tuple(scores.shape) != tuple(shape):
            raise HarnessError(f"scores for {ref.param} have shape {tuple(scores.shape)}, expected {tuple(shape)}")
        s = scores.detach().float().reshape(1, -1) if scores.dim() == 1 else scores.detach().float()
        if s.dim() != 2:
            raise HarnessError(f"cannot prune {ref.param} of shape {tuple(shape)}: only vectors and matrices")
        if torch.isnan(s).any():
            raise HarnessError(f"scores for {ref.param} contain NaN; the scorer failed on this matrix")
        if getattr(self.scores, "signed", False):
            s = s.abs()  # signed scorers (hessian, integrated) rank by |score|
        if self.target == "most":
            s = -s
        positions = self._protected_positions(ref, param.dim(), s.shape)
        if positions:
            s = s.clone() if s.data_ptr() == scores.data_ptr() else s
            idx = torch.tensor(positions, device=s.device)
            s[idx[:, 0], idx[:, 1]] = math.inf
        return s, positions

    def _protected_positions(self, ref: Any, dims: int, shape: torch.Size) -> list[tuple[int, int]]:
        sites = self.protect.get(ref.param, ())
        if not sites:
            return []
        row_of = None if ref.rows is None else {r: i for i, r in enumerate(ref.rows)}
        out = []
        for index in sites:
            if len(index) != dims:
                raise HarnessError(f"protected site {index} of {ref.param} needs {dims} indices")
            r, c = (0, index[0]) if dims == 1 else index
            if dims == 2 and row_of is not None:
                if r not in row_of:
                    continue  # another component's rows of a fused matrix
                r = row_of[r]
            if not (0 <= r < shape[0] and 0 <= c < shape[1]):
                raise HarnessError(f"protected site {index} is out of range for {ref.param} of shape {tuple(shape)}")
            out.append((r, c))
        return out

    def _mask(self, s: torch.Tensor, ref: Any) -> torch.Tensor:
        g = self.granularity
        mask = None
        if self.sparsity is not None:
            if g.kind == "matrix":
                mask = M.lowest(s, M.count_of(self.sparsity, s.numel()))
            elif g.kind == "row":
                mask = M.lowest_per_row(s, M.count_of(self.sparsity, s.shape[1]))
            elif g.kind == "nm":
                mask = M.n_of_m(s, g.n, g.m, ref.param)
        if self.threshold is not None:
            limit = self.threshold if self.target == "least" else -self.threshold
            below = M.below_threshold(s, limit)
            mask = below if mask is None else mask & below
        return mask

    def _masks(self) -> list[tuple[Any, tuple[torch.Tensor, torch.Size], int]]:
        """(ref, packed mask, protected count) for every scored matrix, before any edit."""
        g = self.granularity
        out = []
        if g.structured:
            return self._structured_masks()
        if g.kind == "global":
            if iter(self.scores) is self.scores:
                raise HarnessError("global granularity reads the scores twice: pass a ScoreSet, not an iterator")
            selection = M.GlobalSelection()
            for ref, scores in self.scores:
                selection.add(self._prepared(ref, scores)[0])
            if self.sparsity is not None:
                selection.finish(self.sparsity)
            for i, (ref, scores) in enumerate(self.scores):
                s, positions = self._prepared(ref, scores)
                mask = selection.mask(i, s) if self.sparsity is not None else None
                if self.threshold is not None:
                    limit = self.threshold if self.target == "least" else -self.threshold
                    below = M.below_threshold(s, limit)
                    mask = below if mask is None else mask & below
                out.append((ref, _pack(self._unprotect(mask, positions)), len(positions)))
            return out
        for ref, scores in self.scores:
            s, positions = self._prepared(ref, scores)
            out.append((ref, _pack(self._unprotect(self._mask(s, ref), positions)), len(positions)))
        return out

    @staticmethod
    def _unprotect(mask: torch.Tensor, positions: list[tuple[int, int]]) -> torch.Tensor:
        if positions:
            idx = torch.tensor(positions, device=mask.device)
            mask[idx[:, 0], idx[:, 1]] = False
        return mask

    def _structured_masks(self) -> list[tuple[Any, tuple[torch.Tensor, torch.Size], int]]:
        config = self.model.config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        wanted = "neuron" if self.granularity.kind == "neuron" else ("head", "kv_head")
        sums: dict[tuple[int, str], torch.Tensor] = {}
        members: list[tuple[Any, str, int, int, torch.Size, int]] = []
        for ref, scores in self.scores:
            kind, dim = M.UNIT_AXIS.get(ref.component, (None, 0))
            if kind is None or kind not in wanted:
                log.info("%s granularity skips %s (no %ss)", self.granularity, ref.param, self.granularity)
                continue
            s, positions = self._prepared(ref, scores)
            width = 1 if kind == "neuron" else head_dim
            unit = M.unit_sums(s, dim, width)
            key = (ref.layer, kind)
            if key in sums and sums[key].numel() != unit.numel():
                raise HarnessError(f"layer {ref.layer}: {ref.component} has {unit.numel()} {kind}s, others "
                                   f"{sums[key].numel()}")
            sums[key] = unit if key not in sums else sums[key] + unit
            members.append((ref, kind, dim, width, s.shape, len(positions)))
        if not members:
            raise HarnessError(f"{self.granularity} granularity needs components with {self.granularity}s: "
                               f"{', '.join(c for c, (k, _) in M.UNIT_AXIS.items() if k in wanted)}")
        chosen = {}
        for key, unit in sums.items():
            k = M.count_of(self.sparsity, unit.numel())
            k = min(k, int(torch.isfinite(unit).sum()))  # never a unit holding a protected element
            chosen[key] = M.lowest(unit, k).nonzero().squeeze(1)
        out = []
        for ref, kind, dim, width, shape, n_protected in members:
            mask = M.unit_mask(tuple(shape), dim, width, chosen[(ref.layer, kind)].cpu())
            out.append((ref, _pack(mask), n_protected))
        return out

    # -- edit ------------------------------------------------------------------------------------

    def _run(self, save: bool) -> SparsityReport:
        planned = self._masks()
        report = SparsityReport(
            scorer=getattr(self.scores, "method", None), granularity=self.granularity.name, method=self.method_name,
            target_sparsity=self.sparsity, threshold=self.threshold,
            model_params=sum(p.numel() for p in self.model.parameters()),
        )
        for ref, packed, n_protected in planned:
            report.matrices.append(self._edit(ref, packed, n_protected, save, report))
        self.report = report
        log.info("pruned %d of %d weights (%.2f%%) in %d matrices, %s/%s/%s%s", report.pruned, report.numel,
                 100 * report.sparsity, len(report.matrices), report.scorer, report.granularity, report.method,
                 "" if not save else f"; {report.backup_bytes / 2**20:.1f} MiB saved to restore")
        return report

    @torch.no_grad()
    def _edit(self, ref: Any, packed: tuple[torch.Tensor, torch.Size], n_protected: int, save: bool,
              report: SparsityReport) -> MatrixSparsity:
        param = find_tensor(self.model, ref.param).detach()
        rows = None if ref.rows is None else torch.tensor(ref.rows, device=param.device)
        region = param if rows is None else param[rows]  # a view, or a copy of the fused rows
        flat_region = region.view(1, -1) if region.dim() == 1 else region  # (R, C)
        mask = _unpack(packed, param.device)
        pruned = int(torch.count_nonzero(mask))
        if save and pruned:
            report.backup_bytes += self._save(ref, rows, flat_region, mask, pruned)
        if pruned:
            fill = self.method(flat_region, mask, self.generator)
            if isinstance(fill, torch.Tensor):
                flat_region.masked_scatter_(mask, fill.to(param.dtype))
            else:
                flat_region.masked_fill_(mask, fill)
            if rows is not None:
                param.index_copy_(0, rows, region)
        zeros = flat_region.numel() - int(torch.count_nonzero(flat_region))
        return MatrixSparsity(ref.param, ref.layer, ref.component, flat_region.numel(), pruned, zeros, n_protected)

    def _keep(self, saved: _Saved) -> None:
        self._push(lambda: self._restore_one(saved))

    def _save(self, ref: Any, rows: torch.Tensor | None, region: torch.Tensor, mask: torch.Tensor, pruned: int) -> int:
        """Save what the edit will overwrite, choosing the smaller form; returns the bytes held."""
        elem = region.element_size()
        index_dtype = torch.int32 if region.numel() < 2**31 else torch.int64
        index_bytes = 4 if index_dtype is torch.int32 else 8
        keep_rows = None if rows is None else rows.to(self.backup_device)
        if pruned * (index_bytes + elem) < region.numel() * elem:
            flat = mask.reshape(-1).nonzero().squeeze(1)
            values = region.reshape(-1)[flat].to(self.backup_device)
            self._keep(_Saved(ref.param, keep_rows, flat.to(index_dtype).to(self.backup_device), values))
            return pruned * (index_bytes + elem)
        self._keep(_Saved(ref.param, keep_rows, None, region.to(self.backup_device, copy=True)))
        return region.numel() * elem


def prune(model: Any, scores: Any, sparsity: float | None = None, **kw: Any) -> Pruning:
    """``with prune(model, scores, 0.5, granularity="row") as report:`` (see :class:`Pruning`)."""
    return Pruning(model, scores, sparsity=sparsity, **kw)


def prune_permanently(model: Any, scores: Any, sparsity: float | None = None, **kw: Any) -> SparsityReport:
    """Prune in place for good (no copy, nothing saved); returns the :class:`SparsityReport`."""
    return Pruning(model, scores, sparsity=sparsity, **kw).commit()
