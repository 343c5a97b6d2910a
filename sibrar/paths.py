"""Where things live: the data root (default ~/.cache/sibrar, or $SIBRAR_DATA) and run-folder names."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | Path | None = None) -> Path:
    """The data root: the argument, else $SIBRAR_DATA, else ~/.cache/sibrar."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("SIBRAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sibrar"


def slug(label: str) -> str:
    """A model label as a folder name (runs/<slug>, studies/<slug>)."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
