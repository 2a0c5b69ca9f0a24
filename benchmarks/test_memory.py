"""Each suite's peak memory as a multiple of the model's weight bytes, and the passes it makes (issue 36).

    make bench-memory                                                   # every suite, smollm2-135m and shape-llama-7b
    pytest benchmarks/test_memory.py --model shape-llama-7b -k smoke --eval-tokens 256 --window 128
    python -m benchmarks.test_memory OUT.json suites/test_smoke.py --model smollm2-135m   # one probed run

Each suite (``suites/test_<name>.py``) runs in its own subprocess, ``python -m benchmarks.test_memory OUT.json
<pytest args>``: pytest with :class:`MemoryProbe`, which wraps the session's loader (``harness.models.load_model``):
as soon as the model is loaded it touches every weight page, reads the resident memory (``VmRSS``) and resets the
peak (``/proc/self/clear_refs``); at the end of the session it reads the peak (``VmHWM``). ``x_model_bytes`` =
(peak - resident after loading) / the model's parameter and buffer bytes: what the suite holds beyond the loaded
model (the clean reference, scores, gradients, activations, copies, the guard's fingerprints), in model sizes. The
probe also counts the tokens each decoder block forwards, and those forwarded with autograd on (a backward follows
them), in units of one whole-model forward over the evaluation tokens (``forward_passes``, ``grad_passes``; a
campaign trial that reruns only the blocks after its fault counts as the share of the blocks it ran), for every
model the loader returns; ``harness/plan.py``'s tables come from these numbers.

``extra_info``: ``x_model_bytes``, ``peak_bytes``, ``loaded_rss_bytes``, ``weight_bytes``, ``forward_passes``,
``grad_passes``, ``seconds``, the exit code and pytest's last line. The wall time is not asserted; a suite whose
pytest did not finish its tests fails the benchmark. With ``--benchmark-disable`` (``make test``) nothing runs:
``tests/test_memory.py`` holds the shape-alike family's multiple.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from harness.__main__ import find_analyses

from .test_suite_cost import _suite_args
from .timing import ROOT

log = logging.getLogger(__name__)

SUITES = [a.name for a in find_analyses()]
GROUP = "suite-memory"
SUITE_TIMEOUT = 3600  # seconds


def _status(key: str) -> int:
    """``key`` (``VmRSS``, ``VmHWM``) of this process, in bytes."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


@dataclass
class Probe:
    """What one probed pytest session measured (bytes; passes in forwards over the evaluation tokens)."""

    loaded_rss_bytes: int = 0
    peak_bytes: int = 0
    weight_bytes: int = 0
    forward_tokens: int = 0
    grad_tokens: int = 0
    eval_tokens: int = 0
    blocks: int = 0
    exit_code: int = -1

    @property
    def x_model_bytes(self) -> float:
        return max(0, self.peak_bytes - self.loaded_rss_bytes) / self.weight_bytes if self.weight_bytes else 0.0

    @property
    def forward_passes(self) -> float:
        """Block forwards / (blocks x eval tokens): whole-model forwards over the evaluation tokens."""
        return self.forward_tokens / (self.eval_tokens * self.blocks) if self.eval_tokens and self.blocks else 0.0

    @property
    def grad_passes(self) -> float:
        return self.grad_tokens / (self.eval_tokens * self.blocks) if self.eval_tokens and self.blocks else 0.0

    def summary(self) -> dict[str, Any]:
        return {**asdict(self), "x_model_bytes": self.x_model_bytes, "forward_passes": self.forward_passes,
                "grad_passes": self.grad_passes}


