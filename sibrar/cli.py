"""The `sibrar` command: parses arguments, calls the library, prints. No logic of its own."""

from __future__ import annotations

import argparse
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from sibrar.commands import register_all
from sibrar._io import os_problem
from sibrar.errors import SibrarError, TrainingError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sibrar", description="Single-branch multimodal recommendation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register_all(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input, 3 the run failed).

    This is the one place where errors reach the user: every `SibrarError` (and the file-system errors
    a user can cause, as a last resort) is printed as one line `sibrar: error: ...`; `-v` adds the traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = ["sibrar", *(sys.argv[1:] if argv is None else argv)]  # for the run.log of `run` and `demo`
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args) or 0)
    except TrainingError as exc:
        _report(exc, args.verbose)
        return 3
    except SibrarError as exc:
        _report(exc, args.verbose)
        return 2
    except OSError as exc:  # a path the library did not wrap: still one line naming the file
        where = f"{exc.filename}: " if exc.filename else ""
        _report(exc, args.verbose, f"{where}{os_problem(exc)}")
        return 2
    except UnicodeError as exc:
        _report(exc, args.verbose, f"{exc}; expected UTF-8 text")
        return 2
    except KeyboardInterrupt:
        print("sibrar: interrupted", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate_as_interrupt() -> Any:
    """SIGTERM (kill, a scheduler's timeout) unwinds like Ctrl-C, so atomic writes remove their temp files
    and run-folder locks are released. Returns the previous handler (None off the main thread)."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _report(exc: BaseException, verbose: bool, message: str | None = None) -> None:
    if verbose:
        traceback.print_exception(exc)
    lines = str(exc if message is None else message).splitlines()
    text = " ".join(line.strip() for line in lines if line.strip())  # always one line
    print(f"sibrar: error: {text}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
