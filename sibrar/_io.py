"""File I/O at the edges, in one place: atomic writes, and reads whose failures become one-line errors.

Writes go to a temp file beside the target, are fsynced, renamed into place, and the folder is fsynced
too, so a crash leaves either the old file or the new one, never a truncated one. Reads turn the
low-level failures a user can cause (missing or unreadable file, a folder in its place, UTF-16 or
Latin-1 bytes where UTF-8 is expected, a truncated or garbage checkpoint or index) into a
`sibrar.errors` exception whose message reads `FILE[:LINE]: what is wrong; what is expected`.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sibrar.errors import FileReadError, SibrarError

TEMP_SUFFIX = ".tmp"


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is fsynced and replaces `path`, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        _fsync_path(tmp)
        os.replace(tmp, path)
        _fsync_path(path.parent)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _fsync_path(path: str | Path) -> None:
    """fsync a file or a folder (the folder's entry for a renamed file); a no-op where the OS refuses it."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (and every folder on a few) cannot be fsynced
        pass
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files a killed writer left in `folder` (call only while holding the folder's lock)."""
    folder = Path(folder)
    stale = [p for p in folder.glob(f".*{TEMP_SUFFIX}") if p.is_file()] if folder.is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


# ------------------------------------------------------------------------------------------ reading


def os_problem(exc: OSError) -> str:
    """A short phrase for an OSError: 'permission denied', 'is a folder', 'no such file'…"""
    if isinstance(exc, PermissionError):
        return "permission denied"
    if isinstance(exc, IsADirectoryError) or exc.errno == errno.EISDIR:
        return "is a folder, not a file"
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    return (exc.strerror or str(exc)).lower()


def read_bytes(path: str | Path, what: str = "file", error: type[SibrarError] = FileReadError) -> bytes:
    """The bytes of `path`; an unreadable file raises `error` naming it and the reason."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {os_problem(exc)}; expected a readable file") from exc


def decode_utf8(data: bytes, path: str | Path, what: str = "file", error: type[SibrarError] = FileReadError) -> str:
    """`data` as UTF-8 text (a UTF-8 byte-order mark is dropped); anything else names the first bad line."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise error(f"{path}: the {what} is UTF-16 encoded; expected UTF-8 text (re-save it as UTF-8)")
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        byte = data[exc.start]
        raise error(f"{path}:{line}: byte 0x{byte:02x} at column {column} is not UTF-8 (Latin-1 or another 8-bit "
                    f"encoding?); expected UTF-8 text (re-save the {what} as UTF-8)") from None


def check_utf8(data: bytes, path: str | Path, what: str = "file", error: type[SibrarError] = FileReadError) -> None:
    """Raise like `decode_utf8` unless `data` is UTF-8; pure ASCII (the usual case) is checked without decoding."""
    if not data.isascii():
        decode_utf8(data, path, what, error)


def read_text(path: str | Path, what: str = "file", error: type[SibrarError] = FileReadError) -> str:
    """A UTF-8 text file, with one-line errors for unreadable files and other encodings."""
    return decode_utf8(read_bytes(path, what, error), path, what, error)


def read_json(path: str | Path, what: str = "JSON file", error: type[SibrarError] = FileReadError) -> Any:
    """A JSON file; invalid JSON names the line and column."""
    text = read_text(path, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: the {what} is not valid JSON ({exc.msg} at column {exc.colno}); "
                    "expected the file sibrar wrote (truncated or edited?)") from None


def load_torch(path: str | Path, what: str = "checkpoint", map_location: Any = "cpu", *, mmap: bool = False) -> Any:
    """`torch.load(weights_only=True)` whose failures (truncated, garbage, pickled objects) are one line.

    `mmap` maps the tensors instead of reading them (cheap when only the plain data is wanted, e.g. a run id).
    """
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if mmap:
        with _opened(path, what) as fh:
            size = os.fstat(fh.fileno()).st_size
        source: Any = str(path)
    else:
        data = read_bytes(path, what)
        size, source = len(data), io.BytesIO(data)
    try:
        with warnings.catch_warnings():  # torch warns about odd pickle protocols before failing on them
            warnings.simplefilter("ignore")
            return torch.load(source, map_location=map_location, weights_only=True, mmap=mmap)
    except (OSError, RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, ValueError, KeyError,
            AttributeError, TypeError, UnicodeDecodeError) as exc:
        if isinstance(exc, pickle.UnpicklingError):  # torch's text suggests weights_only=False: not passed on
            reason = "not a PyTorch file of tensors and plain data"
        else:
            reason = _first_line(exc).split(". ")[0]
        raise FileReadError(f"{path}: the {what} is truncated or corrupt ({size:,} bytes; {reason}); expected "
                            "the file sibrar wrote: train the run again or restore the file") from exc


@contextmanager
def _opened(path: Path, what: str) -> Iterator[Any]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise FileReadError(f"{path}: cannot read {what}: {os_problem(exc)}; expected a readable file") from exc
    with fh:
        yield fh


def read_faiss_index(path: str | Path) -> Any:
    """`faiss.read_index` whose failures (missing, truncated, garbage file) are one line."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise FileReadError(f"{path}: cannot read the FAISS index: {'is a folder, not a file' if path.is_dir() else 'no such file'}; "
                            "expected the file `sibrar index` wrote")
    if not os.access(path, os.R_OK):
        raise FileReadError(f"{path}: cannot read the FAISS index: permission denied; expected a readable file")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise FileReadError(f"{path}: the FAISS index is truncated or corrupt ({path.stat().st_size:,} bytes: "
                            f"{_first_line(exc)}); rebuild it with `sibrar index RUN_DIR`") from exc


def _first_line(exc: BaseException) -> str:
    """The first meaningful line of a library's (often multi-line) error message, shortened."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = next((ln for ln in lines if "Error" in ln and len(ln) < 200), lines[0] if lines else type(exc).__name__)
    return text[:160]
