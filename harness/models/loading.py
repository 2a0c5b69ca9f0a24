"""``load_model``: one entry point for every source (registry name, local directory, GGUF package,
tiny random model, hub id), returning the model ready for analysis (eval mode, no gradients)."""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from harness.errors import HarnessError, UnknownNameError
from harness.models.archmap import ArchMap, arch_map, family_of_model_type
from harness.models.device import (
    DEVICE_MAPS,
    check_max_memory,
    dtype_name,
    input_device,
    parse_max_memory,
    resolve_device,
    resolve_device_map,
    resolve_dtype,
)
from harness.models.integrity import LOCAL_FIX, check_model_dir, read_json
from harness.models.specs import MODELS, ModelSpec

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


@dataclass
class LoadedModel:
    """A loaded model with everything an analysis needs to address it.

    Attributes:
        name: the registry name, the hub id or the local path it was loaded from.
        spec: its :class:`ModelSpec` (synthesised for a local directory or an unregistered hub id).
        model: the transformers causal LM, in eval mode, every parameter ``requires_grad=False``.
        tokenizer: its tokenizer.
        family: architecture family (a key of ``ARCH_MAPS``).
        arch: the family's :class:`ArchMap`.
        device: device of the input embeddings (the first device when sharded by ``device_map``).
        dtype: dtype of the floating-point parameters.
    """

    name: str
    spec: ModelSpec
    model: Any
    tokenizer: Any
    family: str
    arch: ArchMap
    device: torch.device
    dtype: torch.dtype

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.model.parameters())
        return (f"LoadedModel(name={self.name!r}, family={self.family!r}, source={self.spec.source!r}, "
                f"device={str(self.device)!r}, dtype={dtype_name(self.dtype)!r}, params={params:,})")


def resolve_spec(name_or_path: str | os.PathLike) -> ModelSpec:
    """The :class:`ModelSpec` for a registry name, a registered hub id, a local directory or a hub id.

    Raises:
        UnknownNameError: an unknown name (with the closest registered one).
        HarnessError: a path that is not a model directory.
    """
    name = os.fspath(name_or_path)
    if name in MODELS:
        return MODELS.get(name)
    for _, spec in MODELS.items():
        if spec.hub_id == name and spec.source == "hub":
            return spec
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return _local_spec(path)
    if name.count("/") == 1 and all(name.split("/")):
        return ModelSpec(name, family="", source="hub", hub_id=name)  # family known after loading the config
    raise UnknownNameError(MODELS.unknown_message(name) + "; or give a local model directory or a hub id owner/name")


