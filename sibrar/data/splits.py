"""Train/valid/test splits: random, temporal, cold_item, cold_user, cold_both.

Each protocol is a pure function of the interactions, the ratios and a seeded generator. A split is
persisted as RecBole benchmark files (`<ds>.train.inter`, `<ds>.valid.inter`, `<ds>.test.inter`)
plus `split.json` (protocol, seed, ratios, counts, content hash of the input and of every part).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from sibrar.config import SplitConfig
from sibrar.data.atomic import read_atomic, write_atomic
from sibrar.data.dataset import INTERACTION_COLUMNS, Dataset
from sibrar._io import read_json, write_json_atomic
from sibrar.errors import SplitError
from sibrar.registry import Registry

Part = Literal["train", "valid", "test"]
PARTS: tuple[Part, ...] = ("train", "valid", "test")
COLD_PROTOCOLS = ("cold_item", "cold_user", "cold_both")
MIN_USER_INTERACTIONS = 3  # users with fewer keep all their interactions in train (random/temporal)
PROTOCOLS: Registry[Callable[..., pl.Series]] = Registry("split protocol")


@dataclass(frozen=True, eq=False)
class Split:
    """Three disjoint parts of a dataset's interactions (indices, not ids) and how they were made."""

    protocol: str
    seed: int
    ratios: tuple[float, float, float]
    train: pl.DataFrame
    valid: pl.DataFrame
    test: pl.DataFrame
    n_users: int
    n_items: int
    manifest: dict[str, Any] = field(default_factory=dict)

    def part(self, name: Part) -> pl.DataFrame:
        if name not in PARTS:
            raise SplitError(f"unknown split part {name!r}; expected one of {', '.join(PARTS)}")
        return getattr(self, name)

    @property
    def is_cold(self) -> bool:
        return self.protocol in COLD_PROTOCOLS

    def candidates(self, part: Part, protocol: Literal["split", "all"] = "split") -> np.ndarray:
        """Item indices ranked when evaluating `part`.

        'split' follows the paper: all items for random/temporal splits, and only the items occurring
        in the part itself for cold-start splits. 'all' ranks every item of the dataset.
        """
        if protocol not in ("split", "all"):
            raise SplitError(f"candidate protocol {protocol!r}; expected 'split' or 'all'")
        if protocol == "all" or not self.is_cold:
            return np.arange(self.n_items)
        return np.sort(self.part(part)["item_idx"].unique().to_numpy())

    def cold_items(self, part: Part) -> np.ndarray:
        """Items of `part` with no training interaction."""
        return np.setdiff1d(self.part(part)["item_idx"].unique().to_numpy(), self.train["item_idx"].unique().to_numpy())

    def cold_users(self, part: Part) -> np.ndarray:
        return np.setdiff1d(self.part(part)["user_idx"].unique().to_numpy(), self.train["user_idx"].unique().to_numpy())

    @property
    def hash(self) -> str:
        return str(self.manifest.get("split_hash", ""))


def split_counts(n: np.ndarray, ratios: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_train, n_valid, n_test) for group sizes n: ceil for valid and test, the rest to train."""
    n = np.asarray(n, dtype=np.int64)
    n_valid = np.ceil(n * ratios[1] - 1e-9).astype(np.int64)
    n_test = np.ceil(n * ratios[2] - 1e-9).astype(np.int64)
    return n - n_valid - n_test, n_valid, n_test


def _position_parts(position: np.ndarray, size: np.ndarray, ratios: tuple[float, float, float]) -> np.ndarray:
    """Part code (0 train, 1 valid, 2 test) of the element at `position` in a group of `size`."""
    n_train, n_valid, _ = split_counts(size, ratios)
    enough = size >= MIN_USER_INTERACTIONS
    code = np.where(position < n_train, 0, np.where(position < n_train + n_valid, 1, 2))
    return np.where(enough & (n_train >= 1), code, 0).astype(np.int8)


@PROTOCOLS.register("random")
def random_split(inter: pl.DataFrame, ratios: tuple[float, float, float], rng: np.random.Generator) -> pl.Series:
    """Shuffle all interactions, then split each user's list by `ratios` (warm start)."""
    order = rng.permutation(inter.height)
    return _per_user(inter, order, ratios)


