"""Dataset loading: preprocessing (threshold, dedup, k-core), id maps, side modalities with availability masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sibrar.config import DataConfig, ModalitySpec, from_dict
from sibrar.data import modalities as M
from sibrar.data.atomic import read_atomic
from sibrar.data.dataset import IdMap, load_dataset
from sibrar.data.features import write_features
from sibrar.data.preprocess import deduplicate, implicit, k_core, preprocess
from sibrar.errors import ConfigError, DataError

KG_RELATIONS = ("kg_actor", "kg_directed_by", "kg_written_by", "kg_genre", "kg_language", "kg_country")


@pytest.fixture(scope="module")
def ml100k_raw(ml100k_dir: Path):
    """ML-100K without any preprocessing (k_core=0)."""
    return load_dataset(DataConfig(dataset=str(ml100k_dir), k_core=0))


def _load(folder: Path, **kwargs):
    return load_dataset(DataConfig(dataset=str(folder), **kwargs))


def _one_line_error(exc_type, func, *args, **kwargs) -> str:
    with pytest.raises(exc_type) as info:
        func(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def _pairs(frame: pl.DataFrame, a: str = "user_id", b: str = "item_id") -> set[tuple[str, str]]:
    return set(zip(frame[a].to_list(), frame[b].to_list(), strict=True))


# ------------------------------------------------------------------------------------ ML-100K


def test_ml100k_raw_counts(ml100k_raw):
    assert (ml100k_raw.n_users, ml100k_raw.n_items, ml100k_raw.interactions.height) == (943, 1682, 100_000)
    assert not ml100k_raw.synthetic
    assert ml100k_raw.meta["preprocessing"]["raw"] == {"interactions": 100_000, "users": 943, "items": 1682}


def test_ml100k_has_demographics_genres_and_knowledge_graph_modalities(ml100k_raw):
    assert {"age": "numeric", "gender": "categorical", "occupation": "categorical"}.items() <= \
        {n: m.kind for n, m in ml100k_raw.user_side.modalities.items()}.items()
    item_kinds = {n: m.kind for n, m in ml100k_raw.item_side.modalities.items()}
    assert item_kinds["genres"] == "tags" and item_kinds["release_year"] == "numeric"
    assert all(item_kinds[r] == "tags" for r in KG_RELATIONS)


def _expected_tags(tag_lists: list[list[str] | None], min_count: int) -> list[set[str]]:
    """Oracle: each entity's tag set, keeping only tags that at least `min_count` entities carry."""
    sets = [set(t or []) - {""} for t in tag_lists]
    carriers: dict[str, int] = {}
    for tags in sets:
        for tag in tags:
            carriers[tag] = carriers.get(tag, 0) + 1
    return [{t for t in tags if carriers[t] >= min_count} for tags in sets]


def _decoded(modality: M.Modality) -> list[set[str]]:
    return [{modality.vocab[c] for c in row if c} for row in modality.values.tolist()]


def test_ml100k_kg_tags_and_availability_match_the_file(ml100k_raw, ml100k_dir):
    """Movies without a linked Freebase entity (or with only rare tags) have kg modalities unavailable."""
    item = read_atomic(ml100k_dir / "ml-100k.item").frame
    rows = {r["item_id"]: r for r in item.iter_rows(named=True)}
    min_count = ModalitySpec().min_tag_count
    for column in ("kg_actor", "kg_directed_by", "genres"):
        modality = ml100k_raw.item_side[column]
        expected = _expected_tags([rows[i][column] for i in ml100k_raw.items.ids.tolist()], min_count)
        assert _decoded(modality) == expected, column
        assert modality.available.tolist() == [bool(t) for t in expected], column
        assert (modality.values[~modality.available] == 0).all()
    assert 0.5 < ml100k_raw.item_side["kg_actor"].coverage < 1.0
    unlinked = [i for i, r in rows.items() if r["kg_actor"] is None]
    assert unlinked and not ml100k_raw.item_side["kg_actor"].available[ml100k_raw.items.idx(unlinked)].any()


