"""The training loop: AdamW over the windows, a learning-rate schedule, optional noise and clipping.

One pass over the training windows in a seeded order, ``config.batch`` windows per step, causal-LM
loss (transformers' ``labels=input_ids``). On CUDA the forward and backward run under autocast
(bf16 where supported, else fp16 with a gradient scaler) with fp32 master weights; on CPU in the
model's dtype. Each decoder block keeps only its input for the backward and recomputes its activations there
(:func:`harness.scoring.grads.checkpointed`: the same operations, the same gradient bits, one more forward).

Memory beyond the model being trained (P trainable weights, T = batch x window tokens, L blocks of width d):
full fine-tuning holds its gradients and AdamW's two moments (3P, by construction) plus L·T·d block inputs and one
block's activations and the head's T·V logits at a time; LoRA holds the adapters (rank x
(rows + columns) per adapted matrix: 2.4M weights, 1.8% of P, on smollm2-135m at rank 8), their gradients and two
moments, and the same activations. Global RNG state (dropout, LoRA's initialisation) is seeded inside ``fork_rng`` and
left as it was.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from harness.finetune.config import FinetuneConfig
from harness.finetune.hardening import WeightClip, noise_step
from harness.scoring.grads import checkpointed

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
LOG_EVERY = 5  # steps between progress lines on the terminal (every step's loss is kept)


@dataclass
class TrainLog:
    """What a run did. ``points``: one dict per step (step, tokens, loss, lr, and clipped with clipping)."""

    points: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0

    @property
    def losses(self) -> list[float]:
        return [p["loss"] for p in self.points]

    def to_dict(self) -> dict:
        return {"points": self.points, "seconds": self.seconds, "tokens": self.tokens}


def lr_factor(schedule: str, step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate at ``step`` (0-based) of ``steps``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant" or steps <= warmup + 1:
        return 1.0
    progress = (step - warmup) / (steps - warmup)  # 0 at the first step after warm-up, < 1 at the last
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _precision(device: torch.device) -> tuple[contextlib.AbstractContextManager, torch.amp.GradScaler | None]:
    if device.type != "cuda":
        return contextlib.nullcontext(), None
    if torch.cuda.is_bf16_supported():
        return torch.autocast("cuda", dtype=torch.bfloat16), None
    return torch.autocast("cuda", dtype=torch.float16), torch.amp.GradScaler("cuda")


def train(model: nn.Module, windows: torch.Tensor, config: FinetuneConfig, *, targets: Sequence[str],
          on_step: Callable[[dict], None] | None = None, label: str = "") -> TrainLog:
    """Train ``model`` in place on ``windows``.

    Args:
        model: a causal LM whose trainable parameters have ``requires_grad=True`` (fp32 for stable AdamW).
        windows: (N, window) LongTensor of training tokens (calibration documents only).
        config: the run (lr, schedule, warm-up, batch, seed, noise, clip).
        targets: parameter names that noise and clipping act on (the decoder's linear weights).
        on_step: called with each step's point after the step.
        label: a name for the progress lines.

    Returns:
        The :class:`TrainLog`; the model is left in train mode (the caller puts it back in eval mode).
    """
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    blocks_of = model.get_base_model() if hasattr(model, "get_base_model") else model  # LoRA: the wrapped model
    optimiser = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=0.0)
    steps = math.ceil(windows.shape[0] / config.batch)
    warmup = int(config.warmup * steps)
    autocast, scaler = _precision(device)
    out = TrainLog()
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(config.seed)
        order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(config.seed))
        noise_gen = torch.Generator(device=device).manual_seed(config.seed + 1)
        clip = WeightClip(model, targets, config.clip) if config.clip is not None else None
        if clip is not None:
            clip()
        model.train()
        for step in range(steps):
            lr = config.learning_rate * lr_factor(config.schedule, step, steps, warmup)
            for group in optimiser.param_groups:
                group["lr"] = lr
            batch = windows[order[step * config.batch:(step + 1) * config.batch]].to(device)
            noisy = noise_step(model, targets, config.noise, noise_gen) if config.noise > 0 else None
            with noisy or contextlib.nullcontext(), checkpointed(blocks_of):
                with autocast:
                    loss = model(input_ids=batch, labels=batch, use_cache=False).loss
                (scaler.scale(loss) if scaler is not None else loss).backward()
            if scaler is not None:
                scaler.unscale_(optimiser)
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            if scaler is not None:
                scaler.step(optimiser)
                scaler.update()
            else:
                optimiser.step()
            optimiser.zero_grad(set_to_none=True)
            out.tokens += batch.numel()
            point = {"step": step + 1, "tokens": out.tokens, "loss": float(loss.detach()), "lr": lr}
            if clip is not None:
                point["clipped"] = clip()
            out.points.append(point)
            if on_step is not None:
                on_step(point)
            if (step + 1) % LOG_EVERY == 0 or step + 1 == steps or step == 0:
                log.info("finetune %s: step %d/%d, %d tokens, loss %.4f, lr %.2e", label, step + 1, steps,
                         out.tokens, point["loss"], lr)
    out.seconds = time.perf_counter() - start
    del optimiser
    return out
