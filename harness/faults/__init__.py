"""Fault sites, samplers, and perturbations that edit a model in place and restore it bit-exactly.

Every perturbation is a context manager (``with flip_bits(model, sites): ...``) that saves only
what it touches and restores it in ``finally``; ``PERTURBATIONS.get(kind)(model, ...)`` builds one
by name: ``bitflip``, ``ber``, ``noise``, ``ablation``, ``activation``.
"""

from harness.faults.ablation import Ablation, ablate, ablate_layer
from harness.faults.activation import ActivationFault, activation_fault
from harness.faults.base import PERTURBATIONS, Perturbation, save_block
from harness.faults.ber import BitErrorRate, bit_error_rate, expected_flips, sample_ber_sites
from harness.faults.bits import BIT_CLASSES, bit_class, check_bits, flip_tensor_bits, resolve_bits
from harness.faults.injector import BitFlip, flip_bits
from harness.faults.noise import Noise, SiteNoise, add_noise
from harness.faults.quant import Int8Quantization, QuantizedLinear, quantize_int8
from harness.faults.samplers import (
    distinct_positions,
    draw_bits,
    grouped_sites,
    per_component_sites,
    per_layer_sites,
    target_sites,
    top_magnitude_sites,
    uniform_sites,
)
from harness.faults.sites import FaultSite, Region, as_regions
from harness.faults.storage import LAYOUTS, BitLayout, find_tensor, layout, stored_bits

__all__ = [
    "BIT_CLASSES", "LAYOUTS", "PERTURBATIONS", "Ablation", "ActivationFault", "BitErrorRate",
    "BitFlip", "BitLayout", "FaultSite", "Int8Quantization", "Noise", "Perturbation",
    "QuantizedLinear", "Region", "SiteNoise", "ablate", "ablate_layer", "activation_fault", "add_noise",
    "as_regions", "bit_class", "bit_error_rate", "check_bits", "distinct_positions", "draw_bits",
    "expected_flips", "find_tensor", "flip_bits", "flip_tensor_bits", "grouped_sites", "layout",
    "per_component_sites", "per_layer_sites", "quantize_int8", "resolve_bits", "sample_ber_sites",
    "save_block", "stored_bits", "target_sites", "top_magnitude_sites", "uniform_sites",
]
