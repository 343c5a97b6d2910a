"""Split protocols: partitions cover the data, cold parts are cold, temporal order holds, files are reproducible."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sibrar.config import DataConfig, SplitConfig, from_dict
from sibrar.data import modalities as M
from sibrar.data.atomic import read_atomic
from sibrar.data.dataset import Dataset, IdMap, load_dataset
from sibrar.data.splits import (
    COLD_PROTOCOLS,
    MIN_USER_INTERACTIONS,
    PARTS,
    PROTOCOLS,
    load_split,
    make_split,
    save_split,
    split_counts,
)
from sibrar.errors import ConfigError, SplitError, UnknownNameError

ALL_PROTOCOLS = ("random", "temporal", "cold_item", "cold_user", "cold_both")
WARM_PROTOCOLS = ("random", "temporal")


@pytest.fixture(scope="module")
def ml100k_5core(ml100k_dir) -> Dataset:
    return load_dataset(DataConfig(dataset=str(ml100k_dir), k_core=5))


@pytest.fixture(scope="module", params=["synthetic", "ml-100k"])
def dataset(request) -> Dataset:
    """Every invariant is checked on generated data and on real ML-100K (5-core)."""
    if request.param == "ml-100k":
        return request.getfixturevalue("ml100k_5core")
    folder = request.getfixturevalue("synthetic_shared_dir")
    return load_dataset(DataConfig(dataset=str(folder), k_core=0))


@pytest.fixture(scope="module")
def splits(dataset) -> dict[str, object]:
    return {p: make_split(dataset, SplitConfig(protocol=p, seed=7)) for p in ALL_PROTOCOLS}


COLUMNS = ["user_idx", "item_idx", "rating", "timestamp"]


def _canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Rows in a fixed order with nulls filled, so frames can be compared and joined."""
    return frame.select(COLUMNS).fill_null(-1.0).sort(COLUMNS)


def _ids(frame: pl.DataFrame, col: str) -> set[int]:
    return set(frame[col].unique().to_list())


def check_invariants(split, inter: pl.DataFrame) -> None:
    """What every split guarantees, whatever the data."""
    parts = {name: split.part(name) for name in PARTS}
    # nothing lost, nothing duplicated: the parts plus the dropped rows are exactly the input
    assert sum(p.height for p in parts.values()) + split.manifest["dropped"] == inter.height
    kept, everything = _canonical(pl.concat(list(parts.values()))), _canonical(inter)
    assert not kept.is_duplicated().any()
    assert kept.join(everything, on=COLUMNS, how="anti").height == 0
    if split.protocol != "cold_both":
        assert split.manifest["dropped"] == 0 and kept.equals(everything)
    train_users, train_items = _ids(parts["train"], "user_idx"), _ids(parts["train"], "item_idx")
    for name in ("valid", "test"):
        part = parts[name]
        if split.protocol in ("cold_item", "cold_both"):
            assert not _ids(part, "item_idx") & train_items, f"{name} holds an item seen in training"
            assert set(split.cold_items(name).tolist()) == _ids(part, "item_idx")
        if split.protocol in ("cold_user", "cold_both"):
            assert not _ids(part, "user_idx") & train_users, f"{name} holds a user seen in training"
            assert set(split.cold_users(name).tolist()) == _ids(part, "user_idx")
    if split.protocol in ("cold_item", "cold_both"):
        assert not _ids(parts["valid"], "item_idx") & _ids(parts["test"], "item_idx")
    if split.protocol in ("cold_user", "cold_both"):
        assert not _ids(parts["valid"], "user_idx") & _ids(parts["test"], "user_idx")
    if split.protocol in WARM_PROTOCOLS:
        sizes = inter.group_by("user_idx").len()
        enough = set(sizes.filter(pl.col("len") >= MIN_USER_INTERACTIONS)["user_idx"].to_list())
        assert enough <= train_users, "a user with >= 3 interactions is missing from train"
        few = set(sizes.filter(pl.col("len") < MIN_USER_INTERACTIONS)["user_idx"].to_list())
        assert not few & (_ids(parts["valid"], "user_idx") | _ids(parts["test"], "user_idx"))
    if split.protocol == "temporal":
        last_train = parts["train"].group_by("user_idx").agg(pl.col("timestamp").fill_null(0).max().alias("last"))
        held = pl.concat([parts["valid"], parts["test"]]).join(last_train, on="user_idx", how="left")
        assert held["last"].null_count() == 0
        assert (held["timestamp"].fill_null(0) >= held["last"]).all(), "a held-out interaction predates training"
        last_valid = parts["valid"].group_by("user_idx").agg(pl.col("timestamp").fill_null(0).max().alias("lv"))
        tested = parts["test"].join(last_valid, on="user_idx", how="inner")
        assert (tested["timestamp"].fill_null(0) >= tested["lv"]).all()


