"""Music sources: LFM-2b / Music4All-Onion and Last.fm HetRec 2011 readers, and a synthetic Onion-like generator."""

from __future__ import annotations

import bz2
import gzip
import io
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl

from sibrar.data.atomic import FieldType, atomic_path, write_atomic
from sibrar._io import write_json_atomic
from sibrar.data.features import FEATURES_DIR, write_features
from sibrar.data.sources.base import register_source
from sibrar.errors import ConfigError, DataError, DataWarning, FetchError

_LINE = "__line"
_OPENERS = {".bz2": bz2.open, ".gz": gzip.open}
EVENT_FILES = ("listening-events.tsv", "listening_events.tsv", "userid_trackid_timestamp.tsv")
COUNT_FILES = ("listening-counts.tsv", "listening_counts.tsv", "userid_trackid_count.tsv")
TAG_FILES = {"tags": ("id_tags_dict.tsv", "id_tags.tsv", "id_tags.csv"),
             "genres": ("id_genres.tsv", "id_genres.csv", "id_genres_mmsr.tsv", "id_genres_tf-idf.tsv")}
#: Onion dense feature files `id_<name>.tsv` read by default when present, with their modality kind.
FEATURE_KINDS = {"ivec256": "audio", "ivec512": "audio", "ivec1024": "audio", "musicnn": "audio", "jukebox": "audio",
                 "maest": "audio", "bert": "text", "lyrics_bert": "text", "lyrics_word2vec": "text",
                 "resnet": "image", "incp": "image", "vgg19": "image"}
TOP_COUNTRIES = ("US", "RU", "DE", "UK", "PL", "BR", "FI", "NL", "ES", "SE")  # LFM-2b's ten largest
GENRES = ("rock", "pop", "electronic", "indie", "alternative", "hip_hop", "metal", "jazz", "folk", "punk",
          "rnb", "soul", "classical", "ambient", "techno", "house", "blues", "country", "reggae", "experimental")
_USER = ("user_id", "userid", "user")
_TRACK = ("track_id", "trackid", "item_id", "id")
_Q = r"""(?:'[^']*'|"[^"]*")"""
_NUM = r"-?[0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?"
_DICT = rf"^\{{\s*(?:{_Q}\s*:\s*{_NUM}\s*(?:,\s*{_Q}\s*:\s*{_NUM}\s*)*,?)?\s*\}}$"
_LIST = rf"^\[\s*(?:{_Q}\s*(?:,\s*{_Q}\s*)*,?)?\s*\]$"


@dataclass(frozen=True)
class FeatureArrays:
    """One dense item modality: `vectors[i]` belongs to `ids[i]`; items not listed miss the modality."""

    ids: np.ndarray  # (n,) str
    vectors: np.ndarray  # (n, dim) float32
    kind: str  # audio | text | image
    source: str


@dataclass(frozen=True)
class MusicTables:
    """Converted tables: `inter` (user_id, item_id, count[, timestamp]), optional `.user`/`.item` and features."""

    inter: pl.DataFrame
    user: pl.DataFrame | None = None
    item: pl.DataFrame | None = None
    features: Mapping[str, FeatureArrays] = field(default_factory=dict)

    def write(self, folder: str | Path, name: str, **manifest: Any) -> list[Path]:
        """Write `<name>.inter/.user/.item` and `features/item_<modality>.*` into `folder`."""
        folder = Path(folder)
        paths = [write_atomic(atomic_path(folder, name, "inter"), self.inter, _types(self.inter))]
        for suffix, frame in (("user", self.user), ("item", self.item)):
            if frame is not None and frame.height:
                paths.append(write_atomic(atomic_path(folder, name, suffix), frame, _types(frame)))
        for modality, feat in self.features.items():
            paths.append(write_features(folder / FEATURES_DIR, "item", modality, feat.ids, feat.vectors,
                                        kind=feat.kind, source_file=feat.source, **manifest))
        return paths


def _types(frame: pl.DataFrame) -> dict[str, FieldType]:
    kinds: dict[Any, FieldType] = {pl.Utf8: "token", pl.Float64: "float", pl.List(pl.Utf8): "token_seq",
                                   pl.List(pl.Float64): "float_seq"}
    return {c: kinds[d] for c, d in frame.schema.items()}


