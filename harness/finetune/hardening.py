"""Fault-aware fine-tuning: weight noise during training and weight clipping.

**Weight noise** (noise injection training; Murray & Edwards, "Enhanced MLP performance and fault
tolerance resulting from synaptic weight noise during training", IEEE Trans. Neural Networks 5(5),
1994; for analog in-memory hardware, Joshi et al., "Accurate deep neural network inference using
computational phase-change memory", Nature Communications 11, 2473, 2020): every step, each targeted
weight becomes ``w * (1 + sigma * eps)``, eps ~ N(0, 1) re-drawn every step from the run's seeded
generator; the forward and backward pass see the noisy weights, the clean weights are restored
bit-exactly (``harness.faults.add_noise``) before the optimiser applies the gradient to them.

**Weight clipping** (Stutz, Chandramoorthy, Hein, Schiele, "Bit Error Robustness for Energy-Efficient
DNN Accelerators", MLSys 2021, Sec. 4.1): the weights are projected onto ``[-w_max, w_max]`` after every
optimiser step, which keeps the weight range (and so the damage of one corrupted value relative to
the rest) small. Stutz et al. use one global ``w_max`` for small CNNs; here each matrix gets its own,
``clip * max|w|`` of that matrix before fine-tuning, because an LLM's matrices differ in range by
orders of magnitude and its largest weights include the super weights: ``clip >= 1`` only stops the
range from growing, ``clip < 1`` also cuts the largest weights (super weights included).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from harness.faults import Noise, add_noise

log = logging.getLogger(__name__)


def noise_step(model: nn.Module, names: Sequence[str], sigma: float, generator: torch.Generator) -> Noise:
    """Relative Gaussian noise ``w * (1 + sigma * eps)`` on ``names`` for one training step.

    ``with noise_step(...): loss.backward()`` computes the gradient at the noisy weights and restores
    the clean ones on the way out (also when the body raises). Each call draws new noise from
    ``generator``.
    """
    return add_noise(model, list(names), sigma, kind="gaussian", scale="relative", generator=generator)


class WeightClip:
    """Project weights onto ``[-clip * m0, clip * m0]`` per matrix (m0: its max |w| when built).

    Args:
        model: the model being trained.
        names: the parameters to clip.
        factor: ``clip``, > 0.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], factor: float) -> None:
        self.model = model
        self.factor = float(factor)
        with torch.no_grad():
            self.limits = {n: float(model.get_parameter(n).abs().max()) * self.factor for n in names}
        self.clipped = 0  # weights changed by the last projection

    @torch.no_grad()
    def __call__(self) -> int:
        """Clamp every matrix in place; returns how many weights were out of range."""
        total = 0
        for name, limit in self.limits.items():
            w = self.model.get_parameter(name)
            total += int((w.abs() > limit).sum())
            w.clamp_(-limit, limit)
        self.clipped = total
        return total