# ----------------------------------------------------------------------- invariants, real + generated


@pytest.mark.parametrize("protocol", ALL_PROTOCOLS)
def test_split_invariants(dataset, splits, protocol):
    check_invariants(splits[protocol], dataset.interactions)


def test_cold_both_drops_cross_part_interactions_and_counts_them(dataset, splits):
    split = splits["cold_both"]
    counts = split.manifest["counts"]
    assert split.manifest["dropped"] > 0
    assert counts["train"] + counts["valid"] + counts["test"] + split.manifest["dropped"] == dataset.interactions.height


@pytest.mark.parametrize("protocol", ["cold_item", "cold_user"])
def test_cold_partition_sizes_follow_the_ratios(dataset, splits, protocol):
    col, n = ("item_idx", dataset.n_items) if protocol == "cold_item" else ("user_idx", dataset.n_users)
    split = splits[protocol]
    n_train, n_valid, n_test = (int(x[0]) for x in split_counts(np.array([n]), split.ratios))
    assert [len(_ids(split.part(p), col)) for p in PARTS] == [n_train, n_valid, n_test]


def test_candidates_follow_the_protocol(dataset, splits):
    everything = np.arange(dataset.n_items)
    for protocol, split in splits.items():
        for part in ("valid", "test"):
            assert np.array_equal(split.candidates(part, "all"), everything)
            got = split.candidates(part)
            if protocol in COLD_PROTOCOLS:
                assert np.array_equal(got, np.sort(split.part(part)["item_idx"].unique().to_numpy()))
            else:
                assert np.array_equal(got, everything)


def test_candidates_refuse_an_unknown_protocol(splits):
    for split in (splits["random"], splits["cold_item"]):
        with pytest.raises(SplitError, match="'every'"):
            split.candidates("test", "every")  # type: ignore[arg-type]


def test_manifest_records_protocol_seed_ratios_settings_and_input_hash(dataset, splits):
    manifest = splits["cold_item"].manifest
    assert manifest["protocol"] == "cold_item" and manifest["seed"] == 7
    assert manifest["ratios"] == [0.8, 0.1, 0.1]
    assert manifest["preprocessing"] == dataset.meta["preprocessing"]
    assert manifest["input_hash"] == dataset.content_hash()
    assert manifest["dataset"] == dataset.name and manifest["synthetic"] == dataset.synthetic
    assert manifest["counts"] == {p: splits["cold_item"].part(p).height for p in PARTS}
    assert len(manifest["split_hash"]) == 64


# ------------------------------------------------------------------------------- persistence


@pytest.mark.parametrize("protocol", ["temporal", "cold_both"])
def test_same_seed_gives_byte_identical_files(dataset, tmp_path, protocol):
    config = SplitConfig(protocol=protocol, seed=11)
    a = save_split(make_split(dataset, config), dataset, tmp_path / "a")
    b = save_split(make_split(dataset, config), dataset, tmp_path / "b")
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    assert names == sorted([f"{dataset.name}.{p}.inter" for p in PARTS] + ["split.json"])
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


@pytest.mark.parametrize("protocol", ["random", "cold_item", "cold_user", "cold_both"])
def test_different_seed_gives_a_different_split(dataset, splits, protocol):
    other = make_split(dataset, SplitConfig(protocol=protocol, seed=8))
    assert other.hash != splits[protocol].hash
    assert not _canonical(other.test).equals(_canonical(splits[protocol].test))


def test_temporal_split_depends_on_the_seed_only_through_ties(synthetic_shared_dir):
    ds = load_dataset(DataConfig(dataset=str(synthetic_shared_dir), k_core=0))
    assert not ds.interactions.select("user_idx", "timestamp").is_duplicated().any(), "fixture has no ties"
    a, b = (make_split(ds, SplitConfig(protocol="temporal", seed=s)) for s in (7, 8))
    assert a.hash == b.hash


