"""The campaign engine: seeded trials of a cell, each a perturbation evaluated against the clean model,
with prefix reuse, exact early stops and (optionally) batched bit-flip trials.

    clean = clean_baseline(model, windows, keep_blocks=True)
    campaign = Campaign(model, windows, clean)
    for rec in campaign.run(trial_specs(seed, 20), lambda spec, g: flip_bits(model, sample(g)), cell="sign"):
        rec.trial.ratio, rec.trial.collapsed, rec.perturbation.sites

Seed policy: trial t of a run with ``--seed s`` draws from ``torch.Generator().manual_seed(s * 100_003 + t)``
(:func:`trial_seed`), so trial t samples the same sites in every cell that samples alike (a paired design).

Per trial (:meth:`Campaign.trial`), with a :class:`~harness.campaign.trial.Clean` built with ``keep_blocks``:

- the parameters the perturbation touches (bit flips, noise, ablation) name the blocks it faults; the
  forward starts at the first of them on the kept clean input (``harness.campaign.prefix``);
- a non-finite block output ends the trial as a collapse (``Trial.stopped_at``; ``top1`` not measured);
- the last faulted block's output bit-identical to the clean one ends that window batch with the clean
  batch's stored contribution (``Trial.masked`` when every batch was);
- the reduction is :func:`harness.metrics.reduce.reduce_batch`, the one ``evaluate`` runs.

Ratio, perplexity, KL and top-1 therefore equal :func:`harness.campaign.trial.run_trial`'s (the full
recompute) bit for bit on a deterministic device; on CUDA, kernels are chosen per shape and reductions may
be non-deterministic, so the prefix path agrees with a full recompute to rounding (as two full recomputes
do), not bit for bit.

Batched trials (``trials_per_forward`` > 1): bit flips in linear weights run ``trials_per_forward`` at a time
in one forward (``harness.campaign.batched``); values agree with the per-trial path to rounding. Default: 1
on the CPU (measured: no gain there, see benchmarks/test_fault_bench.py), ``GPU_TRIALS_PER_FORWARD`` on CUDA.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.campaign import batched
from harness.campaign.prefix import Stop, batches, blocks_of, fault_blocks, replay, watch
from harness.campaign.progress import Progress
from harness.campaign.trial import Clean, Trial
from harness.errors import HarnessError
from harness.faults.ablation import Ablation
from harness.faults.injector import BitFlip
from harness.faults.noise import Noise
from harness.metrics import EvalResult
from harness.metrics.perplexity import default_batch_size
from harness.metrics.reduce import combine, reduce_batch
from harness.models.device import input_device
from harness.stats import trial_seed

log = logging.getLogger(__name__)

GPU_TRIALS_PER_FORWARD = 8


@dataclass(frozen=True)
class TrialSpec:
    """One trial of a cell: its index, its generator seed and the cell's other coordinates (a level, ...)."""

    trial: int
    seed: int
    values: Mapping[str, Any] = field(default_factory=dict)


def trial_specs(seed: int, trials: int, *, first: int = 0, **axes: Sequence[Any]) -> list[TrialSpec]:
    """The specs of a cell: ``trials`` trials from trial ``first`` on, with the seed policy (:func:`trial_seed`),
    each crossed with every combination of ``axes`` (``level=(0.1, 0.2)``), trial-major: all of trial 0 first.

    Raises:
        HarnessError: fewer than 1 trial.
    """
    if trials < 1:
        raise HarnessError(f"a campaign cell needs at least 1 trial, got {trials}")
    names = list(axes)
    return [TrialSpec(t, trial_seed(seed, t), dict(zip(names, combo, strict=True)))
            for t in range(first, first + trials) for combo in itertools.product(*(axes[n] for n in names))]


@dataclass(frozen=True)
class TrialRecord:
    """What a cell's trial gives: the spec, the perturbation it built (sites, regions) and its :class:`Trial`."""

    spec: TrialSpec
    perturbation: Any
    trial: Trial


def touched_params(perturbation: object) -> set[str] | None:
    """Parameters a weight perturbation edits (bit flips, noise, ablation); None when not known."""
    if isinstance(perturbation, BitFlip):
        return {s.param for s in perturbation.sites}
    if isinstance(perturbation, Noise):
        return {r.param for r in perturbation.regions}
    if isinstance(perturbation, Ablation):
        return {r.param for r in perturbation.regions} | set(perturbation.elements)
    return None


