"""The `sibrar` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Sequence

from sibrar.commands import register_all
from sibrar.errors import SibrarError, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibrar", description="Single-branch multimodal recommendation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 3 the run failed)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except TrainingError as exc:
        _report(exc, args.verbose)
        return 3
    except SibrarError as exc:
        _report(exc, args.verbose)
        return 2
    except KeyboardInterrupt:
        print("sibrar: interrupted", file=sys.stderr)
        return 130


def _report(exc: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc)
    print(f"sibrar: error: {exc}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
