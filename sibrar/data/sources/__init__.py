"""Dataset sources: `sibrar data fetch NAME` looks NAME up here and writes atomic files under the data root."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sibrar.data.integrity import record_checksums
from sibrar.paths import data_root
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


def fetch(name: str, root: str | Path | None = None, *, force: bool = False) -> Path:
    """Build dataset `name` into `<root>/<name>` and return that folder.

    The folder appears whole or not at all: the source writes into a temporary sibling that is
    renamed at the end, so a failed download or checksum leaves nothing behind. Downloads are cached
    in `<root>/.downloads` (the temporary folder's sibling), and the built files' checksums are
    recorded in `<root>/<name>/checksums.json`.
    """
    _load_builtin_sources()
    source = SOURCES.get(name)
    target = data_root(root) / name
    if target.is_dir() and (target / f"{name}.inter").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.", suffix=".partial"))
    try:
        source.build(tmp, name)
        record_checksums(tmp)  # checked on every load (sibrar.data.integrity)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _load_builtin_sources() -> None:
    """Import the modules that register sources (kept lazy so `import sibrar` stays light)."""
    from sibrar.data.sources import movielens, music, synthetic  # noqa: F401


def list_sources() -> list[Source]:
    _load_builtin_sources()
    return [SOURCES.get(n) for n in SOURCES.names()]
