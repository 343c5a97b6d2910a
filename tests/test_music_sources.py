"""Music readers on hand-written fixtures (oracle: a plain csv loop) and the synthetic Onion generator."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from sibrar.data.atomic import read_atomic
from sibrar.data.features import list_feature_manifests, read_features
from sibrar.data.sources import SOURCES
from sibrar.data.sources.music import read_dense_features, read_hetrec_lastfm, read_lfm2b, read_tag_file
from sibrar.data.sources.synthetic import SyntheticOnionConfig, generate_synthetic_onion, simulate_onion
from sibrar.errors import ConfigError, DataError, DataWarning, FetchError

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "music-fixtures"
SMALL = {"n_users": 60, "n_items": 120, "density": 0.05}


def _oracle_events(path: Path, min_count: int, year: int | None = None) -> dict[tuple[str, str], int]:
    """Slow reference: count (user, track) events with the csv module."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    counts = Counter((r["user_id"], r["track_id"]) for r in rows if year is None or r["timestamp"].startswith(str(year)))
    return {k: v for k, v in counts.items() if v >= min_count}


def _pairs(frame: pl.DataFrame) -> dict[tuple[str, str], int]:
    return {(u, i): int(c) for u, i, c in frame.select("user_id", "item_id", "count").iter_rows()}


def _copy(tmp_path: Path, folder: str) -> Path:
    return Path(shutil.copytree(FIXTURES / folder, tmp_path / folder))


def _replace_line(path: Path, line: int, text: str) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- LFM-2b / Onion
@pytest.mark.parametrize(("min_count", "year", "expected"), [(2, None, 11), (1, None, 14), (2, 2018, 9)])
def test_lfm2b_events_match_oracle(min_count: int, year: int | None, expected: int) -> None:
    tables = read_lfm2b(FIXTURES / "lfm2b", min_count=min_count, year=year)
    oracle = _oracle_events(FIXTURES / "lfm2b" / "listening-events.tsv", min_count, year)
    assert len(oracle) == expected
    assert _pairs(tables.inter) == oracle


def test_lfm2b_pairs_are_unique_and_keep_earliest_timestamp() -> None:
    inter = read_lfm2b(FIXTURES / "lfm2b").inter
    assert inter.select("user_id", "item_id").is_duplicated().sum() == 0
    first = inter.filter((pl.col("user_id") == "1") & (pl.col("item_id") == "10"))["timestamp"][0]
    assert first == 1515146400.0  # 2018-01-05 10:00:00 UTC
    assert inter["timestamp"].is_sorted()


def test_lfm2b_counts_file_gives_same_pairs_without_timestamps() -> None:
    events = read_lfm2b(FIXTURES / "lfm2b", interactions="events").inter
    counts = read_lfm2b(FIXTURES / "lfm2b", interactions="counts").inter
    assert counts.columns == ["user_id", "item_id", "count"]
    assert _pairs(counts) == _pairs(events)


def test_year_filter_on_counts_is_an_error() -> None:
    with pytest.raises(DataError, match="year filter needs timestamps"):
        read_lfm2b(FIXTURES / "lfm2b", interactions="counts", year=2018)


def test_lfm2b_users_and_tags_restricted_to_interacting_entities() -> None:
    tables = read_lfm2b(FIXTURES / "lfm2b")
    users = {r["user_id"]: r for r in tables.user.iter_rows(named=True)}
    assert set(users) == {"1", "2", "3", "4", "5"}  # 6 has no users.tsv row, 7 has no interactions
    assert users["3"]["age"] is None and users["3"]["country"] is None  # age -1 and empty country are missing
    assert users["5"]["age"] is None and users["2"] == {"user_id": "2", "gender": "f", "age": 31.0, "country": "DE"}
    tags = dict(tables.item.select("item_id", "tags").iter_rows())
    assert tags["10"] == ["rock", "alternative_rock", "indie"]
    assert tags["11"] == ["pop", "rock'n'roll"]
    assert "12" not in tags and "99" not in tags  # empty dict; no interactions