@PROTOCOLS.register("temporal")
def temporal_split(inter: pl.DataFrame, ratios: tuple[float, float, float], rng: np.random.Generator) -> pl.Series:
    """Each user's interactions in time order (ties in random order): oldest train, newest test."""
    tiebreak = rng.permutation(inter.height)
    ts = inter["timestamp"].fill_null(0.0).to_numpy()
    order = np.lexsort((tiebreak, ts))
    return _per_user(inter, order, ratios)


def _per_user(inter: pl.DataFrame, order: np.ndarray, ratios: tuple[float, float, float]) -> pl.Series:
    users = inter["user_idx"].to_numpy()[order]
    ranked = pl.DataFrame({"row": order, "user": users}).with_columns(
        pl.int_range(pl.len()).over("user").alias("pos"), pl.len().over("user").alias("size"))
    codes = np.empty(inter.height, dtype=np.int8)
    codes[ranked["row"].to_numpy()] = _position_parts(ranked["pos"].to_numpy(), ranked["size"].to_numpy(), ratios)
    return pl.Series("part", codes)


def _partition(values: np.ndarray, ratios: tuple[float, float, float], rng: np.random.Generator,
               what: str = "entities") -> dict[int, int]:
    """Sorted unique values shuffled and cut into train/valid/test groups: value -> part code."""
    uniq = np.unique(values)
    shuffled = uniq[rng.permutation(len(uniq))]
    n_train, n_valid, _ = (int(x[0]) for x in split_counts(np.array([len(uniq)]), ratios))
    if n_train < 1:
        raise SplitError(f"{len(uniq)} {what} cannot be cut into train/valid/test by ratios {list(ratios)}: "
                         f"no {what} would be left for training; the dataset is too small")
    codes = np.repeat(np.array([0, 1, 2], dtype=np.int8), [n_train, n_valid, len(uniq) - n_train - n_valid])
    return dict(zip(shuffled.tolist(), codes.tolist()))


def _lookup(values: np.ndarray, table: dict[int, int]) -> np.ndarray:
    keys = np.fromiter(table.keys(), dtype=np.int64, count=len(table))
    vals = np.fromiter(table.values(), dtype=np.int8, count=len(table))
    lut = np.zeros(keys.max() + 1 if len(keys) else 1, dtype=np.int8)
    lut[keys] = vals
    return lut[values]


@PROTOCOLS.register("cold_item")
def cold_item_split(inter: pl.DataFrame, ratios: tuple[float, float, float], rng: np.random.Generator) -> pl.Series:
    """Items partitioned; a part holds all interactions of its items (held-out items unseen in train)."""
    items = inter["item_idx"].to_numpy()
    return pl.Series("part", _lookup(items, _partition(items, ratios, rng, "items")))


@PROTOCOLS.register("cold_user")
def cold_user_split(inter: pl.DataFrame, ratios: tuple[float, float, float], rng: np.random.Generator) -> pl.Series:
    users = inter["user_idx"].to_numpy()
    return pl.Series("part", _lookup(users, _partition(users, ratios, rng, "users")))


@PROTOCOLS.register("cold_both")
def cold_both_split(inter: pl.DataFrame, ratios: tuple[float, float, float], rng: np.random.Generator) -> pl.Series:
    """Users and items both partitioned (users first); an interaction whose user and item fall in
    different parts belongs to none and is dropped (code -1, counted in the manifest)."""
    users, items = inter["user_idx"].to_numpy(), inter["item_idx"].to_numpy()
    user_part = _lookup(users, _partition(users, ratios, rng, "users"))
    item_part = _lookup(items, _partition(items, ratios, rng, "items"))
    return pl.Series("part", np.where(user_part == item_part, user_part, -1).astype(np.int8))


