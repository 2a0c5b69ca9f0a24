"""One progressive-bit-search step against a plain forward+backward over the same tokens.

Group ``attack-step-<model>``:

- ``rank``: what the attack repeats per flip besides its trial passes: one forward+backward pass of
  the attack loss with the weight gradients formed in hooks and each matrix's candidate flips
  ranked as its gradient arrives (:func:`harness.attacks.progressive.rank_flips`, every stored bit,
  32 elements per matrix). Target: within 1.5x of the plain pass.
- ``iteration``: a whole attack iteration with one trial (``run_attack(..., budget=1, max_trials=1)``
  given the clean perplexity): ``rank`` + one trial forward + one evaluation forward over the same
  number of tokens, for scale (about 1 + 2/3 of a plain pass by FLOPs).

The plain pass is transformers' ``labels=`` loss with gradients on the same decoder weights.
Ratios use the fastest of ``ROUNDS`` runs of each side in the same test (``extra_info``
``ratio_to_forward_backward``). No wall time is asserted.
"""

from __future__ import annotations

import logging
import time

from harness.attacks import attack_targets, run_attack
from harness.attacks.progressive import rank_flips
from harness.faults import resolve_bits
from harness.metrics import evaluate
from harness.scoring.grads import grad_on

log = logging.getLogger(__name__)
ROUNDS = 3
TOKENS = 256


def _fastest(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(benchmark, fn, baseline: float, name: str, group: str) -> float:
    benchmark.group, benchmark.name = group, name
    if getattr(benchmark, "disabled", False):
        seconds = _fastest(lambda: benchmark.pedantic(fn, rounds=1, iterations=1), 1)
    else:
        benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
        seconds = benchmark.stats.stats.min
    ratio = seconds / baseline
    benchmark.extra_info.update(ratio_to_forward_backward=ratio, seconds=seconds, baseline_seconds=baseline)
    log.warning("%s %s: %.3fs, %.3f x a plain forward+backward (%.3fs)", group, name, seconds, ratio, baseline)
    return ratio


def _plain_forward_backward(model, windows, params) -> None:
    with grad_on(model, params):
        model(input_ids=windows, labels=windows, use_cache=False).loss.backward()


def test_attack_step_vs_forward_backward(benchmark, lm, calib_windows, eval_windows):
    model = lm.model
    windows = calib_windows[:1, :TOKENS].to(lm.device)
    targets = attack_targets(model)
    params = [model.get_parameter(t.param) for t in targets]
    bits_of = {t.param: resolve_bits("any", params[i].dtype) for i, t in enumerate(targets)}
    rounds = 1 if getattr(benchmark, "disabled", False) else ROUNDS
    _plain_forward_backward(model, windows, params)  # warm-up
    baseline = _fastest(lambda: _plain_forward_backward(model, windows, params), rounds)
    for p in params:
        p.grad = None
    benchmark.extra_info["tokens"] = windows.numel()
    group = f"attack-step-{lm.name}"

    def rank():
        loss, by_layer = rank_flips(model, targets, windows, bits_of, pool=32, keep=8)
        assert by_layer
        return loss

    _measure(benchmark, rank, baseline, "rank", group)


def test_attack_iteration_vs_forward_backward(benchmark, lm, calib_windows, eval_windows):
    model = lm.model
    windows = calib_windows[:1, :TOKENS].to(lm.device)
    ev = eval_windows[:1, :TOKENS]
    params = [model.get_parameter(t.param) for t in attack_targets(model)]
    rounds = 1 if getattr(benchmark, "disabled", False) else ROUNDS
    _plain_forward_backward(model, windows, params)
    baseline = _fastest(lambda: _plain_forward_backward(model, windows, params), rounds)
    for p in params:
        p.grad = None
    clean = evaluate(model, ev).perplexity

    def iteration():
        run_attack(model, "progressive", eval_windows=ev, attack_windows=windows, budget=1, max_trials=1,
                   clean_perplexity=clean)

    _measure(benchmark, iteration, baseline, "iteration", f"attack-step-{lm.name}")