def _blocks_or_none(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    try:
        return blocks_of(model)
    except (HarnessError, AttributeError):  # a model outside the architecture map: no early stops
        return None


def default_trials_per_forward(model: torch.nn.Module) -> int:
    """1 on the CPU (batching does not pay there), ``GPU_TRIALS_PER_FORWARD`` on CUDA."""
    return GPU_TRIALS_PER_FORWARD if input_device(model).type == "cuda" else 1


class Campaign:
    """Trials of one model on one set of windows against one clean baseline.

    Args:
        model: the model perturbations edit in place (restored after each trial).
        windows: (count, length) token windows, the ones ``clean`` was measured on.
        clean: :func:`~harness.campaign.trial.clean_baseline` of the model on ``windows``; with
            ``keep_blocks=True`` trials reuse the clean prefix and stop masked batches early.
        stop_early: end a trial at a non-finite block output (collapse) and at a masked faulted block.
        kl: compute KL (False: ``result.kl`` is None; perplexity and top-1 unchanged).
        trials_per_forward: bit-flip trials per forward in :meth:`trials`/:meth:`run` (None: the device
            default, :func:`default_trials_per_forward`).
    """

    def __init__(self, model: torch.nn.Module, windows: torch.Tensor, clean: Clean, *, stop_early: bool = True,
                 kl: bool = True, trials_per_forward: int | None = None) -> None:
        self.model, self.windows, self.clean = model, windows, clean
        self.prefix = clean.prefix
        self.stop_early, self.kl = stop_early, kl
        self.per_forward = trials_per_forward or default_trials_per_forward(model)
        if self.per_forward < 1:
            raise HarnessError(f"trials_per_forward must be at least 1, got {self.per_forward}")
        self.batch_size = clean.batch_size or default_batch_size(windows)
        self.n_tokens = windows.shape[0] * (windows.shape[1] - 1)
        self.device = input_device(model)
        self._blocks = blocks_of(model) if self.prefix is not None else _blocks_or_none(model)

    # -- one trial ---------------------------------------------------------------------------------

    def _span(self, perturbation: object) -> tuple[int, int | None]:
        if self.prefix is None:
            return 0, None
        start, last = fault_blocks(self.prefix.blocks_path, touched_params(perturbation))
        return start, last if self.stop_early else None

    @torch.no_grad()
    def trial(self, perturbation: AbstractContextManager) -> Trial:
        """Apply ``perturbation``, evaluate from its first faulted block, restore (in ``finally``).

        Returns:
            The :class:`Trial`, equal in ratio, perplexity, KL and top-1 to ``run_trial``'s (``top1`` is None
            when the trial stopped at a non-finite block output).
        """
        start, last = self._span(perturbation)
        reference = self.clean.reference
        stats, masked = [], 0
        with perturbation:
            for index, (first, batch) in enumerate(batches(self.windows, self.batch_size)):
                try:
                    with replay(self._blocks, self.prefix, index, start), \
                            watch(self._blocks, self.prefix, index, start, last, stop_on_collapse=self.stop_early):
                        logits = self.model(input_ids=batch.to(self.device), use_cache=False).logits
                except Stop as stop:
                    if stop.kind == "collapse":
                        result = EvalResult(math.inf, math.inf, self.n_tokens, True,
                                            math.inf if self.kl else None, None)
                        return Trial(result, math.inf, True, stopped_at=stop.block, start_block=start)
                    stats.append(self.prefix.stats[index])
                    masked += 1
                    continue
                stats.append(reduce_batch(logits, batch, reference, first, kl=self.kl))
                del logits
        result = combine(stats, self.n_tokens, reference, kl=self.kl)
        return Trial.against(result, self.clean.result, masked=masked == len(stats), start_block=start)

    # -- many trials ---------------------------------------------------------------------------------

    def trials(self, perturbations: Sequence[AbstractContextManager]) -> list[Trial]:
        """Each perturbation's :class:`Trial`, in order; bit flips in linear weights share forwards
        ``trials_per_forward`` at a time, everything else runs one by one."""
        out: list[Trial | None] = [None] * len(perturbations)
        group: list[int] = []
        for k, p in enumerate(perturbations):
            if self.per_forward > 1 and batched.batchable(p, self.model):
                group.append(k)
                if len(group) == self.per_forward:
                    self._fill(out, group, perturbations)
                    group = []
            else:
                out[k] = self.trial(p)
        if group:
            self._fill(out, group, perturbations)
        return out  # type: ignore[return-value]

    def _fill(self, out: list, group: list[int], perturbations: Sequence) -> None:
        if len(group) == 1:
            out[group[0]] = self.trial(perturbations[group[0]])
            return
        for k, t in zip(group, self.batched([perturbations[k] for k in group]), strict=True):
            out[k] = t

    @torch.no_grad()
    def batched(self, flips: Sequence[BitFlip]) -> list[Trial]:
        """B bit-flip trials in shared forwards (see ``harness.campaign.batched``); no early stops."""
        copies = len(flips)
        fixes = batched.corrections(self.model, flips)
        start = 0
        if self.prefix is not None:
            start = min(fault_blocks(self.prefix.blocks_path, touched_params(f))[0] for f in flips)
        reference = self.clean.reference
        stats: list[list] = [[] for _ in flips]
        with batched.corrected(self.model, fixes, copies):
            for index, (first, batch) in enumerate(batches(self.windows, self.batch_size)):
                stacked = batch.repeat(copies, 1)  # (copies * W, T): trial k is rows k*W..(k+1)*W
                with replay(self._blocks, self.prefix, index, start, repeat=copies):
                    logits = self.model(input_ids=stacked.to(self.device), use_cache=False).logits
                per = batch.shape[0]
                for k in range(copies):
                    stats[k].append(reduce_batch(logits[k * per:(k + 1) * per], batch, reference, first, kl=self.kl))
                del logits
        out = []
        for st in stats:
            result = combine(st, self.n_tokens, reference, kl=self.kl)
            out.append(Trial.against(result, self.clean.result, start_block=start))
        return out

    def run(self, specs: Sequence[TrialSpec], make: Callable[[TrialSpec, torch.Generator], Any], *,
            cell: str = "campaign") -> Iterator[TrialRecord]:
        """The cell's trials in spec order: ``make(spec, generator)`` builds each perturbation (the generator
        seeded with ``spec.seed``); progress is logged (``harness.campaign.progress``).

        Yields:
            One :class:`TrialRecord` per spec, as soon as its trial (or its batch of trials) is done.
        """
        progress = Progress(cell, len(specs))
        pending: list[tuple[TrialSpec, Any]] = []

        def flush() -> Iterator[TrialRecord]:
            trials = self.trials([p for _, p in pending])
            for (spec, p), t in zip(pending, trials, strict=True):
                yield TrialRecord(spec, p, t)
            progress.step(len(pending))
            pending.clear()

        for spec in specs:
            perturbation = make(spec, torch.Generator().manual_seed(spec.seed))
            pending.append((spec, perturbation))
            if len(pending) >= self.per_forward:
                yield from flush()
        if pending:
            yield from flush()
        progress.finish()
