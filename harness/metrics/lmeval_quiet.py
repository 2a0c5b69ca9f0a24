"""lm-eval called quietly and without its costly extras: its logs and progress bars silenced (:func:`quiet_lmeval`),
its machine probe skipped (:func:`no_env_probe`), no KV cache built (:func:`no_kv_cache`). Used by
:mod:`harness.metrics.lmeval`; each restores what it changed."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

import torch

log = logging.getLogger("harness.metrics.lmeval")  # the adapter's logger: at DEBUG, lm-eval speaks

_NOISY_LOGGERS = ("lm_eval", "lm-eval")
_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")
_NOISE = (  # expected for an in-memory model; said once in our docs instead of on every call
    "`pretrained` model kwarg is not of type `str`",
    "Passed an already-initialized model through `pretrained`",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in _NOISE)


def _silent_tqdm(*args: Any, **kwargs: Any):
    from tqdm import tqdm

    return tqdm(*args, **{**kwargs, "disable": True})  # callers pass disable= themselves


@contextlib.contextmanager
def quiet_lmeval() -> Iterator[None]:
    """Silence lm-eval's chatter while inside, unless this module's logger is at DEBUG: its INFO
    logs, the two warnings every in-memory model triggers, and its tqdm progress bars (the
    ``tqdm`` names of the lm-eval modules that draw them are swapped for a disabled one, since
    ``TQDM_DISABLE`` is read only when tqdm is imported)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    from tqdm import tqdm

    loggers = [logging.getLogger(n) for n in (*_NOISY_LOGGERS, "lm_eval.models.huggingface", "lm_eval.evaluator")]
    saved = [(lg, lg.level) for lg in loggers]
    noise = _DropNoise()
    swapped = []
    try:
        for lg in loggers:
            lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
            lg.addFilter(noise)
        for name in _TQDM_MODULES:
            module = sys.modules.get(name)  # one imported later draws nothing inside this block
            if module is not None and getattr(module, "tqdm", None) is tqdm:
                swapped.append(module)
                module.tqdm = _silent_tqdm
        yield
    finally:
        for lg, level in saved:
            lg.setLevel(level)
            lg.removeFilter(noise)
        for module in swapped:
            module.tqdm = tqdm


@contextlib.contextmanager
def no_env_probe() -> Iterator[None]:
    """Within the block, ``simple_evaluate`` skips the machine probe it ends with: torch's ``collect_env``
    (``pip list``, ``nvidia-smi``, ``lscpu``... in subprocesses: 3 s a call on 2 idle cores, 9 s loaded) and
    ``git describe``, for header fields of its results (``pretty_env_info``, ``git_hash``) the adapter never
    reads. The metrics are untouched."""
    from lm_eval import evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda storage: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


@contextlib.contextmanager
def no_kv_cache(model: torch.nn.Module) -> Iterator[None]:
    """Within the block the model's forward builds no KV cache (``config.use_cache = False``, restored in
    ``finally``). lm-eval scores with ``model(inps)``, which would fill a cache nobody reads: copies of every
    key and value, 18% of a (16, 60)-token forward of smollm2-135m on the CPU. The logits are bit-identical."""
    config = getattr(model, "config", None)
    if not getattr(config, "use_cache", False):
        yield
        return
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = True