def test_onion_folder_written_as_typed_atomic_files(tmp_path: Path) -> None:
    tables = read_lfm2b(FIXTURES / "onion")
    assert tables.inter.height == 6 and set(tables.features) == {"musicnn", "resnet"}
    tables.write(tmp_path, "onion-fixture")
    inter = read_atomic(tmp_path / "onion-fixture.inter")
    assert dict(inter.types) == {"user_id": "token", "item_id": "token", "count": "float", "timestamp": "float"}
    assert dict(read_atomic(tmp_path / "onion-fixture.user").types) == {
        "user_id": "token", "gender": "token", "age": "float", "country": "token"}
    item = read_atomic(tmp_path / "onion-fixture.item")
    assert dict(item.types) == {"item_id": "token", "tags": "token_seq", "genres": "token_seq"}
    genres = dict(zip(item.frame["item_id"], item.frame["genres"].to_list(), strict=True))
    assert genres["0Ab3cD4eF5gH6iJ7"] == ["rock", "alternative_rock", "indie_rock"]
    feats = {read_features(p).modality: read_features(p) for p in list_feature_manifests(tmp_path)}
    assert feats["musicnn"].vectors.shape == (5, 4) and feats["musicnn"].manifest["kind"] == "audio"
    assert sorted(feats["resnet"].ids) == ["0Ab3cD4eF5gH6iJ7", "2Cd5eF6gH7iJ8kL9", "4Ef7gH8iJ9kL0mN1"]
    np.testing.assert_allclose(feats["resnet"].vectors[0], [0.5, 1.5, 2.5])


def test_compressed_files_are_read(tmp_path: Path) -> None:
    import bz2

    folder = _copy(tmp_path, "lfm2b")
    src = folder / "listening-events.tsv"
    (folder / "listening-events.tsv.bz2").write_bytes(bz2.compress(src.read_bytes()))
    src.unlink()
    assert _pairs(read_lfm2b(folder).inter) == _oracle_events(FIXTURES / "lfm2b" / "listening-events.tsv", 2)


def test_bad_timestamp_names_file_line_and_value(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "lfm2b")
    _replace_line(folder / "listening-events.tsv", 7, "1\t12\t101\t2018-13-45 99:00:00")
    with pytest.raises(DataError, match=r"listening-events\.tsv:7: column 'timestamp' has value '2018-13-45 99:00:00'"):
        read_lfm2b(folder)


def test_ragged_row_names_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "onion")
    _replace_line(folder / "userid_trackid_count.tsv", 4, "1\t2Cd5eF6gH7iJ8kL9")
    with pytest.raises(DataError, match=r"userid_trackid_count\.tsv:4: row has 2 fields, the header has 3"):
        read_lfm2b(folder, interactions="counts")


def test_bad_count_and_age_name_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "lfm2b")
    _replace_line(folder / "listening-counts.tsv", 3, "1\t11\ttwo")
    with pytest.raises(DataError, match=r"listening-counts\.tsv:3: column 'count' has value 'two'"):
        read_lfm2b(folder, interactions="counts")
    _replace_line(folder / "users.tsv", 4, "3\t\told\tn\t2010-06-01 12:00:00")
    with pytest.raises(DataError, match=r"users\.tsv:4: column 'age' has value 'old'"):
        read_lfm2b(folder)


def test_malformed_tag_dict_names_line(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "lfm2b")
    _replace_line(folder / "id_tags_dict.tsv", 3, "11\t{'pop': 100, 'rock'")
    with pytest.raises(DataError, match=r"id_tags_dict\.tsv:3: .*\"\{'pop': 100, 'rock'\""):
        read_lfm2b(folder)


def test_missing_header_column_is_named(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "lfm2b")
    _replace_line(folder / "listening-events.tsv", 1, "user_id\ttrack_id\talbum_id\twhen")
    with pytest.raises(DataError, match=r"listening-events\.tsv:1: .*lacks column 'timestamp'"):
        read_lfm2b(folder)