# ---------------------------------------------------------------- strict text reading
def _resolve(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of `names` (plain, .bz2 or .gz) that exists in `folder`."""
    for n in names:
        for ext in ("", ".bz2", ".gz"):
            if (folder / f"{n}{ext}").is_file():
                return folder / f"{n}{ext}"
    return None


def _lines(path: Path) -> pl.DataFrame:
    """Non-empty lines of a (bz2/gz) text file as `text` with their 1-based `__line`; Latin-1 if not UTF-8."""
    opener = _OPENERS.get(path.suffix)
    try:
        if opener:
            with opener(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:  # HetRec's tags.dat is Latin-1
        raw = raw.decode("latin-1").encode("utf-8")
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark would hide the first header name
    if not raw.strip():
        raise DataError(f"{path}: empty file; expected a header line and rows")
    frame = pl.read_csv(io.BytesIO(raw), has_header=False, separator="\x1f", quote_char=None, infer_schema=False,
                        new_columns=["text"], eol_char="\n")
    frame = frame.with_row_index(_LINE, offset=1).with_columns(pl.col("text").str.strip_suffix("\r"))
    return frame.filter(pl.col("text").is_not_null() & (pl.col("text").str.len_bytes() > 0))


def _split(path: Path, sep: str = "\t") -> tuple[list[str], pl.DataFrame]:
    """Header fields and the rows split into `field_0..` strings (stripped); ragged rows are errors."""
    lines = _lines(path)
    header = [h.strip() for h in lines["text"][0].split(sep)]
    rows = lines.slice(1)
    n = len(header)
    bad = rows.filter(pl.col("text").str.count_matches(sep, literal=True) + 1 != n)
    if bad.height:
        got = bad["text"][0].count(sep) + 1
        raise DataError(f"{path}:{bad[_LINE][0]}: row has {got} fields, the header has {n} "
                        f"({bad.height} such row(s)); value {bad['text'][0][:80]!r}")
    fields_ = pl.col("text").str.split_exact(sep, n - 1).struct.unnest() if n > 1 else pl.col("text").alias("field_0")
    out = rows.select(fields_, pl.col(_LINE))
    return header, out.with_columns(pl.col(f"field_{i}").str.strip_chars() for i in range(n))


def _read_table(path: Path, spec: Sequence[tuple[str, Sequence[str]]]) -> pl.DataFrame:
    """Columns named by `spec` [(name, accepted header names)] as strings plus `__line`; other columns ignored."""
    header, rows = _split(path)
    lower = [h.lower() for h in header]
    picked = {}
    for name, aliases in spec:
        pos = next((lower.index(a) for a in aliases if a in lower), None)
        if pos is None:
            raise DataError(f"{path}:1: header {header} lacks column {name!r} (accepted names: {', '.join(aliases)})")
        picked[f"field_{pos}"] = name
    return rows.select(*(pl.col(k).alias(v) for k, v in picked.items()), pl.col(_LINE))


def _fail(path: Path, frame: pl.DataFrame, bad: pl.Series, column: str, expected: str) -> None:
    if bad.any():
        i = int(bad.arg_true()[0])
        raise DataError(f"{path}:{frame[_LINE][i]}: column {column!r} has value {frame[column][i]!r}; expected "
                        f"{expected} ({int(bad.sum())} such row(s))")


def _required(path: Path, frame: pl.DataFrame, *columns: str) -> None:
    for c in columns:
        _fail(path, frame, frame[c].fill_null("") == "", c, "a non-empty id")


def _numbers(path: Path, frame: pl.DataFrame, column: str, expected: str = "a finite number") -> pl.Series:
    text = frame[column]
    out = text.cast(pl.Float64, strict=False)
    _fail(path, frame, out.is_null() | out.is_nan() | out.is_infinite(), column, expected)
    return out


def _timestamps(path: Path, frame: pl.DataFrame, column: str) -> pl.Series:
    """Unix seconds from 'YYYY-MM-DD HH:MM:SS' (also ISO 'T'/'Z') or from plain numbers."""
    text = frame[column]
    iso = text.str.replace("T", " ", literal=True).str.strip_suffix("Z")
    dates = iso.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us")
    out = dates.dt.epoch("s").cast(pl.Float64).fill_null(text.cast(pl.Float64, strict=False))
    _fail(path, frame, out.is_null() | out.is_nan() | out.is_infinite(), column,
          "a date 'YYYY-MM-DD HH:MM:SS' or unix seconds")
    return out.alias(column)


def _check_min_count(min_count: int) -> None:
    if not isinstance(min_count, int) or min_count < 1:
        raise ConfigError(f"min_count is {min_count!r}; expected an integer >= 1 (Onion uses 2)")


def _keep_repeated(pairs: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """Sum duplicate (user, item) rows, keep pairs with count >= min_count, earliest timestamp, stable order."""
    aggs = [pl.col("count").sum()] + ([pl.col("timestamp").min()] if "timestamp" in pairs.columns else [])
    out = pairs.group_by("user_id", "item_id").agg(aggs).filter(pl.col("count") >= min_count)
    order = (["timestamp"] if "timestamp" in out.columns else []) + ["user_id", "item_id"]
    return out.sort(order).select("user_id", "item_id", "count", *order[:-2])


# ---------------------------------------------------------------- LFM-2b / Music4All-Onion
def read_listening_events(path: str | Path, *, min_count: int = 2, year: int | None = None) -> pl.DataFrame:
    """`user_id, track_id[, album_id], timestamp` events -> (user_id, item_id, count, timestamp) pairs.

    Events outside `year` (UTC, an int) are dropped first; the pair keeps its earliest timestamp.
    """
    _check_min_count(min_count)
    path = Path(path)
    f = _read_table(path, [("user_id", _USER), ("item_id", _TRACK), ("timestamp", ("timestamp", "time", "datetime"))])
    _required(path, f, "user_id", "item_id")
    pairs = f.select("user_id", "item_id", _timestamps(path, f, "timestamp"), count=pl.lit(1.0))
    if year is not None:
        pairs = pairs.filter(pl.from_epoch(pl.col("timestamp").cast(pl.Int64), "s").dt.year() == int(year))
    return _keep_repeated(pairs, min_count)


def read_listening_counts(path: str | Path, *, min_count: int = 2) -> pl.DataFrame:
    """`user_id, track_id, count` rows -> (user_id, item_id, count) pairs; duplicate pairs are summed."""
    _check_min_count(min_count)
    path = Path(path)
    f = _read_table(path, [("user_id", _USER), ("item_id", _TRACK),
                           ("count", ("count", "counts", "playcount", "play_count", "weight"))])
    _required(path, f, "user_id", "item_id")
    counts = _numbers(path, f, "count", "a positive listening count")
    _fail(path, f, counts <= 0, "count", "a positive listening count")
    return _keep_repeated(f.select("user_id", "item_id").with_columns(count=counts), min_count)


def read_lfm2b_users(path: str | Path) -> pl.DataFrame:
    """LFM-2b `users.tsv` -> (user_id, gender, age, country); empty or negative age and empty fields are missing."""
    path = Path(path)
    f = _read_table(path, [("user_id", _USER), ("country", ("country",)), ("age", ("age",)), ("gender", ("gender",))])
    _required(path, f, "user_id")
    dup = f["user_id"].is_duplicated()
    _fail(path, f, dup & ~f["user_id"].is_first_distinct(), "user_id", "each user once")
    age = f["age"].cast(pl.Float64, strict=False)
    _fail(path, f, (age.is_null() & (f["age"] != "")) | age.is_nan().fill_null(False), "age", "an age in years or empty")
    present = lambda c: pl.when(pl.col(c) != "").then(pl.col(c)).alias(c)  # noqa: E731
    return f.with_columns(age=age).select("user_id", present("gender").str.to_lowercase(),
                                          pl.when(pl.col("age") >= 0).then(pl.col("age")).alias("age"), present("country"))


def read_tag_file(path: str | Path, column: str = "tags") -> pl.DataFrame:
    """Onion/Music4All tag or genre file -> (item_id, `column`: list of tokens), duplicate ids merged.

    Accepted values: a dict literal `{'rock': 100, ...}` (id_tags_dict), a list literal `['rock', 'pop']`,
    comma-separated names `rock,pop` (Music4All id_genres), or a wide `id, <genre>...` weight matrix
    (id_genres_tf-idf; weight > 0 means tagged, higher weights first). Whitespace inside a tag becomes `_`.
    """
    path = Path(path)
    header, rows = _split(path)
    if header[0].lower() not in _TRACK:
        raise DataError(f"{path}:1: first header field is {header[0]!r}; expected a track id column "
                        f"({', '.join(_TRACK)})")
    f = rows.rename({"field_0": "item_id"})
    _required(path, f, "item_id")
    if len(header) > 2:
        wide = f.rename({f"field_{j}": h for j, h in enumerate(header) if j})
        long = wide.unpivot(index=["item_id", _LINE], variable_name="tag", value_name="weight")
        weight = long["weight"].cast(pl.Float64, strict=False)
        if (bad := weight.is_null() | ~weight.is_finite()).any():
            row = long.filter(bad).row(0, named=True)
            raise DataError(f"{path}:{row[_LINE]}: column {row['tag']!r} has value {row['weight']!r}; "
                            "expected a finite weight")
        long = long.with_columns(weight=weight).filter(pl.col("weight") > 0)
        long = long.with_columns(pl.col("tag").str.replace_all(r"\s+", "_")).sort(
            "item_id", "weight", "tag", descending=[False, True, False])
        tags = long.group_by("item_id", maintain_order=True).agg(pl.col("tag").alias(column))
        ids = f.select("item_id").unique(maintain_order=True)
        return ids.join(tags, on="item_id", how="left").with_columns(pl.col(column).fill_null([]))
    raw = f["field_1"].alias(header[1])
    kind = pl.when(pl.col("v").str.starts_with("{")).then(pl.lit("dict")).when(
        pl.col("v").str.starts_with("[")).then(pl.lit("list")).otherwise(pl.lit("plain"))
    v = f.select(pl.col(_LINE), v=raw).with_columns(kind=kind)
    ok = pl.when(pl.col("kind") == "dict").then(pl.col("v").str.contains(_DICT)).when(
        pl.col("kind") == "list").then(pl.col("v").str.contains(_LIST)).otherwise(True)
    bad = v.select(~ok)["v"]
    _fail(path, f.with_columns(raw), bad, header[1], "a dict like {'rock': 100}, a list like ['rock'] or rock,pop")
    tokens = (pl.when(pl.col("kind") == "dict").then(pl.col("v").str.extract_all(rf"{_Q}\s*:"))
              .when(pl.col("kind") == "list").then(pl.col("v").str.extract_all(_Q))
              .otherwise(pl.col("v").str.split(",")))
    clean = (pl.element().str.replace_all(r"""^\s*['"]|['"]?\s*:?\s*$""", "").str.strip_chars()
             .str.replace_all(r"\s+", "_"))
    tokens = tokens.list.eval(clean).list.eval(pl.element().filter(pl.element() != ""))
    tags = v.select(item_id=f["item_id"], **{column: tokens})
    merged = pl.col(column).list.explode(keep_nulls=False, empty_as_null=False).unique(maintain_order=True)
    return tags.group_by("item_id", maintain_order=True).agg(merged)


