"""The one contract between the pytest session and the analyses: what a cells module may ask of the session.

A cells module's ``of(esa, loaded, ...)`` takes a :class:`Session` (the pytest plugin's ``fixtures.session.EsaSession``
implements it) and a ``harness.models.LoadedModel``; it reads the run's typed :class:`Options`, its windows, its
clean baseline, the one super-weight detection, the depth preset and the trial rule through it, and keeps its memo
with :meth:`Session.cached`. The library never imports pytest; this module holds the types both sides share.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from harness.attacks.options import AttackOptions
from harness.finetune.options import FinetuneOptions
from harness.metrics.lmeval_options import LmEvalOptions
from harness.pruning.options import PruningOptions
from harness.scoring.options import ScoringOptions

if TYPE_CHECKING:
    import torch

    from harness.campaign.trial import Clean
    from harness.data.corpus import Corpus
    from harness.models.copies import DtypeCopy
    from harness.models.loading import LoadedModel
    from harness.scoring.superweights import Detection

T = TypeVar("T")

# The depth presets' names: each analysis declares its sizes per preset (``PRESETS`` of its cells module, a dict of
# its frozen ``Preset``), the session picks the run's (:meth:`Session.preset`, ``harness.option_values.pick_preset``).
# quick fits CI on two CPU cores; full is for GPU runners.
PRESET_NAMES = ("quick", "full")


@dataclass(frozen=True)
class Options:
    """The parsed ``esa`` options (see ``pytest --help``), complete when made (the device resolved, the precision
    decided) and never changed."""

    models: list[str]
    device: str
    dtype: str | None
    corpus: str | None
    eval_tokens: int
    window: int
    calib_tokens: int
    seed: int
    results_dir: Path
    bounds_dir: Path  # <rootdir>/suites/bounds
    trials: int | None
    preset: str
    baseline: Path | None
    report: bool
    strict_claims: bool = False  # fail the session on an unverified claim
    device_map: Any = None  # --device-map, resolved (harness.models.device.resolve_device_map)
    max_memory: dict[str, Any] | None = None  # --max-memory
    offload_dir: Path | None = None  # --offload-dir
    margin: float | None = None  # --margin
    confidence: float | None = None  # --confidence
    precision: Any = None  # harness.campaign.sizing.Precision of --margin/--confidence, or None: the preset's counts
    shard: tuple[int, int] | None = None  # --shard K/N (fixtures/scaleout.py): this session's share of the tests
    # the analyses' option sets (OPTION_SETS)
    attack: AttackOptions = field(default_factory=AttackOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    lmeval: LmEvalOptions = field(default_factory=LmEvalOptions)
    pruning: PruningOptions = field(default_factory=PruningOptions)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)


# Each analysis's option set, by the ``Options`` field that holds it: the plugin adds their options and reads
# them back typed.
OPTION_SETS: dict[str, type] = {"lmeval": LmEvalOptions, "pruning": PruningOptions, "scoring": ScoringOptions,
                                "attack": AttackOptions, "finetune": FinetuneOptions}


class Session(Protocol):
    """What an analysis may ask of the session (``fixtures.session.EsaSession``)."""

    options: Options
    copies: DtypeCopy  # the loaded model's one second copy in another dtype

    def cached(self, key: tuple, make: Callable[[], T]) -> T:
        """Memoize ``make()`` under ``key`` for the session; ``key[0]`` is the model's name."""
        ...

    def corpus(self) -> Corpus:
        """The ``--corpus``, loaded once."""
        ...

    def windows(self, loaded: LoadedModel, which: Literal["eval", "calib"]) -> torch.Tensor:
        """Token windows (count, ``--window``) of ``loaded``'s tokenizer: evaluation or calibration."""
        ...

    def clean(self, name: str, model: torch.nn.Module, windows: torch.Tensor) -> Clean:
        """The clean baseline of ``model`` on ``windows``, captured once per model, dtype and window set."""
        ...

    def detection(self, loaded: LoadedModel) -> Detection:
        """``loaded``'s super weights, detected once per model and dtype."""
        ...

    def preset(self, presets: Mapping[str, T]) -> T:
        """The run's depth preset (``--preset``) of an analysis's ``PRESETS``."""
        ...

    def trials(self, model: str, preset_count: int) -> int:
        """Trials per campaign cell: ``--trials``, else one on a random-weight model, else ``preset_count``."""
        ...