def _local_spec(path: Path) -> ModelSpec:
    config = path / "config.json"
    if not path.is_dir() or not config.is_file():
        raise HarnessError(f"{path} is not a model directory: expected a directory with config.json and weights")
    model_type = read_json(config).get("model_type", "")
    return ModelSpec(str(path), family_of_model_type(str(model_type)), "local")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    device_map: str | dict | None = None,
    max_memory: str | dict | None = None,
    offload_dir: str | os.PathLike | None = None,
    load_in_8bit: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> LoadedModel:
    """Load a model for analysis.

    Args:
        name_or_path: a registry name (``smollm2-135m``, ``tiny-llama``, ``gpt-neo-125m``), a local
            directory of a transformers model, or a hub id (``owner/name``).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: fp32/fp16/bf16 (or float32/float16/bfloat16); default: the spec's ``default_dtype``.
        device_map: ``auto``, ``balanced``, ``balanced_low_0`` or ``sequential`` (transformers places the
            model across the visible GPUs, then CPU memory, then disk), or an explicit
            ``{module: device}`` dict; ``device`` is then not applied. Modules placed on ``cpu`` while
            a GPU runs the model, and modules placed on ``disk``, are offloaded: their parameters are
            ``meta`` placeholders and accelerate moves the values in at each forward. A tiny model is
            saved to a temporary directory and loaded from there, like any other.
        max_memory: the most each device may hold, ``{0: "20GiB", "cpu": "64GiB"}`` or the string
            ``"0=20GiB,cpu=64GiB"`` (:func:`~harness.models.device.parse_max_memory`); needs ``device_map``.
        offload_dir: where modules placed on ``disk`` are written when their weights are not already
            in safetensors files; needs ``device_map``.
        load_in_8bit: load linear weights in 8 bits with bitsandbytes; CUDA only.
        cache_dir: root of the harness cache (default ``$ESA_CACHE_DIR`` or ``~/.cache/esa-harness``).

    Returns:
        A :class:`LoadedModel`, in eval mode with ``requires_grad_(False)`` on every parameter.

    Raises:
        HarnessError: an unknown name, bad device, dtype, device map or max-memory spec, missing CUDA,
            a gated model without a token, or a hub model on a machine that cannot reach the hub
            (``OfflineError``).
    """
    spec = resolve_spec(name_or_path)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype if dtype is not None else spec.default_dtype)
    quantization = _eight_bit(spec, torch_device) if load_in_8bit else None
    if quantization is not None and device_map is None:
        device_map = {"": torch_device.index or 0}
    placement = _placement(device_map, max_memory, offload_dir)
    start = time.perf_counter()
    kwargs = {"dtype": torch_dtype, "quantization_config": quantization, **placement}
    if spec.source == "shape":
        from harness.models.tiny import build_shape, byte_tokenizer

        if device_map is not None:
            raise HarnessError(f"{spec.name} is built in memory and has no saved weights to place with a device map: "
                               "drop --device-map / --max-memory / --offload-dir (and 8-bit loading)")
        model, tokenizer = build_shape(spec.name, dtype=torch_dtype), byte_tokenizer()
    elif spec.source == "tiny" and device_map is not None:
        from harness.models.tiny import saved_tiny

        model, tokenizer = _from_directory(saved_tiny(spec.family), **kwargs)
    elif spec.source == "tiny":
        from harness.models.tiny import build_tiny, byte_tokenizer

        model, tokenizer = build_tiny(spec.family).to(torch_dtype), byte_tokenizer()
    elif spec.source == "gguf-package":
        from harness.models.gguf import ensure_converted

        model, tokenizer = _from_directory(ensure_converted(spec, cache_dir), **kwargs)
    elif spec.source == "local":
        model, tokenizer = _from_directory(Path(spec.name), **kwargs)
    else:
        from harness.models.hub import load_from_hub

        model, tokenizer = load_from_hub(spec.hub_id or spec.name, name=spec.name, gated=spec.gated, **kwargs)
    if not spec.family:
        spec = ModelSpec(spec.name, family_of_model_type(model.config.model_type), "hub", hub_id=spec.hub_id)
    if device_map is None:
        model = model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    loaded = LoadedModel(
        name=spec.name, spec=spec, model=model, tokenizer=tokenizer, family=spec.family, arch=arch_map(model),
        device=input_device(model), dtype=_float_dtype(model, torch_dtype),
    )
    log.info("loaded %s in %.1f s", loaded, time.perf_counter() - start)
    if getattr(model, "hf_device_map", None):
        modules = Counter(str(d) for d in model.hf_device_map.values())
        log.info("device map of %s: %s", spec.name, ", ".join(f"{n} module(s) on {d}" for d, n in modules.items()))
    return loaded


def _placement(device_map: Any, max_memory: Any, offload_dir: Any) -> dict[str, Any]:
    """The ``from_pretrained`` placement arguments (only those given), checked."""
    if device_map is None:
        if max_memory is not None or offload_dir is not None:
            raise HarnessError("max_memory and offload_dir place a model with a device map: also give device_map "
                               f"(one of {', '.join(DEVICE_MAPS)})")
        return {}
    out: dict[str, Any] = {"device_map": device_map if isinstance(device_map, dict) else resolve_device_map(device_map)}
    if max_memory is not None:
        out["max_memory"] = parse_max_memory(max_memory) if isinstance(max_memory, str) else dict(max_memory)
        check_max_memory(out["max_memory"])
    if offload_dir is not None:
        out["offload_folder"] = os.fspath(offload_dir)
    return out


def _from_directory(path: Path, *, dtype: torch.dtype, quantization_config: Any, **placement: Any) -> tuple[Any, Any]:
    """The model and tokenizer of a transformers directory; a broken file is one line naming it."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    check_model_dir(path)
    kwargs: dict[str, Any] = {"dtype": dtype, **placement}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise HarnessError(f"cannot load a model from {path}: {_first_line(err)}; {LOCAL_FIX}") from None
    return model, load_tokenizer(path)


def load_tokenizer(path: Path) -> Any:
    """The tokenizer of a model directory.

    Raises:
        HarnessError: one line naming the tokenizer file that does not load.
    """
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as err:  # tokenizers raises bare Exception and KeyError on a broken tokenizer.json
        where = next((path / n for n in TOKENIZER_FILES if (path / n).is_file()), path)
        raise HarnessError(f"{where}: the tokenizer does not load ({_first_line(err)}); {LOCAL_FIX}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _eight_bit(spec: ModelSpec, device: torch.device) -> Any:
    if device.type != "cuda":
        raise HarnessError("load_in_8bit needs a CUDA device (bitsandbytes): use --device cuda, or drop 8-bit loading")
    if spec.source == "tiny":
        raise HarnessError(f"load_in_8bit does not apply to the tiny model {spec.name!r}")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise HarnessError("load_in_8bit needs the bitsandbytes package: pip install bitsandbytes") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def _float_dtype(model: Any, default: torch.dtype) -> torch.dtype:
    for param in model.parameters():
        if param.dtype.is_floating_point:
            return param.dtype
    return default
