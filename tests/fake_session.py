"""One stand-in for the pytest session (``harness.session.Session``) that the cells modules' tests give ``of()``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from harness.campaign import clean_baseline
from harness.data import load_corpus
from harness.finetune.options import FinetuneOptions
from harness.models import has_random_weights
from harness.option_values import pick_preset
from harness.pruning.options import PruningOptions


def no_super_weights(loaded: Any) -> SimpleNamespace:
    """A detection that found nothing (as on a random-weight model)."""
    return SimpleNamespace(fault_sites=lambda: [], none_reason=lambda: "no super weight on random weights")


class FakeSession:
    """The session's protocol over fixed windows: options, memo, preset, trial rule, corpus, detection, windows
    and the clean baseline (``esa.clean``), with counters the tests read.

    Args:
        results_dir: ``options.results_dir``.
        windows: the windows ``esa.windows`` gives for both ``eval`` and ``calib`` (None: none given).
        detection: what ``esa.detection(loaded)`` returns (default: nothing found).
        preset: ``options.preset``.
        options: further ``options`` fields (``pruning``, ``finetune``, ``seed``, ``corpus``, ...).
    """

    def __init__(self, results_dir: Path | None = None, *, windows: torch.Tensor | None = None,
                 detection: Callable[[Any], Any] = no_super_weights, preset: str = "quick", **options: Any) -> None:
        fields = dict(preset=preset, seed=0, corpus="builtin", results_dir=results_dir, window=None, device="cpu",
                      dtype="fp32", trials=None, pruning=PruningOptions(), finetune=FinetuneOptions())
        self.options = SimpleNamespace(**{**fields, **options})
        self.memo: dict[tuple, Any] = {}
        self.detections = 0
        self._windows = windows
        self._detect = detection

    def cached(self, key: tuple, make: Callable[[], Any]) -> Any:
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def preset(self, presets: Any) -> Any:
        return pick_preset(presets, self.options.preset)

    def trials(self, model: str, preset_count: int) -> int:
        if self.options.trials is not None:
            return self.options.trials
        return 1 if has_random_weights(model) else preset_count

    def corpus(self) -> Any:
        return self.cached(("corpus", "builtin"), load_corpus)

    def detection(self, loaded: Any) -> Any:
        self.detections += 1
        return self._detect(loaded)

    def windows(self, loaded: Any, which: str) -> torch.Tensor:
        assert which in ("eval", "calib") and self._windows is not None
        return self._windows

    def clean(self, name: str, model: torch.nn.Module, windows: torch.Tensor) -> SimpleNamespace:
        def make() -> Any:
            return clean_baseline(model, windows, keep_blocks=True)  # as the session captures it

        dtypes = ",".join(sorted({str(p.dtype) for p in model.parameters()}))
        return self.cached((name, "clean", tuple(windows.shape), dtypes), make)