def read_dense_features(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Onion `id_<feature>.tsv` (id, then one column per dimension; header optional) -> ids (n,), vectors (n, d)."""
    path = Path(path)
    lines = _lines(path)
    first = lines["text"][0].split("\t")
    try:
        [float(x) for x in first[1:]]
        has_header = first[0].lower() in _TRACK
    except ValueError:
        has_header = True
    rows = lines.slice(1) if has_header else lines
    id_rest = pl.col("text").str.splitn("\t", 2).struct.rename_fields(["id", "vector"]).struct.unnest()
    parts = rows.select(pl.col(_LINE), id_rest)
    values = parts["vector"].fill_null("").str.split("\t").list.eval(
        pl.element().str.strip_chars().cast(pl.Float32, strict=False))
    dim = len(first) - 1
    frame = parts.with_columns(values=values)
    _fail(path, frame, values.list.len() != dim, "vector", f"{dim} tab-separated numbers")
    bad_cell = values.list.eval(pl.element().is_null() | pl.element().is_nan() | pl.element().is_infinite()).list.any()
    _fail(path, frame, bad_cell, "vector", "finite numbers")
    _fail(path, frame, parts["id"].is_duplicated() & ~parts["id"].is_first_distinct(), "id", "each id once")
    vectors = values.explode().to_numpy().astype(np.float32).reshape(rows.height, dim)
    return parts["id"].to_numpy().astype(str), vectors


def read_lfm2b(
    folder: str | Path, *, min_count: int = 2, year: int | None = None,
    interactions: Literal["auto", "events", "counts"] = "auto", features: Sequence[str] | None = None,
) -> MusicTables:
    """Read an LFM-2b or Music4All-Onion folder (files may be .bz2/.gz).

    Interactions from listening events (`listening-events.tsv`, `userid_trackid_timestamp.tsv`; preferred by
    "auto") or counts (`listening-counts.tsv`, `userid_trackid_count.tsv`); demographics from `users.tsv`;
    item `tags`/`genres` from the Onion tag/genre files; dense `features` from `id_<name>.tsv` (None: every
    name in FEATURE_KINDS that is present). `.user`, `.item` and features keep only entities with interactions.
    """
    if interactions not in ("auto", "events", "counts"):
        raise ConfigError(f"interactions is {interactions!r}; expected 'auto', 'events' or 'counts'")
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected an LFM-2b / Music4All-Onion download")
    events, counts = _resolve(folder, EVENT_FILES), _resolve(folder, COUNT_FILES)
    use_events = interactions == "events" or (interactions == "auto" and events is not None)
    source = events if use_events else counts
    if source is None:
        wanted = {"events": EVENT_FILES, "counts": COUNT_FILES}.get(interactions, EVENT_FILES + COUNT_FILES)
        raise DataError(f"{folder}: no listening file; expected one of {', '.join(wanted)} (optionally .bz2)")
    if year is not None and not use_events:
        raise DataError(f"{folder}: a year filter needs timestamps, but only {source.name} (counts) is used; "
                        f"provide {EVENT_FILES[0]} or {EVENT_FILES[2]}")
    inter = (read_listening_events(source, min_count=min_count, year=year) if use_events
             else read_listening_counts(source, min_count=min_count))
    user = None
    if (users_path := _resolve(folder, ("users.tsv",))) is not None:
        user = read_lfm2b_users(users_path).join(inter.select("user_id").unique(), on="user_id", how="semi")
    items = inter.select("item_id").unique(maintain_order=True)
    item = None
    for column, names in TAG_FILES.items():
        if (tag_path := _resolve(folder, names)) is None:
            continue
        tags = read_tag_file(tag_path, column)
        if not tags.join(items, on="item_id", how="semi").height:
            warnings.warn(f"{tag_path}: no id matches a track with interactions; {column} left empty",
                          DataWarning, stacklevel=2)
        tags = tags.with_columns(pl.when(pl.col(column).list.len() > 0).then(pl.col(column)))
        item = items.join(tags, on="item_id", how="left") if item is None else item.join(tags, on="item_id", how="left")
    if item is not None:
        item = item.filter(pl.any_horizontal(pl.exclude("item_id").is_not_null()))
    names = list(features) if features is not None else [n for n in FEATURE_KINDS if _resolve(folder, (f"id_{n}.tsv",))]
    feats = {}
    for n in names:
        if (path := _resolve(folder, (f"id_{n}.tsv",))) is None:
            raise DataError(f"{folder}: no feature file id_{n}.tsv (optionally .bz2) for requested feature {n!r}")
        ids, vectors = read_dense_features(path)
        keep = np.isin(ids, items["item_id"].to_numpy())
        feats[n] = FeatureArrays(ids[keep], vectors[keep], FEATURE_KINDS.get(n, "unknown"), path.name)
    return MusicTables(inter, user, item, feats)


# ---------------------------------------------------------------- Last.fm HetRec 2011
def read_hetrec_lastfm(folder: str | Path, *, min_count: int = 2, max_tags: int | None = None) -> MusicTables:
    """Read hetrec2011-lastfm-2k: artists are items, `weight` (plays) is the count, user tags become item `tags`.

    An artist's tags are ordered by how many users assigned them (then by name); `max_tags` keeps the first ones.
    """
    _check_min_count(min_count)
    folder = Path(folder)
    ua_path = folder / "user_artists.dat"
    if not ua_path.is_file():
        raise DataError(f"{folder}: no user_artists.dat; expected the hetrec2011-lastfm-2k files")
    f = _read_table(ua_path, [("user_id", ("userid",)), ("item_id", ("artistid",)), ("count", ("weight",))])
    _required(ua_path, f, "user_id", "item_id")
    weight = _numbers(ua_path, f, "count", "a non-negative play count")
    _fail(ua_path, f, weight < 0, "count", "a non-negative play count")
    inter = _keep_repeated(f.select("user_id", "item_id").with_columns(count=weight), min_count)
    items = inter.select("item_id").unique(maintain_order=True)
    item = items
    if (art_path := _resolve(folder, ("artists.dat",))) is not None:
        art = _read_table(art_path, [("item_id", ("id",)), ("name", ("name",))])
        item = items.join(art.select("item_id", "name"), on="item_id", how="left")
    tagged_path = _resolve(folder, ("user_taggedartists-timestamps.dat", "user_taggedartists.dat"))
    tags_path = _resolve(folder, ("tags.dat",))
    if tagged_path is not None and tags_path is not None:
        names = _read_table(tags_path, [("tag_id", ("tagid",)), ("tag", ("tagvalue",))])
        tagged = _read_table(tagged_path, [("user_id", ("userid",)), ("item_id", ("artistid",)),
                                           ("tag_id", ("tagid",))])
        joined = tagged.join(names.select("tag_id", "tag"), on="tag_id", how="left")
        _fail(tagged_path, joined, joined["tag"].is_null(), "tag_id", f"a tagID listed in {tags_path.name}")
        counts = (joined.with_columns(pl.col("tag").str.strip_chars().str.replace_all(r"\s+", "_"))
                  .group_by("item_id", "tag").agg(n=pl.col("user_id").n_unique())
                  .sort("item_id", "n", "tag", descending=[False, True, False]))
        agg = pl.col("tag") if max_tags is None else pl.col("tag").head(max_tags)
        tags = counts.group_by("item_id", maintain_order=True).agg(agg.alias("tags"))
        item = item.join(tags, on="item_id", how="left")
    return MusicTables(inter, None, item if item.width > 1 else None)


# ---------------------------------------------------------------- registered local sources
def _env_folder(var: str, what: str) -> Path:
    value = os.environ.get(var)
    if not value or not Path(value).expanduser().is_dir():
        raise FetchError(f"{what} cannot be downloaded here; set ${var} to a folder holding its files "
                         f"(now {value!r})")
    return Path(value).expanduser()


@register_source("onion18", "Music4All-Onion / LFM-2b listening events of 2018 (>= 2 listens), read from $SIBRAR_ONION_DIR")
def _build_onion18(folder: Path, name: str) -> None:
    raw = _env_folder("SIBRAR_ONION_DIR", "Music4All-Onion (Zenodo, access token)")
    tables = read_lfm2b(raw, min_count=2, year=2018, interactions="events")
    tables.write(folder, name)
    _write_meta(folder, name, tables, {"synthetic": False, "source": "onion18", "raw_folder": str(raw),
                                       "min_count": 2, "year": 2018})


@register_source("hetrec-lastfm", "Last.fm HetRec 2011 (artists, play counts, user tags), read from $SIBRAR_HETREC_LASTFM_DIR")
def _build_hetrec(folder: Path, name: str) -> None:
    raw = _env_folder("SIBRAR_HETREC_LASTFM_DIR", "Last.fm HetRec 2011 (grouplens.org)")
    tables = read_hetrec_lastfm(raw)
    tables.write(folder, name)
    _write_meta(folder, name, tables, {"synthetic": False, "source": "hetrec-lastfm", "raw_folder": str(raw),
                                       "min_count": 2})


def _write_meta(folder: Path, name: str, tables: MusicTables, meta: dict[str, Any]) -> Path:
    counts = {"interactions": tables.inter.height, "users": tables.inter["user_id"].n_unique(),
              "items": tables.inter["item_id"].n_unique()}
    path = Path(folder) / f"{name}.meta.json"
    write_json_atomic(path, {**meta, "counts": counts})
    return path
