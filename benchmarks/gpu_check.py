"""One GPU check: what a GPU machine gives this harness, in one table (``make gpu-check``, at most 8 minutes on
one H100/H200-class GPU).

    python -m benchmarks.gpu_check                  # CUDA: smollm2-135m, the plan below
    python -m benchmarks.gpu_check --dry            # CPU: tiny-llama, tiny counts (tests/test_gpu_check.py)

Rows, in the order they run (correctness first, the slow suite runs last, each within what is left of
``--budget`` seconds):

- **restore fp16 / bf16 / int8**: the model loaded in fp16 and in bf16 on the device, and the bf16 model with
  every untied linear layer swapped for int8 codes (``quantize_int8``). Seeded trials each apply bit flips in
  any bit (exponent flips make inf and NaN), Gaussian noise on every linear weight and a zeroed element, run a
  forward under each, and restore. Then every parameter and buffer must equal its state before, bit for bit
  (a full copy taken before, compared as raw bits, NaN-safe), the parameter guard's fingerprint (its device
  path on CUDA) must be unchanged, and the logits of one window must be bit-identical to those before.
  "changed outputs" counts the trials whose perturbed logits differed from the clean ones (the check is not
  vacuous when it is above 0).
- **per-trial / batched**: one-flip sign trials in bf16 (uniform over the linear weights, seeded), through the
  campaign engine one trial per forward and ``B`` trials per forward (``harness.campaign.batched``); trials/s
  of each, the speed-up, and the largest relative difference of a trial's perplexity ratio between the paths.
- **host time per trial**: what a uniform one-flip sign trial costs the host besides the forward (draw the site
  from the trial's seeded generator, build, apply and restore the flip, reduce the given logits: the parts of
  ``benchmarks.timing.HostWork``), per trial and as a ratio to a plain forward over the same windows; one over it
  is the most trials/s a per-trial campaign can reach on this machine, however fast the GPU.
- **suite serial / -n 1**: the quick bitflip suite on the device in a pytest subprocess (start-up, model
  loading and detection included), then the same under pytest-xdist with one worker.
- **peak memory**: ``torch.cuda.max_memory_allocated`` of this process (CUDA; the suite subprocesses are not
  included), or the peak resident set size on the CPU.

Nothing here asserts a time. The exit status is 1 when a restore is not bit-exact or a suite run did not
finish its tests (pytest exit status other than 0 or 1), 2 on bad arguments (no CUDA without ``--dry``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from benchmarks.timing import HostWork, fastest, plain_forward, run_pytest, sync

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What the check runs; ``FULL`` on a GPU, ``DRY`` on the CPU."""

    model: str = "smollm2-135m"
    device: str = "cuda"
    dtype: str = "bf16"  # of the batched-vs-per-trial comparison
    trials: int = 256  # one-flip trials per path
    per_forward: tuple[int, ...] = (8, 32)  # batched trials per forward
    windows: int = 2  # evaluation windows (the quick bitflip preset's 2)
    window: int = 256
    restore_trials: int = 10  # seeded trials per restore check
    flips: int = 8  # bit flips per restore trial
    suite: str = "bitflip"
    suite_args: tuple[str, ...] = ("--preset", "quick")
    budget_s: float = 480.0  # the whole check


FULL = Plan()
DRY = Plan(model="tiny-llama", device="cpu", trials=4, per_forward=(2,), window=64, restore_trials=2, flips=4,
           suite="smoke", suite_args=("--preset", "quick", "--eval-tokens", "128", "--window", "64"), budget_s=120.0)


@dataclass(frozen=True)
class Row:
    check: str
    value: str
    detail: str = ""
    ok: bool = True  # False fails the check (exit status 1)


# -- restore ---------------------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The stored bytes of ``t`` (compares NaN payloads and signed zeros exactly)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    tensors = dict(model.named_parameters(remove_duplicate=True))
    tensors.update(model.named_buffers(remove_duplicate=True))
    return {name: _bits(t).clone() for name, t in tensors.items()}


