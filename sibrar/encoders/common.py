"""What every encoder shares: entity ids and input files, the cache key, the batch loop, the report."""

from __future__ import annotations

import datetime as _dt
import difflib
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from sibrar.data.atomic import AtomicTable, atomic_path, read_atomic
from sibrar.data.features import FEATURES_DIR, Entity, write_features
from sibrar.errors import DataError, DataWarning, EncoderError
from sibrar.data.sources import resolve_dataset

X = TypeVar("X")
Y = TypeVar("Y")

N_REPORTED = 10  # how many missing ids (with reasons) the manifest and the report keep
ENTITIES: tuple[Entity, ...] = ("item", "user")


class InputError(Exception):
    """One entity's raw input cannot be used (missing, unreadable, corrupt, empty); it becomes *missing*."""


@dataclass(frozen=True)
class EncodeReport:
    """What one encoding run produced (or found already up to date)."""

    entity: Entity
    modality: str
    manifest_path: Path
    dim: int
    n_encoded: int
    n_missing: int
    missing: tuple[tuple[str, str], ...]  # first N_REPORTED (id, reason) pairs
    cached: bool  # True: inputs and encoder unchanged, nothing was recomputed
    seconds: float

    def summary(self) -> str:
        """Multi-line text for the CLI: counts, where the file is, and the first missing ids."""
        state = "up to date (cached)" if self.cached else f"encoded in {self.seconds:.1f} s"
        lines = [f"{self.entity}/{self.modality}: {self.n_encoded} encoded, {self.n_missing} missing, "
                 f"dim {self.dim}, {state} -> {self.manifest_path}"]
        if self.n_missing:
            lines.append(f"  first missing ({len(self.missing)} of {self.n_missing}):")
            lines += [f"    {entity_id}: {reason}" for entity_id, reason in self.missing]
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- inputs


def open_dataset(dataset: str | Path, root: str | Path | None = None) -> tuple[Path, str]:
    """Dataset folder and name (see `sibrar.data.sources.resolve_dataset`)."""
    return resolve_dataset(dataset, root)


def check_entity(entity: str) -> Entity:
    if entity not in ENTITIES:
        raise EncoderError(f"entity {entity!r} is not known; expected 'item' or 'user'")
    return entity  # type: ignore[return-value]


def find_entity_table(folder: Path, name: str, entity: Entity) -> AtomicTable | None:
    """The `<name>.<entity>` atomic file (checked for its `<entity>_id` column), or None when absent."""
    path = atomic_path(folder, name, entity)
    if not path.is_file():
        return None
    table = read_atomic(path)
    table.column(f"{entity}_id")  # raises DataError listing the columns
    return table


def read_entity_table(folder: Path, name: str, entity: Entity) -> AtomicTable:
    """Like `find_entity_table`, but the file must exist (the columns to encode live there)."""
    table = find_entity_table(folder, name, entity)
    if table is None:
        raise DataError(f"{atomic_path(folder, name, entity)}: no {entity} file; the {entity} columns to encode live there")
    return table


def entity_ids(folder: Path, name: str, entity: Entity, table: AtomicTable | None) -> list[str]:
    """All ids of an entity: from its table if there is one, else the first appearances in `.inter`."""
    if table is None:
        inter = read_atomic(atomic_path(folder, name, "inter"), columns=[f"{entity}_id"])
        series = inter.frame[f"{entity}_id"]
    else:
        series = table.frame[f"{entity}_id"]
    ids = series.drop_nulls().unique(maintain_order=True).to_list()
    if table is not None and len(ids) != table.frame.height:
        raise DataError(f"{table.path}: column '{entity}_id' has empty or duplicate ids; each row needs its own id")
    return [str(i) for i in ids]


