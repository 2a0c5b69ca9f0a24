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
``ratio_to_forward_backward``; :mod:`benchmarks.timing`). No wall time is asserted.
"""

from __future__ import annotations

from harness.attacks import attack_targets, run_attack
from harness.attacks.progressive import rank_flips
from harness.faults import resolve_bits
from harness.metrics import evaluate

from .timing import fastest, measure_ratio, plain_forward_backward, rounds_for

TOKENS = 256


def test_attack_step_vs_forward_backward(benchmark, lm, calib_windows, eval_windows):
    model = lm.model
    windows = calib_windows[:1, :TOKENS].to(lm.device)
    targets = attack_targets(model)
    params = [model.get_parameter(t.param) for t in targets]
    bits_of = {t.param: resolve_bits("any", params[i].dtype) for i, t in enumerate(targets)}
    rounds = rounds_for(benchmark)
    plain_forward_backward(model, windows, params)  # warm-up
    baseline = fastest(lambda: plain_forward_backward(model, windows, params), rounds)
    for p in params:
        p.grad = None
    benchmark.extra_info["tokens"] = windows.numel()
    group = f"attack-step-{lm.name}"

    def rank():
        loss, by_layer = rank_flips(model, targets, windows, bits_of, pool=32, keep=8)
        assert by_layer
        return loss

    measure_ratio(benchmark, rank, baseline, "ratio_to_forward_backward", group=group, name="rank")


def test_attack_iteration_vs_forward_backward(benchmark, lm, calib_windows, eval_windows):
    model = lm.model
    windows = calib_windows[:1, :TOKENS].to(lm.device)
    ev = eval_windows[:1, :TOKENS]
    params = [model.get_parameter(t.param) for t in attack_targets(model)]
    rounds = rounds_for(benchmark)
    plain_forward_backward(model, windows, params)
    baseline = fastest(lambda: plain_forward_backward(model, windows, params), rounds)
    for p in params:
        p.grad = None
    clean = evaluate(model, ev).perplexity

    def iteration():
        run_attack(model, "progressive", eval_windows=ev, attack_windows=windows, budget=1, max_trials=1,
                   clean_perplexity=clean)

    measure_ratio(benchmark, iteration, baseline, "ratio_to_forward_backward", group=f"attack-step-{lm.name}",
                  name="iteration")
