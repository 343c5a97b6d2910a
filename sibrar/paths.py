"""Where datasets live: a data root (default ~/.cache/sibrar, or $SIBRAR_DATA)."""

from __future__ import annotations

import os
from pathlib import Path


def data_root(root: str | Path | None = None) -> Path:
    """The data root: the argument, else $SIBRAR_DATA, else ~/.cache/sibrar."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("SIBRAR_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sibrar"
