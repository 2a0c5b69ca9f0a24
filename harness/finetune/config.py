"""What a fine-tuning run is: method, token budget, optimiser schedule, hardening; and its cache key."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass

from harness.data.corpus import DEFAULT_CORPUS
from harness.errors import HarnessError
from harness.option_values import bounded_float

METHODS = ("full", "lora")
SCHEDULES = ("constant", "linear", "cosine")
DEFAULT_LR = {"full": 5e-5, "lora": 1e-3}  # AdamW; LoRA's adapters start at zero and need a larger step
BATCH_WINDOWS = 2  # windows per optimiser step
# What ``run.training_windows`` cuts, in the cache key: 2 = windows in the model's own BOS convention
# (1, before 2026-12-02: raw stream tokens, no BOS; fine-tunes cached then are not reused).
TRAINING_WINDOWS = 2


@dataclass(frozen=True)
class FinetuneConfig:
    """One fine-tuning run. Every field enters the cache key (:meth:`key`).

    Attributes:
        method: ``full`` (every parameter trained) or ``lora`` (peft adapters on the decoder's linear layers).
        tokens: token budget: training tokens seen, one pass, no repetition (rounded down to whole windows).
        window: tokens per training window (the evaluation ``--window``).
        lr: peak learning rate (None: ``DEFAULT_LR[method]``).
        schedule: ``constant``, ``linear`` (decay to 0) or ``cosine`` (decay to 0), after ``warmup``.
        warmup: share of the steps with a linear warm-up from 0.
        batch: windows per optimiser step.
        seed: seed of the window order and of the training noise.
        noise: relative sigma of weight noise during training, 0 = off (:mod:`harness.finetune.hardening`).
        clip: weight clipping factor, None = off (:mod:`harness.finetune.hardening`).
        lora_rank: LoRA rank r (alpha = 2 r).
        corpus: name of the corpus the calibration documents come from.
    """

    method: str = "full"
    tokens: int = 2048
    window: int = 256
    lr: float | None = None
    schedule: str = "cosine"
    warmup: float = 0.0
    batch: int = BATCH_WINDOWS
    seed: int = 0
    noise: float = 0.0
    clip: float | None = None
    lora_rank: int = 8
    corpus: str = DEFAULT_CORPUS

    def __post_init__(self) -> None:
        check_method(self.method)
        if self.window < 2:
            raise HarnessError(f"fine-tuning window must be at least 2 tokens, got {self.window}")
        check_tokens(self.tokens, self.window)
        if self.schedule not in SCHEDULES:
            raise HarnessError(f"unknown schedule {self.schedule!r}; allowed: {', '.join(SCHEDULES)}")
        if self.lr is not None:
            check_lr(self.lr)
        if not 0.0 <= self.warmup < 1.0:
            raise HarnessError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if self.batch < 1:
            raise HarnessError(f"batch must be at least 1 window, got {self.batch}")
        check_noise(self.noise)
        if self.clip is not None:
            check_clip(self.clip)
            if self.method != "full":
                raise HarnessError("weight clipping needs --finetune full: LoRA leaves the base weights frozen")
        if self.lora_rank < 1:
            raise HarnessError(f"LoRA rank must be at least 1, got {self.lora_rank}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def windows(self) -> int:
        return self.tokens // self.window

    @property
    def steps(self) -> int:
        return math.ceil(self.windows / self.batch)

    @property
    def variant(self) -> str:
        """``plain``, ``noise``, ``clip`` or ``noise+clip``: which hardening is on."""
        parts = [name for name, on in (("noise", self.noise > 0), ("clip", self.clip is not None)) if on]
        return "+".join(parts) or "plain"

    def to_dict(self) -> dict:
        return dict(asdict(self), lr=self.learning_rate, steps=self.steps, variant=self.variant)

    def key(self, model: str) -> str:
        """12 hex digits of SHA-256 over the model name and every field: the cache key of the result."""
        text = json.dumps({"model": model, **asdict(self), "lr": self.learning_rate,
                           "training_windows": TRAINING_WINDOWS}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise HarnessError(f"unknown fine-tuning method {method!r}; allowed: {', '.join(METHODS)}")
    return method


def check_tokens(tokens: int, window: int) -> int:
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < window:
        raise HarnessError(f"fine-tuning token budget must be a whole number of at least one window "
                           f"({window} tokens), got {tokens!r}")
    return tokens


def check_lr(lr: float | str) -> float:
    """A peak learning rate: a finite number > 0."""
    return bounded_float(lr, "learning rate", 0, low_open=True)


def check_noise(sigma: float | str) -> float:
    """A relative sigma of training noise, in [0, 1)."""
    return bounded_float(sigma, "training noise (a relative sigma)", 0, 1, high_open=True)


def check_clip(factor: float | str) -> float:
    """A weight clipping factor: a finite number > 0 (1.0 = each matrix's pre-fine-tuning max |w|)."""
    return bounded_float(factor, "clip factor (1.0 = each matrix's pre-fine-tuning max |w|)", 0, low_open=True)
