"""Prefix reuse: keep every decoder block's clean output, then run a trial from its first faulted block.

A fault in block L cannot change what blocks 0..L-1 compute, so a trial whose faults all lie in blocks
>= L can start at block L on the kept clean input. This works on every family without per-family
forward code: the model's own forward runs as usual, but blocks 0..L-1 are *replayed*: their
``forward`` is swapped (on the instance, restored in ``finally``) for one that returns the kept output
without computing anything. Block L receives exactly the tensor a full forward would hand it, so on a
deterministic device every later number equals a full recompute bit for bit.

Early stops (exact, see :class:`Watch`): a block output with a non-finite value at a predicted position
ends the trial as a collapse (a residual stream carries a non-finite value to the logits of its position
and attention spreads it to later ones); the output of the last faulted block being bit-identical to the
clean one means the rest of that batch is the clean forward, whose contribution is stored.

Memory: ``n_layers * tokens * d`` values of the model's dtype (smollm2-135m, 512 tokens: 35 MB).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from harness.metrics import EvalResult, Reference
from harness.metrics.perplexity import default_batch_size
from harness.metrics.reduce import BatchStats, combine, reduce_batch
from harness.models.archmap import arch_map
from harness.models.device import input_device


@dataclass
class Prefix:
    """The clean run, kept per window batch.

    Attributes:
        blocks_path: the model's block list path (``ArchMap.blocks``).
        batch_size: windows per forward pass (trials use the same batches).
        outputs: ``outputs[batch][block]`` the block's hidden-state output (B, T, d).
        tuple_len: per block, the length of the tuple the block returns (0: a tensor).
        stats: per batch, the clean :class:`BatchStats` (what a masked batch contributes).
        result: the clean evaluation (equal to ``harness.metrics.evaluate``).
    """

    blocks_path: str
    batch_size: int
    outputs: list[list[torch.Tensor]]
    tuple_len: list[int]
    stats: list[BatchStats]
    result: EvalResult

    @property
    def n_blocks(self) -> int:
        return len(self.tuple_len)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for batch in self.outputs for t in batch)


def blocks_of(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder block list of an architecture-mapped model."""
    return model.get_submodule(arch_map(model).blocks)


def block_index(blocks_path: str, param: str) -> int | None:
    """The index of the block under ``blocks_path`` holding parameter ``param``, or None for a parameter outside
    the blocks."""
    head = blocks_path + "."
    if not param.startswith(head):
        return None
    index = param[len(head):].split(".", 1)[0]
    return int(index) if index.isdigit() else None