def test_ml100k_numeric_release_year_missing_is_unavailable_and_scaled_on_given_rows(ml100k_raw, ml100k_dir):
    item = read_atomic(ml100k_dir / "ml-100k.item").frame
    years = dict(zip(item["item_id"].to_list(), item["release_year"].to_list(), strict=True))
    year = ml100k_raw.item_side["release_year"]
    raw = [years[i] for i in ml100k_raw.items.ids.tolist()]
    assert year.available.tolist() == [y is not None for y in raw] and not all(year.available.tolist())
    rows = np.arange(0, ml100k_raw.n_items, 2)
    scaled = M.fit_scale(year, rows)
    fitted = [raw[r] for r in rows if raw[r] is not None]
    assert scaled.scale == (min(fitted), max(fitted))


def test_ml100k_with_a_feature_file_gets_a_vector_modality_keyed_by_id(ml100k_dir, tmp_path, rng):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        (folder / name).write_bytes((ml100k_dir / name).read_bytes())
    ids = [str(i) for i in range(1, 1683, 3)] + ["not-a-movie"]  # every third movie, plus an unknown id
    vectors = rng.normal(size=(len(ids), 16)).astype(np.float32)
    write_features(folder / "features", "item", "text", ids, vectors, encoder="synthetic-random")
    ds = _load(folder, k_core=0, user_modalities={}, item_modalities={"text": ModalitySpec()})
    text = ds.item_side["text"]
    have = set(ids)
    assert text.available.tolist() == [i in have for i in ds.items.ids.tolist()]
    toy = int(ds.items.idx(["1"])[0])
    np.testing.assert_array_equal(text.values[toy].numpy(), vectors[0])
    assert (text.values[~text.available] == 0).all()


def test_ml100k_rating_threshold_and_k_core(ml100k_dir):
    ds = _load(ml100k_dir, rating_threshold=4, k_core=10)
    inter = ds.interactions
    assert inter["rating"].min() >= 4
    assert inter.group_by("user_idx").len()["len"].min() >= 10
    assert inter.group_by("item_idx").len()["len"].min() >= 10
    raw = read_atomic(ml100k_dir / "ml-100k.inter").frame
    pre = ds.meta["preprocessing"]
    assert pre["rating_threshold"] == 4 and pre["k_core"] == 10
    assert pre["after_threshold"]["interactions"] == raw.filter(pl.col("rating") >= 4).height
    assert pre["after_k_core"] == {"interactions": inter.height, "users": ds.n_users, "items": ds.n_items}


def test_ml100k_interactions_are_indexed_consistently(ml100k_raw, ml100k_dir):
    raw = read_atomic(ml100k_dir / "ml-100k.inter").frame
    inter = ml100k_raw.interactions
    assert inter.columns == ["user_idx", "item_idx", "rating", "timestamp"]
    back = pl.DataFrame({"user_id": ml100k_raw.users.id_of(inter["user_idx"].to_numpy()),
                         "item_id": ml100k_raw.items.id_of(inter["item_idx"].to_numpy()),
                         "rating": inter["rating"], "timestamp": inter["timestamp"]})
    assert back.sort(back.columns).equals(raw.sort(raw.columns))
    assert inter["timestamp"].is_sorted()
    assert sorted(ml100k_raw.users.ids.tolist()) == sorted(raw["user_id"].unique().to_list())


def test_content_hash_is_stable_and_tracks_preprocessing(synthetic_dir):
    base = _load(synthetic_dir, k_core=0)
    assert _load(synthetic_dir, k_core=0).content_hash() == base.content_hash()
    assert _load(synthetic_dir, k_core=0, rating_threshold=3).content_hash() != base.content_hash()


# ----------------------------------------------------------------------------- preprocessing


