"""Where datasets live: a data root (default ~/.cache/sibrar, or $SIBRAR_DATA) and dataset folders in it."""

from __future__ import annotations

import os
from pathlib import Path

from sibrar.errors import DataError


def data_root(root: str | Path | None = None) -> Path:
    """The data root: the argument, else $SIBRAR_DATA, else ~/.cache/sibrar."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("SIBRAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sibrar"


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
    from sibrar.data.sources import SOURCES, _load_builtin_sources
    from sibrar.registry import unknown_name_message

    _load_builtin_sources()
    if name in SOURCES:
        return f"run `sibrar data fetch {name}` or pass a folder of atomic files"
    return (f"pass a folder of atomic files, or fetch a registered source with `sibrar data fetch SOURCE` "
            f"({unknown_name_message('source', name, SOURCES.names())})")
