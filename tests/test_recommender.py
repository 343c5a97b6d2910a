"""Recommender over a trained ML-100K run: flat index = exact ranking, new items from features, bad input."""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from sibrar.cli import main
from sibrar.data import modalities as M
from sibrar.data.atomic import write_atomic
from sibrar.errors import DataWarning, RetrievalError
from sibrar.eval.ranking import topk_items
from sibrar.retrieval.index import IndexConfig
from sibrar.retrieval.recommender import Recommender, _convert

FLAT = IndexConfig(kind="flat")


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def run_dir(ml100k_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of a small item-SiBraR (interactions + genres + year) on a cold-item ML-100K split."""
    folder = tmp_path_factory.mktemp("recommender")
    config = {
        "data": {"dataset": str(ml100k_dir), "item_modalities": {
            "genres": {"column": "genres", "kind": "tags", "min_tag_count": 1}, "year": {"column": "release_year"}}},
        "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 16,
                  "item": {"modalities": ["interactions", "genres", "year"], "common_dim": 16, "branch": {"hidden": [16]}}},
        "train": {"epochs": 1, "batch_size": 512, "n_negatives": 3, "seed": 0},
        "eval": {"ks": [10]},
    }
    cfg = folder / "run.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(cfg), "--out", str(folder / "run"), "--no-progress"]) == 0
    return folder / "run"


@pytest.fixture(scope="module")
def rec(run_dir: Path) -> Recommender:
    return Recommender.load(run_dir, index_config=FLAT)


def fresh(run_dir: Path) -> Recommender:
    """A recommender of its own (add_items mutates it)."""
    return Recommender.load(run_dir, index_config=FLAT)


def copy_run(run_dir: Path, dest: Path) -> Path:
    shutil.copytree(run_dir, dest)
    return dest


def test_flat_index_gives_the_exact_top_k_of_the_evaluator_for_every_user(rec):
    k = 10
    got = rec.recommend_all(k)
    n_users = len(rec.user_ids)
    assert got.height == n_users * k
    got_items = rec.run.prepared.dataset.items.idx(got["item_id"].to_numpy()).reshape(n_users, k)
    got_scores = got["score"].to_numpy().reshape(n_users, k)
    model = rec.run.model
    with torch.no_grad():
        user_emb = model.user_embeddings(torch.arange(n_users))
        item_emb = model.all_item_embeddings()
    ref_items, ref_scores = topk_items(user_emb, item_emb, k, exclude=rec.seen)
    np.testing.assert_allclose(got_scores, ref_scores.numpy(), rtol=1e-5, atol=1e-5)
    same = got_items == ref_items.numpy()
    tied = np.isclose(got_scores, ref_scores.numpy(), rtol=0, atol=1e-6)
    assert (same | tied).all()
    assert same.mean() > 0.99  # ties are rare: the lists really are the same


def test_seen_items_are_excluded_and_every_list_has_k_items(rec):
    k = 25
    users = rec.user_ids.ids[:200].tolist()
    got = rec.recommend(users, k)
    assert got.group_by("user_id").len()["len"].to_list() == [k] * len(users)
    u = rec.user_ids.idx(got["user_id"].to_numpy())
    i = rec.run.prepared.dataset.items.idx(got["item_id"].to_numpy())
    assert not np.asarray(rec.seen[u, i]).any()
    scores = got["score"].to_numpy().reshape(len(users), k)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_new_item_embedding_equals_the_cold_item_embedding_of_the_model(rec):
    split, dataset = rec.run.prepared.split, rec.run.prepared.dataset
    cold = split.cold_items("test")[:40]
    features = dataset.item_table[cold.tolist()].drop("item_id")
    got = rec.embed_items(features)
    with torch.no_grad():
        ref = rec.run.model.item_embeddings(torch.from_numpy(cold)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_held_out_items_added_from_features_alone_reach_their_audience(run_dir):
    rec = fresh(run_dir)
    split, dataset = rec.run.prepared.split, rec.run.prepared.dataset
    test = split.part("test")
    counts = test.group_by("item_idx").len().filter(pl.col("len") >= 10).sort("item_idx")
    items = counts["item_idx"].to_numpy()[:60]
    assert len(items) >= 30
    new_ids = [f"new-{dataset.items.id_of(i)}" for i in items]
    positions = rec.add_items(new_ids, dataset.item_table[items.tolist()].drop("item_id"))
    assert rec.n_items == dataset.n_items + len(items) and rec.index.n_items == rec.n_items
    new_emb = rec.item_embeddings(positions)  # (N, d)
    scores = new_emb @ rec.user_emb.T  # (N, U)
    aucs = []
    for row, item in enumerate(items):
        fans = test.filter(pl.col("item_idx") == item)["user_idx"].to_numpy()
        rank = scores[row].argsort().argsort() / (scores.shape[1] - 1)  # percentile of each user's score
        aucs.append(rank[fans].mean())
    assert np.mean(aucs) > 0.6  # random users sit at 0.5 on average
    # and through recommend(): the new items reach their test users' top-50 more often than chance
    fans = test.filter(pl.col("item_idx").is_in(items.tolist()))
    users = np.unique(fans["user_idx"].to_numpy())
    got = rec.recommend(dataset.users.id_of(users).tolist(), 50)
    hits = got.join(fans.with_columns(user_id=pl.Series(dataset.users.id_of(fans["user_idx"].to_numpy())),
                                      item_id=pl.lit("new-") + pl.Series(dataset.items.id_of(fans["item_idx"].to_numpy()))),
                    on=["user_id", "item_id"])
    n_candidates = rec.n_items - np.asarray(rec.seen[users].sum(axis=1)).mean()
    chance = len(fans) * 50 / n_candidates
    assert hits.height > 1.3 * chance  # one epoch, genres + year only: a loose band (seen: ~1.6x)


def test_unknown_categories_are_rejected_or_ignored_with_a_warning(rec):
    frame = pl.DataFrame({"genres": [["Comedy", "Space-Opera"]], "year": [1990.0]})
    with pytest.raises(RetrievalError, match="'genres'.*'Space-Opera'"):
        rec.embed_items(frame)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        emb = rec.embed_items(frame, on_unknown="ignore")
    assert any(issubclass(w.category, DataWarning) and "1 unknown" in str(w.message) for w in caught)
    np.testing.assert_allclose(emb, rec.embed_items(pl.DataFrame({"genres": [["Comedy"]], "year": [1990.0]})))


@pytest.mark.parametrize(("call", "expected"), [
    (lambda r: r.recommend(["no-such-user"], 10), "unknown user id 'no-such-user'"),
    (lambda r: r.recommend(["1"], 0), r"k must be an integer in \[1, "),
    (lambda r: r.recommend(["1"], 10**6), r"k must be an integer in \[1, "),
    (lambda r: r.embed_items(pl.DataFrame({"year": [[1990.0, 1.0]]})), "'year': row 0: expected 1 number.*got 2"),
    (lambda r: r.embed_items(pl.DataFrame({"title": ["x"]})), "none of the modalities"),
    (lambda r: r.add_items(["1"], pl.DataFrame({"year": [1990.0]})), "already in the catalogue"),
    (lambda r: r.recommend_new_user(["no-such-item"], k=5), "user tower does not use interactions|unknown item"),
])
def test_bad_requests_raise_retrieval_error(rec, call, expected):
    with pytest.raises(RetrievalError, match=expected):
        call(rec)


def test_wrong_vector_dimension_names_modality_expected_and_got():
    modality = M.vector("text", np.zeros((3, 4)), np.ones(3, dtype=bool))
    with pytest.raises(RetrievalError, match=r"'text': row 1 has a vector of dimension 3, expected 4"):
        _convert(modality, pl.Series("text", [[0.0] * 4, [0.0] * 3]), "item", "error")


def test_new_user_from_a_few_interactions(rec):
    got = rec.recommend_new_user(["50", "181"], k=5)  # item-SiBraR: the user tower reads interactions
    assert got.height == 5 and not set(got["item_id"]) & {"50", "181"}


def test_index_is_saved_next_to_the_run_and_reloaded(rec, run_dir):
    manifest = json.loads((run_dir / "index" / "index.json").read_text())
    assert manifest["fingerprint"].endswith(":sibrar") and manifest["n_items"] == rec.run.prepared.dataset.n_items
    again = Recommender.load(run_dir)
    assert again.recommend(["1"], 10).equals(rec.recommend(["1"], 10))


def test_an_index_from_another_run_is_refused(run_dir, tmp_path):
    other = copy_run(run_dir, tmp_path / "run")
    path = other / "index" / "index.json"
    manifest = json.loads(path.read_text())
    manifest["fingerprint"] = "0" * 64 + ":sibrar"
    path.write_text(json.dumps(manifest))
    with pytest.raises(RetrievalError, match="different run"):
        Recommender.load(other)


def test_cli_index_recommend_all_and_new_items(run_dir, tmp_path, capsys):
    other = copy_run(run_dir, tmp_path / "run")
    assert main(["index", str(other), "--kind", "hnsw"]) == 0
    assert json.loads((other / "index" / "index.json").read_text())["kind"] == "hnsw"
    capsys.readouterr()
    assert main(["recommend", str(other), "--user", "1", "--k", "5"]) == 0
    assert capsys.readouterr().out.startswith("user 1: ")
    out = tmp_path / "all.parquet"
    assert main(["recommend", str(other), "--all", "--out", str(out), "--k", "3"]) == 0
    frame = pl.read_parquet(out)
    assert frame.columns == ["user_id", "rank", "item_id", "score"] and frame.height == 3 * frame["user_id"].n_unique()
    dataset = Recommender.load(other).run.prepared.dataset
    table = dataset.item_table[:2].select("item_id", "release_year", "genres").with_columns(
        item_id=pl.lit("new-") + pl.col("item_id"))
    item_file = tmp_path / "new.item"
    write_atomic(item_file, table, {"item_id": "token", "release_year": "float", "genres": "token_seq"})
    capsys.readouterr()
    assert main(["recommend", str(other), "--new-item", str(item_file), "--k", "3"]) == 0
    assert f"new item {table['item_id'][0]}: top users" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "expected"), [
    (["recommend", "{run}", "--user", "nobody"], "unknown user id 'nobody'"),
    (["recommend", "{run}", "--all", "--out", "{out}", "--k", "0"], "k must be"),
    (["recommend", "{run}", "--all"], "--out"),
    (["recommend", "{run}", "--new-item", "{tmp}/missing.item"], "no such atomic file"),
    (["recommend", "{tmp}", "--user", "1"], "not a finished run folder"),
])
def test_cli_bad_input_exits_2_and_writes_nothing(run_dir, tmp_path, capsys, argv, expected):
    out = tmp_path / "recs.parquet"
    argv = [a.format(run=run_dir, out=out, tmp=tmp_path) for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_new_user_from_demographics_matches_the_demographics_only_view(synthetic_shared_dir, tmp_path):
    from sibrar.models.base import SideView, View

    config = {
        "data": {"dataset": str(synthetic_shared_dir), "k_core": 0},
        "split": {"protocol": "cold_user", "seed": 2},
        "model": {"name": "sibrar", "dim": 8,
                  "user": {"modalities": ["interactions", "age", "gender"], "common_dim": 8, "branch": {"hidden": [8]}},
                  "item": {"modalities": ["interactions", "genres"], "common_dim": 8, "branch": {"hidden": [8]}}},
        "train": {"epochs": 1, "batch_size": 64, "n_negatives": 3},
        "eval": {"ks": [10]},
    }
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    assert main(["train", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    rec = Recommender.load(tmp_path / "run")
    table = rec.run.prepared.dataset.user_table
    user = next(i for i in range(table.height) if table["age"][i] is not None and table["gender"][i] is not None)
    got = rec.embed_new_user(features={"age": [table["age"][user]], "gender": [table["gender"][user]]})
    view = View(user=SideView(modalities=("age", "gender")))
    with torch.no_grad():
        ref = rec.run.model.user_embeddings(torch.tensor([user]), view)[0].numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    with pytest.raises(RetrievalError, match="'gender': unknown value 'X'"):
        rec.embed_new_user(features={"gender": ["X"]})
    assert rec.recommend_new_user(features={"age": [30.0]}, k=5).height == 5


def test_recommend_all_by_gemm_equals_the_index_path_and_skips_removed_items(run_dir):
    rec = fresh(run_dir)
    by_gemm, by_index = rec.recommend_all(10, exact=True), rec.recommend_all(10, exact=False)
    assert by_gemm["user_id"].to_list() == by_index["user_id"].to_list()
    np.testing.assert_allclose(by_gemm["score"].to_numpy(), by_index["score"].to_numpy(), rtol=1e-5, atol=1e-5)
    same = by_gemm["item_id"].to_numpy() == by_index["item_id"].to_numpy()
    assert same.mean() > 0.99  # only exact ties may swap
    top = by_gemm["item_id"].value_counts(sort=True)["item_id"][0]  # the item recommended most often
    rec.remove_items([top])
    for exact in (True, False):
        assert top not in set(rec.recommend_all(10, exact=exact)["item_id"])
    with pytest.raises(RetrievalError, match=f"unknown item id '{top}'"):
        rec.remove_items([top])


def test_cli_index_auto_picks_flat_for_a_small_catalogue(run_dir, tmp_path, capsys):
    other = copy_run(run_dir, tmp_path / "run")
    assert main(["index", str(other)]) == 0
    assert "(flat," in capsys.readouterr().out