def test_tag_file_layouts(tmp_path: Path) -> None:
    lists = tmp_path / "id_genres_mmsr.tsv"
    lists.write_text("id\tgenre\na\t['rock', 'pop rock']\nb\t[]\na\t['indie']\n", encoding="utf-8")
    assert read_tag_file(lists, "genres").to_dicts() == [
        {"item_id": "a", "genres": ["rock", "pop_rock", "indie"]}, {"item_id": "b", "genres": []}]
    wide = tmp_path / "id_genres_tf-idf.tsv"
    wide.write_text("id\trock\tpop\tjazz\na\t0.2\t0.0\t0.7\nb\t0\t0\t0\n", encoding="utf-8")
    assert read_tag_file(wide, "genres").to_dicts() == [
        {"item_id": "a", "genres": ["jazz", "rock"]}, {"item_id": "b", "genres": []}]
    wide.write_text("id\trock\tpop\na\t0.2\tx\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"id_genres_tf-idf\.tsv:2: .*'x'"):
        read_tag_file(wide)


def test_dense_feature_errors_name_line(tmp_path: Path) -> None:
    path = tmp_path / "id_musicnn.tsv"
    path.write_text("id\t0\t1\na\t1\t2\nb\t3\tnan\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"id_musicnn\.tsv:3: .*finite numbers"):
        read_dense_features(path)
    path.write_text("a\t1\t2\nb\t3\t4\n", encoding="utf-8")  # headerless
    ids, vectors = read_dense_features(path)
    assert ids.tolist() == ["a", "b"] and vectors.shape == (2, 2)


def test_unmatched_tag_ids_warn(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "onion")
    (folder / "id_genres.csv").write_text("id\tgenres\nzzz\trock\n", encoding="utf-8")
    with pytest.warns(DataWarning, match="no id matches"):
        read_lfm2b(folder)


def test_bad_min_count_is_config_error() -> None:
    with pytest.raises(ConfigError, match="min_count"):
        read_lfm2b(FIXTURES / "lfm2b", min_count=0)


# ---------------------------------------------------------------- HetRec
def test_hetrec_counts_tags_and_latin1() -> None:
    tables = read_hetrec_lastfm(FIXTURES / "hetrec-lastfm")
    assert _pairs(tables.inter) == {("2", "51"): 13883, ("2", "52"): 11690, ("3", "51"): 228, ("3", "54"): 2,
                                    ("4", "55"): 512, ("5", "51"): 4, ("5", "53"): 7}
    items = {r["item_id"]: r for r in tables.item.iter_rows(named=True)}
    assert set(items) == {"51", "52", "53", "54", "55"}  # 56 never listened
    assert items["51"]["tags"] == ["new_wave", "electronic"]  # 2 users, then 1
    assert items["53"]["tags"] == ["electronic", "música_latina"]  # tie -> by name; Latin-1 decoded
    assert items["54"]["tags"] is None and items["52"]["name"] == "Morcheeba"
    assert read_hetrec_lastfm(FIXTURES / "hetrec-lastfm", min_count=1).inter.height == 9


def test_hetrec_day_month_year_layout_and_unknown_tag(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "hetrec-lastfm")
    (folder / "user_taggedartists-timestamps.dat").unlink()
    assert read_hetrec_lastfm(folder).item.equals(read_hetrec_lastfm(FIXTURES / "hetrec-lastfm").item)
    _replace_line(folder / "user_taggedartists.dat", 5, "2\t52\t77\t1\t4\t2009")
    with pytest.raises(DataError, match=r"user_taggedartists\.dat:5: column 'tag_id' has value '77'"):
        read_hetrec_lastfm(folder)


def test_local_sources_without_folder_raise_fetch_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIBRAR_ONION_DIR", raising=False)
    with pytest.raises(FetchError, match="SIBRAR_ONION_DIR"):
        SOURCES.get("onion18").build(tmp_path, "onion18")
    monkeypatch.setenv("SIBRAR_HETREC_LASTFM_DIR", str(FIXTURES / "hetrec-lastfm"))
    SOURCES.get("hetrec-lastfm").build(tmp_path, "hl")
    assert read_atomic(tmp_path / "hl.inter").frame.height == 7
    assert json.loads((tmp_path / "hl.meta.json").read_text())["synthetic"] is False


# ---------------------------------------------------------------- synthetic Onion
def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_synthetic_is_byte_identical_for_same_seed(tmp_path: Path) -> None:
    a = _files(generate_synthetic_onion(tmp_path / "a", "synthetic-onion", seed=7, **SMALL))
    b = _files(generate_synthetic_onion(tmp_path / "b", "synthetic-onion", seed=7, **SMALL))
    c = _files(generate_synthetic_onion(tmp_path / "c", "synthetic-onion", seed=8, **SMALL))
    assert a == b
    assert a["synthetic-onion.inter"] != c["synthetic-onion.inter"]
    assert {"synthetic-onion.inter", "synthetic-onion.user", "synthetic-onion.item", "synthetic-onion.meta.json",
            "features/item_audio.parquet", "features/item_text.parquet", "features/item_image.parquet"} <= set(a)


def test_synthetic_is_labelled_and_registered(tmp_path: Path) -> None:
    folder = generate_synthetic_onion(tmp_path, "synthetic-onion", seed=1, **SMALL)
    meta = json.loads((folder / "synthetic-onion.meta.json").read_text())
    assert meta["synthetic"] is True and meta["seed"] == 1 and meta["params"]["n_users"] == 60
    assert all(read_features(p).manifest["synthetic"] is True for p in list_feature_manifests(folder))
    source = SOURCES.get("synthetic-onion")
    assert source.synthetic and "synthetic" in source.name


def test_synthetic_keeps_repeated_pairs_at_target_density() -> None:
    cfg = SyntheticOnionConfig(seed=3, **SMALL)
    inter = simulate_onion(cfg).inter
    assert inter["count"].min() >= 2
    assert inter.select("user_id", "item_id").is_duplicated().sum() == 0
    assert inter.height == pytest.approx(cfg.density * cfg.n_users * cfg.n_items, rel=0.15)
    ts = pl.from_epoch(inter["timestamp"].cast(pl.Int64), "s")
    assert (ts.dt.year() == 2018).all()


def test_synthetic_popularity_has_a_long_tail() -> None:
    inter = simulate_onion(SyntheticOnionConfig(n_users=500, n_items=1000, density=0.02, seed=0)).inter
    per_item = np.sort(inter.group_by("item_id").len()["len"].to_numpy())[::-1]
    assert per_item[:100].sum() / per_item.sum() > 0.40


def test_synthetic_missing_modality_fraction_is_exact() -> None:
    tables = simulate_onion(SyntheticOnionConfig(seed=2, audio_missing=0.0, text_missing=0.25, image_missing=0.5, **SMALL))
    assert {m: len(f.ids) for m, f in tables.features.items()} == {"audio": 120, "text": 90, "image": 60}
    assert {m: f.vectors.shape[1] for m, f in tables.features.items()} == {"audio": 64, "text": 48, "image": 32}


def test_synthetic_audio_vectors_carry_taste_signal() -> None:
    tables = simulate_onion(SyntheticOnionConfig(n_users=300, n_items=500, density=0.03, seed=0))
    feat = tables.features["audio"]
    x = feat.vectors / np.linalg.norm(feat.vectors, axis=1, keepdims=True)
    row = {k: j for j, k in enumerate(feat.ids)}
    inter = tables.inter.filter(pl.col("item_id").is_in(list(row)))
    users = np.unique(inter["user_id"].to_numpy(), return_inverse=True)[1]
    items = np.array([row[k] for k in inter["item_id"]])

    def mean_pair_cosine(groups: np.ndarray, idx: np.ndarray) -> float:
        sums = np.zeros((groups.max() + 1, x.shape[1]))
        np.add.at(sums, groups, x[idx])
        n = np.bincount(groups)
        ok = n >= 2
        return float(np.mean(((sums[ok] ** 2).sum(1) - n[ok]) / (n[ok] * (n[ok] - 1))))

    random_items = np.random.default_rng(0).integers(0, len(x), len(items))
    assert mean_pair_cosine(users, items) > mean_pair_cosine(users, random_items) + 0.05


def test_synthetic_demographics_and_genres() -> None:
    tables = simulate_onion(SyntheticOnionConfig(seed=4, **SMALL))
    assert set(tables.user["gender"]) <= {"m", "f"} and tables.user["country"].n_unique() <= 10
    assert tables.user["age"].min() >= 14 and tables.user["age"].max() <= 70
    assert tables.item["genres"].list.len().min() >= 1


def test_synthetic_rejects_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown parameter.*n_user"):
        generate_synthetic_onion(tmp_path, "s", n_user=5)
    with pytest.raises(ConfigError, match="text_missing"):
        SyntheticOnionConfig(text_missing=1.0)
