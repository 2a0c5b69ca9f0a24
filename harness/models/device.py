"""Device and dtype resolution: the user's words (``auto``, ``cuda:1``, ``bf16``, ``0=20GiB,cpu=64GiB``) to
torch objects, and where a (possibly sharded or offloaded) model takes its inputs."""

from __future__ import annotations

import re

import torch
from torch import nn

from harness.errors import HarnessError, UnknownNameError
from harness.option_values import choice, comma_list
from harness.registry import unknown_message

# The dtype words a user may write (--dtype, ModelSpec.default_dtype, load_model(dtype=...)), case aside and
# with or without a "torch." prefix.
DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
DEVICE_WORDS = ("cpu", "cuda", "cuda:N", "auto")  # cuda:N: a CUDA device index
_DEVICE = re.compile(r"cpu|cuda(?::[0-9]+)?|auto")


def dtype_word(dtype: str) -> str:
    """The key of :data:`DTYPES` that ``dtype`` names: ``"BF16"``, ``"torch.bfloat16"`` -> ``"bf16"``, ``"bfloat16"``.

    Raises:
        UnknownNameError: a word not in :data:`DTYPES`; the message lists them.
    """
    word = str(dtype).lower().removeprefix("torch.")
    if word not in DTYPES:
        raise UnknownNameError(unknown_message("dtype", str(dtype), DTYPES))
    return word


def device_word(device: str) -> str:
    """``device`` as one of :data:`DEVICE_WORDS` (lower case, no spaces around), not yet checked against this
    machine (:func:`resolve_device` does that).

    Raises:
        UnknownNameError: another word; the message lists the device words.
    """
    word = str(device).strip().lower()
    if not _DEVICE.fullmatch(word):
        raise UnknownNameError(unknown_message("device", str(device), DEVICE_WORDS))
    return word


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """The torch dtype for ``dtype``.

    Args:
        dtype: a torch floating dtype of :data:`DTYPES`, or one of its words (:func:`dtype_word`).

    Raises:
        HarnessError: for any other value.
    """
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
        raise UnknownNameError(unknown_message("dtype", str(dtype), DTYPES))
    return DTYPES[dtype_word(dtype)]


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def resolve_device(device: str | torch.device = "cpu") -> torch.device:
    """The torch device for ``device``, checked against this machine.

    Args:
        device: one of :data:`DEVICE_WORDS`: ``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available,
            else cpu).

    Raises:
        HarnessError: for another word, or a CUDA device this machine does not have.
    """
    word = device_word(device)
    if word == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if word == "cpu":
        return torch.device("cpu")
    try:
        resolved = torch.device(word)
    except RuntimeError:  # an index past what torch reads
        raise UnknownNameError(unknown_message("device", str(device), DEVICE_WORDS)) from None
    if not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no CUDA GPU is visible"
        raise HarnessError(f"device {word!r} asked for, but {why} on this machine: use --device cpu (or auto)")
    count = torch.cuda.device_count()
    if resolved.index is not None and resolved.index >= count:
        raise HarnessError(
            f"device {word!r} does not exist: this machine has {count} CUDA device(s) (cuda:0-{count - 1})"
        )
    return resolved


# -- models larger than one device -------------------------------------------------------------

DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")  # transformers' placement strategies
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")
MAX_MEMORY_HELP = "DEVICE=SIZE,... with DEVICE a GPU index (0, cuda:1), cpu or disk and SIZE like 20GiB, 500MB or bytes"


def resolve_device_map(device_map: str) -> str:
    """``device_map`` checked against transformers' strategies (``auto``, ``balanced``, ...).

    Raises:
        HarnessError: any other word.
    """
    return choice(str(device_map).strip().lower(), DEVICE_MAPS, "device map")


def parse_max_memory(text: str) -> dict[int | str, int]:
    """``"0=20GiB,1=20GiB,cpu=64GiB"`` -> ``{0: 21474836480, 1: ..., "cpu": ...}`` (bytes per device).

    Args:
        text: comma-separated ``DEVICE=SIZE``: DEVICE a GPU index (``0``, ``cuda:1``), ``cpu`` or
            ``disk``; SIZE a number of bytes or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB).

    Raises:
        HarnessError: an empty spec, a device or size outside that grammar, or a device named twice.
    """
    limits: dict[int | str, int] = {}
    for item in comma_list(text, f"max-memory entries: {MAX_MEMORY_HELP}", unique=False):
        key, sep, size = (part.strip().lower() for part in item.partition("="))
        if not sep or not key or not size:
            raise HarnessError(f"bad max-memory entry {item!r} in {text!r}: use {MAX_MEMORY_HELP}")
        index = key.removeprefix("cuda:")
        device: int | str = int(index) if index.isdigit() else key
        if device not in ("cpu", "disk") and not isinstance(device, int):
            raise HarnessError(f"unknown max-memory device {key!r} in {text!r}: use {MAX_MEMORY_HELP}")
        m = _SIZE.fullmatch(size)
        if m is None or m.group(2) not in _UNITS:
            raise HarnessError(f"bad max-memory size {size!r} for {key} in {text!r}: use {MAX_MEMORY_HELP}")
        if device in limits:
            raise HarnessError(f"max-memory names {key} twice in {text!r}: use {MAX_MEMORY_HELP}")
        limits[device] = int(float(m.group(1)) * _UNITS[m.group(2)])
    return limits


def check_max_memory(max_memory: dict[int | str, int]) -> None:
    """Refuse GPU indices this machine does not have (accelerate would only warn and ignore them).

    Raises:
        HarnessError: a GPU index at or above the visible CUDA device count.
    """
    gpus = [k for k in max_memory if isinstance(k, int)]
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [k for k in gpus if k >= count]
    if missing:
        have = f"GPUs 0-{count - 1}" if count else "no visible GPU"
        raise HarnessError(f"max-memory names GPU {missing[0]}, but this machine has {have}: "
                           "name only visible GPUs, cpu or disk")


def input_device(model: nn.Module) -> torch.device:
    """The device a model's input ids go to: where its input embeddings run.

    Under a device map that offloads the embeddings, their weight is a ``meta`` placeholder and the
    accelerate hook's execution device says where they run; otherwise it is the embedding weight's
    device (for a module without input embeddings: that of its first parameter not on ``meta``).
    """
    get = getattr(model, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    hook = getattr(embeddings, "_hf_hook", None)
    for h in getattr(hook, "hooks", [hook]):  # accelerate's SequentialHook holds several
        device = getattr(h, "execution_device", None)
        if device is not None:
            return torch.device(device)
    for param in (embeddings if embeddings is not None else model).parameters():
        if not param.is_meta:
            return param.device
    return torch.device("cpu")
