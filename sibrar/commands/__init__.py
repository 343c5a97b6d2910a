"""Sub-commands of `sibrar`, one module per command group; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib

# Each module registers its parsers with `register(sub)`; imports of heavy libraries stay inside handlers.
COMMAND_MODULES = ("data", "encode", "train", "run", "retrieval", "serve", "tune", "analysis")


def register_all(sub: argparse._SubParsersAction) -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"sibrar.commands.{name}")
        module.register(sub)