@torch.no_grad()
def _logits(model: torch.nn.Module, window: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    return model(input_ids=window.to(device), use_cache=False).logits.detach().clone()


def _perturbations(model: torch.nn.Module, plan: Plan, trial: int) -> list:
    """The perturbations of one seeded restore trial: bit flips in any bit, one zeroed element, and noise on
    every linear weight when they are floating point (int8 codes take no noise)."""
    from harness.faults import ablate, add_noise, flip_bits, uniform_sites
    from harness.models import select

    gen = torch.Generator().manual_seed(trial)
    refs = select(model, components="linear")
    sites = uniform_sites(model, refs, plan.flips, generator=gen, bits="any")
    out = [flip_bits(model, sites), ablate(model, sites[0], "zero")]
    if all(model.get_parameter(r.param).is_floating_point() for r in refs):  # drawn on the model's device
        device = next(model.parameters()).device
        noise = torch.Generator(device=device).manual_seed(trial)
        out.append(add_noise(model, refs, 0.05, scale="std", generator=noise))
    return out


def _restore_trials(model: torch.nn.Module, window: torch.Tensor, plan: Plan) -> tuple[int, int]:
    """(perturbations run, how many changed the logits)."""
    clean = _logits(model, window)
    runs = changed = 0
    for trial in range(plan.restore_trials):
        for perturbation in _perturbations(model, plan, trial):
            with perturbation:
                changed += not torch.equal(_bits(_logits(model, window)), _bits(clean))
            runs += 1
    return runs, changed


def check_restore(name: str, model: torch.nn.Module, window: torch.Tensor, plan: Plan,
                  inside: Callable[[], object] | None = None) -> Row:
    """Run the restore trials on ``model`` (inside the context ``inside()`` returns, if given) and compare every
    tensor, the guard's fingerprint and the logits with their state before."""
    from harness.fingerprint import changed, fingerprint

    state, marks, clean = _state(model), fingerprint(model), _logits(model, window)
    if inside is None:
        runs, moved = _restore_trials(model, window, plan)
    else:
        with inside():
            codes = _state(model)
            runs, moved = _restore_trials(model, window, plan)
            after = _state(model)
            diff_inside = [n for n in codes if not torch.equal(codes[n], after[n])]
    after = _state(model)
    diff = [n for n in state if not torch.equal(state[n], after[n])]
    if inside is not None:
        diff += [f"{n} (int8)" for n in diff_inside]
    guard = changed(marks, fingerprint(model))
    same_logits = torch.equal(_bits(_logits(model, window)), _bits(clean))
    ok = not diff and not guard and same_logits and moved > 0
    value = "bit-exact" if ok else "NOT bit-exact" if (diff or guard or not same_logits) else "vacuous"
    detail = (f"{runs} perturbations, changed outputs {moved}/{runs}, tensors differing {len(diff)}, guard "
              f"{'unchanged' if not guard else 'changed'}, logits {'identical' if same_logits else 'differ'}")
    if diff:
        detail += f" ({', '.join(diff[:3])})"
    return Row(f"restore {name}", value, detail, ok)


# -- batched vs per-trial --------------------------------------------------------------------------


def check_batched(model: torch.nn.Module, windows: torch.Tensor, plan: Plan) -> list[Row]:
    """Trials/s of one-flip sign trials one per forward and ``B`` per forward, and their largest ratio gap."""
    from harness.campaign import Campaign, clean_baseline
    from harness.faults import flip_bits, uniform_sites
    from harness.models import select

    clean = clean_baseline(model, windows, keep_blocks=True)
    refs = select(model, components="linear")
    gen = torch.Generator().manual_seed(0)
    sites = [uniform_sites(model, refs, 1, generator=gen, bits="sign") for _ in range(plan.trials)]
    device = next(model.parameters()).device

    def timed(per_forward: int) -> tuple[float, list]:
        campaign = Campaign(model, windows, clean, trials_per_forward=per_forward)
        campaign.trials([flip_bits(model, s) for s in sites[:per_forward]])  # warm-up
        sync(device)
        start = time.perf_counter()
        out = campaign.trials([flip_bits(model, s) for s in sites])
        sync(device)
        return time.perf_counter() - start, out

    single_s, single = timed(1)
    rows = [Row("per-trial path (1 trial/forward)", f"{plan.trials / single_s:.1f} trials/s",
                f"{plan.trials} one-flip sign trials, {plan.dtype}, {windows.shape[0]}x{windows.shape[1]} tokens")]
    for b in plan.per_forward:
        seconds, out = timed(b)
        gap = max((abs(x.ratio - y.ratio) / y.ratio for x, y in zip(out, single, strict=True)
                   if math.isfinite(y.ratio) and math.isfinite(x.ratio)), default=0.0)
        rows.append(Row(f"batched ({b} trials/forward)", f"{plan.trials / seconds:.1f} trials/s",
                        f"{single_s / seconds:.2f}x the per-trial path; max relative ratio gap {gap:.1e}"))
    return rows


def check_host(model: torch.nn.Module, windows: torch.Tensor, plan: Plan) -> Row:
    """The host work of a uniform one-flip sign trial besides its forward (``HostWork``), per trial."""
    from harness.campaign import clean_baseline
    from harness.campaign.bitflip import sample_sites

    clean = clean_baseline(model, windows, keep_blocks=True)
    work = HostWork(model, windows, clean, lambda g: sample_sites(model, "uniform", "sign", 1, generator=g, pool=None))
    work.measure(2, rounds=1)  # warm-up: the sampler's sizes, first calls
    times = work.measure(plan.trials)
    forward = fastest(lambda: plain_forward(model, windows))
    return Row("host time per trial", f"{times.total * 1e3:.3f} ms",
               f"draw {times.draw * 1e3:.3f} ms, flip+restore {times.inject * 1e3:.3f} ms, reduce "
               f"{times.reduce * 1e3:.3f} ms (given logits); {times.total / forward:.3f}x a plain forward; "
               f"at most {1 / times.total:.0f} trials/s per trial path")


# -- suite runs ------------------------------------------------------------------------------------


def check_suite(plan: Plan, out: Path, left: Callable[[], float]) -> list[Row]:
    """The suite on the device, serial and under ``-n 1``, each timed in a pytest subprocess."""
    import importlib.util
    import subprocess

    args = [f"suites/test_{plan.suite}.py", "--model", plan.model, "--device", plan.device, *plan.suite_args,
            "-q", "-p", "no:cacheprovider"]
    rows = []
    serial = None
    for label, extra in (("serial", ()), ("-n 1", ("-n", "1"))):
        name = f"{plan.suite} suite, {label}"
        if extra and importlib.util.find_spec("xdist") is None:
            rows.append(Row(name, "n/a", "pytest-xdist is not installed (the test extra)"))
            continue
        timeout = left()
        if timeout < 30:
            rows.append(Row(name, "not run", f"the budget ({plan.budget_s:.0f} s) is spent"))
            continue
        try:
            seconds, res = run_pytest([*args, *extra, "--results-dir", str(out / label.replace(" ", ""))],
                                      timeout=timeout)
        except subprocess.TimeoutExpired:
            rows.append(Row(name, "timed out", f"after {timeout:.0f} s (the rest of the budget)"))
            continue
        last = (res.stdout.strip().splitlines() or ["(no output)"])[-1]
        finished = res.returncode in (0, 1)
        detail = last if serial is None or not finished else f"{seconds / serial:.2f}x serial; {last}"
        rows.append(Row(name, f"{seconds:.1f} s", detail, finished))
        if finished and not extra:
            serial = seconds
    return rows


# -- the whole check -------------------------------------------------------------------------------


def _peak_memory(device: torch.device) -> Row:
    if device.type == "cuda":
        return Row("peak GPU memory (this process)", f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB",
                   "torch.cuda.max_memory_allocated; the suite subprocesses are not included")
    status = Path("/proc/self/status")
    peak = next((line.split()[1] for line in status.read_text().splitlines() if line.startswith("VmHWM")), None) \
        if status.exists() else None
    return Row("peak memory (this process)", f"{int(peak) / 2**20:.2f} GiB" if peak else "n/a",
               "peak resident set size (VmHWM); no GPU in a dry run")


def run(plan: Plan, out: Path) -> list[Row]:
    """Every row of the check, in order."""
    from harness.data import load_corpus, token_windows
    from harness.faults import quantize_int8
    from harness.models import load_model

    start = time.perf_counter()
    device = torch.device(plan.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rows = []
    corpus = load_corpus()
    for dtype in dict.fromkeys(("fp16", "bf16", plan.dtype)):  # int8 codes and the batched trials: plan.dtype's model
        lm = load_model(plan.model, device=plan.device, dtype=dtype)
        windows = token_windows(lm.tokenizer, corpus.eval_docs, plan.window, plan.windows, corpus_name=corpus.name)
        rows.append(check_restore(dtype, lm.model, windows[:1], plan))
        if dtype == plan.dtype:
            rows.append(check_restore("int8", lm.model, windows[:1], plan, inside=lambda m=lm.model: quantize_int8(m)))
            rows += check_batched(lm.model, windows, plan)
            rows.append(check_host(lm.model, windows, plan))
        del lm
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rows.append(_peak_memory(device))
    rows += check_suite(plan, out, lambda: plan.budget_s - (time.perf_counter() - start))
    rows.append(Row("total", f"{time.perf_counter() - start:.1f} s", f"budget {plan.budget_s:.0f} s"))
    return rows


def table(rows: list[Row]) -> str:
    """The rows as one aligned text table."""
    head = ("check", "value", "detail")
    cells = [head, *((r.check, r.value, r.detail) for r in rows)]
    widths = [max(len(c[i]) for c in cells) for i in range(2)]
    lines = [f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}".rstrip() for c in cells]
    lines.insert(1, "-" * max(len(line) for line in lines))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry", action="store_true", help="the CPU path: tiny-llama, tiny counts (seconds)")
    parser.add_argument("--model", help=f"model (default: {FULL.model}; {DRY.model} with --dry)")
    parser.add_argument("--device", help=f"device (default: {FULL.device}; cpu with --dry)")
    parser.add_argument("--trials", type=int, help=f"one-flip trials per path (default: {FULL.trials})")
    parser.add_argument("--budget", type=float, help=f"seconds for the whole check (default: {FULL.budget_s:.0f})")
    parser.add_argument("--out", type=Path, help="where the suite runs write their stores (default: a temp dir)")
    args = parser.parse_args(argv)
    plan = DRY if args.dry else FULL
    plan = replace(plan, **{k: v for k, v in (("model", args.model), ("device", args.device),
                                                ("trials", args.trials), ("budget_s", args.budget)) if v is not None})
    if torch.device(plan.device).type == "cuda" and not torch.cuda.is_available():
        sys.stderr.write("error: no CUDA device here; `python -m benchmarks.gpu_check --dry` runs the CPU path\n")
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        rows = run(plan, args.out or Path(tmp))
    cuda = torch.device(plan.device).type == "cuda"
    where = torch.cuda.get_device_name(plan.device) if cuda else "no GPU: dry run"
    sys.stdout.write(f"gpu-check: {plan.model} on {plan.device} ({where}), torch {torch.__version__}\n")
    sys.stdout.write(table(rows) + "\n")
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
