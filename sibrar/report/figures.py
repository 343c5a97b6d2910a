"""Matplotlib without a display, and PNGs written atomically: shared by every plot of sibrar."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sibrar._io import atomic_write


def pyplot():  # type: ignore[no-untyped-def]
    """matplotlib.pyplot on the Agg backend (imported lazily: plotting is optional at run time)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Lay out, write ``path`` as PNG through a temp file, and close the figure."""
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)
