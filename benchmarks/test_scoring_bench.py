"""Scorer overheads against the plain passes they are built on, and every method's time.

Groups (``<model>`` is the ``--model``):

- ``scoring-activation-<model>``: one round of the activation scan (``rounds=1``: hooks on
  every down projection, peak reductions, restore) against one plain no-grad forward pass over the
  same tokens, on the default prompt and on one calibration window. Target: under 1.3x.
- ``scoring-gradient-<model>``: the ``gradient`` scorer against a plain forward+backward
  (transformers' ``labels=`` loss, gradients on the same weights, ``.grad`` left to accumulate) over
  the same calibration windows. Target: under 1.3x.
- ``scoring-methods-<model>``: each registered method, timed once, on ``METHOD_WINDOWS`` calibration
  windows, with ``hessian`` probes and ``integrated`` steps cut to 2 so the group fits a CPU run;
  ``extra_info`` holds the passes taken and the ratio to one plain forward+backward. The time includes
  computing every score once: ``score()`` materializes the ScoreSet (``magnitude`` and ``z_score`` compute
  at access), and the same work is in ``Cost.seconds`` (``extra_info["cost_seconds"]``).

Ratios use the fastest of ``benchmarks.timing.ROUNDS`` runs of each side, timed in the same test (``extra_info``
``ratio_to_forward`` / ``ratio_to_forward_backward``). No wall time is asserted.
"""

from __future__ import annotations

import pytest
import torch

from harness.models import select
from harness.scoring import SCORERS, score

from .timing import fastest, measure_ratio, plain_forward_backward, rounds_for

METHOD_WINDOWS = 2
CPU_OPTIONS = {"hessian": {"probes": 2}, "integrated": {"steps": 2}}


def _plain_forward(model, ids):
    with torch.no_grad():
        model(input_ids=ids, use_cache=False)


@pytest.mark.parametrize("source", ["prompt", "window"])
def test_activation_round_vs_forward(benchmark, lm, calib_windows, source):
    model = lm.model
    if source == "prompt":
        ids = lm.tokenizer("Apple Inc. is a worldwide tech company.", return_tensors="pt")["input_ids"].to(lm.device)
        kwargs = {}
    else:
        ids = calib_windows[:1].to(lm.device)
        kwargs = {"windows": ids}
    _plain_forward(model, ids)  # warm-up
    baseline = fastest(lambda: _plain_forward(model, ids), rounds_for(benchmark))
    result = score(lm, "activation", rounds=1, **kwargs)
    assert result.cost.forward == 1
    benchmark.extra_info["tokens"] = ids.numel()
    measure_ratio(benchmark, lambda: score(lm, "activation", rounds=1, **kwargs), baseline, "ratio_to_forward",
             group=f"scoring-activation-{lm.name}", name=f"activation-round-{source}")


def test_gradient_vs_forward_backward(benchmark, lm, calib_windows):
    model = lm.model
    windows = calib_windows[:METHOD_WINDOWS].to(lm.device)
    batch_size = METHOD_WINDOWS
    params = [model.get_parameter(r.param) for r in select(model, components="linear")]
    baseline = fastest(lambda: plain_forward_backward(model, windows, params, batch_size), rounds_for(benchmark))
    benchmark.extra_info["tokens"] = windows.numel()
    measure_ratio(benchmark, lambda: score(lm, "gradient", windows=windows, batch_size=batch_size), baseline,
             "ratio_to_forward_backward", group=f"scoring-gradient-{lm.name}", name="gradient")


@pytest.mark.parametrize("method", SCORERS.names())
def test_method_time(benchmark, lm, calib_windows, method):
    model = lm.model
    windows = calib_windows[:METHOD_WINDOWS].to(lm.device)
    params = [model.get_parameter(r.param) for r in select(model, components="linear")]
    baseline = fastest(lambda: plain_forward_backward(model, windows, params, METHOD_WINDOWS), 1)
    options = CPU_OPTIONS.get(method, {}) if lm.device.type == "cpu" else {}
    kwargs = {} if method == "activation" else {"windows": windows, "batch_size": METHOD_WINDOWS}

    def run():
        result = score(lm, method, generator=torch.Generator().manual_seed(0), **kwargs, **options)
        benchmark.extra_info.update(forward=result.cost.forward, backward=result.cost.backward,
                                    tokens=result.cost.tokens, cost_seconds=result.cost.seconds, options=options)
        return result

    measure_ratio(benchmark, run, baseline, "ratio_to_forward_backward", group=f"scoring-methods-{lm.name}",
                  name=method, rounds=1)
