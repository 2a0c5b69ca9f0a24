"""Command line: ``python -m harness models`` and ``python -m harness analyses``."""

from __future__ import annotations

import argparse
import sys

# (suite, -k word, what it measures); the suite files are suites/test_<suite>.py
ANALYSES = [
    ("smoke", "smoke", "clean perplexity of each model on the evaluation windows, against a stated bound"),
    ("bitflip", "bitflip", "seeded stored-bit flip campaigns by bit class and target (-k bitflip also selects "
                "the attack suite, test_bitflip_attack.py; -k 'bitflip and not attack' runs the campaign alone)"),
    ("robustness", "robustness", "weight noise swept by level per component: degradation curves (also -k noise)"),
    ("ablation", "ablation", "sensitivity of each layer and component when zeroed or perturbed (also -k "
                "sensitivity, which also selects test_compare_sensitivity.py)"),
    ("super_weights", "super_weights", "find super weights in the MLP down projections and ablate them"),
    ("compare", "compare", "agreement of scoring methods: Jaccard / Spearman of top-k sets, time per method"),
    ("targeted", "targeted", "zero / noise / exponent flips on each method's top x% of weights vs random ones"),
    ("pruning", "pruning", "magnitude / Wanda / scorer-ranked pruning by granularity and sparsity"),
    ("selective", "selective", "chosen layers/components pruned at a percentile or threshold; output comparison"),
    ("evaluate", "evaluate", "lm-eval tasks on clean and perturbed models"),
    ("attack", "attack", "bit-flip attacks that search for the most damaging flips"),
    ("adversarial", "adversarial", "adversarial input attacks on prompts"),
]


def _human(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


def cmd_models(_: argparse.Namespace) -> int:
    from harness.models.specs import MODELS

    rows = [(s.name, s.family, s.source, _human(s.params), s.hub_id or "-", "gated" if s.gated else "")
            for _, s in MODELS.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        line = "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False))
        sys.stdout.write(f"{line}  {row[5]}".rstrip() + "\n")
    return 0


def cmd_analyses(_: argparse.Namespace) -> int:
    width = max(len(name) for name, _, _ in ANALYSES)
    for name, word, what in ANALYSES:
        sys.stdout.write(f"{name.ljust(width)}  -k {word.ljust(width)}  {what}\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness", description="esa-harness: extreme sensitivity analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo: name, family, source, parameters, hub id").set_defaults(
        func=cmd_models)
    sub.add_parser("analyses", help="list the analysis suites and the -k word that selects each").set_defaults(
        func=cmd_analyses)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