class MemoryProbe:
    """A pytest plugin: resident memory right after the model is loaded, the peak after it, the tokens forwarded.

    It wraps ``harness.models.load_model`` (the session's one loader), so the baseline is taken before anything a
    suite holds, the session's clean capture and health judgement included.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.probe = Probe()

    def pytest_configure(self, config: pytest.Config) -> None:
        import harness.models
        from harness.models import loading

        self.probe.eval_tokens = int(config.getoption("esa_eval_tokens"))
        load = loading.load_model

        def probed_load(*args: Any, **kwargs: Any) -> Any:
            loaded = load(*args, **kwargs)
            self._loaded(loaded)
            return loaded

        loading.load_model = probed_load  # type: ignore[assignment]
        harness.models.load_model = probed_load  # type: ignore[attr-defined]

    def _loaded(self, loaded: Any) -> None:
        blocks = loaded.model.get_submodule(loaded.arch.blocks)
        for block in blocks:  # every block: the campaign engine reruns only the blocks after a fault
            block.register_forward_pre_hook(self._count, with_kwargs=True)
        if self.probe.loaded_rss_bytes:  # a model reloaded after a leak: counted, not a new baseline
            return
        model = loaded.model
        tensors = [t for t in (*model.parameters(), *model.buffers()) if t.device.type == "cpu"]
        for t in tensors:  # weights read lazily from a mapped file join the resident set when first touched
            t.detach().reshape(-1)[::512].sum()
        self.probe.weight_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
        self.probe.blocks = len(blocks)
        self.probe.loaded_rss_bytes = _status("VmRSS")
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")  # resets VmHWM to the current resident size

    def _count(self, _module: Any, args: tuple, kwargs: dict) -> None:
        import torch

        hidden = args[0] if args else kwargs.get("hidden_states")
        if hidden is None or hidden.dim() < 2:
            return
        tokens = int(hidden.shape[0] * hidden.shape[1])  # (B, T, H): a batch of trials counts each trial
        self.probe.forward_tokens += tokens
        if torch.is_grad_enabled():
            self.probe.grad_tokens += tokens

    def _write(self) -> None:
        self.probe.peak_bytes = _status("VmHWM")
        self.out.write_text(json.dumps(self.probe.summary(), indent=1), encoding="utf-8")

    def pytest_runtest_logfinish(self) -> None:
        self._write()  # so far (exit_code -1): a session killed by its timeout still leaves what it measured

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.probe.exit_code = int(exitstatus)
        self._write()


def run_probed(args: list[str], out: Path, *, timeout: float = SUITE_TIMEOUT,
               threads: int = 1) -> tuple[dict[str, Any], subprocess.CompletedProcess]:
    """``pytest *args`` in a subprocess under :class:`MemoryProbe` with ``threads`` torch threads: what the probe
    measured (``Probe.summary()`` plus ``seconds``) and the finished process.

    A session that runs past ``timeout`` is killed; its measurement is what the tests that finished measured,
    with exit code -1.

    Raises:
        RuntimeError: the subprocess wrote no measurement (it crashed before any test finished).
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "benchmarks.test_memory", str(out), *args]
    start = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:  # what the tests that finished measured; exit code -1
        def text(b: bytes | str | None) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")

        res = subprocess.CompletedProcess(cmd, -1, text(err.stdout),
                                          text(err.stderr) + f"\ntimed out after {timeout} s")
    seconds = time.perf_counter() - start
    if not out.is_file():
        raise RuntimeError(f"probed pytest {' '.join(args)} wrote no measurement (exit {res.returncode}):\n"
                           + res.stdout[-3000:] + res.stderr[-3000:])
    return {**json.loads(out.read_text(encoding="utf-8")), "seconds": seconds}, res


@pytest.mark.parametrize("suite", SUITES)
def test_suite_memory(benchmark, suite: str, model_name: str, esa: Any, tmp_path: Path) -> None:
    benchmark.group, benchmark.name = GROUP, f"{suite}[{model_name}]"
    benchmark.extra_info.update(suite=suite, model=model_name, preset=esa.options.preset,
                                eval_tokens=esa.options.eval_tokens, window=esa.options.window)
    if benchmark.disabled:
        pytest.skip("every suite in a subprocess: make bench-memory; tests/test_memory.py holds the multiple")
    args = [f"suites/test_{suite}.py", *_suite_args(esa, model_name, tmp_path / "results"),
            "--calib-tokens", str(esa.options.calib_tokens)]
    if esa.options.trials is not None:
        args += ["--trials", str(esa.options.trials)]
    runs: list[tuple[dict[str, Any], subprocess.CompletedProcess]] = []
    benchmark.pedantic(lambda: runs.append(run_probed(args, tmp_path / "probe.json")), rounds=1, iterations=1)
    measured, res = runs[-1]
    last = (res.stdout.strip().splitlines() or [""])[-1]
    benchmark.extra_info.update({k: measured[k] for k in (
        "x_model_bytes", "peak_bytes", "loaded_rss_bytes", "weight_bytes", "forward_passes", "grad_passes",
        "seconds")}, exit_code=res.returncode, pytest=last)
    log.warning("%s on %s: peak %.2f GB over %.2f GB loaded = %.2f x the model's %.2f GB; %.1f forward / %.1f grad "
                "passes; %.0f s", suite, model_name, measured["peak_bytes"] / 1e9, measured["loaded_rss_bytes"] / 1e9,
                measured["x_model_bytes"], measured["weight_bytes"] / 1e9, measured["forward_passes"],
                measured["grad_passes"], measured["seconds"])
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]


if __name__ == "__main__":  # python -m benchmarks.test_memory OUT.json <pytest args>
    sys.exit(pytest.main(sys.argv[2:], plugins=[MemoryProbe(Path(sys.argv[1]))]))
