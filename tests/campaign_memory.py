"""Resident memory over a long bit-flip campaign, as the bitflip suite runs one (docs/RELIABILITY.md).

One cell of seeded uniform sign-bit flips (``harness.campaign``: prefix reuse, early stops; a sign flip
rarely collapses, so most trials run to the logits), each trial's ratio and KL committed to a results store
as the suite's recorder does. Prints (with ``--json``) the
resident set size after the first ``--warmup`` trials and at the end, and the growth between them.

    .venv/bin/python tests/campaign_memory.py --model smollm2-135m --trials 1000 --json

tests/test_reliability.py runs it on tiny-llama at 200 trials and requires at most 5% growth.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere


def rss_bytes() -> int:
    """This process's resident set size (Linux ``/proc``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(model: str, trials: int, warmup: int = 50, windows: int = 4, window: int = 64,
            bit_class: str = "sign", results_dir: Path | None = None) -> dict:
    """Run ``trials`` trials of one cell; return RSS after ``warmup`` trials and at the end (bytes)."""
    from harness.campaign import Campaign, clean_baseline, trial_specs
    from harness.campaign.bitflip import sample_sites
    from harness.data import load_corpus, token_windows
    from harness.faults import flip_bits
    from harness.models import load_model
    from harness.records import ResultStore, collect_run_info

    loaded = load_model(model)
    corpus = load_corpus()
    tokens = token_windows(loaded.tokenizer, corpus.eval_docs, window, windows, corpus_name=corpus.name)
    clean = clean_baseline(loaded.model, tokens, keep_blocks=True)
    campaign = Campaign(loaded.model, tokens, clean)
    results_dir = Path(results_dir or tempfile.mkdtemp(prefix="esa-memory-"))
    rss: dict[int, int] = {}
    start = time.perf_counter()
    with ResultStore(results_dir) as store:
        run_id = store.start_run(collect_run_info())

        def perturb(spec, g):
            return flip_bits(loaded.model, sample_sites(loaded.model, "uniform", bit_class, 1, generator=g, pool=None))

        for rec in campaign.run(trial_specs(0, trials), perturb, cell="memory"):
            for metric, value in (("ppl_ratio", rec.trial.ratio), ("kl", rec.trial.result.kl)):
                store.record(run_id=run_id, test_id="memory", suite="bitflip", model=model, metric=metric,
                             value=value, method="uniform", seed=0, collapsed=rec.trial.collapsed,
                             perturbation={"sites": [s.to_dict() for s in rec.perturbation.sites]},
                             extra={"trial": rec.spec.trial})
            done = rec.spec.trial + 1
            if done in (warmup, trials):
                rss[done] = rss_bytes()
        store.finish_run(run_id)
    first, last = rss[warmup], rss[trials]
    return {"model": model, "trials": trials, "warmup": warmup, "windows": list(tokens.shape),
            "rss_after_warmup_mb": round(first / 2**20, 1), "rss_end_mb": round(last / 2**20, 1),
            "growth": round(last / first - 1, 4), "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    out = measure(args.model, args.trials, args.warmup, args.windows, args.window, results_dir=args.results_dir)
    print(json.dumps(out) if args.json else "\n".join(f"{k}: {v}" for k, v in out.items()))


if __name__ == "__main__":
    main()
