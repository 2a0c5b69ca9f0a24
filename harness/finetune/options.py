"""pytest options of fine-tuning (added to the plugin's "esa" group).

``--finetune none|lora|full`` makes every suite run on the fine-tuned model instead of the base one
(:func:`finetune_source`); the other options set the run (and the finetune suite's runs). They reach
tests as ``esa.options.finetune`` (:class:`FinetuneOptions`: ``method``, ``tokens``, ...). A value left at None means
"the preset's" or "the method's" (see each help text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.data.corpus import DEFAULT_CORPUS
from harness.errors import HarnessError
from harness.finetune.config import DEFAULT_LR, METHODS, SCHEDULES, FinetuneConfig, check_clip, check_lr, check_noise
from harness.option_values import choice, option, pick_preset, positive_int

CHOICES = ("none", *METHODS)
TOKENS = {"quick": 2048, "full": 8192}  # token budget per preset (smollm2-135m quick: 4 steps of 2 x 256)


@dataclass(frozen=True)
class FinetuneOptions:
    """The fine-tuning options (``esa.options.finetune``); None: the preset's or the method's."""

    method: str = option(
        "--finetune", "run the suites on the model fine-tuned on the corpus's calibration documents: none, lora "
                      "(peft) or full; trained once and cached under <results-dir>/finetuned/ (default: none)",
        parse=choice, args=(CHOICES, "fine-tuning method"), default="none")
    tokens: int | None = option(
        "--finetune-tokens", "fine-tuning token budget, one pass over the calibration documents (default: quick "
                             f"{TOKENS['quick']}, full {TOKENS['full']})",
        parse=positive_int, args=("fine-tuning tokens",))
    lr: float | None = option(
        "--finetune-lr", f"peak learning rate, AdamW (default: full {DEFAULT_LR['full']:g}, "
                         f"lora {DEFAULT_LR['lora']:g})", parse=check_lr)
    schedule: str = option(
        "--finetune-schedule", "learning-rate schedule: constant, linear or cosine decay to 0 (default: cosine)",
        parse=choice, args=(SCHEDULES, "schedule"), default="cosine")
    noise: float = option(
        "--finetune-noise", "fault-aware fine-tuning: relative sigma of weight noise w*(1+sigma*eps) on the linear "
                            "weights, re-drawn every step (default: 0, off)", parse=check_noise, default=0.0)
    clip: float | None = option(
        "--finetune-clip", "fault-aware fine-tuning (full only): clip each linear weight matrix to this factor of "
                           "its pre-fine-tuning max |w| after every step (default: off)", parse=check_clip)
    lora_rank: int = option("--finetune-lora-rank", "LoRA rank r, alpha = 2r (default: 8)",
                            parse=positive_int, args=("LoRA rank",), default=8)


def config_from_options(options: Any, method: str | None = None, **changes: Any) -> FinetuneConfig:
    """The :class:`FinetuneConfig` the options describe (``options``: the session's ``Options``).

    Args:
        options: has ``finetune`` (:class:`FinetuneOptions`), ``preset``, ``seed``, ``window`` and ``corpus``.
        method: overrides ``--finetune`` (``full`` or ``lora``).
        changes: other fields to override (``noise``, ``clip``, ...).

    Raises:
        HarnessError: a bad combination (clipping with LoRA, a budget below one window).
    """
    ft: FinetuneOptions = options.finetune
    method = method or ft.method
    if method == "none":
        raise HarnessError("no fine-tuning method: use --finetune lora or --finetune full")
    fields: dict[str, Any] = dict(
        method=method, tokens=ft.tokens or pick_preset(TOKENS, options.preset), window=options.window,
        lr=ft.lr, schedule=ft.schedule, seed=options.seed, noise=ft.noise, clip=ft.clip, lora_rank=ft.lora_rank,
        corpus=options.corpus or DEFAULT_CORPUS,
    )
    fields.update(changes)
    return FinetuneConfig(**fields)


def finetune_source(name: str, options: Any) -> str:
    """What to load for model ``name``: ``name`` itself with ``--finetune none``, else the directory of
    the model fine-tuned with the options' settings (trained on first use, cached by settings).

    Raises:
        HarnessError: as :func:`harness.finetune.run.ensure_finetuned`.
    """
    if options.finetune.method == "none":
        return name
    from harness.finetune.run import ensure_finetuned

    done = ensure_finetuned(name, config_from_options(options), results_dir=options.results_dir,
                            device=options.device)
    return str(done.path)