def test_save_writes_recbole_benchmark_files_with_original_ids(dataset, splits, tmp_path):
    split = splits["cold_item"]
    folder = save_split(split, dataset, tmp_path / "out")
    for part in PARTS:
        table = read_atomic(folder / f"{dataset.name}.{part}.inter")
        assert dict(table.types) == {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
        assert table.frame["item_id"].to_list() == dataset.items.id_of(split.part(part)["item_idx"].to_numpy()).tolist()
        assert table.frame["user_id"].to_list() == dataset.users.id_of(split.part(part)["user_idx"].to_numpy()).tolist()
    assert json.loads((folder / "split.json").read_text()) == split.manifest


@pytest.mark.parametrize("protocol", ["random", "cold_both"])
def test_save_load_round_trip(dataset, splits, tmp_path, protocol):
    split = splits[protocol]
    loaded = load_split(save_split(split, dataset, tmp_path / protocol), dataset)
    assert (loaded.protocol, loaded.seed, loaded.ratios) == (split.protocol, split.seed, split.ratios)
    assert loaded.manifest == split.manifest and loaded.hash == split.hash
    for part in PARTS:
        assert loaded.part(part).equals(split.part(part)), part


def test_load_refuses_a_split_made_from_different_data(ml100k_dir, ml100k_5core, tmp_path):
    five = ml100k_5core
    folder = save_split(make_split(five, SplitConfig(protocol="random")), five, tmp_path / "s")
    ten = load_dataset(DataConfig(dataset=str(ml100k_dir), k_core=10))
    with pytest.raises(SplitError) as info:
        load_split(folder, ten)
    message = str(info.value)
    assert "\n" not in message and str(folder) in message and "different data" in message
    assert five.content_hash()[:12] in message and ten.content_hash()[:12] in message


def test_load_refuses_a_split_after_the_data_changed_on_disk(synthetic_dir, tmp_path):
    ds = load_dataset(DataConfig(dataset=str(synthetic_dir), k_core=0))
    folder = save_split(make_split(ds, SplitConfig(protocol="cold_item")), ds, tmp_path / "s")
    with (synthetic_dir / "synthetic-small.inter").open("a") as fh:
        fh.write("u000\ti000\t1\t1\n")  # one more row: a new pair, or an earlier time for a known one
    changed = load_dataset(DataConfig(dataset=str(synthetic_dir), k_core=0))
    with pytest.raises(SplitError, match="different data"):
        load_split(folder, changed)
    assert load_split(folder, ds).hash == json.loads((folder / "split.json").read_text())["split_hash"]


def test_load_refuses_a_folder_without_manifest(synthetic_shared_dir, tmp_path):
    ds = load_dataset(DataConfig(dataset=str(synthetic_shared_dir), k_core=0))
    with pytest.raises(SplitError, match="no split.json"):
        load_split(tmp_path, ds)


# --------------------------------------------------------------------------------- bad input


def test_ratios_that_do_not_sum_to_one_are_a_config_error():
    with pytest.raises(ConfigError) as info:
        SplitConfig(ratios=(0.5, 0.2, 0.2))
    assert "split.ratios" in str(info.value) and "[0.5, 0.2, 0.2]" in str(info.value) and "sum" in str(info.value)
    with pytest.raises(ConfigError, match=r"split.ratios.*\[0.7, 0.2, 0.2\]"):
        from_dict(SplitConfig, {"ratios": [0.7, 0.2, 0.2]}, "split")


def test_zero_training_ratio_is_refused():
    with pytest.raises(ConfigError, match="training part"):
        SplitConfig(ratios=(0.0, 0.5, 0.5))


def test_unknown_split_key_and_protocol_are_config_errors():
    with pytest.raises(ConfigError, match=r"'split.seeds'.*'split.seed'"):
        from_dict(SplitConfig, {"seeds": 3}, "split")
    with pytest.raises(ConfigError, match=r"split.protocol.*'cold'.*'cold_item'"):
        from_dict(SplitConfig, {"protocol": "cold"}, "split")


def test_unregistered_protocol_lists_the_registered_ones(dataset):
    with pytest.raises(UnknownNameError) as info:
        make_split(dataset, SplitConfig(protocol="cold_itme"))  # type: ignore[arg-type]
    assert "did you mean 'cold_item'" in str(info.value) and all(p in str(info.value) for p in ALL_PROTOCOLS)


def test_too_small_dataset_gives_a_split_error():
    ds = _in_memory([(0, 0, 1.0), (0, 1, 2.0)], n_users=1, n_items=2)
    with pytest.raises(SplitError, match="left the valid part empty"):
        make_split(ds, SplitConfig(protocol="random"))


def test_unknown_part_name_is_refused(splits):
    with pytest.raises(SplitError, match="'dev'"):
        splits["random"].part("dev")  # type: ignore[arg-type]


# ------------------------------------------------------------------------ properties, generated


def _in_memory(rows: list[tuple[int, int, float]], n_users: int, n_items: int) -> Dataset:
    inter = pl.DataFrame(
        [(u, i, 1.0, t) for u, i, t in rows],
        schema={"user_idx": pl.Int64, "item_idx": pl.Int64, "rating": pl.Float64, "timestamp": pl.Float64}, orient="row")
    users = IdMap(np.array([f"u{u}" for u in range(n_users)]))
    items = IdMap(np.array([f"i{i}" for i in range(n_items)]))
    return Dataset("synthetic-property", None, users, items, inter,
                   M.EntityFeatures("user", n_users), M.EntityFeatures("item", n_items), meta={"synthetic": True})


@st.composite
def _interactions(draw: st.DrawFn) -> tuple[Dataset, SplitConfig]:
    n_users, n_items = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    pairs = draw(st.sets(st.tuples(st.integers(0, n_users - 1), st.integers(0, n_items - 1)), min_size=1, max_size=50))
    stamps = draw(st.lists(st.integers(0, 6), min_size=len(pairs), max_size=len(pairs)))  # many ties
    ratios = draw(st.sampled_from([(0.8, 0.1, 0.1), (0.6, 0.2, 0.2), (0.34, 0.33, 0.33), (0.5, 0.5, 0.0), (1.0, 0.0, 0.0)]))
    config = SplitConfig(protocol=draw(st.sampled_from(ALL_PROTOCOLS)), ratios=ratios, seed=draw(st.integers(0, 2**31)))
    rows = [(u, i, float(t)) for (u, i), t in zip(sorted(pairs), stamps, strict=True)]
    return _in_memory(rows, n_users, n_items), config


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(case=_interactions())
def test_split_invariants_property(case):
    ds, config = case
    try:
        codes = PROTOCOLS.get(config.protocol)(ds.interactions, config.ratios, np.random.default_rng(config.seed))
    except SplitError:  # allowed only when a cold protocol has too few users/items for a training part
        distinct = [ds.interactions[c].n_unique() for c in ("user_idx", "item_idx")]
        n_train = [int(split_counts(np.array([d]), config.ratios)[0][0]) for d in distinct]
        assert config.protocol in COLD_PROTOCOLS and min(n_train) < 1
        return
    assert len(codes) == ds.interactions.height and set(codes.to_list()) <= {-1, 0, 1, 2}
    try:
        split = make_split(ds, config)
    except SplitError:  # allowed only when a part with a positive ratio really is empty
        assert any(config.ratios[c] > 0 and not (codes == c).any() for c in (1, 2))
        return
    check_invariants(split, ds.interactions)
    again = make_split(ds, config)
    assert all(again.part(p).equals(split.part(p)) for p in PARTS), "same seed, same split"


def test_split_counts_round_held_out_parts_up():
    n_train, n_valid, n_test = split_counts(np.array([1, 3, 10, 11]), (0.8, 0.1, 0.1))
    assert n_valid.tolist() == [1, 1, 1, 2] and n_test.tolist() == [1, 1, 1, 2]
    assert (n_train + n_valid + n_test).tolist() == [1, 3, 10, 11]


def test_default_split_dir_is_inside_the_dataset_folder(dataset):
    from sibrar.data.splits import default_split_dir

    config = SplitConfig(protocol="temporal", seed=3)
    assert default_split_dir(dataset, config) == Path(dataset.folder) / "splits" / "temporal-seed3"
