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
from harness.models.device import (
    DEVICE_MAPS,
    DEVICE_WORDS,
    DTYPES,
    device_word,
    dtype_word,
    parse_max_memory,
    resolve_device_map,
)
from harness.option_values import choice, option, positive_int
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


DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class CoreOptions:
    """The run's own command-line options (``pytest --help``, section "esa"), declared once: each field is its
    flag (:func:`harness.option_values.option`), as each analysis's option set is; the plugin adds and reads them
    from here. Values are as given: :class:`Options` completes them."""

    model: list[str] | None = option(
        "--model", f"model name or local directory; repeatable or comma list (default: {DEFAULT_MODEL}; "
                   "`python -m harness models` lists them)", action="append", metavar="NAME")
    device: str = option("--device", f"{', '.join(DEVICE_WORDS)} (default: auto = cuda when available, else cpu)",
                         parse=device_word, default="auto")
    dtype: str | None = option("--dtype", f"{', '.join(DTYPES)} (default: the model's own default dtype)",
                               parse=dtype_word)
    device_map: Any = option(
        "--device-map", f"place a model larger than one GPU across the visible GPUs, then CPU memory, then disk: "
                        f"{', '.join(DEVICE_MAPS)} (--device is then not used) (default: none, all on --device)",
        parse=resolve_device_map)
    max_memory: dict[str, Any] | None = option(
        "--max-memory", "with --device-map: the most each device may hold, e.g. 0=20GiB,1=20GiB,cpu=64GiB "
                        "(devices: GPU index, cpu, disk) (default: what is free on each)",
        parse=parse_max_memory, metavar="DEVICE=SIZE,...")
    offload_dir: Path | None = option(
        "--offload-dir", "with --device-map: where modules placed on disk are written when their weights are not "
                         "safetensors files already (default: none)", parse=Path)
    corpus: str | None = option("--corpus", "pydoc-topics (default, offline), wikitext2 (needs the hub), or a "
                                            ".txt/.jsonl file")
    eval_tokens: int = option("--eval-tokens", "evaluation tokens per perplexity measurement (default: 1024)",
                              parse=positive_int, args=("eval tokens",), default=1024)
    window: int = option("--window", "tokens per evaluation window (default: 256)",
                         parse=positive_int, args=("window length",), default=256)
    calib_tokens: int = option("--calib-tokens", "calibration tokens for scorers and pruning (default: 2048)",
                               parse=positive_int, args=("calibration tokens",), default=2048)
    seed: int = option("--seed", "seed of every sampler (default: 0)", parse=int, default=0)
    results_dir: Path = option("--results-dir", "where the results store and artifacts go (default: results/)",
                               parse=Path, default=Path("results"))
    trials: int | None = option("--trials", "seeded trials per campaign cell (default: the preset's)",
                                parse=positive_int, args=("trials",))
    margin: float | None = option(
        "--margin", "size every collapse-rate cell sequentially until its Wilson interval is at most +-E (capped "
                    "at Leveugle's sample size) (default: the quick preset's trial counts; full: 0.05)",
        parse=float, metavar="E")
    confidence: float | None = option("--confidence", "the confidence of --margin, e.g. 0.95 (default: 0.95)",
                                      parse=float, metavar="C")
    preset: str = option("--preset", "analysis depth: quick (fits CI on CPU) or full (GPU runners) (default: quick)",
                         parse=choice, args=(PRESET_NAMES, "preset"), default="quick")
    baseline: Path | None = option(
        "--baseline", "baseline file (python -m reports export-baseline): fail tests whose claims regressed",
        parse=Path)
    report: bool = option("--report", "build the report of this run at the end of the session (default: off)",
                          default=False)
    strict_claims: bool = option(
        "--strict-claims", "fail the session when a claim is unverified (no number for the model, a vacuous bound, "
                           "bounds of another configuration) or undecided, when a selected test decided none of its "
                           "claims, or when the results store cannot be read (default: off)", default=False)


@dataclass(frozen=True)
class Options(CoreOptions):
    """The parsed ``esa`` options (see ``pytest --help``), complete when made (the device resolved, the precision
    decided) and never changed: the :class:`CoreOptions` as given (``device`` resolved), what follows from them,
    and each analysis's option set."""

    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])  # --model, parsed
    bounds_dir: Path = Path("suites/bounds")  # <rootdir>/suites/bounds
    precision: Any = None  # harness.campaign.sizing.Precision of --margin/--confidence, or None: the preset's counts
    shard: tuple[int, int] | None = None  # --shard K/N (fixtures/scaleout.py): this session's share of the tests
    # the analyses' option sets (OPTION_SETS)
    attack: AttackOptions = field(default_factory=AttackOptions)
    finetune: FinetuneOptions = field(default_factory=FinetuneOptions)
    lmeval: LmEvalOptions = field(default_factory=LmEvalOptions)
    pruning: PruningOptions = field(default_factory=PruningOptions)
    scoring: ScoringOptions = field(default_factory=ScoringOptions)


def grid_id(value: Any) -> str:
    """A parameter's test id: its ``id``, a tuple's parts joined with ``-``, else its text."""
    if hasattr(value, "id"):
        return str(value.id)
    if isinstance(value, tuple):
        return "-".join(grid_id(v) for v in value)
    return str(value)


@dataclass(frozen=True)
class Grid:
    """One parametrized argument (or tuple of arguments) of a suite: the plugin parametrizes every test of the suite
    that takes ``argnames`` with ``values(options)`` (the run's :class:`Options`), ids by :func:`grid_id`. A suite
    lists its grids in a module-level ``GRIDS``; it has no ``pytest_generate_tests`` of its own."""

    argnames: str | tuple[str, ...]
    values: Callable[[Options], Any]

    @property
    def names(self) -> tuple[str, ...]:
        return (self.argnames,) if isinstance(self.argnames, str) else self.argnames


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
