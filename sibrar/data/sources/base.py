"""What a dataset source is and the registry `sibrar data fetch NAME` looks NAME up in.

Below the source modules (they import `register_source` from here) and the package `__init__`
(which imports them, so every built-in source is registered once `sibrar.data.sources` is imported).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sibrar.registry import Registry


@dataclass(frozen=True)
class Source:
    """A named dataset recipe. `build(folder, name)` writes `<name>.inter` (and .user/.item/features) into `folder`."""

    name: str
    build: Callable[[Path, str], None]
    description: str
    synthetic: bool = False


SOURCES: Registry[Source] = Registry("dataset source")


def register_source(name: str, description: str, *, synthetic: bool = False) -> Callable[[Callable[[Path, str], None]], Callable[[Path, str], None]]:
    """Decorator: register a build function under `name`."""

    def decorator(build: Callable[[Path, str], None]) -> Callable[[Path, str], None]:
        SOURCES.register(name)(Source(name, build, description, synthetic))
        return build

    return decorator