def make_split(dataset: Dataset, config: SplitConfig = SplitConfig()) -> Split:
    """Split a dataset by `config.protocol` with `numpy.random.default_rng(config.seed)`."""
    protocol = PROTOCOLS.get(config.protocol)
    inter = dataset.interactions
    parts = protocol(inter, config.ratios, np.random.default_rng(config.seed))
    frames = {name: inter.filter(parts == code) for code, name in enumerate(PARTS)}
    for name in ("valid", "test"):
        if frames[name].height == 0 and config.ratios[PARTS.index(name)] > 0:
            raise SplitError(
                f"{dataset.name}: protocol {config.protocol!r} left the {name} part empty "
                f"({inter.height} interactions, ratios {list(config.ratios)}); the dataset is too small"
            )
    manifest = {
        "dataset": dataset.name,
        "synthetic": dataset.synthetic,
        "protocol": config.protocol,
        "seed": config.seed,
        "ratios": list(config.ratios),
        "min_user_interactions": MIN_USER_INTERACTIONS,
        "preprocessing": dataset.meta.get("preprocessing", {}),
        "input_hash": dataset.content_hash(),
        "counts": {name: frames[name].height for name in PARTS},
        "dropped": int((parts == -1).sum()),
        "part_hashes": {name: _frame_hash(frames[name]) for name in PARTS},
    }
    manifest["split_hash"] = hashlib.sha256(json.dumps(manifest["part_hashes"], sort_keys=True).encode()).hexdigest()
    return Split(config.protocol, config.seed, tuple(config.ratios), frames["train"], frames["valid"], frames["test"],
                 dataset.n_users, dataset.n_items, manifest)


def _frame_hash(frame: pl.DataFrame) -> str:
    h = hashlib.sha256()
    for col in ("user_idx", "item_idx"):
        h.update(frame[col].to_numpy().astype(np.int64).tobytes())
    return h.hexdigest()


def default_split_dir(dataset: Dataset, config: SplitConfig) -> Path:
    if dataset.folder is None:
        raise SplitError(f"{dataset.name}: in-memory dataset; give an output folder for the split")
    return dataset.folder / "splits" / f"{config.protocol}-seed{config.seed}"


def save_split(split: Split, dataset: Dataset, folder: str | Path) -> Path:
    """Write the three RecBole benchmark files (original ids) and `split.json`."""
    folder = Path(folder)
    types = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    for name in PARTS:
        frame = split.part(name)
        out = pl.DataFrame({
            "user_id": dataset.users.id_of(frame["user_idx"].to_numpy()),
            "item_id": dataset.items.id_of(frame["item_idx"].to_numpy()),
            "rating": frame["rating"], "timestamp": frame["timestamp"],
        })
        write_atomic(folder / f"{dataset.name}.{name}.inter", out, types)
    write_json_atomic(folder / "split.json", split.manifest)
    return folder


def load_split(folder: str | Path, dataset: Dataset) -> Split:
    """Read a saved split back against `dataset`; a split made from other data is refused."""
    folder = Path(folder)
    manifest_path = folder / "split.json"
    if not manifest_path.is_file():
        raise SplitError(f"{folder}: no split.json; not a split folder (make one with `sibrar data split`)")
    manifest = read_json(manifest_path, "split manifest", SplitError)
    if not isinstance(manifest, dict):
        raise SplitError(f"{manifest_path}: expected a JSON object (the manifest `sibrar data split` wrote)")
    if manifest.get("input_hash") != dataset.content_hash():
        raise SplitError(
            f"{folder}: split was made from different data (input hash {str(manifest.get('input_hash'))[:12]}…, "
            f"dataset {dataset.name} now hashes to {dataset.content_hash()[:12]}…); re-split or use the same preprocessing"
        )
    frames = {}
    for name in PARTS:
        path = folder / f"{dataset.name}.{name}.inter"
        raw = read_atomic(path).frame
        frames[name] = pl.DataFrame({
            "user_idx": dataset.users.idx(raw["user_id"].to_numpy(), what=f"user_id in {path}"),
            "item_idx": dataset.items.idx(raw["item_id"].to_numpy(), what=f"item_id in {path}"),
            "rating": raw["rating"], "timestamp": raw["timestamp"],
        }).select(*INTERACTION_COLUMNS)
    return Split(manifest["protocol"], int(manifest["seed"]), tuple(manifest["ratios"]), frames["train"], frames["valid"],
                 frames["test"], dataset.n_users, dataset.n_items, manifest)
