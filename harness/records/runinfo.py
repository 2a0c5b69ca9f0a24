"""Machine and commit information stored with every run."""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def new_run_id() -> str:
    """A new run id: the UTC start time and six random hex digits (``20261204T201148Z-0bbb84``)."""
    import uuid
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ-") + uuid.uuid4().hex[:6]


def git_commit(cwd: Path | None = None) -> str | None:
    """The checked-out commit (with ``+dirty`` when the tree has changes), or None outside git."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}+dirty" if dirty else sha


def device_description(device: str) -> str:
    """A readable name of ``device``: the GPU model for CUDA, the processor for CPU."""
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


def collect_run_info(device: str = "cpu", dtype: str | None = None, command: str | None = None) -> dict:
    """Everything a stored run carries about where and how it ran (no secrets).

    Args:
        device: the torch device the run uses.
        dtype: the model dtype the run uses, when one applies to the whole run.
        command: the command line; defaults to ``sys.argv``.
    """
    return {
        "git_commit": git_commit(),
        "device": device_description(device),
        "dtype": dtype,
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "lm_eval": _version("lm_eval") or _version("lm-eval"),
        "python": platform.python_version(),
        "hostname": platform.node(),
        "command": command if command is not None else " ".join(sys.argv),
    }
