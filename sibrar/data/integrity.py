"""Checksums of the files `sibrar data fetch` built, recorded once and checked every time they are loaded.

`<dataset>/checksums.json` lists each file's size, modification time and sha256. Loading compares
sizes (a truncated file fails at once), trusts a file whose size and mtime are unchanged (the fast
path: no hashing), and hashes only files that were touched, so an unchanged ML-1M folder is checked
in microseconds and a truncated or edited `ml-100k.inter` is refused with advice to fetch it again.
Folders of atomic files that were not fetched (no checksums.json) are not checked.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from sibrar._io import read_json, write_json_atomic
from sibrar.errors import IntegrityError

CHECKSUMS = "checksums.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def record_checksums(folder: Path) -> Path:
    """Write `folder/checksums.json` for the files directly in `folder` (the fetched atomic files)."""
    files = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name != CHECKSUMS and not path.name.startswith("."):
            stat = path.stat()
            files[path.name] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256_file(path)}
    write_json_atomic(folder / CHECKSUMS, {"files": files})
    return folder / CHECKSUMS


def verify_checksums(folder: Path, source: str | None = None) -> None:
    """Refuse a fetched dataset folder whose files differ from what was recorded when it was built."""
    manifest_path = folder / CHECKSUMS
    if not manifest_path.is_file():
        return
    manifest: Any = read_json(manifest_path, "checksum manifest", IntegrityError)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise IntegrityError(f"{manifest_path}: expected {{\"files\": {{name: {{size, sha256}}}}}}; "
                             f"{_advice(folder, source)}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise IntegrityError(f"{path}: missing (it was built by `sibrar data fetch`); {_advice(folder, source)}")
        stat = path.stat()
        if stat.st_size != expected.get("size"):
            raise IntegrityError(f"{path}: {stat.st_size:,} bytes, but {expected.get('size'):,} were written when it "
                                 f"was fetched (truncated or edited); {_advice(folder, source)}")
        if stat.st_mtime_ns == expected.get("mtime_ns"):
            continue  # untouched since it was built: no need to hash it
        if sha256_file(path) != expected.get("sha256"):
            raise IntegrityError(f"{path}: content changed since it was fetched (sha256 differs from {CHECKSUMS}); "
                                 f"{_advice(folder, source)}")


def _advice(folder: Path, source: str | None) -> str:
    name = source or folder.name
    return (f"expected the files as fetched: run `sibrar data fetch {name} --force` (add --root {folder.parent} "
            f"if it is not the default data root), or delete {folder / CHECKSUMS} to accept your edits")
