"""Device and dtype resolution: the user's words (``auto``, ``cuda:1``, ``bf16``) to torch objects."""

from __future__ import annotations

import torch

from harness.errors import HarnessError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}
DEVICE_WORDS = "cpu, cuda, cuda:N, auto"


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for ``dtype``.

    Args:
        dtype: a torch floating dtype, or one of fp32/fp16/bf16/float32/float16/bfloat16.

    Raises:
        HarnessError: for any other value.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise HarnessError(f"unknown dtype {str(dtype)!r}: use one of fp32, fp16, bf16 (or float32, float16, bfloat16)")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device for ``device``, checked against this machine.

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available, else cpu).

    Raises:
        HarnessError: for another word, or a CUDA device this machine does not have.
    """
    word = str(device).strip().lower()
    if word == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if word == "cpu":
        return torch.device("cpu")
    if word == "cuda" or word.startswith("cuda:"):
        try:
            resolved = torch.device(word)
        except RuntimeError:
            raise HarnessError(f"unknown device {str(device)!r}: use one of {DEVICE_WORDS}") from None
        if not torch.cuda.is_available():
            why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise HarnessError(f"device {word!r} asked for, but {why} on this machine: use --device cpu (or auto)")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise HarnessError(
                f"device {word!r} does not exist: this machine has {count} CUDA device(s) (cuda:0-{count - 1})"
            )
        return resolved
    raise HarnessError(f"unknown device {str(device)!r}: use one of {DEVICE_WORDS}")