def paths_from_dir(
    directory: str | Path, ids: Sequence[str] | None, extensions: frozenset[str],
) -> tuple[list[str], dict[str, Path]]:
    """Files under `directory` (recursively) whose stem is an entity id; `ids=None` takes every stem.

    Returns the id universe and id -> path. Several files with one stem keep the first in sorted
    order; files matching no id are counted in a DataWarning.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise DataError(f"{directory}: not a folder; expected a folder of files named <id>.<ext>")
    found: dict[str, Path] = {}
    duplicates: list[str] = []
    for path in sorted(directory.rglob("*")):
        if path.suffix.lower() not in extensions or path.name.startswith("."):
            continue
        if path.stem in found:
            duplicates.append(path.stem)
            continue
        found[path.stem] = path
    if duplicates:
        warnings.warn(f"{directory}: {len(duplicates)} id(s) have several files (first: {duplicates[0]!r}); "
                      "the first in sorted order is used", DataWarning, stacklevel=3)
    if ids is None:
        return sorted(found), found
    known = set(ids)
    stray = [stem for stem in found if stem not in known]
    if stray:
        warnings.warn(f"{directory}: {len(stray)} file(s) match no id (first: {stray[0]!r}); they are ignored",
                      DataWarning, stacklevel=3)
    return list(ids), {i: p for i, p in found.items() if i in known}


def paths_from_column(table: AtomicTable, ids: Sequence[str], column: str, base: Path) -> dict[str, Path]:
    """id -> path from a column of file paths (relative ones start at `base`); empty cells are missing."""
    values = table.column(column)
    if table.types[column] != "token":
        raise DataError(f"{table.path}: column {column!r} is {table.types[column]}; a path column must be 'token'")
    return {i: (base / v).expanduser() for i, v in zip(ids, values.to_list(), strict=True) if v}


@dataclass(frozen=True)
class FileInputs:
    """Per-entity input files: the id universe, id -> path, and a description for the manifest."""

    folder: Path | None  # the dataset folder (None: only a directory of files was given)
    name: str | None
    ids: list[str]
    paths: dict[str, Path]
    source: dict[str, str]


def collect_files(
    dataset: str | Path | None, *, entity: Entity, directory: str | Path | None, column: str | None,
    base: str | Path | None, root: str | Path | None, extensions: frozenset[str],
) -> FileInputs:
    """Resolve `directory` (file stem = id) or `column` (paths, relative to `base` or the dataset folder).

    With a dataset, the ids are its entity table's (or `.inter`'s) and ids without a file are missing;
    with only a directory, every file there is an entity.
    """
    if (directory is None) == (column is None):
        raise EncoderError("give exactly one input: a directory of files named <id>.<ext> or a column of paths")
    folder = name = None
    if dataset is not None:
        folder, name = open_dataset(dataset, root)
    if directory is not None:
        ids = None
        if folder is not None and name is not None:
            ids = entity_ids(folder, name, entity, find_entity_table(folder, name, entity))
        universe, paths = paths_from_dir(directory, ids, extensions)
        return FileInputs(folder, name, universe, paths, {"dir": str(Path(directory).expanduser().resolve())})
    if folder is None or name is None:
        raise EncoderError(f"column {column!r} needs a dataset whose {entity} file holds it")
    table = read_entity_table(folder, name, entity)
    base_dir = Path(base).expanduser() if base is not None else folder
    ids = entity_ids(folder, name, entity, table)
    paths = paths_from_column(table, ids, str(column), base_dir)
    return FileInputs(folder, name, ids, paths, {"column": str(column), "base": str(base_dir.resolve())})


def one_line(exc: BaseException, limit: int = 300) -> str:
    """'OSError: first 300 characters of the message' with newlines collapsed (CLI errors are one line)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:limit]}"


