"""Dataset sources: `sibrar data fetch NAME` looks NAME up here and writes atomic files under the data root."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sibrar.data.sources import movielens, music, synthetic  # noqa: F401  (registration by import)
from sibrar.data.sources.base import SOURCES, Source, register_source
from sibrar.paths import data_root

__all__ = ["SOURCES", "Source", "fetch", "list_sources", "register_source"]


def fetch(name: str, root: str | Path | None = None, *, force: bool = False) -> Path:
    """Build dataset `name` into `<root>/<name>` and return that folder.

    The folder appears whole or not at all: the source writes into a temporary sibling that is
    renamed at the end, so a failed download or checksum leaves nothing behind.
    """
    source = SOURCES.get(name)
    target = data_root(root) / name
    if target.is_dir() and (target / f"{name}.inter").is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{name}.", suffix=".partial"))
    try:
        source.build(tmp, name)
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def list_sources() -> list[Source]:
    return [SOURCES.get(n) for n in SOURCES.names()]