def _frame(rows: list[tuple[str, str, float, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema={"user_id": pl.Utf8, "item_id": pl.Utf8, "rating": pl.Float64,
                                      "timestamp": pl.Float64}, orient="row")


def test_threshold_keeps_ratings_at_or_above():
    frame = _frame([("u", "a", 2.0, 1.0), ("u", "b", 3.0, 2.0), ("u", "c", 4.5, 3.0)])
    assert implicit(frame, 3.0)["item_id"].to_list() == ["b", "c"]
    assert implicit(frame, None).equals(frame)


def test_threshold_without_rating_column_is_a_data_error():
    with pytest.raises(DataError, match="no 'rating' column"):
        implicit(pl.DataFrame({"user_id": ["u"], "item_id": ["i"]}), 3.0)


def test_dedup_keeps_the_earliest_timestamp():
    frame = _frame([("u", "a", 5.0, 30.0), ("u", "a", 1.0, 10.0), ("u", "b", 2.0, 5.0), ("v", "a", 3.0, None),
                    ("u", "a", 4.0, 20.0), ("v", "a", 4.0, 7.0)])
    out = deduplicate(frame).sort("user_id", "item_id")
    assert out.rows() == [("u", "a", 1.0, 10.0), ("u", "b", 2.0, 5.0), ("v", "a", 4.0, 7.0)]


def test_dedup_on_generated_data_matches_a_slow_reference(synthetic_dir):
    raw = read_atomic(synthetic_dir / "synthetic-small.inter").frame
    assert raw.select("user_id", "item_id").is_duplicated().any(), "the fixture holds repeated pairs"
    earliest: dict[tuple[str, str], tuple[float, float]] = {}
    for u, i, r, t in raw.rows():
        if (u, i) not in earliest or t < earliest[(u, i)][1]:
            earliest[(u, i)] = (r, t)
    out = deduplicate(raw)
    assert out.height == len(earliest)
    assert {(u, i): (r, t) for u, i, r, t in out.rows()} == earliest


def test_dedup_gives_the_same_rows_for_string_and_categorical_ids(synthetic_dir):
    raw = read_atomic(synthetic_dir / "synthetic-small.inter").frame
    categorical = raw.with_columns(pl.col("user_id", "item_id").cast(pl.Categorical))
    for frame in (raw, raw.unique(subset=["user_id", "item_id"], keep="first")):  # with and without repeats
        as_str = deduplicate(frame)
        as_cat = deduplicate(frame.with_columns(pl.col("user_id", "item_id").cast(pl.Categorical)))
        back = as_cat.with_columns(pl.col("user_id", "item_id").cast(pl.Utf8))
        assert back.sort(back.columns).equals(as_str.sort(as_str.columns))
    assert deduplicate(categorical).height < categorical.height


def _slow_k_core(pairs: set[tuple[int, int]], k: int) -> set[tuple[int, int]]:
    """Reference: remove any user or item with fewer than k pairs until none is left to remove."""
    pairs = set(pairs)
    while True:
        users: dict[int, int] = {}
        items: dict[int, int] = {}
        for u, i in pairs:
            users[u] = users.get(u, 0) + 1
            items[i] = items.get(i, 0) + 1
        keep = {(u, i) for u, i in pairs if users[u] >= k and items[i] >= k}
        if keep == pairs:
            return pairs
        pairs = keep


@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(pairs=st.sets(st.tuples(st.integers(0, 12), st.integers(0, 9)), max_size=90), k=st.integers(1, 5))
def test_k_core_property_min_degree_fixed_point_and_oracle(pairs, k):
    frame = pl.DataFrame(sorted(pairs), schema={"user_id": pl.Int64, "item_id": pl.Int64}, orient="row")
    core = k_core(frame, k)
    if core.height:
        assert core.group_by("user_id").len()["len"].min() >= k
        assert core.group_by("item_id").len()["len"].min() >= k
    assert k_core(core, k).equals(core), "k-core is a fixed point"
    assert _pairs(core) == _slow_k_core(pairs, k), "k-core is the maximal one"


def test_k_core_on_generated_dataset_is_a_fixed_point(synthetic_dir):
    ds = _load(synthetic_dir, k_core=8)
    pre = ds.meta["preprocessing"]
    assert pre["k_core"] == 8 and pre["after_k_core"]["interactions"] == ds.interactions.height
    assert ds.interactions.group_by("user_idx").len()["len"].min() >= 8
    assert ds.interactions.group_by("item_idx").len()["len"].min() >= 8
    frame = pl.DataFrame({"user_id": ds.interactions["user_idx"], "item_id": ds.interactions["item_idx"]})
    assert k_core(frame, 8).height == frame.height


def test_preprocess_records_settings_and_counts():
    frame = _frame([("u", "a", 4.0, 1.0), ("u", "a", 5.0, 2.0), ("u", "b", 1.0, 3.0)])
    out, stats = preprocess(frame, rating_threshold=3.0, k=1)
    assert out.rows() == [("u", "a", 4.0, 1.0)]
    assert stats == {
        "rating_threshold": 3.0, "min_count": None, "k_core": 1,
        "raw": {"interactions": 3, "users": 1, "items": 2},
        "after_threshold": {"interactions": 2, "users": 1, "items": 1},
        "after_dedup": {"interactions": 1, "users": 1, "items": 1},
        "after_k_core": {"interactions": 1, "users": 1, "items": 1},
    }


def test_generated_dataset_records_preprocessing_in_meta(synthetic_dir):
    ds = _load(synthetic_dir, rating_threshold=3, k_core=2)
    pre = ds.meta["preprocessing"]
    assert (pre["rating_threshold"], pre["k_core"], pre["min_count"]) == (3, 2, None)
    assert ds.interactions["rating"].min() >= 3
    assert pre["after_dedup"]["interactions"] <= pre["after_threshold"]["interactions"] <= pre["raw"]["interactions"]
    assert ds.synthetic and ds.meta["folder"] == str(synthetic_dir)


def test_empty_result_after_k_core_is_a_data_error(synthetic_dir):
    message = _one_line_error(DataError, _load, synthetic_dir, k_core=1000)
    assert "synthetic-small.inter" in message and "k_core=1000" in message and "no interactions left" in message


# --------------------------------------------------------------------------------- modalities


@pytest.fixture
def synthetic(synthetic_dir):
    return _load(synthetic_dir, k_core=0)


def _item_rows(ds, synthetic_dir: Path) -> dict[str, tuple]:
    frame = read_atomic(synthetic_dir / "synthetic-small.item").frame
    return {row[0]: row for row in frame.rows()}


def test_categorical_missing_value_is_unavailable_code_zero(synthetic, synthetic_dir):
    rows = _item_rows(synthetic, synthetic_dir)
    studio = synthetic.item_side["studio"]
    assert studio.kind == "categorical" and studio.vocab[0] == M.MISSING_TOKEN
    for idx, item_id in enumerate(synthetic.items.ids.tolist()):
        value = rows[item_id][3]
        assert bool(studio.available[idx]) == (value is not None)
        assert studio.vocab[int(studio.values[idx])] == (M.MISSING_TOKEN if value is None else value)


def test_tags_decode_to_the_file_sets_and_empty_lists_are_unavailable(synthetic, synthetic_dir):
    rows = _item_rows(synthetic, synthetic_dir)
    genres = synthetic.item_side["genres"]
    assert genres.kind == "tags"
    expected = _expected_tags([rows[i][1] for i in synthetic.items.ids.tolist()], ModalitySpec().min_tag_count)
    assert _decoded(genres) == expected
    assert genres.available.tolist() == [bool(t) for t in expected]
    assert not all(genres.available.tolist()), "the fixture has items without genres"


def test_tags_rarer_than_min_tag_count_are_dropped():
    lists = [["a", "b"], ["a", "c"], ["c"], ["d"], None]
    assert _decoded(M.tags("t", lists, min_count=2)) == [{"a"}, {"a", "c"}, {"c"}, set(), set()]
    assert M.tags("t", lists, min_count=2).available.tolist() == [True, True, True, False, False]
    assert M.tags("t", lists, min_count=3).available.tolist() == [False] * 5  # empty vocabulary is fine


def test_numeric_missing_is_unavailable_and_values_are_raw(synthetic, synthetic_dir):
    rows = _item_rows(synthetic, synthetic_dir)
    year = synthetic.item_side["year"]
    assert year.kind == "numeric" and year.values.shape == (synthetic.n_items, 1)
    for idx, item_id in enumerate(synthetic.items.ids.tolist()):
        value = rows[item_id][2]
        assert bool(year.available[idx]) == (value is not None)
        if value is not None:
            assert float(year.values[idx, 0]) == pytest.approx(value)


def test_float_seq_column_becomes_vector_with_mask(synthetic, synthetic_dir):
    rows = _item_rows(synthetic, synthetic_dir)
    emb = synthetic.item_side["embedding"]
    assert emb.kind == "vector" and emb.dim == 4
    for idx, item_id in enumerate(synthetic.items.ids.tolist()):
        value = rows[item_id][4]
        assert bool(emb.available[idx]) == (value is not None)
        if value is not None:
            assert emb.values[idx].tolist() == pytest.approx(value, abs=1e-6)


def test_feature_file_is_a_vector_modality_keyed_by_id(synthetic, synthetic_dir):
    from sibrar.data.features import read_features

    fs = read_features(synthetic_dir / "features" / "item_text.json")
    text = synthetic.item_side["text"]
    assert text.kind == "vector" and text.dim == 8
    by_id = dict(zip(fs.ids.tolist(), fs.vectors, strict=True))
    for idx, item_id in enumerate(synthetic.items.ids.tolist()):
        assert bool(text.available[idx]) == (item_id in by_id)
        if item_id in by_id:
            np.testing.assert_array_equal(text.values[idx].numpy(), by_id[item_id])
    assert text.coverage == pytest.approx(len(by_id) / synthetic.n_items)


def test_real_zero_values_stay_available(tmp_path):
    """Availability comes from presence in the file, never from the value: 0 and all-zero vectors are real data."""
    folder = tmp_path / "zeros"
    folder.mkdir()
    (folder / "zeros.inter").write_text("user_id:token\titem_id:token\nu1\ta\nu1\tb\nu2\ta\n")
    (folder / "zeros.item").write_text("item_id:token\tsize:float\temb:float_seq\na\t0\t0 0\nb\t\t\n")
    write_features(folder / "features", "item", "image", ["a"], np.zeros((1, 3)))
    ds = _load(folder, k_core=0)
    a, b = ds.items.idx(["a", "b"])
    for name in ("size", "emb", "image"):
        available = ds.item_side[name].available
        assert bool(available[a]) and not bool(available[b]), name


def test_user_modalities_from_the_user_file(synthetic):
    assert {n: m.kind for n, m in synthetic.user_side.modalities.items()} == {"age": "numeric", "gender": "categorical"}
    assert 0 < synthetic.user_side["age"].coverage < 1
    assert synthetic.user_side.availability().shape == (synthetic.n_users, 2)


def test_explicit_modality_specs_choose_columns_and_kinds(synthetic_dir):
    ds = _load(synthetic_dir, k_core=0, user_modalities={}, item_modalities={
        "genres": ModalitySpec(column="genres"), "studio_tags": ModalitySpec(column="studio", kind="tags"),
        "text": ModalitySpec()})
    assert ds.item_side.names == ["genres", "studio_tags", "text"]
    assert ds.item_side["studio_tags"].kind == "tags"
    assert ds.user_side.names == []


def test_fit_scale_uses_only_the_given_rows():
    raw = M.numeric("year", np.array([10.0, 20.0, np.nan, 30.0, 100.0, 0.0]))
    scaled = M.fit_scale(raw, np.array([0, 1, 2, 3]))
    assert scaled.scale == (10.0, 30.0)
    assert scaled.values[:, 0].tolist() == pytest.approx([0.0, 0.5, 0.0, 1.0, 1.0, 0.0])  # 100 and 0 clipped
    assert torch.equal(scaled.available, raw.available)
    assert M.fit_scale(raw).scale == (0.0, 100.0)


def test_fit_scale_leaves_other_kinds_alone():
    cat = M.categorical("gender", ["F", None, "M"])
    assert M.fit_scale(cat, np.array([0])) is cat


def test_modality_constructors_mark_missing_values():
    cat = M.categorical("c", ["b", None, "", "a"])
    assert cat.available.tolist() == [True, False, False, True] and cat.vocab == (M.MISSING_TOKEN, "a", "b")
    tags = M.tags("t", [["x", "y", "x"], None, [], ["y"]])
    assert tags.available.tolist() == [True, False, False, True]
    assert tags.values.tolist() == [[1, 2], [0, 0], [0, 0], [2, 0]]  # duplicates dropped, 0 pads
    vec = M.vector("v", np.ones((3, 2)), np.array([True, False, True]))
    assert vec.values[1].tolist() == [0.0, 0.0] and vec.available.tolist() == [True, False, True]


def test_entity_features_availability_and_subset(synthetic):
    items = synthetic.item_side
    avail = items.availability(["genres", "text"])
    assert avail.shape == (synthetic.n_items, 2)
    sub = items.subset(np.array([3, 1]))
    assert sub.n == 2 and torch.equal(sub.availability(), items.availability()[[3, 1]])


def test_id_map_round_trip_and_unknown_id():
    ids = IdMap(np.array(["b", "a", "c"]))
    assert ids.idx(["c", "b"]).tolist() == [2, 0]
    assert ids.id_of([1, 2]).tolist() == ["a", "c"]
    assert "a" in ids and "z" not in ids
    message = _one_line_error(DataError, ids.idx, ["a", "zz"], what="item_id")
    assert "unknown item_id 'zz'" in message


# ---------------------------------------------------------------------------------- bad input


def test_duplicate_item_ids_name_file_line_and_id(synthetic_dir):
    path = synthetic_dir / "synthetic-small.item"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([*lines, lines[3]]))  # item of line 4 again at the end
    dup = lines[3].split("\t")[0]
    message = _one_line_error(DataError, _load, synthetic_dir, k_core=0)
    assert f"{path}:{len(lines) + 1}:" in message and f"item_id {dup!r}" in message and "duplicate" in message
    assert "first on line 4" in message


def test_duplicate_user_ids_name_file_and_id(synthetic_dir):
    path = synthetic_dir / "synthetic-small.user"
    with path.open("a") as fh:
        fh.write("u001\t33\tF\n")
    message = _one_line_error(DataError, _load, synthetic_dir, k_core=0)
    assert str(path) in message and "user_id 'u001'" in message


def test_interaction_with_unknown_item_names_line_and_id(synthetic_dir):
    path = synthetic_dir / "synthetic-small.inter"
    n_lines = len(path.read_text().splitlines())
    with path.open("a") as fh:
        fh.write("u000\tghost-item\t5\t12345\n")
    message = _one_line_error(DataError, _load, synthetic_dir, k_core=0)
    assert f"{path}:{n_lines + 1}:" in message and "'ghost-item'" in message and "synthetic-small.item" in message


def test_interaction_with_unknown_user_is_refused(synthetic_dir):
    with (synthetic_dir / "synthetic-small.inter").open("a") as fh:
        fh.write("stranger\ti000\t5\t12345\n")
    assert "'stranger'" in _one_line_error(DataError, _load, synthetic_dir, k_core=0)


def test_ragged_float_seq_column_names_file_column_and_lengths(synthetic_dir):
    path = synthetic_dir / "synthetic-small.item"
    lines = path.read_text().splitlines()
    assert lines[4].startswith("i003\t")
    lines[4] = lines[4] + " 9.5"  # i003 (line 5) gets a fifth embedding value
    path.write_text("\n".join(lines) + "\n")
    message = _one_line_error(DataError, _load, synthetic_dir, k_core=0)
    assert str(path) in message and "'embedding'" in message and "[4, 5]" in message


def test_wrong_interaction_column_type_is_refused(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("user_id:token\titem_id:token\trating:token\nu\ti\tgood\n")
    message = _one_line_error(DataError, _load, folder, k_core=0)
    assert "'rating'" in message and "expected float" in message


def test_missing_item_id_column_is_refused(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "bad.inter").write_text("user_id:token\tmovie:token\nu\ti\n")
    assert "'item_id'" in _one_line_error(DataError, _load, folder, k_core=0)


def test_unknown_dataset_name_says_how_to_fetch(tmp_path):
    message = _one_line_error(DataError, load_dataset, DataConfig(dataset="no-such-set", root=str(tmp_path)))
    assert "'no-such-set'" in message and "sibrar data fetch" in message


def test_modality_spec_with_unknown_column_names_the_config_path(synthetic_dir):
    message = _one_line_error(ConfigError, _load, synthetic_dir, k_core=0,
                              item_modalities={"plot": ModalitySpec(column="plot")})
    assert "data.item_modalities.plot" in message and "'plot'" in message and "genres" in message


def test_modality_without_feature_file_names_what_exists(synthetic_dir):
    message = _one_line_error(ConfigError, _load, synthetic_dir, k_core=0, item_modalities={"image": ModalitySpec()})
    assert "data.item_modalities.image" in message and "text" in message


def test_reserved_modality_names_are_refused(synthetic_dir):
    message = _one_line_error(ConfigError, _load, synthetic_dir, k_core=0,
                              item_modalities={"interactions": ModalitySpec(column="genres")})
    assert "'interactions'" in message and "training split" in message


def test_unknown_data_config_key_suggests_the_closest(synthetic_dir):
    message = _one_line_error(ConfigError, from_dict, DataConfig, {"dataset": "x", "k_cor": 5}, "data")
    assert "'data.k_cor'" in message and "'data.k_core'" in message


def test_wrong_data_config_type_names_field_and_value():
    message = _one_line_error(ConfigError, from_dict, DataConfig, {"k_core": "five"}, "data")
    assert "data.k_core" in message and "'five'" in message


def test_data_config_from_dict_builds_modality_specs():
    cfg = from_dict(DataConfig, {"dataset": "ml-100k", "item_modalities": {"genres": {"column": "genres", "kind": "tags"}}})
    assert cfg.item_modalities == {"genres": ModalitySpec(column="genres", kind="tags")}
