"""What the report's command-line entry points share: a user mistake is one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from harness.errors import HarnessError


def run_cli(parser: argparse.ArgumentParser, argv: list[str] | None,
            command: Callable[[argparse.Namespace], object]) -> int:
    """Parse ``argv``, print what ``command(args)`` returns (exit 0); a HarnessError is one line on stderr, exit 2."""
    args = parser.parse_args(argv)
    try:
        print(command(args))
    except HarnessError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
