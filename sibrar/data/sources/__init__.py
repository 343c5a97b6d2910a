"""Dataset sources: `sibrar data fetch NAME` looks NAME up here and writes atomic files under the data root;
`resolve_dataset` turns a fetch name or a folder into a dataset folder."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from sibrar.data.integrity import record_checksums
from sibrar.data.sources import movielens, music, synthetic  # noqa: F401  (registration by import)
from sibrar.data.sources.base import SOURCES, Source, register_source
from sibrar.errors import DataError
from sibrar.paths import data_root
from sibrar.registry import unknown_name_message

__all__ = ["SOURCES", "Source", "fetch", "list_sources", "register_source", "resolve_dataset"]


def fetch(name: str, root: str | Path | None = None, *, force: bool = False) -> Path:
    """Build dataset `name` into `<root>/<name>` and return that folder.

    The folder appears whole or not at all: the source writes into a temporary sibling that is
    renamed at the end, so a failed download or checksum leaves nothing behind. Downloads are cached
    in `<root>/.downloads` (the temporary folder's sibling), and the built files' checksums are
    recorded in `<root>/<name>/checksums.json`.
    """
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


def list_sources() -> list[Source]:
    return [SOURCES.get(n) for n in SOURCES.names()]


def resolve_dataset(name_or_path: str | Path, root: str | Path | None = None) -> tuple[Path, str]:
    """A dataset folder and its name from a fetch name ('ml-100k') or a folder of atomic files.

    A folder `.../foo` must hold `foo.inter`; a fetch name resolves to `<data root>/<name>`.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        folder = candidate.resolve()
    else:
        folder = data_root(root) / str(name_or_path)
        if not folder.is_dir():
            raise DataError(f"dataset {str(name_or_path)!r} not found: it is neither a folder nor fetched under "
                            f"{data_root(root)}; {_fetch_advice(str(name_or_path))}")
    name = folder.name
    if not (folder / f"{name}.inter").is_file():
        raise DataError(f"{folder}: expected the interaction file {name}.inter in the dataset folder")
    return folder, name


def _fetch_advice(name: str) -> str:
    """`run sibrar data fetch NAME` for a registered source; otherwise the registered names and the closest one."""
    if name in SOURCES:
        return f"run `sibrar data fetch {name}` or pass a folder of atomic files"
    return (f"pass a folder of atomic files, or fetch a registered source with `sibrar data fetch SOURCE` "
            f"({unknown_name_message('source', name, SOURCES.names())})")
