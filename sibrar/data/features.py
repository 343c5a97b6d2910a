"""Feature files: dense vectors keyed by entity id, plus a JSON manifest (a vector modality on disk).

Layout inside a dataset folder: `features/<entity>_<modality>.parquet` with columns `id` (Utf8) and
`vector` (Array(Float32, dim)), and `features/<entity>_<modality>.json` with at least
{"entity": "item"|"user", "modality": str, "dim": int, "file": "<name>.parquet"} plus whatever the
producer records (encoder, weights checksum, template, counts, date). A `.npy` matrix is accepted
too, with its ids in the manifest's "ids" list. Entities absent from the file are *missing* that
modality; they are never zero-filled.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from sibrar._io import atomic_write, read_bytes, read_json, write_json_atomic
from sibrar.errors import DataError

Entity = Literal["user", "item"]
FEATURES_DIR = "features"


@dataclass(frozen=True)
class FeatureSet:
    """Vectors (n, dim) float32 for the listed ids, with the manifest they were read from."""

    entity: Entity
    modality: str
    ids: np.ndarray  # (n,) str
    vectors: np.ndarray  # (n, dim) float32
    manifest: dict[str, Any]


def write_features(
    folder: str | Path, entity: Entity, modality: str, ids: np.ndarray | list[str], vectors: np.ndarray,
    **manifest: Any,
) -> Path:
    """Write one feature set (parquet + manifest) atomically; returns the manifest path."""
    folder = Path(folder)
    ids = np.asarray(ids, dtype=str)
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(ids) != len(vectors):
        raise DataError(f"features {entity}/{modality}: expected {len(ids)} vectors of one size, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise DataError(f"features {entity}/{modality}: vectors contain NaN or inf")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"features {entity}/{modality}: duplicate ids")
    stem = f"{entity}_{modality}"
    folder.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({"id": ids, "vector": vectors}, schema={"id": pl.Utf8, "vector": pl.Array(pl.Float32, vectors.shape[1])})
    with atomic_write(folder / f"{stem}.parquet") as tmp:
        frame.write_parquet(tmp)
    meta = {**manifest, "entity": entity, "modality": modality, "dim": int(vectors.shape[1]),
            "file": f"{stem}.parquet", "count": int(len(ids))}
    write_json_atomic(folder / f"{stem}.json", meta)
    return folder / f"{stem}.json"


def read_features(manifest_path: str | Path) -> FeatureSet:
    """Read a feature set from its manifest, checking dimension, finiteness and unique ids."""
    manifest_path = Path(manifest_path)
    manifest = read_json(manifest_path, "feature manifest", DataError)
    if not isinstance(manifest, dict):
        raise DataError(f"{manifest_path}: the feature manifest is {type(manifest).__name__}; expected a JSON object")
    for key in ("entity", "modality", "dim", "file"):
        if key not in manifest:
            raise DataError(f"{manifest_path}: manifest lacks field {key!r}")
    if manifest["entity"] not in ("user", "item"):
        raise DataError(f"{manifest_path}: field 'entity' is {manifest['entity']!r}; expected 'user' or 'item'")
    data_path = manifest_path.parent / manifest["file"]
    if data_path.suffix == ".parquet":
        frame = _read_parquet(data_path)
        if "id" not in frame.columns or "vector" not in frame.columns:
            raise DataError(f"{data_path}: expected columns 'id' and 'vector', found {frame.columns}")
        ids = frame["id"].cast(pl.Utf8).to_numpy()
        vec_col = frame["vector"]
        if vec_col.null_count():
            raise DataError(f"{data_path}: column 'vector' has {vec_col.null_count()} null rows; omit missing entities instead")
        lengths = vec_col.cast(pl.List(pl.Float32)).list.len()
        if lengths.n_unique() > 1 or (len(lengths) and lengths[0] != manifest["dim"]):
            bad = int((lengths != manifest["dim"]).arg_true()[0])
            raise DataError(f"{data_path}: row {bad} (id {ids[bad]!r}) has {lengths[bad]} values; manifest dim is {manifest['dim']}")
        vectors = np.asarray(vec_col.cast(pl.List(pl.Float32)).to_list() if len(vec_col) == 0 else
                             vec_col.cast(pl.Array(pl.Float32, manifest["dim"])).to_numpy(), dtype=np.float32).reshape(len(ids), manifest["dim"])
    elif data_path.suffix == ".npy":
        try:
            vectors = np.load(io.BytesIO(read_bytes(data_path, "feature file", DataError)), allow_pickle=False).astype(np.float32)
        except (ValueError, EOFError) as exc:
            raise DataError(f"{data_path}: the feature file is truncated or not a .npy matrix ({exc}); "
                            "expected the file `sibrar encode` wrote (encode again)") from None
        ids = np.asarray(manifest.get("ids", []), dtype=str)
        if vectors.ndim != 2 or vectors.shape != (len(ids), manifest["dim"]):
            raise DataError(f"{data_path}: shape {vectors.shape}; manifest lists {len(ids)} ids of dim {manifest['dim']}")
    else:
        raise DataError(f"{manifest_path}: field 'file' is {manifest['file']!r}; expected a .parquet or .npy file")
    if not np.isfinite(vectors).all():
        row = int(np.argwhere(~np.isfinite(vectors))[0, 0])
        raise DataError(f"{data_path}: id {ids[row]!r} has NaN or inf values; omit it to mark the modality missing")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{data_path}: duplicate ids")
    return FeatureSet(manifest["entity"], manifest["modality"], ids, vectors, manifest)


def _read_parquet(path: Path) -> pl.DataFrame:
    data = read_bytes(path, "feature file", DataError)
    try:
        return pl.read_parquet(io.BytesIO(data))
    except pl.exceptions.PolarsError as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: the feature file is truncated or not Parquet ({len(data):,} bytes: {first}); "
                        "expected the file `sibrar encode` wrote (encode again)") from exc


def list_feature_manifests(dataset_dir: str | Path) -> list[Path]:
    """Manifests under `<dataset_dir>/features/`, sorted by name for a stable modality order."""
    folder = Path(dataset_dir) / FEATURES_DIR
    return sorted(folder.glob("*.json")) if folder.is_dir() else []
