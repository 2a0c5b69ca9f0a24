"""Command line: ``python -m harness models``, ``python -m harness analyses``, ``python -m harness plan`` and
``python -m harness submit``.

``analyses`` reads the suites directory (``suites/test_<name>.py`` beside the ``harness`` package, or
``--suites DIR``): each file is one analysis, its name is the file stem without ``test_`` (also its
bounds file ``suites/bounds/<name>.toml``), the ``-k`` word that selects it is that name, and what it
measures is the first sentence of the module docstring. A new suite file is listed with no change here.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.errors import HarnessError

SUITES_DIR = Path(__file__).resolve().parent.parent / "suites"


@dataclass(frozen=True)
class Analysis:
    """One analysis suite.

    Attributes:
        name: the suite name (``suites/test_<name>.py``, ``suites/bounds/<name>.toml``).
        word: the ``-k`` word that selects it.
        summary: the first sentence of the module docstring.
        also_selects: other suites whose file name or a test function or class name contains ``word``
            (``-k word`` runs those too; parametrize ids, which only collection knows, are not checked).
    """

    name: str
    word: str
    summary: str
    also_selects: tuple[str, ...] = ()


def _first_sentence(doc: str) -> str:
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    match = re.match(r"(.+?[.?!])(?=\s+[A-Z`(]|$)", paragraph)  # "Yu et al. 2024" does not end one
    return match.group(1) if match else paragraph


def find_analyses(suites_dir: Path | str = SUITES_DIR) -> list[Analysis]:
    """Every ``test_<name>.py`` in ``suites_dir``, sorted by name (module docstrings read with ``ast``,
    nothing is imported).

    Raises:
        HarnessError: ``suites_dir`` is not a directory (the harness runs from a checkout).
    """
    root = Path(suites_dir)
    if not root.is_dir():
        raise HarnessError(f"no suites directory at {root}; run from a checkout or pass --suites DIR")
    files = sorted(root.glob("test_*.py"))
    trees = {f.stem.removeprefix("test_"): ast.parse(f.read_text(encoding="utf-8")) for f in files}
    # pytest -k matches (case-insensitively) the file name and the test functions' and classes' names
    keywords = {name: " ".join([f"test_{name}.py", *(node.name for node in tree.body if isinstance(
        node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef))]).lower() for name, tree in trees.items()}
    out = []
    for name, tree in trees.items():
        others = tuple(n for n in trees if n != name and name.lower() in keywords[n])
        out.append(Analysis(name, name, _first_sentence(ast.get_docstring(tree) or ""), others))
    return out


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


def cmd_analyses(args: argparse.Namespace) -> int:
    found = find_analyses(args.suites)
    if not found:
        sys.stdout.write(f"no test_<name>.py suites in {args.suites}\n")
        return 0
    width = max(len(a.name) for a in found)
    for a in found:
        also = f" (-k {a.word} also selects {', '.join(a.also_selects)})" if a.also_selects else ""
        sys.stdout.write(f"{a.name.ljust(width)}  -k {a.word.ljust(width)}  {a.summary}{also}\n")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from harness.plan import format_plan, free_bytes, plan

    known = [a.name for a in find_analyses()]
    suites = [s.strip() for s in args.suites.split(",") if s.strip()] if args.suites else known
    unknown = [s for s in suites if s not in known]
    if unknown:
        raise HarnessError(f"unknown suite(s) {', '.join(unknown)}: choose from {', '.join(known)}")
    shape, forward, rows = plan(args.model, preset=args.preset, device=args.device, dtype=args.dtype,
                                eval_tokens=args.eval_tokens, window=args.window, suites=suites,
                                timed=not args.no_time)
    sys.stdout.write(format_plan(shape, args.preset, args.device, forward, rows, free=free_bytes(args.device)) + "\n")
    return 0


def _has_submit() -> bool:
    return importlib.util.find_spec("harness.submit") is not None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["submit"] and _has_submit():
        from harness import submit

        return submit.main(argv[1:])
    parser = argparse.ArgumentParser(prog="python -m harness", description="esa-harness: extreme sensitivity analysis")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("models", help="list the model zoo: name, family, source, parameters, hub id").set_defaults(
        func=cmd_models)
    analyses = sub.add_parser("analyses", help="list the analysis suites and the -k word that selects each")
    analyses.add_argument("--suites", type=Path, default=SUITES_DIR, metavar="DIR",
                          help=f"the suites directory (default: {SUITES_DIR})")
    analyses.set_defaults(func=cmd_analyses)
    p = sub.add_parser("plan", help="before loading: per suite the passes, estimated peak memory and projected time")
    p.add_argument("--model", required=True, help="a registry name, local model directory or hub id (config only)")
    p.add_argument("--preset", default="quick", choices=("quick", "full"), help="the suites' preset (default: quick)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument("--dtype", default=None, help="fp32, fp16, bf16 (default: the model's)")
    p.add_argument("--eval-tokens", type=int, default=1024, help="evaluation tokens (default: 1024)")
    p.add_argument("--window", type=int, default=256, help="window length (default: 256)")
    p.add_argument("--suites", default=None, help="comma list of suites (default: every suite)")
    p.add_argument("--no-time", action="store_true",
                   help="skip the timed forward (it builds a random model of the config on the device)")
    p.set_defaults(func=cmd_plan)
    if _has_submit():
        sub.add_parser("submit", help="submit suites as cluster jobs (python -m harness submit --help)", add_help=False)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except HarnessError as err:
        parser.exit(2, f"python -m harness {args.command}: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