def _hidden(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def batches(windows: torch.Tensor, batch_size: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, windows[start:start + batch_size])`` in order, as ``evaluate`` batches them."""
    for start in range(0, windows.shape[0], batch_size):
        yield start, windows[start:start + batch_size]


def _device_of(model: torch.nn.Module) -> torch.device:
    return input_device(model)


@torch.no_grad()
def capture(model: torch.nn.Module, windows: torch.Tensor, reference: Reference,
            batch_size: int | None = None) -> Prefix:
    """Evaluate the clean model on ``windows`` (``batch_size`` windows per forward, default ``evaluate``'s)
    and keep every block's output per batch.

    Returns:
        The :class:`Prefix`; its ``result`` equals ``evaluate(model, windows, reference)``.

    Cost: one forward pass over ``windows``.
    """
    blocks = blocks_of(model)
    size = batch_size or default_batch_size(windows)
    outputs: list[list[torch.Tensor]] = []
    tuple_len = [0] * len(blocks)
    current: list[torch.Tensor] = []

    def keep(index: int):
        def hook(_module, _args, output):
            tuple_len[index] = len(output) if isinstance(output, tuple) else 0
            current.append(_hidden(output).detach().clone())
        return hook

    handles = [block.register_forward_hook(keep(i)) for i, block in enumerate(blocks)]
    stats = []
    try:
        for start, batch in batches(windows, size):
            current = []
            logits = model(input_ids=batch.to(_device_of(model)), use_cache=False).logits
            outputs.append(current)
            stats.append(reduce_batch(logits, batch, reference, start))
    finally:
        for h in handles:
            h.remove()
    n_tokens = windows.shape[0] * (windows.shape[1] - 1)
    return Prefix(arch_map(model).blocks, size, outputs, tuple_len, stats, combine(stats, n_tokens, reference))


@contextmanager
def replay(blocks: torch.nn.ModuleList, prefix: Prefix, batch: int, start_block: int,
           repeat: int = 1) -> Iterator[None]:
    """Within the block, blocks ``0..start_block-1`` return their kept output of window batch ``batch``
    instead of computing (``repeat`` > 1: that output repeated along the batch dim, for batched trials).

    The swapped ``forward`` attributes are removed in ``finally``.
    """
    if start_block <= 0:
        yield
        return
    swapped = []
    try:
        for index in range(start_block):
            block = blocks[index]
            kept = prefix.outputs[batch][index]
            last = index == start_block - 1
            n = prefix.tuple_len[index]

            def forward(*_args, _kept=kept, _last=last, _n=n, **_kwargs):
                # only the last replayed block's output is read (by block start_block): hand it a fresh copy
                hidden = (_kept.repeat(repeat, *([1] * (_kept.dim() - 1))) if repeat > 1 else _kept.clone()) \
                    if _last else _kept
                return (hidden, *([None] * (_n - 1))) if _n else hidden

            had = "forward" in vars(block)
            swapped.append((block, had, vars(block).get("forward")))
            block.forward = forward
        yield
    finally:
        for block, had, old in reversed(swapped):
            if had:
                block.forward = old
            else:
                del block.forward


class Stop(Exception):
    """Raised from a block hook to end a forward early; ``kind`` is ``collapse`` or ``masked``."""

    def __init__(self, kind: str, block: int) -> None:
        super().__init__(kind, block)
        self.kind, self.block = kind, block


def _finite(hidden: torch.Tensor) -> bool:
    # positions 0..T-2 are the predicted ones; min and max propagate NaN (one reduction, as evaluate does)
    return all(map(math.isfinite, map(float, torch.aminmax(hidden[:, :-1]))))


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(a.element_size())
    return torch.equal(a.view(ints), b.view(ints)) if ints is not None else torch.equal(a, b)


@contextmanager
def watch(blocks: torch.nn.ModuleList | None, prefix: Prefix | None, batch: int, start_block: int,
          last_fault: int | None, *, stop_on_collapse: bool = True) -> Iterator[None]:
    """Hooks on blocks ``start_block..`` that end the forward with :class:`Stop`:

    - ``collapse`` at the first block whose output is non-finite at a predicted position;
    - ``masked`` when block ``last_fault`` (the last faulted block; None: no check) outputs exactly the kept
      clean output of window batch ``batch``: everything after it is the clean forward.
    """
    handles = []
    if blocks is None:
        yield
        return

    def hook_for(index: int):
        def hook(_module, _args, output):
            hidden = _hidden(output)
            if stop_on_collapse and not _finite(hidden):
                raise Stop("collapse", index)
            if index == last_fault and prefix is not None and _same_bits(hidden, prefix.outputs[batch][index]):
                raise Stop("masked", index)
        return hook

    try:
        for index in range(max(start_block, 0), len(blocks)):
            if stop_on_collapse or index == last_fault:
                handles.append(blocks[index].register_forward_hook(hook_for(index)))
        yield
    finally:
        for h in handles:
            h.remove()


def fault_blocks(blocks_path: str, params: Iterable[str] | None) -> tuple[int, int | None]:
    """(first block to run, last faulted block) for faults on ``params`` of the blocks under ``blocks_path``
    (``arch_map(model).blocks``, ``Prefix.blocks_path``).

    A parameter outside the blocks (embeddings, final norm, LM head) or unknown params (None) means a
    full forward (0) and no masking check (None).
    """
    if params is None:
        return 0, None
    found = [block_index(blocks_path, p) for p in params]
    if not found or any(b is None for b in found):
        return 0, None
    return min(found), max(found)


class CallPrefix:
    """Prefix reuse for any sequence of forward passes (lm-eval's requests, per-document scoring), not only
    for fixed windows.

    :meth:`record` keeps, for each forward pass of a clean evaluation, its input ids and the output of block
    ``start - 1``. :meth:`replay` then serves the same evaluation under a perturbation of blocks ``>= start``:
    a forward whose input ids equal the next recorded call's skips blocks ``0..start-1`` and hands block
    ``start`` the kept tensor (bit-identical to a full recompute, as :func:`replay`); any other forward, and
    every forward after ``max_bytes`` of kept outputs, computes in full.

    Args:
        model: an architecture-mapped causal LM, called with ``input_ids`` (positional or keyword).
        start: the first block the later perturbation touches (0: nothing is kept, nothing replayed).
        max_bytes: the most kept output bytes (default 1 GiB).

    Memory: ``tokens * d`` values of the model's dtype over the recorded calls (smollm2-135m, the evaluate
    suite's cloze task: 24k tokens, 56 MB).
    """

    def __init__(self, model: torch.nn.Module, start: int, max_bytes: int = 1 << 30) -> None:
        self.model, self.start, self.max_bytes = model, start, max_bytes
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (input ids, output of block start-1)
        self.tuple_len = 0
        self.replayed = 0  # forwards served from the kept outputs by the last replay

    @property
    def nbytes(self) -> int:
        return sum(out.numel() * out.element_size() for _, out in self.calls)

    @staticmethod
    def _ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        return ids if isinstance(ids, torch.Tensor) else None

    @contextmanager
    def record(self) -> Iterator[None]:
        """Within the block, every forward of the model is recorded (up to ``max_bytes``)."""
        if self.start <= 0:
            yield
            return
        now: list[torch.Tensor | None] = [None]

        def pre(_module, args, kwargs):
            now[0] = self._ids(args, kwargs)

        def keep(_module, _args, output):
            ids, now[0] = now[0], None
            hidden = _hidden(output)
            if ids is None or self.nbytes + hidden.numel() * hidden.element_size() > self.max_bytes:
                return
            self.tuple_len = len(output) if isinstance(output, tuple) else 0
            self.calls.append((ids.detach().clone(), hidden.detach().clone()))

        handles = [self.model.register_forward_pre_hook(pre, with_kwargs=True),
                   blocks_of(self.model)[self.start - 1].register_forward_hook(keep)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    @contextmanager
    def replay(self) -> Iterator[None]:
        """Within the block, forwards whose input ids equal the next recorded call's start at block ``start``.
        The swapped ``forward`` attributes and the hook are removed in ``finally``."""
        self.replayed = 0
        if self.start <= 0 or not self.calls:
            yield
            return
        blocks = blocks_of(self.model)
        state = {"next": 0, "kept": None}

        def pre(_module, args, kwargs):
            ids, state["kept"] = self._ids(args, kwargs), None
            if ids is None or state["next"] >= len(self.calls):
                return
            want, kept = self.calls[state["next"]]
            if want.shape == ids.shape and torch.equal(want, ids.to(want.device)):
                state["kept"] = kept
                state["next"] += 1
                self.replayed += 1

        def swap(block: torch.nn.Module, last: bool):
            original = block.forward

            def forward(*args, **kwargs):
                kept = state["kept"]
                if kept is None:
                    return original(*args, **kwargs)
                hidden = kept.clone() if last else kept  # only block start's input is read: a fresh copy
                return (hidden, *([None] * (self.tuple_len - 1))) if self.tuple_len else hidden
            return forward

        swapped = []
        handle = self.model.register_forward_pre_hook(pre, with_kwargs=True)
        try:
            for index in range(self.start):
                block = blocks[index]
                swapped.append((block, "forward" in vars(block), vars(block).get("forward")))
                block.forward = swap(block, index == self.start - 1)
            yield
        finally:
            handle.remove()
            for block, had, old in reversed(swapped):
                if had:
                    block.forward = old
                else:
                    del block.forward
