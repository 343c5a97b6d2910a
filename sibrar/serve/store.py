"""Items added or removed while serving, persisted next to the run as numbered event files.

Each change is one JSON file ``RUN_DIR/served/NNNNNNNN-add.json`` (or ``-remove.json``), written to a
temp file and renamed, so a crash leaves either the whole event or none of it. A restart replays
the events in order. Appending never rewrites earlier events, so an add costs the same at 10 or
10⁶ added items.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sibrar._io import atomic_write
from sibrar.errors import DataError

FOLDER = "served"
_NAME = re.compile(r"^(\d{8})-(add|remove)\.json$")


@dataclass(frozen=True)
class Event:
    """One persisted change: ``items`` for an add (item_id, title, features), ``item_ids`` for a removal."""

    seq: int
    op: Literal["add", "remove"]
    items: tuple[dict[str, Any], ...] = ()
    item_ids: tuple[str, ...] = ()


class ItemStore:
    """The event files of one run folder; not thread-safe (the service calls it under its write lock)."""

    def __init__(self, run_dir: str | Path) -> None:
        self.folder = Path(run_dir) / FOLDER
        self._next = 1 + max((int(m.group(1)) for m in self._names()), default=0)

    def _names(self) -> Iterator[re.Match[str]]:
        if self.folder.is_dir():
            for name in sorted(os.listdir(self.folder)):
                m = _NAME.match(name)
                if m:
                    yield m

    def events(self) -> list[Event]:
        """Every event in order; a file that cannot be read raises DataError naming it."""
        out = []
        for m in self._names():
            path = self.folder / m.group(0)
            try:
                body = json.loads(path.read_text(encoding="utf-8"))
                if m.group(2) == "add":
                    out.append(Event(int(m.group(1)), "add", items=tuple(body["items"])))
                else:
                    out.append(Event(int(m.group(1)), "remove", item_ids=tuple(map(str, body["item_ids"]))))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}: unreadable served-items event ({exc}); fix or remove the file") from exc
        return out

    def add(self, items: Sequence[dict[str, Any]]) -> Path:
        """Persist added items (each: item_id, title, features)."""
        return self._write("add", {"items": list(items)})

    def remove(self, item_ids: Sequence[str]) -> Path:
        return self._write("remove", {"item_ids": [str(v) for v in item_ids]})

    def _write(self, op: str, body: dict[str, Any]) -> Path:
        path = self.folder / f"{self._next:08d}-{op}.json"
        with atomic_write(path) as tmp:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(body, fh, separators=(",", ":"))
                fh.flush()
                os.fsync(fh.fileno())
        self._next += 1
        return path
