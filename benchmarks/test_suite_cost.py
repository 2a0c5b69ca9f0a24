"""What one run of each suite costs, as a ratio to one plain forward over the evaluation tokens.

    make bench-suites                                                    # smollm2-135m, quick preset
    pytest benchmarks/test_suite_cost.py --model smollm2-135m [-k bitflip]   # the same, one suite
    pytest benchmarks --model tiny-llama --benchmark-disable             # CI: the cheap path below

Each suite (``suites/test_<name>.py``, as ``python -m harness analyses`` lists them) runs in its own
subprocess, ``pytest suites/test_<name>.py --model M --preset P --seed S --device D`` with this session's
evaluation tokens and window, into a temporary results directory. Its wall time counts everything a user
waits for: start-up, imports, model loading, the suite's detections and baselines. The baseline is one plain
forward of the model over the evaluation windows (``benchmarks.timing.plain_forward``, fastest of 3, timed in
this process just before each suite). ``extra_info``: ``seconds``, ``x_plain_forward`` (their ratio),
``baseline_seconds``, the suite's exit code and pytest's last line. Nothing about the time is asserted; a
suite whose pytest did not finish its tests (exit code other than 0 or 1) fails the benchmark.

With ``--benchmark-disable`` (``make test``) no suite runs: one subprocess collects every suite file on the
given model (``--collect-only``, a few seconds) and each case checks that its suite collects tests with the
options the measurement would pass.
"""

from __future__ import annotations

import logging

import pytest

from harness.__main__ import find_analyses

from .timing import fastest, measure_ratio, plain_forward, run_pytest

log = logging.getLogger(__name__)

SUITES = [a.name for a in find_analyses()]
GROUP = "suite-cost"
SUITE_TIMEOUT = 3600  # seconds; the slowest quick suite on smollm2-135m takes minutes on 2 CPU cores


def _suite_args(esa, model: str, results) -> list[str]:
    """The options of one measured suite run: this session's model, preset, seed, device, dtype and tokens."""
    o = esa.options
    args = ["--model", model, "--preset", o.preset, "--seed", str(o.seed), "--device", o.device,
            "--eval-tokens", str(o.eval_tokens), "--window", str(o.window), "--results-dir", str(results),
            "-q", "-p", "no:cacheprovider"]
    if o.dtype:
        args += ["--dtype", o.dtype]
    if o.corpus:
        args += ["--corpus", o.corpus]
    return args


def _collected(esa, model: str, tmp_path_factory) -> str:
    """Output of one ``--collect-only`` run of every suite file with the measurement's options (the disabled
    path), run once per model and session."""
    def collect() -> str:
        files = [f"suites/test_{name}.py" for name in SUITES]
        _, res = run_pytest([*files, *_suite_args(esa, model, tmp_path_factory.mktemp("collect")), "--collect-only"],
                            timeout=600)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        return res.stdout

    return esa.cached((model, "bench", "suite-cost-collect"), collect)


@pytest.mark.parametrize("suite", SUITES)
def test_suite_cost(benchmark, suite, lm, eval_windows, esa, tmp_path, tmp_path_factory):
    benchmark.extra_info.update(suite=suite, model=lm.name, preset=esa.options.preset, tokens=eval_windows.numel())
    if benchmark.disabled:
        collected = benchmark.pedantic(_collected, args=(esa, lm.name, tmp_path_factory), rounds=1, iterations=1)
        assert f"suites/test_{suite}.py::" in collected, f"{suite} collects no test on {lm.name}"
        return
    forward = fastest(lambda: plain_forward(lm.model, eval_windows), 3)
    args = [f"suites/test_{suite}.py", *_suite_args(esa, lm.name, tmp_path / "results")]
    runs = []

    def run() -> None:
        runs.append(run_pytest(args, timeout=SUITE_TIMEOUT)[1])

    measure_ratio(benchmark, run, forward, "x_plain_forward", group=GROUP, name=suite, rounds=1)
    res = runs[-1]
    last = (res.stdout.strip().splitlines() or [""])[-1]
    benchmark.extra_info.update(exit_code=res.returncode, pytest=last)
    assert res.returncode in (0, 1), res.stdout[-3000:] + res.stderr[-3000:]
