"""Dataset: users, items, id maps both ways, implicit interactions and per-entity side modalities."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sibrar._io import read_json
from sibrar.config import DataConfig, ModalitySpec
from sibrar.data import modalities as M
from sibrar.data.atomic import AtomicTable, read_atomic
from sibrar.data.features import list_feature_manifests, read_features
from sibrar.data.integrity import verify_checksums
from sibrar.data.preprocess import implicit, preprocess
from sibrar.errors import ConfigError, DataError
from sibrar.data.sources import resolve_dataset

INTERACTION_COLUMNS = ("user_idx", "item_idx", "rating", "timestamp")
RESERVED_MODALITIES = ("interactions", "id")
_KIND_BY_TYPE = {"token": "categorical", "token_seq": "tags", "float": "numeric", "float_seq": "vector"}


@dataclass(frozen=True, eq=False)
class IdMap:
    """External ids (`*_id`, strings) <-> contiguous indices (`*_idx`, 0..n-1)."""

    ids: np.ndarray  # (n,) str
    _lookup: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", {str(v): i for i, v in enumerate(self.ids.tolist())})

    def __len__(self) -> int:
        return len(self.ids)

    def idx(self, ids: Any, *, what: str = "id") -> np.ndarray:
        """Indices of `ids`; an unknown id raises DataError naming it."""
        arr = np.atleast_1d(np.asarray(ids, dtype=str))
        out = np.fromiter((self._lookup.get(v, -1) for v in arr.tolist()), dtype=np.int64, count=len(arr))
        if (out < 0).any():
            bad = arr[out < 0]
            raise DataError(f"unknown {what} {str(bad[0])!r} ({len(bad)} unknown in total; {len(self)} known)")
        return out

    def id_of(self, idx: Any) -> np.ndarray:
        return self.ids[np.asarray(idx, dtype=np.int64)]

    def __contains__(self, value: object) -> bool:
        return str(value) in self._lookup


@dataclass(frozen=True, eq=False)
class Dataset:
    """A preprocessed dataset. Interactions hold `user_idx`, `item_idx`, `rating`, `timestamp`."""

    name: str
    folder: Path | None
    users: IdMap
    items: IdMap
    interactions: pl.DataFrame
    user_side: M.EntityFeatures  # raw side modalities (numeric not yet scaled)
    item_side: M.EntityFeatures
    user_table: pl.DataFrame | None = None  # the .user rows aligned to user_idx (None without a .user file)
    item_table: pl.DataFrame | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return len(self.users)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def synthetic(self) -> bool:
        return bool(self.meta.get("synthetic", False)) or "synthetic" in self.name

    def content_hash(self) -> str:
        """sha256 of ids and interactions: what a split manifest pins so a stale split is detected."""
        h = hashlib.sha256()
        for arr in (self.users.ids, self.items.ids):
            h.update("\x1f".join(arr.tolist()).encode())
            h.update(b"\x1e")
        for col in INTERACTION_COLUMNS:
            h.update(self.interactions[col].fill_null(float("nan")).to_numpy().astype(np.float64 if col in ("rating", "timestamp") else np.int64).tobytes())
        return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        n_i = self.interactions.height
        return {
            "name": self.name,
            "synthetic": self.synthetic,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": n_i,
            "density": n_i / max(1, self.n_users * self.n_items),
            "user_modalities": {m.name: {"kind": m.kind, "coverage": round(m.coverage, 4)} for m in self.user_side.modalities.values()},
            "item_modalities": {m.name: {"kind": m.kind, "coverage": round(m.coverage, 4)} for m in self.item_side.modalities.values()},
        }


def read_raw_interactions(folder: Path, name: str) -> pl.DataFrame:
    """The .inter file as `user_id`, `item_id`, `rating`, `timestamp`, `count` (+ `__line` for messages)."""
    table = read_atomic(folder / f"{name}.inter")
    for col in ("user_id", "item_id"):
        if col not in table.types:
            raise DataError(f"{table.path}: missing column {col!r}; header has {', '.join(table.types)}")
    frame = table.frame.with_row_index("__line", offset=2)
    for col in ("rating", "timestamp", "count"):
        if col in table.types and table.types[col] != "float":
            raise DataError(f"{table.path}: column {col!r} has type {table.types[col]}; expected float")
        if col not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.Float64).alias(col))
    for col in ("user_id", "item_id"):
        nulls = frame[col].is_null()
        if nulls.any():
            raise DataError(f"{table.path}:{frame['__line'][int(nulls.arg_true()[0])]}: empty {col}")
    for col in ("rating", "timestamp", "count"):  # NaN and inf are refused by read_atomic already
        negative = frame[col] < 0
        if negative.any():
            i = int(negative.arg_true()[0])
            raise DataError(f"{table.path}:{frame['__line'][i]}: {col} is {frame[col][i]:g}; expected a number >= 0 "
                            f"({int(negative.sum())} negative value(s) in the column)")
    return frame.select("user_id", "item_id", "rating", "timestamp", "count", "__line")


def load_dataset(config: DataConfig | str | Path = DataConfig()) -> Dataset:
    """Read a folder of atomic files (+ feature files), preprocess, and build side modalities."""
    if not isinstance(config, DataConfig):
        config = DataConfig(dataset=str(config))
    folder, name = resolve_dataset(config.dataset, config.root)
    verify_checksums(folder)  # a fetched folder: sizes (and hashes of touched files) as recorded
    raw = read_raw_interactions(folder, name)
    user_table = _read_side(folder / f"{name}.user", "user_id")
    item_table = _read_side(folder / f"{name}.item", "item_id")
    for table, col, entity in ((user_table, "user_id", "user"), (item_table, "item_id", "item")):
        if table is not None:
            _check_known(raw, table, col, entity, folder / f"{name}.inter")

    count_col = "count" if raw["count"].is_not_null().any() else "rating"
    # ids as categoricals: dedup, k-core and the joins below hash small codes, not strings (2x faster on ML-1M);
    # categoricals sort lexically, so the index order is the same as with strings
    frame = raw.drop("__line").with_columns(pl.col("user_id", "item_id").cast(pl.Categorical))
    frame = frame.with_columns(pl.col(count_col).alias("__count")) if config.min_count is not None else frame
    if config.min_count is not None:
        frame = implicit(frame, config.min_count, column="__count").drop("__count")
    frame, stats = preprocess(frame, rating_threshold=config.rating_threshold, k=config.k_core, source=str(folder / f"{name}.inter"))
    stats["min_count"] = config.min_count

    order = frame.sort(["timestamp", "user_id", "item_id"], nulls_last=True)
    users = IdMap(order["user_id"].unique(maintain_order=True).cast(pl.Utf8).to_numpy().astype(str))
    items = IdMap(order["item_id"].unique(maintain_order=True).cast(pl.Utf8).to_numpy().astype(str))
    interactions = _index(order, users, items)

    user_aligned = _align(user_table, "user_id", users)
    item_aligned = _align(item_table, "item_id", items)
    user_side = _side_modalities("user", user_aligned, config.user_modalities, folder, users, "user_id")
    item_side = _side_modalities("item", item_aligned, config.item_modalities, folder, items, "item_id")
    meta = _source_meta(folder, name)
    meta["preprocessing"] = stats
    return Dataset(name, folder, users, items, interactions, user_side, item_side,
                   user_aligned.frame if user_aligned else None, item_aligned.frame if item_aligned else None, meta)


def _read_side(path: Path, id_col: str) -> AtomicTable | None:
    if not path.exists():  # absent: no side file; a folder or an unreadable file in its place is an error
        return None
    table = read_atomic(path)
    if id_col not in table.types:
        raise DataError(f"{path}: missing id column {id_col!r}; header has {', '.join(table.types)}")
    repeat = ~table.frame[id_col].is_first_distinct()
    if repeat.any():
        i = int(repeat.arg_true()[0])
        value = table.frame[id_col][i]
        first = int((table.frame[id_col] == value).arg_true()[0])
        raise DataError(f"{path}:{i + 2}: duplicate {id_col} {value!r} (first on line {first + 2}); each id must appear once")
    return table


def _check_known(raw: pl.DataFrame, table: AtomicTable, col: str, entity: str, inter_path: Path) -> None:
    unknown = raw.filter(~pl.col(col).is_in(table.frame[col].implode()))
    if unknown.height:
        raise DataError(
            f"{inter_path}:{unknown['__line'][0]}: {col} {unknown[col][0]!r} is not in {table.path.name} "
            f"({unknown.height} interaction(s) point at unknown {entity}s)"
        )


def _index(frame: pl.DataFrame, users: IdMap, items: IdMap) -> pl.DataFrame:
    umap = pl.DataFrame({"user_id": users.ids, "user_idx": np.arange(len(users), dtype=np.int64)})
    imap = pl.DataFrame({"item_id": items.ids, "item_idx": np.arange(len(items), dtype=np.int64)})
    umap, imap = (m.with_columns(pl.col(c).cast(frame.schema[c])) for m, c in ((umap, "user_id"), (imap, "item_id")))
    return (
        frame.join(umap, on="user_id", maintain_order="left")
        .join(imap, on="item_id", maintain_order="left")
        .select(*INTERACTION_COLUMNS)
    )


def _align(table: AtomicTable | None, id_col: str, ids: IdMap) -> AtomicTable | None:
    """Side-table rows in index order (null rows for ids the file does not list)."""
    if table is None:
        return None
    order = pl.DataFrame({id_col: ids.ids})
    frame = order.join(table.frame, on=id_col, how="left", maintain_order="left")
    return AtomicTable(frame, table.types, table.path)


def _side_modalities(entity: str, table: AtomicTable | None, specs: dict[str, ModalitySpec] | None,
                     folder: Path, ids: IdMap, id_col: str) -> M.EntityFeatures:
    manifests = {}
    for path in list_feature_manifests(folder):
        meta = read_json(path, "feature manifest", DataError)
        if isinstance(meta, dict) and meta.get("entity") == entity:
            manifests[str(meta.get("modality"))] = path
    if specs is None:
        specs = {c: ModalitySpec(column=c) for c in (table.types if table else {}) if c != id_col}
        specs.update({m: ModalitySpec(kind="vector") for m in manifests})
    features = M.EntityFeatures(entity, len(ids))  # type: ignore[arg-type]
    for name, spec in specs.items():
        if name in RESERVED_MODALITIES:
            raise ConfigError(f"data.{entity}_modalities.{name}: {name!r} is built from the training split; do not declare it")
        features = features.with_modality(_build_modality(entity, name, spec, table, manifests, ids))
    return features


def _build_modality(entity: str, name: str, spec: ModalitySpec, table: AtomicTable | None,
                    manifests: dict[str, Path], ids: IdMap) -> M.Modality:
    where = f"data.{entity}_modalities.{name}"
    if spec.column is None:
        if name not in manifests:
            raise ConfigError(f"{where}: no feature file for {entity} modality {name!r}; found: {', '.join(manifests) or 'none'}"
                              " (run `sibrar encode` or give a column)")
        fs = read_features(manifests[name])
        rows = pl.DataFrame({"id": ids.ids}).join(
            pl.DataFrame({"id": fs.ids, "row": np.arange(len(fs.ids))}), on="id", how="left", maintain_order="left")["row"]
        available = rows.is_not_null().to_numpy()
        vectors = np.zeros((len(ids), fs.vectors.shape[1]), dtype=np.float32)
        vectors[available] = fs.vectors[rows.drop_nulls().to_numpy()]
        return M.vector(name, vectors, available)
    if table is None or spec.column not in table.types:
        have = ", ".join(table.types) if table else f"no .{entity} file"
        raise ConfigError(f"{where}: column {spec.column!r} not found ({have})")
    kind = _KIND_BY_TYPE[table.types[spec.column]] if spec.kind == "auto" else spec.kind
    col = table.frame[spec.column]
    if kind == "categorical":
        return M.categorical(name, col.cast(pl.Utf8).to_list() if col.dtype != pl.List(pl.Utf8) else col.list.join(" ").to_list())
    if kind == "tags":
        return M.tags(name, col if col.dtype == pl.List(pl.Utf8) else col.cast(pl.Utf8).str.split(" "), spec.min_tag_count)
    if kind == "numeric":
        values = col.cast(pl.Float64, strict=False)
        if values.null_count() > col.null_count():
            raise DataError(f"{table.path}: column {spec.column!r} has non-numeric values; expected numbers for {where}")
        return M.numeric(name, values.fill_null(float("nan")).to_numpy())
    if kind == "vector":
        lengths = col.list.len().drop_nulls().unique()
        if len(lengths) > 1:
            raise DataError(f"{table.path}: float_seq column {spec.column!r} has rows of lengths {sorted(lengths.to_list())}; expected one length")
        dim = int(lengths[0]) if len(lengths) else 1
        available = (col.is_not_null() & (col.list.len() == dim)).to_numpy()
        vectors = np.zeros((len(col), dim), dtype=np.float32)
        if available.any():
            vectors[available] = np.asarray(col.filter(pl.Series(available)).to_list(), dtype=np.float32)
        return M.vector(name, vectors, available)
    raise ConfigError(f"{where}: kind {kind!r} is not one of categorical, tags, numeric, vector")


def _source_meta(folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.meta.json"
    meta: dict[str, Any] = {"name": name, "folder": str(folder)}
    if path.is_file():
        meta.update(read_json(path, "dataset description", DataError))
    return meta
