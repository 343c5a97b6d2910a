"""Ranking metrics against hand-computed values, a slow reference loop and properties."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sibrar.errors import ConfigError, UnknownNameError
from sibrar.eval.metrics import METRICS, compute_metrics
from sibrar.eval.ranking import topk_items

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
ACCURACY = ["ndcg", "recall", "precision", "map", "mrr", "hit", "f1"]
L3 = math.log2(3)
L5 = math.log2(5)


def _truth(rows: list[list[int]], n_items: int) -> sp.csr_array:
    r = [u for u, items in enumerate(rows) for _ in items]
    c = [i for items in rows for i in items]
    return sp.csr_array((np.ones(len(c)), (r, c)), shape=(len(rows), n_items))


@pytest.fixture
def hand_case():
    topk = np.array([[2, 0, 5, 1], [3, -1, -1, -1], [0, 1, 2, 3], [4, 0, 1, 2]])
    truth = _truth([[0, 1], [3, 4, 5], [], [4]], n_items=6)
    return topk, truth


def test_hand_computed_accuracy_values(hand_case):
    report = compute_metrics(*hand_case, ks=[2, 4], metrics=ACCURACY)
    m = report.per_user
    # user 0: hits at ranks 2 and 4 of 2 relevant
    np.testing.assert_allclose(m["ndcg@2"][0], (1 / L3) / (1 + 1 / L3))
    np.testing.assert_allclose(m["ndcg@4"][0], (1 / L3 + 1 / L5) / (1 + 1 / L3))
    np.testing.assert_allclose([m["precision@2"][0], m["recall@2"][0]], [0.5, 0.5])
    np.testing.assert_allclose([m["precision@4"][0], m["recall@4"][0]], [0.5, 1.0])
    np.testing.assert_allclose([m["map@2"][0], m["map@4"][0]], [(1 / 2) / 2, (1 / 2 + 2 / 4) / 2])
    np.testing.assert_allclose([m["mrr@4"][0], m["hit@2"][0], m["f1@4"][0]], [0.5, 1.0, 2 / 3])
    # user 1: hit at rank 1 of 3 relevant, then padding; fewer than k relevant retrieved
    np.testing.assert_allclose(m["ndcg@4"][1], 1 / (1 + 1 / L3 + 1 / 2))
    np.testing.assert_allclose([m["precision@4"][1], m["recall@4"][1], m["map@4"][1]], [0.25, 1 / 3, 1 / 3])
    np.testing.assert_allclose(m["f1@4"][1], 2 * 0.25 * (1 / 3) / (0.25 + 1 / 3))
    # user 2: no relevant items -> NaN everywhere; user 3: perfect
    assert all(np.isnan(v[2]) for v in m.values())
    for name in ["ndcg", "recall", "map", "mrr", "hit"]:
        assert m[f"{name}@4"][3] == 1.0
    assert m["precision@4"][3] == 0.25
    assert report.n_users == 4 and report.n_evaluated == 3


def test_summary_means_leave_out_users_without_relevant_items(hand_case):
    report = compute_metrics(*hand_case, ks=[4], metrics=["recall"])
    assert report.summary["recall@4"] == pytest.approx((1.0 + 1 / 3 + 1.0) / 3)


def test_ap_is_normalised_by_all_relevant_items_not_by_k():
    # 5 relevant items, the first 2 ranked perfectly: AP@2 = (1 + 1) / 5, not (1 + 1) / 2.
    report = compute_metrics(np.array([[0, 1, 9]]), _truth([[0, 1, 2, 3, 4]], 10), ks=[2], metrics=["map"])
    assert report.per_user["map@2"][0] == pytest.approx(2 / 5)


def test_recbole_map_divides_by_min_k_and_relevant_count():
    # user 0: 5 relevant, hits at ranks 1, 3 and 4 of the top 4: P@1 + P@3 + P@4 = 1 + 2/3 + 3/4
    # user 1: 2 relevant, hit at rank 2 only: P@2 = 1/2
    topk = np.array([[0, 9, 1, 2], [8, 5, 7, 6]])
    truth = _truth([[0, 1, 2, 3, 4], [5, 4]], 10)
    m = compute_metrics(topk, truth, ks=[4], metrics=["map", "map_recbole"]).per_user
    numerator = 1 + 2 / 3 + 3 / 4
    np.testing.assert_allclose(m["map_recbole@4"], [numerator / 4, (1 / 2) / 2])  # ÷ min(4, 5), ÷ min(4, 2)
    np.testing.assert_allclose(m["map@4"], [numerator / 5, (1 / 2) / 2])  # ÷ |rel|: equal when |rel| <= k


def test_recbole_map_of_a_perfect_list_is_one():
    report = compute_metrics(np.array([[0, 1, 9]]), _truth([[0, 1, 2, 3, 4]], 10), ks=[2], metrics=["map", "map_recbole"])
    assert report.per_user["map_recbole@2"][0] == pytest.approx(1.0)
    assert report.per_user["map@2"][0] == pytest.approx(2 / 5)


def test_hand_computed_distribution_metrics():
    topk = np.array([[0, 1], [0, 2], [0, 1], [3, -1]])
    truth = _truth([[0], [1], [2], [3]], n_items=5)
    popularity = np.array([10, 5, 1, 0, 2])
    s = compute_metrics(topk, truth, ks=[2], item_popularity=popularity).summary
    # recommendation counts over items 0..4: [3, 2, 1, 1, 0], 7 slots
    assert s["coverage@2"] == pytest.approx(4 / 5)
    assert s["gini@2"] == pytest.approx((-2 * 1 + 0 * 1 + 2 * 2 + 4 * 3) / (5 * 7))
    p = np.array([3, 2, 1, 1]) / 7
    assert s["entropy@2"] == pytest.approx(-(p * np.log(p)).sum() / np.log(5))
    assert s["arp@2"] == pytest.approx((10 + 5 + 10 + 1 + 10 + 5 + 0) / 7)
    assert s["tail_share@2"] == pytest.approx(4 / 7)  # head = top 20 % of 5 items = item 0


def test_distribution_metrics_only_count_candidate_items():
    topk = np.array([[0, 1], [0, 2], [0, 1], [3, -1]])
    truth = _truth([[0], [1], [2], [3]], n_items=5)
    mask = np.array([True, True, True, False, False])
    s = compute_metrics(topk, truth, ks=[1, 2], candidates=mask, metrics=["coverage", "gini"]).summary
    assert s["coverage@2"] == 1.0 and s["coverage@1"] == pytest.approx(1 / 3)
    assert s["gini@2"] == pytest.approx((-2 * 1 + 0 * 2 + 2 * 3) / (3 * 6))  # counts [1, 2, 3]


def test_default_metrics_include_popularity_metrics_only_with_popularity(hand_case):
    without = compute_metrics(*hand_case, ks=[1]).summary
    with_pop = compute_metrics(*hand_case, ks=[1], item_popularity=np.arange(6)).summary
    assert "arp@1" not in without and "tail_share@1" not in without and "ndcg@1" in without
    assert set(with_pop) - set(without) == {"arp@1", "tail_share@1"}


def test_constant_score_model_gets_random_level_accuracy_not_index_order_luck():
    # Relevant items are the five lowest indices; ties broken by index would give precision 1.
    n_users, n_items = 400, 100
    items, _ = topk_items(torch.zeros(n_users, 2), torch.zeros(n_items, 2), 5,
                          generator=torch.Generator().manual_seed(0))
    truth = _truth([[0, 1, 2, 3, 4]] * n_users, n_items)
    s = compute_metrics(items, truth, ks=[5], metrics=["precision"]).summary
    assert 0.02 < s["precision@5"] < 0.09  # expected 5 / 100


def _slow_reference(topk: np.ndarray, truth: sp.csr_array, k: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {name: [] for name in ACCURACY}
    for u, row in enumerate(topk):
        rel = set(truth[[u], :].indices.tolist())
        if not rel:
            for name in ACCURACY:
                out[name].append(math.nan)
            continue
        r = [1.0 if i in rel else 0.0 for i in row[:k]]
        dcg = sum(x / math.log2(j + 2) for j, x in enumerate(r))
        idcg = sum(1 / math.log2(j + 2) for j in range(min(len(rel), k)))
        p, rec = sum(r) / k, sum(r) / len(rel)
        out["ndcg"].append(dcg / idcg)
        out["precision"].append(p)
        out["recall"].append(rec)
        out["map"].append(sum(sum(r[: j + 1]) / (j + 1) * r[j] for j in range(k)) / len(rel))
        out["mrr"].append(next((1 / (j + 1) for j, x in enumerate(r) if x), 0.0))
        out["hit"].append(float(any(r)))
        out["f1"].append(2 * p * rec / (p + rec) if p + rec else 0.0)
    return out


@st.composite
def _rankings(draw):
    n_users = draw(st.integers(1, 8))
    n_items = draw(st.integers(1, 12))
    length = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    topk = np.full((n_users, length), -1)
    for u in range(n_users):
        n_rec = rng.integers(0, min(length, n_items) + 1)
        topk[u, :n_rec] = rng.permutation(n_items)[:n_rec]
    truth = sp.csr_array(rng.random((n_users, n_items)) < rng.random())
    return topk, truth


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(_rankings())
def test_vectorised_metrics_equal_a_slow_per_user_loop(case):
    topk, truth = case
    ks = sorted({1, topk.shape[1]})
    report = compute_metrics(topk, truth, ks, metrics=ACCURACY)
    for k in ks:
        for name, values in _slow_reference(topk, truth, k).items():
            np.testing.assert_allclose(report.per_user[f"{name}@{k}"], values, err_msg=f"{name}@{k}")


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(_rankings())
def test_metrics_lie_in_unit_interval_and_are_nan_exactly_without_positives(case):
    topk, truth = case
    n_items = truth.shape[1]
    report = compute_metrics(topk, truth, [1, topk.shape[1]], item_popularity=np.arange(n_items) % 3)
    no_positives = np.diff(truth.indptr) == 0
    for values in report.per_user.values():
        assert (np.isnan(values) == no_positives).all()
        assert ((values[~no_positives] >= 0) & (values[~no_positives] <= 1 + 1e-12)).all()
    for name, value in report.summary.items():
        if not name.startswith("arp") and not math.isnan(value):
            assert 0.0 <= value <= 1.0 + 1e-12, name


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.integers(1, 8), min_size=1, max_size=6), st.integers(1, 5))
def test_perfect_ranking_scores_one(n_relevant, k):
    n_items = 20
    topk = np.array([list(range(n)) + list(range(10, 18 - n)) for n in n_relevant])  # (U, 8)
    truth = _truth([list(range(n)) for n in n_relevant], n_items)
    m = compute_metrics(topk, truth, [k], metrics=ACCURACY).per_user
    n_rel = np.array(n_relevant)
    for name in ["ndcg", "mrr", "hit"]:
        np.testing.assert_allclose(m[f"{name}@{k}"], 1.0)
    np.testing.assert_allclose(m[f"recall@{k}"], np.minimum(n_rel, k) / n_rel)
    np.testing.assert_allclose(m[f"map@{k}"], np.minimum(n_rel, k) / n_rel)
    np.testing.assert_allclose(m[f"precision@{k}"], np.minimum(n_rel, k) / k)


def test_inputs_as_torch_tensors_match_numpy(hand_case):
    topk, truth = hand_case
    dense = torch.from_numpy(truth.toarray())
    a = compute_metrics(topk, truth, [3]).summary
    b = compute_metrics(torch.from_numpy(topk), dense.to_sparse_csr(), [3]).summary
    assert a.keys() == b.keys()
    np.testing.assert_allclose(list(a.values()), list(b.values()))


def test_unknown_metric_name_lists_the_valid_names(hand_case):
    with pytest.raises(UnknownNameError, match="did you mean 'ndcg'.*valid: arp, coverage"):
        compute_metrics(*hand_case, ks=[1], metrics=["ndgc"])
    assert set(ACCURACY) <= set(METRICS.names())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ks": [5]}, r"k=5 must be an int in \[1, 4\]"),
        ({"ks": []}, "ks is empty"),
        ({"metrics": ["arp"]}, "need item_popularity"),
        ({"item_popularity": np.ones(3)}, r"must be \(6,\)"),
        ({"topk": np.array([[0, 0, 1, 2]] * 4)}, "row 0 lists item 0 twice"),
        ({"topk": np.array([[0, 7, 1, 2]] * 4)}, r"expected -1 \(padding\) or \[0, 5\]"),
        ({"truth": _truth([[0]], 6)}, "truth has 1 rows but topk has 4"),
        ({"candidates": np.ones(4, dtype=bool)}, r"expected \(6,\)"),
    ],
)
def test_bad_arguments_raise_config_error(hand_case, kwargs, match):
    args = {"topk": hand_case[0], "truth": hand_case[1], "ks": [2]} | kwargs
    with pytest.raises(ConfigError, match=match):
        compute_metrics(**args)
