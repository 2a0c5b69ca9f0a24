"""``python -m reports``: build a report, export a baseline, or check a run against a baseline.

    python -m reports RESULTS_DIR [--run RUN_ID] [--baseline FILE] [--out DIR] [--pages N]
        prints the run page's directory, then the store index (DIR/report/index.html: every run, and the
        whole analysis of each model, the newest result of every suite)
    python -m reports export-baseline RESULTS_DIR [--run RUN_ID] -o FILE
    python -m reports compare RESULTS_DIR --baseline FILE [--run RUN_ID]   (exit 1 when regressed)
    python -m reports demo DIR            (the sample suites on tiny-llama, a worsened replay, then the report)
    python -m reports export-bounds RESULTS_DIR --model NAME [--bounds-dir suites/bounds]
    python -m reports compare-models RESULTS_DIR... [-o DIR]   (models side by side)
    python -m reports merge STORE... -o MERGED [--allow-mixed]   (shards or machines -> one store)

User mistakes (missing store, unknown run, bad baseline) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys

from harness.errors import HarnessError

COMMANDS = ("export-baseline", "compare", "demo", "export-bounds", "merge", "compare-models")


def _parser(command: str | None) -> argparse.ArgumentParser:
    if command == "export-baseline":
        p = argparse.ArgumentParser(prog="python -m reports export-baseline",
                                    description="Write the baseline file (JSON) of a run.")
        p.add_argument("results_dir")
        p.add_argument("--run", default=None, help="run id (default: the latest run with records)")
        p.add_argument("-o", "--output", required=True, help="baseline file to write (.json)")
    elif command == "compare":
        p = argparse.ArgumentParser(prog="python -m reports compare",
                                    description="Compare a run with a baseline; exit 1 when anything regressed.")
        p.add_argument("results_dir")
        p.add_argument("--baseline", required=True, help="baseline file from export-baseline")
        p.add_argument("--run", default=None, help="run id (default: the latest run with records)")
    elif command == "export-bounds":
        p = argparse.ArgumentParser(prog="python -m reports export-bounds",
                                    description="Derive a model's regression bounds from its runs at >= 5 seeds "
                                                "and write them into suites/bounds/<suite>.toml.")
        p.add_argument("results_dir")
        p.add_argument("--model", required=True, help="the model whose bounds to write")
        p.add_argument("--bounds-dir", default="suites/bounds", help="default: suites/bounds")
        p.add_argument("--min-seeds", type=int, default=5, help="seeds needed per claim (default: 5)")
    elif command == "merge":
        p = argparse.ArgumentParser(prog="python -m reports merge",
                                    description="Merge results stores (shards, machines) into one store: rows "
                                                "held by several stores are kept once; a run held by several "
                                                "stores (shards run with one --run-id) becomes one run.")
        p.add_argument("stores", nargs="+", metavar="STORE", help="results.sqlite files or results directories")
        p.add_argument("-o", "--output", required=True,
                       help="the merged store (.sqlite file or results directory; added to when it exists)")
        p.add_argument("--allow-mixed", action="store_true",
                       help="merge stores of different code versions (runs.git_commit); refused by default")
    elif command == "demo":
        p = argparse.ArgumentParser(prog="python -m reports demo",
                                    description="Run the sample suites on tiny-llama, a replay with one claim "
                                                "worsened, then its report.")
        p.add_argument("results_dir")
    else:
        p = argparse.ArgumentParser(prog="python -m reports",
                                    description="Build <results-dir>/report/<run_id>/ (tables, figures, "
                                                "analysis_report.md, index.html) from the results store, the "
                                                "store index <results-dir>/report/index.html and a page of the "
                                                "newest result of every suite per model. "
                                                f"Other commands: {', '.join(COMMANDS)} (see --help of each).")
        p.add_argument("results_dir", help="the results directory (holds results.sqlite)")
        p.add_argument("--run", default=None, help="run id (default: the latest run with records)")
        p.add_argument("--baseline", default=None,
                       help="compare with this baseline file (default: the previous run in the store)")
        p.add_argument("--out", default=None, help="the report directory (default: RESULTS_DIR/report)")
        p.add_argument("--pages", type=int, default=10,
                       help="run pages built for the newest runs that have none yet (default: 10)")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "compare-models":
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        from reports.compare import main as compare_models

        return compare_models(argv[1:])
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    args = _parser(command).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if command == "export-baseline":
            from reports.regression import export_baseline

            print(export_baseline(args.results_dir, args.output, args.run))
        elif command == "compare":
            from reports.load import load_run
            from reports.regression import load_baseline
            from reports.tables import fmt

            base = load_baseline(args.baseline)
            data = load_run(args.results_dir, args.run)
            for w in base.compatibility(data.run, data.models):
                print(w, file=sys.stderr)
            cmp = base.compare(data.records)
            bad = cmp[cmp["status"].isin(["regressed", "changed"])]
            for r in bad.itertuples():
                print(f"{r.status.upper()}: {r.suite} {r.model} {r.name} {r.method or ''} "
                      f"{fmt(r.value_base)} -> {fmt(r.value)}".replace("  ", " "))
            print(f"{len(bad)} regressed of {int(cmp['status'].isin(['ok', 'improved', 'regressed', 'changed']).sum())}"
                  f" compared against {base.source}")
            return 1 if len(bad) else 0
        elif command == "export-bounds":
            from reports.bounds import export_bounds

            exported, written = export_bounds(args.results_dir, args.model, args.bounds_dir,
                                              min_seeds=args.min_seeds)
            for e in exported:
                print(f"{e.suite}.{e.claim} = {e.value}  ({e.how})")
            print(f"wrote {', '.join(map(str, written)) or 'nothing'}")
            return 0 if all(e.value is not None for e in exported) else 1
        elif command == "merge":
            from harness.records import merge_stores

            s = merge_stores(args.stores, args.output, allow_mixed=args.allow_mixed)
            print(f"{s.output}: {s.runs} run(s), {s.records} rows added, {s.duplicates} duplicate rows skipped")
        elif command == "demo":
            from reports.build import build_report
            from reports.sample import FAILING_CLAIM, replay_run, run_suites

            first = run_suites(args.results_dir)
            replay_run(args.results_dir, first, scale={FAILING_CLAIM: 1.5}, info={"git_commit": "demo"})
            print(build_report(args.results_dir))
        else:
            from reports.build import build_store

            built = build_store(args.results_dir, args.run, args.baseline, args.out, pages=args.pages)
            print(built.run_page)
            print(built.index)
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
