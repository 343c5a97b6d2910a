"""Tests for sibrar.retrieval.index on small synthetic (seeded) embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

from sibrar.errors import ConfigError, RetrievalError
from sibrar.retrieval import IndexConfig, ItemIndex, recall_at_k

N_ITEMS, DIM, N_QUERY = 2000, 16, 50
HNSW = {"hnsw_m": 32, "ef_construction": 80, "ef_search": 128}
ANN_CONFIGS = {
    "hnsw-reduction": IndexConfig(kind="hnsw", mips="reduction", storage="float32", **HNSW),
    "hnsw-native": IndexConfig(kind="hnsw", mips="native", storage="float32", **HNSW),
    "hnsw-native-sq8": IndexConfig(kind="hnsw", mips="native", storage="sq8", **HNSW),
    "hnsw-reduction-sq8": IndexConfig(kind="hnsw", mips="reduction", storage="sq8", **HNSW),
    "hnsw-cosine-sq8": IndexConfig(kind="hnsw", normalize=True, storage="sq8", **HNSW),
    "ivf-reduction": IndexConfig(kind="ivf", mips="reduction", storage="float32", nlist=16, nprobe=8),
    "ivf-native-sq8": IndexConfig(kind="ivf", mips="native", storage="sq8", nlist=16, nprobe=8),
    "ivfpq": IndexConfig(kind="ivfpq", nlist=16, nprobe=8),
}
# behaviour tests run on flat plus one index per code path (reduction / native / cosine × float32 / sq8)
ALL_CONFIGS = {"flat": IndexConfig(kind="flat"), **{name: ANN_CONFIGS[name] for name in (
    "hnsw-reduction", "hnsw-native-sq8", "hnsw-cosine-sq8", "ivf-reduction", "ivf-native-sq8", "ivfpq")}}


def make_embeddings(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    """Synthetic clustered vectors with varied norms (so MIPS differs from cosine)."""
    centers = rng.normal(size=(20, dim))
    x = centers[rng.integers(0, 20, size=n)] + 0.5 * rng.normal(size=(n, dim))
    return (x * rng.lognormal(0.0, 0.3, size=(n, 1))).astype(np.float32)


def numpy_topk(query: np.ndarray, items: np.ndarray, k: int, mask: np.ndarray | None = None) -> np.ndarray:
    scores = query @ items.T
    if mask is not None:
        scores[mask] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


@pytest.fixture
def data(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    return make_embeddings(rng, N_ITEMS), make_embeddings(rng, N_QUERY)


def test_flat_search_equals_numpy_topk(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    hits = ItemIndex.build(items).search(query, 10)
    expected = numpy_topk(query, items, 10)
    np.testing.assert_array_equal(hits.ids, expected)
    np.testing.assert_allclose(hits.scores, np.take_along_axis(query @ items.T, expected, 1), rtol=1e-5)


@pytest.mark.parametrize("name", ["hnsw-reduction", "hnsw-native", "hnsw-native-sq8", "ivf-reduction",
                                  "ivf-native-sq8", "ivfpq"])
def test_ann_recall_at_10_is_high_under_mips(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    hits = ItemIndex.build(items, config=ANN_CONFIGS[name]).search(query, 10)
    assert recall_at_k(hits.ids, numpy_topk(query, items, 10), 10) >= 0.9


@pytest.mark.parametrize("name", ["hnsw-reduction", "hnsw-native-sq8", "ivf-native-sq8", "ivfpq"])
def test_ann_scores_are_exact_inner_products_sorted(name: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    hits = ItemIndex.build(items, config=ANN_CONFIGS[name]).search(query, 10)
    exact = np.einsum("qkd,qd->qk", items[hits.ids], query)
    np.testing.assert_allclose(hits.scores, exact, rtol=1e-5, atol=1e-5)
    assert (np.diff(hits.scores, axis=1) <= 0).all()


def test_normalize_ranks_by_cosine(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    unit = items / np.linalg.norm(items, axis=1, keepdims=True)
    hits = ItemIndex.build(items, config=IndexConfig(normalize=True)).search(query, 5)
    np.testing.assert_array_equal(hits.ids, numpy_topk(query, unit, 5))
    assert np.abs(hits.scores).max() <= 1.0 + 1e-5


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_exclusion_never_returns_excluded_and_fills_k(
    name: str, data: tuple[np.ndarray, np.ndarray], rng: np.random.Generator
) -> None:
    items, query = data
    # exclude each row's exact top-30 plus random items: the filter must reach past them
    top30 = numpy_topk(query, items, 30)
    extra = rng.integers(0, N_ITEMS, size=(N_QUERY, 40))
    cols = np.hstack([top30, extra])
    exclude = sp.csr_array((np.ones(cols.size), cols.ravel(), np.arange(0, cols.size + 1, cols.shape[1])),
                           shape=(N_QUERY, N_ITEMS))
    hits = ItemIndex.build(items, config=ALL_CONFIGS[name]).search(query, 10, exclude=exclude)
    assert (hits.ids >= 0).all()
    mask = exclude.toarray() > 0
    assert not np.take_along_axis(mask, hits.ids, axis=1).any()
    if name == "flat":
        np.testing.assert_array_equal(hits.ids, numpy_topk(query, items, 10, mask))


def test_exclusion_pads_when_too_few_items_remain(rng: np.random.Generator) -> None:
    items = make_embeddings(rng, 30)
    query = make_embeddings(rng, 3)
    exclude = [np.arange(25), np.array([], dtype=np.int64), np.arange(30)]
    hits = ItemIndex.build(items).search(query, 8, exclude=exclude)
    assert (hits.ids[0, :5] >= 25).all() and (hits.ids[0, 5:] == -1).all()
    assert np.isneginf(hits.scores[0, 5:]).all()
    assert (hits.ids[1] >= 0).all()
    assert (hits.ids[2] == -1).all()


def test_exhausted_ann_rows_fall_back_to_exact(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    cfg = IndexConfig(kind="ivf", nlist=50, nprobe=1)  # one small cell cannot hold k=200 items
    hits = ItemIndex.build(items, config=cfg).search(query, 200)
    assert (hits.ids >= 0).all()
    assert (np.array([np.unique(r).size for r in hits.ids]) == 200).all()


@pytest.mark.parametrize("name", [*ALL_CONFIGS, "hnsw-reduction-sq8"])
def test_added_items_are_searchable(name: str, data: tuple[np.ndarray, np.ndarray],
                                    rng: np.random.Generator) -> None:
    items, query = data
    ids = np.arange(N_ITEMS) + 1000
    config = {**ALL_CONFIGS, **ANN_CONFIGS}[name]
    index = ItemIndex.build(items, item_ids=ids, config=config)
    # new items: query rows scaled past the largest item norm, so each is its row's best match
    new = 1.2 * query[:5] * np.linalg.norm(items, axis=1).max() / np.linalg.norm(query[:5], axis=1)[:, None]
    index.add(new.astype(np.float32), new_ids=np.arange(5) + 10)
    assert index.n_items == N_ITEMS + 5
    hits = index.search(query[:5], 3)
    np.testing.assert_array_equal(hits.ids[:, 0], np.arange(5) + 10)
    everything = index.search(query, 10)  # old items still rank correctly after a possible rebuild
    every = np.vstack([items, new])
    if config.normalize:
        every = every / np.linalg.norm(every, axis=1, keepdims=True)
    expected = numpy_topk(query, every, 10)
    # loose band: the new items are norm outliers, the hardest case for graph search under MIPS
    all_ids = np.concatenate([ids, np.arange(5) + 10])
    assert recall_at_k(everything.ids, all_ids[expected], 10) >= 0.8


def test_add_rejects_duplicate_ids(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, _ = data
    index = ItemIndex.build(items, item_ids=np.arange(N_ITEMS))
    with pytest.raises(RetrievalError, match="appears more than once"):
        index.add(items[:2], new_ids=np.array([5, 99999]))


@pytest.mark.parametrize("name", list(ALL_CONFIGS))
def test_save_load_round_trip_gives_identical_results(name: str, data: tuple[np.ndarray, np.ndarray],
                                                      tmp_path) -> None:
    items, query = data
    index = ItemIndex.build(items, item_ids=np.arange(N_ITEMS) * 7, config=ALL_CONFIGS[name],
                            fingerprint="run-abc")
    before = index.search(query, 10)
    index.save(tmp_path / "idx")
    index.save(tmp_path / "idx")  # overwriting an existing folder works too
    loaded = ItemIndex.load(tmp_path / "idx", expected_fingerprint="run-abc")
    after = loaded.search(query, 10)
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.scores, after.scores)
    manifest = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert manifest["kind"] == ALL_CONFIGS[name].kind and manifest["n_items"] == N_ITEMS
    assert manifest["dim"] == DIM and manifest["fingerprint"] == "run-abc"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temp folders left


def test_load_with_other_fingerprint_raises(data: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    ItemIndex.build(data[0], fingerprint="run-abc").save(tmp_path / "idx")
    with pytest.raises(RetrievalError, match="different run"):
        ItemIndex.load(tmp_path / "idx", expected_fingerprint="run-xyz")


def test_load_of_missing_folder_raises(tmp_path) -> None:
    with pytest.raises(RetrievalError, match="no index manifest"):
        ItemIndex.load(tmp_path / "nothing")


@pytest.mark.parametrize("k", [0, -1, N_ITEMS + 1])
def test_bad_k_raises(k: int, data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    with pytest.raises(RetrievalError, match=f"got {k}"):
        ItemIndex.build(items).search(query, k)


def test_wrong_query_dimension_raises(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    with pytest.raises(RetrievalError, match=f"dimension {DIM + 1}, expected {DIM}"):
        ItemIndex.build(items).search(np.hstack([query, query[:, :1]]), 5)


def test_nan_vectors_raise(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    bad = items.copy()
    bad[7, 3] = np.nan
    with pytest.raises(RetrievalError, match="row 7 holds NaN"):
        ItemIndex.build(bad)
    query = query.copy()
    query[2, 0] = np.inf
    with pytest.raises(RetrievalError, match="row 2"):
        ItemIndex.build(items).search(query, 5)


def test_bad_exclude_shape_raises(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    with pytest.raises(RetrievalError, match="exclude: shape"):
        ItemIndex.build(items).search(query, 5, exclude=sp.csr_array((N_QUERY + 1, N_ITEMS)))


def test_bad_config_raises() -> None:
    with pytest.raises(ConfigError, match="valid: flat, hnsw, ivf"):
        IndexConfig(kind="lsh")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="ef_search"):
        IndexConfig(kind="hnsw", ef_search=0)
    with pytest.raises(ConfigError, match="valid: reduction, native"):
        IndexConfig(kind="hnsw", mips="cosine")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="valid: float32, sq8"):
        IndexConfig(kind="hnsw", storage="pq")  # type: ignore[arg-type]


def test_ids_map_positions_and_keep_padding(data: tuple[np.ndarray, np.ndarray]) -> None:
    index = ItemIndex.build(data[0], item_ids=np.arange(N_ITEMS)[::-1] * 3)
    np.testing.assert_array_equal(index.ids(np.array([0, 5, -1])), [3 * (N_ITEMS - 1), 3 * (N_ITEMS - 6), -1])


def test_ivfpq_reranks_exactly_and_more_candidates_raise_recall(data: tuple[np.ndarray, np.ndarray]) -> None:
    items, query = data
    truth = numpy_topk(query, items, 10)
    recalls = [recall_at_k(ItemIndex.build(items, config=IndexConfig(kind="ivfpq", nlist=16, nprobe=16, pq_m=2,
                                                                     rerank=r)).search(query, 10).ids, truth, 10)
               for r in (1, 50)]
    assert recalls[1] > recalls[0] and recalls[1] >= 0.95  # coarse 2-code PQ alone is poor; exact rerank fixes it


def test_choose_config_is_exact_for_small_catalogues_and_fast_scan_for_large() -> None:
    from sibrar.retrieval.index import ANN_MIN_ITEMS, choose_config

    assert choose_config(10_000).kind == "flat"
    assert choose_config(ANN_MIN_ITEMS).kind == "ivfpq" and choose_config(10**6).lossy


def test_recall_at_k_counts_overlap() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, -1]])
    approx = np.array([[4, 3, 9, 8], [5, 6, 7, 8]])
    assert recall_at_k(approx, exact, 4) == pytest.approx((2 / 4 + 3 / 3) / 2)
    assert recall_at_k(exact, exact, 4) == 1.0
