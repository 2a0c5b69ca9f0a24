"""Recovery after a detected flip: restore only the tensors the checksum detector flags, from the model's weights
files on disk, timed against reloading the whole model (LM-Fix, ICCD 2025, reports recovery over 100x faster than a
reload).

:func:`measure_recovery` flips one seeded bit, then times

- *recovery*: locating the changed tensors (:meth:`TensorChecksums.flagged`, one checksum pass over every weight)
  plus restoring them (:func:`restore`: the safetensors files' headers read, then only the flagged tensors read
  with ``safe_open`` and copied in place, cast to the live dtype as ``from_pretrained`` casts them);
- *reload*: loading the whole model again as the session loads it (``harness.models.load_model`` with the same
  name, dtype and device), then dropping it.

After the recovery the model must be the clean model bit for bit: the checksum detector silent and every tensor's
fingerprint (``harness.fingerprint``) equal to the clean one (:meth:`Recovery.exact`). The flagged tensors are kept
(untimed) before the restore and written back after the check, and the flip is applied with ``flip_bits``, so the
model is left clean whatever the recovery did. A model whose weights are not in files
on disk (the random-weight tiny models, built in memory) or are offloaded by a device map has no recovery to
measure: :func:`weights_dir` and :func:`measure_recovery` return why, never a number.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.errors import HarnessError
from harness.faults import FaultSite, flip_bits
from harness.fingerprint import changed, fingerprint
from harness.records.row import Row

if TYPE_CHECKING:
    from harness.claims import Comparison
    from harness.detection.detectors import TensorChecksums
    from harness.models.loading import LoadedModel

def weights_dir(loaded: LoadedModel) -> Path | str:
    """The directory holding ``loaded``'s weights as safetensors files, or why there is none (a string).

    A registry GGUF model: its converted copy in the harness cache; a local (or fine-tuned) model: its directory; a
    hub model: its snapshot in the local Hugging Face cache; a tiny model: none (random weights built in memory).
    """
    spec = loaded.spec
    if spec.random_weights:
        return f"{loaded.name} has random weights built in memory: no weights file on disk to restore from"
    if any(p.is_meta for p in loaded.model.parameters()):
        return "weights offloaded by a device map: restoring them in place does not apply"
    if spec.source == "gguf-package":
        from harness.models.gguf import model_dir

        path = model_dir(spec)
    elif spec.source == "local":
        path = Path(spec.name)
    else:
        from huggingface_hub import try_to_load_from_cache

        revision = getattr(loaded.model.config, "_commit_hash", None)
        found = try_to_load_from_cache(spec.hub_id or spec.name, "config.json", revision=revision)
        if not isinstance(found, str):
            return f"{spec.hub_id or spec.name} is not in the local Hugging Face cache"
        path = Path(found).parent
    if not any(path.glob("*.safetensors")):
        return f"no safetensors file in {path}"
    return path


def tensor_files(directory: Path) -> dict[str, Path]:
    """Every tensor key of the model directory's safetensors files (:func:`harness.models.integrity.weight_files`:
    the shards its index names, or ``model.safetensors``) and the file holding it; headers only."""
    from safetensors import safe_open

    from harness.models.integrity import weight_files

    out: dict[str, Path] = {}
    for path in weight_files(directory):
        with safe_open(path, framework="pt") as f:
            out.update(dict.fromkeys(f.keys(), path))
    return out


@torch.no_grad()
def restore(model: nn.Module, names: Sequence[str], directory: Path) -> int:
    """Copy the tensors ``names`` of ``model`` back from the safetensors files in ``directory``, reading only them
    (each cast to the live tensor's dtype, as ``from_pretrained`` casts it); returns the bytes read from the files.

    Raises:
        HarnessError: a name the model or the files lack, or a stored shape other than the live one.
    """
    from safetensors import safe_open

    live = dict(model.named_parameters())
    live.update(model.named_buffers())
    files = tensor_files(directory)
    prefix = f"{getattr(model, 'base_model_prefix', '')}."
    by_file: dict[Path, list[tuple[str, str]]] = {}
    for name in names:
        key = name if name in files else name.removeprefix(prefix)  # checkpoints saved without the model prefix
        if name not in live or key not in files:
            raise HarnessError(f"cannot restore {name!r}: not a tensor of the model or not in the weights files in "
                               f"{directory}")
        by_file.setdefault(files[key], []).append((name, key))
    read = 0
    for path, pairs in by_file.items():
        with safe_open(path, framework="pt", device="cpu") as f:
            for name, key in pairs:
                stored, target = f.get_tensor(key), live[name]
                if tuple(stored.shape) != tuple(target.shape):
                    raise HarnessError(f"cannot restore {name!r}: {path.name} stores shape {tuple(stored.shape)}, "
                                       f"the model holds {tuple(target.shape)}")
                read += stored.numel() * stored.element_size()
                target.copy_(stored.to(target.dtype))
    return read


def _sync(model: nn.Module) -> None:
    if any(p.is_cuda for p in model.parameters()):
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Recovery:
    """One seeded flip found and repaired by restoring the flagged tensors, against reloading the model.

    Attributes:
        sites: the flip.
        detected: the checksum detector fired with the flip in place.
        flagged: the tensors it named (restored).
        locate_seconds: one :meth:`TensorChecksums.flagged` pass.
        restore_seconds: reading the files' headers and the flagged tensors, and copying them in place.
        reload_seconds: ``load_model`` of the whole model, as the session loads it.
        bytes_read: bytes of the flagged tensors read from the files.
        fired_after: the checksum detector fired after the recovery.
        left_changed: tensors whose fingerprint still differed from the clean model's after the recovery.
        reload_changed: tensors of the reloaded model whose fingerprint differed from the clean model's.
        source: the weights directory.
        dtype: fp32, bf16 (records); torch_dtype: the records' dtype column.
    """

    sites: tuple[FaultSite, ...]
    detected: bool
    flagged: tuple[str, ...]
    locate_seconds: float
    restore_seconds: float
    reload_seconds: float
    bytes_read: int
    fired_after: bool
    left_changed: tuple[str, ...]
    reload_changed: tuple[str, ...]
    source: str
    dtype: str
    torch_dtype: str

    @property
    def recovery_seconds(self) -> float:
        return self.locate_seconds + self.restore_seconds

    @property
    def ratio(self) -> float:
        """Reload seconds / recovery seconds (higher: recovering is that many times faster than reloading)."""
        return self.reload_seconds / self.recovery_seconds

    @property
    def perturbation(self) -> dict[str, Any]:
        return {"kind": "bitflip", "target": "every_weight", "pattern": "recovery", "dtype": self.dtype}

    def rows(self) -> list[Row]:
        """The ``recovery_ratio`` (both times, what was restored and read in extra; ``restore_only_ratio``: reload
        seconds / restore seconds, leaving out the locating pass a checksum check that fired has already made);
        recorded, never asserted."""
        return [Row("recovery_ratio", self.ratio, {**self.perturbation, "sites": [s.to_dict() for s in self.sites]},
                    {"recovery_seconds": self.recovery_seconds, "locate_seconds": self.locate_seconds,
                     "restore_seconds": self.restore_seconds, "reload_seconds": self.reload_seconds,
                     "restore_only_ratio": self.reload_seconds / self.restore_seconds,
                     "tensors_restored": len(self.flagged), "restored": list(self.flagged),
                     "bytes_read": self.bytes_read, "source": self.source},
                    columns={"method": "checksum"})]

    def exact(self) -> Comparison:
        """The evidence that the recovery gave back the clean model bit for bit: the flip was detected, the checksum
        detector is silent after it and no tensor's fingerprint differs from the clean model's."""
        from harness.claims import Comparison

        ok = self.detected and not self.fired_after and not self.left_changed
        return Comparison(ok, float(ok), 1.0, {
            "test": "exact", "detected": self.detected, "flagged": list(self.flagged), "fired_after": self.fired_after,
            "left_changed": list(self.left_changed[:5]), "reload_changed": list(self.reload_changed[:5])})


def measure_recovery(loaded: LoadedModel, detector: TensorChecksums, sites: Sequence[FaultSite],
                     reload: Callable[[], Any]) -> Recovery | str:
    """Flip ``sites`` in ``loaded``, recover by restoring the tensors ``detector`` (calibrated on the clean model)
    flags, check the result, then time ``reload()`` (a whole ``LoadedModel``, dropped after); or why not applicable.

    The model is left clean whatever the restore wrote (the flagged tensors' flipped values are written back after
    the check, then ``flip_bits`` writes the flipped codes back).
    """
    from harness.campaign.bitflip_cells import short_dtype
    from harness.models.device import dtype_name

    directory = weights_dir(loaded)
    if isinstance(directory, str):
        return directory
    model = loaded.model
    clean = fingerprint(model)
    with flip_bits(model, sites):
        detected = detector.fired(model)
        _sync(model)
        start = time.perf_counter()
        flagged = detector.flagged(model)
        located = time.perf_counter()
        live = dict(model.named_parameters()) | dict(model.named_buffers())
        kept = {n: live[n].detach().clone() for n in flagged if n in live}  # untimed: undone below if not exact
        try:
            _sync(model)
            begin = time.perf_counter()
            read = restore(model, flagged, directory)
            _sync(model)
            restored = time.perf_counter()
            fired_after = detector.fired(model)
            left = changed(clean, fingerprint(model))
        finally:
            with torch.no_grad():  # the flipped values back, so that leaving flip_bits gives the clean model
                for n, value in kept.items():
                    live[n].copy_(value)
    _sync(model)
    start_reload = time.perf_counter()
    again = reload()
    _sync(again.model)
    reload_seconds = time.perf_counter() - start_reload
    reload_changed = changed(clean, fingerprint(again.model))
    del again
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return Recovery(tuple(sites), detected, tuple(flagged), located - start, restored - begin, reload_seconds, read,
                    fired_after, tuple(left), tuple(reload_changed), str(directory), short_dtype(loaded.dtype),
                    dtype_name(loaded.dtype))
