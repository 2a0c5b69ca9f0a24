"""pytest options of fine-tuning (added to the plugin's "esa" group).

``--finetune none|lora|full`` makes every suite run on the fine-tuned model instead of the base one
(:func:`finetune_source`); the other options set the run (and the finetune suite's runs). They reach
tests as ``esa.options.extra["finetune"]``, ``["finetune_tokens"]``, ... A value left at None means
"the preset's" or "the method's" (see each help text).
"""

from __future__ import annotations

from typing import Any

from harness.errors import HarnessError
from harness.finetune.config import DEFAULT_LR, METHODS, SCHEDULES, FinetuneConfig, check_clip, check_lr, check_noise
from harness.option_values import as_option_type, choice, positive_int

CHOICES = ("none", *METHODS)
TOKENS = {"quick": 2048, "full": 8192}  # token budget per preset (smollm2-135m quick: 4 steps of 2 x 256)


def add_options(group) -> None:
    """Add the fine-tuning options to the plugin's option group."""
    group.addoption("--finetune", dest="esa_finetune", type=as_option_type(choice, CHOICES, "fine-tuning method"),
                    default="none",
                    help="run the suites on the model fine-tuned on the corpus's calibration documents: none, "
                         "lora (peft) or full; trained once and cached under <results-dir>/finetuned/ "
                         "(default: none)")
    group.addoption("--finetune-tokens", dest="esa_finetune_tokens",
                    type=as_option_type(positive_int, "fine-tuning tokens"), default=None,
                    help=f"fine-tuning token budget, one pass over the calibration documents (default: quick "
                         f"{TOKENS['quick']}, full {TOKENS['full']})")
    group.addoption("--finetune-lr", dest="esa_finetune_lr", type=as_option_type(check_lr), default=None,
                    help=f"peak learning rate, AdamW (default: full {DEFAULT_LR['full']:g}, "
                         f"lora {DEFAULT_LR['lora']:g})")
    group.addoption("--finetune-schedule", dest="esa_finetune_schedule",
                    type=as_option_type(choice, SCHEDULES, "schedule"), default="cosine",
                    help="learning-rate schedule: constant, linear or cosine decay to 0 (default: cosine)")
    group.addoption("--finetune-noise", dest="esa_finetune_noise", type=as_option_type(check_noise), default=0.0,
                    help="fault-aware fine-tuning: relative sigma of weight noise w*(1+sigma*eps) on the linear "
                         "weights, re-drawn every step (default: 0, off)")
    group.addoption("--finetune-clip", dest="esa_finetune_clip", type=as_option_type(check_clip), default=None,
                    help="fault-aware fine-tuning (full only): clip each linear weight matrix to this factor of its "
                         "pre-fine-tuning max |w| after every step (default: off)")
    group.addoption("--finetune-lora-rank", dest="esa_finetune_lora_rank",
                    type=as_option_type(positive_int, "LoRA rank"), default=8,
                    help="LoRA rank r, alpha = 2r (default: 8)")


def config_from_options(options: Any, method: str | None = None, **changes: Any) -> FinetuneConfig:
    """The :class:`FinetuneConfig` the options describe (``options``: the session's ``Options``).

    Args:
        options: has ``extra``, ``preset``, ``seed``, ``window`` and ``corpus``.
        method: overrides ``--finetune`` (``full`` or ``lora``).
        changes: other fields to override (``noise``, ``clip``, ...).

    Raises:
        HarnessError: a bad combination (clipping with LoRA, a budget below one window).
    """
    extra = options.extra
    method = method or extra.get("finetune") or "none"
    if method == "none":
        raise HarnessError("no fine-tuning method: use --finetune lora or --finetune full")
    fields: dict[str, Any] = dict(
        method=method, tokens=extra.get("finetune_tokens") or TOKENS.get(options.preset, TOKENS["quick"]),
        window=options.window, lr=extra.get("finetune_lr"), schedule=extra.get("finetune_schedule") or "cosine",
        seed=options.seed, noise=extra.get("finetune_noise") or 0.0, clip=extra.get("finetune_clip"),
        lora_rank=extra.get("finetune_lora_rank") or 8, corpus=options.corpus or "pydoc-topics",
    )
    fields.update(changes)
    return FinetuneConfig(**fields)


def finetune_source(name: str, options: Any) -> str:
    """What to load for model ``name``: ``name`` itself with ``--finetune none``, else the directory of
    the model fine-tuned with the options' settings (trained on first use, cached by settings).

    Raises:
        HarnessError: as :func:`harness.finetune.run.ensure_finetuned`.
    """
    if (options.extra.get("finetune") or "none") == "none":
        return name
    from harness.finetune.run import ensure_finetuned

    done = ensure_finetuned(name, config_from_options(options), results_dir=options.results_dir,
                            device=options.device)
    return str(done.path)
