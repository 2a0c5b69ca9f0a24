"""Hugging Face hub access: the token, a quick reachability check, and loading by hub id.

The token comes from ``HF_TOKEN`` or ``HUGGINGFACE_TOKEN`` in the environment, else from a ``.env``
file in the working directory. It is passed to ``from_pretrained`` and nowhere else: never logged,
never stored on an object, never written.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from harness.errors import HarnessError, OfflineError

log = logging.getLogger(__name__)

TOKEN_VARS = ("HF_TOKEN", "HUGGINGFACE_TOKEN")
CONNECT_TIMEOUT_S = 2.0


def _dotenv(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines of a ``.env`` file (``export`` prefixes, quotes and comments allowed)."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return values
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, value = line.removeprefix("export ").split("=", 1)
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def hub_token() -> str | None:
    """The hub token from the environment or ``./.env``, or None. Never log the result."""
    for var in TOKEN_VARS:
        if os.environ.get(var):
            return os.environ[var]
    env = _dotenv(Path.cwd() / ".env")
    for var in TOKEN_VARS:
        if env.get(var):
            return env[var]
    return None


def _offline_env() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.cache
def _endpoint_reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_reachable() -> bool:
    """Whether the hub can be reached: False when ``HF_HUB_OFFLINE`` is set, else a short TCP connect
    to the hub endpoint (``HF_ENDPOINT`` respected), cached for the process."""
    if _offline_env():
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    return _endpoint_reachable(url.hostname or "", url.port or (443 if url.scheme == "https" else 80))


def in_local_cache(hub_id: str) -> bool:
    """Whether the config of ``hub_id`` is in the local Hugging Face cache (downloaded before)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)
    except Exception:  # a malformed id or cache: treat as not cached
        return False


def offline_message(what: str) -> str:
    """One line: ``what`` needs the hub, why it cannot be reached, and the models that load offline."""
    from harness.models.specs import offline_models

    why = "HF_HUB_OFFLINE is set" if _offline_env() else "the hub cannot be reached from this machine"
    return f"{what} needs the Hugging Face hub and {why}; models that load offline: {', '.join(offline_models())}"


def gated_message(name: str, hub_id: str) -> str:
    """One line: ``name`` is gated, and how to give the harness a token."""
    return (f"model {name!r} ({hub_id}) is gated on the Hugging Face hub: set HF_TOKEN (or HUGGINGFACE_TOKEN, "
            "or a line HF_TOKEN=... in ./.env) to a token whose account has accepted its licence")


def load_from_hub(
    hub_id: str, *, name: str, gated: bool = False, dtype: Any = None, quantization_config: Any = None,
    **placement: Any,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` of ``hub_id`` with transformers, from the local hub cache when offline.

    Args:
        hub_id: the hub repository id.
        name: the harness name, for messages.
        gated: the repository needs a token.
        dtype, quantization_config: passed to ``from_pretrained``.
        placement: ``device_map``, ``max_memory``, ``offload_folder``, passed to ``from_pretrained``.

    Raises:
        OfflineError: the hub is unreachable and the model is not in the local hub cache.
        HarnessError: a gated model without a token, or the hub refused the download.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs: dict[str, Any] = {"dtype": dtype, **placement}
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if not hub_reachable():
        try:  # a model downloaded earlier loads without the hub
            # adapter_kwargs: transformers looks for a PEFT adapter config without local_files_only, i.e. over the
            # network with retries (23 s of back-off when HF_HUB_OFFLINE was set after huggingface_hub's import)
            model = AutoModelForCausalLM.from_pretrained(hub_id, local_files_only=True,
                                                         adapter_kwargs={"local_files_only": True}, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(hub_id, local_files_only=True)
        except OSError:
            raise OfflineError(offline_message(f"model {name!r} ({hub_id})")) from None
        log.info("loaded %s from the local hub cache (hub unreachable)", hub_id)
        return model, tokenizer
    token = hub_token()
    if gated and token is None:
        raise HarnessError(gated_message(name, hub_id))
    log.info("loading %s from the hub", hub_id)
    try:
        model = AutoModelForCausalLM.from_pretrained(hub_id, token=token, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(hub_id, token=token)
    except OSError as err:
        # The message of a refused download can quote the URL, never the token; keep its first line.
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = " (check that HF_TOKEN has access)" if gated or token else ""
        raise HarnessError(f"cannot load {name!r} ({hub_id}) from the hub{hint}: {first}") from None
    return model, tokenizer