def nearest_names(name: str, valid: Iterable[str]) -> str:
    """'; did you mean 'x'?' or '' — for error messages."""
    close = difflib.get_close_matches(name, list(valid), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# ------------------------------------------------------------------------------------------------ cache


def file_sha256(path: Path, _cache: dict[tuple[str, int, int], str] = {}) -> str:  # noqa: B006 (memo)
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _cache:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _cache[key] = digest.hexdigest()
    return _cache[key]


def folder_sha256(folder: Path, skip: frozenset[str] = frozenset({"README.md", ".gitattributes"})) -> str:
    """One sha256 over every file of a model folder (relative path + content hash)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name not in skip):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def inputs_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 over (id, content fingerprint) pairs, in order."""
    digest = hashlib.sha256()
    for entity_id, content in pairs:
        digest.update(f"{len(entity_id)}:{entity_id}{len(content)}:{content}".encode())
    return digest.hexdigest()


def path_fingerprint(path: Path | None) -> str:
    """Content hash of an input file, or a marker saying why there is none (the state is cached too)."""
    if path is None:
        return "<none>"
    try:
        return file_sha256(path)
    except OSError as exc:
        return f"<unreadable {type(exc).__name__}>"


def files_digest(inputs: FileInputs) -> str:
    """Content digest of every entity's file (or of its absence), in id order."""
    return inputs_digest((i, path_fingerprint(inputs.paths.get(i))) for i in inputs.ids)


def cache_key(settings: dict[str, Any], inputs: str) -> str:
    """sha256 of the encoder settings (JSON, sorted) and the inputs digest."""
    payload = json.dumps({"settings": settings, "inputs": inputs}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def output_folder(dataset_folder: Path | None, out: str | Path | None) -> Path:
    if out is not None:
        return Path(out).expanduser()
    if dataset_folder is None:
        raise EncoderError("no dataset given: pass `out` (the folder the feature file goes to)")
    return dataset_folder / FEATURES_DIR


def cached_report(folder: Path, entity: Entity, modality: str, key: str) -> EncodeReport | None:
    """The report of an earlier run with the same cache key whose files are still there, else None."""
    manifest_path = folder / f"{entity}_{modality}.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if manifest.get("cache_key") != key or not (folder / str(manifest.get("file", ""))).is_file():
        return None
    missing = tuple((str(i), str(r)) for i, r in manifest.get("first_missing", []))
    return EncodeReport(entity, modality, manifest_path, int(manifest["dim"]), int(manifest["n_encoded"]),
                        int(manifest["n_missing"]), missing, True, 0.0)


# ------------------------------------------------------------------------------------------------- runs


def resolve_device(device: str) -> str:
    """'auto' -> cuda when present, else cpu; an unavailable device is an EncoderError, not a crash later."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise EncoderError(f"device {device!r} is not a torch device; use cpu, cuda, cuda:N, mps or auto") from exc
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise EncoderError(f"device {device!r} requested but torch sees no CUDA device; use --device cpu")
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        raise EncoderError(f"device {device!r} requested but torch sees {torch.cuda.device_count()} CUDA device(s)")
    kind = parsed.type
    if kind == "mps" and not torch.backends.mps.is_available():
        raise EncoderError(f"device {device!r} requested but MPS is not available; use --device cpu")
    return device


def encode_batches(
    items: Sequence[tuple[str, X | None]], prepare: Callable[[X], Y], embed: Callable[[list[Y]], np.ndarray], *,
    batch_size: int, desc: str, unit: str, progress: bool, workers: int = 1,
) -> tuple[list[str], np.ndarray | None, list[tuple[str, str]]]:
    """Prepare each input (InputError -> missing), embed in batches; memory holds one batch of inputs.

    `workers` > 1 prepares a batch's inputs in threads (file decoding releases the GIL). Returns the
    encoded ids, their vectors (n, d) float32 (None when nothing was encoded) and (id, reason) for
    every missing entity in input order.
    """
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    if batch_size < 1 or workers < 1:
        raise EncoderError(f"batch size ({batch_size}) and workers ({workers}) must be at least 1")

    def attempt(item: tuple[str, X | None]) -> tuple[str, Y | None, str | None]:
        entity_id, raw = item
        if raw is None:
            return entity_id, None, "no input"
        try:
            return entity_id, prepare(raw), None
        except InputError as exc:
            return entity_id, None, str(exc)

    done_ids: list[str] = []
    chunks: list[np.ndarray] = []
    missing: list[tuple[str, str]] = []
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=not progress, dynamic_ncols=True, mininterval=0.5)
    pool = ThreadPoolExecutor(workers) if workers > 1 else None
    try:
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            batch_ids: list[str] = []
            batch: list[Y] = []
            for entity_id, prepared, reason in (pool.map(attempt, chunk) if pool else map(attempt, chunk)):
                if reason is not None:
                    missing.append((entity_id, reason))
                else:
                    batch_ids.append(entity_id)
                    batch.append(prepared)  # type: ignore[arg-type]
            if batch:
                vectors = np.asarray(embed(batch), dtype=np.float32)  # (B, d)
                bad = np.asarray(~np.isfinite(vectors).all(axis=1))  # (B,) rows with NaN/inf
                flags = [bool(b) for b in bad]
                missing += [(i, "encoder returned NaN/inf") for i, b in zip(batch_ids, flags, strict=True) if b]
                done_ids += [i for i, b in zip(batch_ids, flags, strict=True) if not b]
                chunks.append(vectors[~bad])
            bar.update(len(chunk))
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown()
    return done_ids, (np.concatenate(chunks) if chunks else None), missing


def finish(
    folder: Path, entity: Entity, modality: str, ids: list[str], vectors: np.ndarray | None,
    missing: list[tuple[str, str]], *, key: str, started: float, manifest: dict[str, Any],
) -> EncodeReport:
    """Write the feature file + manifest and report; warn once (DataWarning) about missing entities."""
    if vectors is None or not ids:
        first = "; ".join(f"{i}: {r}" for i, r in missing[:3])
        raise DataError(f"{entity}/{modality}: none of {len(missing)} {entity}s could be encoded (first: {first})")
    first_missing = [list(pair) for pair in missing[:N_REPORTED]]
    manifest_path = write_features(
        folder, entity, modality, ids, vectors, **manifest, cache_key=key, n_encoded=len(ids),
        n_missing=len(missing), first_missing=first_missing,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        sibrar_version=_sibrar_version(),
    )
    if missing:
        warnings.warn(f"{entity}/{modality}: {len(missing)} of {len(ids) + len(missing)} {entity}s could not be "
                      f"encoded and are marked missing (first: {missing[0][0]!r}: {missing[0][1]})",
                      DataWarning, stacklevel=3)
    return EncodeReport(entity, modality, manifest_path, int(vectors.shape[1]), len(ids), len(missing),
                        tuple(missing[:N_REPORTED]), False, time.perf_counter() - started)


def _sibrar_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sibrar")
    except PackageNotFoundError:
        return "unknown"
