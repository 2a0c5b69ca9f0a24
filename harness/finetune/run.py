"""Fine-tune a zoo model on calibration documents and save it, once per configuration.

``ensure_finetuned(name, config, results_dir=..., device=...)`` returns the directory of the
fine-tuned model, training it only when ``<results_dir>/finetuned/<model>-<method>-<key>/`` does not
hold it yet (``key``: :meth:`FinetuneConfig.key`, a hash of the model name and every setting). The
directory holds the merged weights as safetensors with config and tokenizer (it loads with
``AutoModelForCausalLM.from_pretrained(path)`` and with ``--model path``), for LoRA the adapter in
``adapter/`` (``PeftModel.from_pretrained(base, path / "adapter")``), and ``esa-finetune.json``: the
settings, the loss of every step, tokens and seconds.

Training text: the first ``config.tokens`` tokens (whole windows) of the corpus's calibration
documents, never its evaluation documents.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from harness.errors import HarnessError
from harness.finetune.config import FinetuneConfig
from harness.finetune.lora import base_weight, merge, wrap_lora
from harness.finetune.train import TrainLog, train

if TYPE_CHECKING:
    from harness.models.loading import LoadedModel

log = logging.getLogger(__name__)

FINETUNE_FILE = "esa-finetune.json"
ADAPTER_DIR = "adapter"
CACHE_DIR = "finetuned"


@dataclass(frozen=True)
class Finetuned:
    """A saved fine-tuned model: where it is, how it was made, what training measured."""

    path: Path
    model: str
    config: FinetuneConfig
    log: TrainLog
    reused: bool = False


def training_windows(tokenizer: Any, corpus: Any, config: FinetuneConfig) -> torch.Tensor:
    """The training windows: the first ``config.windows`` windows of the calibration documents, cut
    as the evaluation windows are (:func:`harness.data.corpus.token_windows`: each starts with the
    tokenizer's BOS where it adds one), so that the model trains on the inputs it is evaluated on.

    Raises:
        HarnessError: the calibration documents hold fewer tokens than the budget.
    """
    from harness.data.corpus import token_stream, token_windows

    try:
        return token_windows(tokenizer, corpus.calib_docs, config.window, config.windows, corpus.name)  # (N, window)
    except HarnessError as e:
        have = token_stream(tokenizer, corpus.calib_docs).numel()
        if have >= config.windows * config.window:
            raise
        most = have // config.window * config.window
        raise HarnessError(f"a fine-tuning budget of {config.tokens} tokens is more than the {have} "
                           f"calibration tokens of {corpus.name} with this tokenizer; allowed: at most {most} "
                           "(--finetune-tokens), or a larger --corpus") from e


def linear_weights(model: Any) -> list[str]:
    """The names of the decoder blocks' linear weight matrices, sorted."""
    from harness.models.archmap import select

    return sorted({ref.param for ref in select(model, components="linear")})


def finetune(loaded: LoadedModel, windows: torch.Tensor, config: FinetuneConfig, *,
             adapter_dir: Path | None = None) -> TrainLog:
    """Fine-tune ``loaded`` (a ``LoadedModel`` the caller owns: it is changed in place) on ``windows``.

    LoRA adapters are merged into the weights afterwards (and saved first to ``adapter_dir`` when
    given), so ``loaded.model`` is a plain transformers model either way, back in eval mode with no
    gradients.

    Raises:
        HarnessError: weights that are not fp32, or LoRA on a family peft does not support.
    """
    model = loaded.model
    if loaded.dtype != torch.float32:
        raise HarnessError(f"fine-tuning needs fp32 weights (AdamW on {loaded.dtype} loses small updates); "
                           "load the model with dtype='fp32'")
    names = linear_weights(model)
    label = f"{loaded.name} {config.method} {config.variant}"
    try:
        if config.method == "lora":
            model.requires_grad_(False)
            wrapped = wrap_lora(model, sorted(n.removesuffix(".weight") for n in names), config.lora_rank,
                                loaded.family)
            result = train(wrapped, windows, config, targets=[base_weight(wrapped, n) for n in names], label=label)
            if adapter_dir is not None:
                wrapped.save_pretrained(adapter_dir)
            loaded.model = merge(wrapped)
        else:
            model.requires_grad_(True)
            result = train(model, windows, config, targets=names, label=label)
    finally:
        loaded.model.eval()
        loaded.model.requires_grad_(False)
        for p in loaded.model.parameters():
            p.grad = None
    return result


def finetuned_path(results_dir: str | os.PathLike, model: str, config: FinetuneConfig) -> Path:
    """``<results_dir>/finetuned/<model>-<method>-<key>``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("_") or "model"
    return Path(results_dir) / CACHE_DIR / f"{safe}-{config.method}-{config.key(model)}"


def _writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        raise HarnessError(f"fine-tuning needs a writable results directory: cannot write to {directory} "
                           f"({err.strerror or type(err).__name__}); choose another --results-dir") from None


def load_finetuned(path: str | os.PathLike) -> Finetuned:
    """Read what ``esa-finetune.json`` in ``path`` says about a saved fine-tuned model.

    Raises:
        HarnessError: ``path`` holds no fine-tuned model.
    """
    path = Path(path)
    try:
        facts = json.loads((path / FINETUNE_FILE).read_text())
    except (OSError, ValueError):
        raise HarnessError(f"{path} is not a fine-tuned model directory (no readable {FINETUNE_FILE})") from None
    fields = {k: v for k, v in facts["config"].items() if k in FinetuneConfig.__dataclass_fields__}
    train_log = TrainLog(points=facts["train"]["points"], seconds=facts["train"]["seconds"],
                         tokens=facts["train"]["tokens"])
    return Finetuned(path, facts["model"], FinetuneConfig(**fields), train_log, reused=True)


def ensure_finetuned(model: str, config: FinetuneConfig, *, results_dir: str | os.PathLike,
                     device: str = "cpu") -> Finetuned:
    """The fine-tuned ``model``: read from the results directory, or trained, saved and returned.

    Args:
        model: a registry name, hub id or model directory.
        config: the run; ``config.corpus`` names the corpus (its calibration documents are used).
        results_dir: where ``finetuned/`` lives.
        device: where to train.

    Raises:
        HarnessError: an unwritable results directory, a corpus too small for the budget, LoRA on a
            family peft does not support, or a model that cannot be loaded.
    """
    path = finetuned_path(results_dir, model, config)
    if (path / FINETUNE_FILE).is_file():
        log.info("reusing the fine-tuned %s in %s", model, path)
        return load_finetuned(path)
    _writable(path.parent)
    from harness.data import load_corpus
    from harness.models import load_model

    loaded = load_model(model, device=device, dtype="fp32")
    corpus = load_corpus(config.corpus)
    windows = training_windows(loaded.tokenizer, corpus, config)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        result = finetune(loaded, windows, config, adapter_dir=tmp / ADAPTER_DIR if config.method == "lora" else None)
        loaded.model.save_pretrained(tmp)
        loaded.tokenizer.save_pretrained(tmp)
        facts = {"model": model, "key": config.key(model), "config": config.to_dict(), "corpus": corpus.name,
                 "documents": "calibration", "windows": list(windows.shape), "train": result.to_dict(),
                 "torch": torch.__version__, "device": str(device)}
        (tmp / FINETUNE_FILE).write_text(json.dumps(facts, indent=1))
        if path.exists():  # another process finished the same run first: keep its copy
            shutil.rmtree(tmp)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("fine-tuned %s (%s, %s, %d tokens, %.1f s) saved to %s", model, config.method, config.variant,
             result.tokens, result.seconds, path)
    return Finetuned(path, model, config, result)
