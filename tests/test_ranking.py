"""Chunked full-ranking top-k against a dense numpy oracle; tie-breaking and masking."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sibrar.errors import ConfigError
from sibrar.eval.ranking import _tie_keys, topk_items

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")


def _dense_oracle(user_emb, item_emb, k, allowed, seed):
    """Naive reference: dense scores, lexsort on (score desc, tie key desc), -1/-inf padding."""
    scores = user_emb.double().numpy() @ item_emb.double().numpy().T  # (U, I), exact for ints
    n_users, n_items = scores.shape
    keys = _tie_keys(torch.arange(n_users)[:, None], torch.arange(n_items)[None, :], seed).numpy()
    items = np.full((n_users, k), -1)
    top = np.full((n_users, k), -np.inf)
    for u in range(n_users):
        ok = np.flatnonzero(allowed[u])
        order = ok[np.lexsort((-keys[u, ok], -scores[u, ok]))][:k]
        items[u, : order.size] = order
        top[u, : order.size] = scores[u, order]
    return items, top


def _seed_of(generator_seed: int) -> int:
    g = torch.Generator().manual_seed(generator_seed)
    return int(torch.randint(0, 1 << 62, (1,), generator=g).item())


def _int_problem(rng, n_users=13, n_items=29, d=3):
    """Small-integer embeddings: exact float scores with many exact ties."""
    user_emb = torch.from_numpy(rng.integers(-2, 3, (n_users, d))).float()
    item_emb = torch.from_numpy(rng.integers(-2, 3, (n_items, d))).float()
    exclude = sp.random(n_users, n_items, density=0.3, format="csr", random_state=rng)
    cand_mask = rng.random(n_items) < 0.7
    return user_emb, item_emb, exclude, cand_mask


@pytest.mark.parametrize(("user_chunk", "item_chunk"), [(1, 1), (3, 4), (5, 7), (1000, 1000)])
@pytest.mark.parametrize("k", [1, 5, 25])
def test_topk_matches_dense_oracle_with_masks_and_ties(rng, user_chunk, item_chunk, k):
    user_emb, item_emb, exclude, cand_mask = _int_problem(rng)
    allowed = cand_mask[None, :] & (exclude.toarray() == 0)
    want_items, want_scores = _dense_oracle(user_emb, item_emb, k, allowed, _seed_of(7))

    items, scores = topk_items(
        user_emb, item_emb, k,
        candidates=torch.from_numpy(cand_mask), exclude=exclude.tocsr(),
        user_chunk=user_chunk, item_chunk=item_chunk, generator=torch.Generator().manual_seed(7),
    )
    np.testing.assert_array_equal(items.numpy(), want_items)
    np.testing.assert_array_equal(scores.numpy(), want_scores.astype(np.float32))


def test_candidate_indices_and_torch_csr_equal_mask_and_scipy(rng):
    user_emb, item_emb, exclude, cand_mask = _int_problem(rng)
    dense = torch.from_numpy(exclude.toarray()).float()
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = topk_items(user_emb, item_emb, 6, candidates=torch.from_numpy(cand_mask),
                   exclude=exclude, generator=gen(), item_chunk=5)
    b = topk_items(user_emb, item_emb, 6, candidates=torch.from_numpy(np.flatnonzero(cand_mask)),
                   exclude=dense.to_sparse_csr(), generator=gen(), user_chunk=2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_continuous_scores_match_numpy_argsort(rng):
    user_emb = torch.from_numpy(rng.normal(size=(40, 8))).float()
    item_emb = torch.from_numpy(rng.normal(size=(300, 8))).float()
    items, scores = topk_items(user_emb, item_emb, 10, user_chunk=16, item_chunk=64)
    dense = user_emb.double().numpy() @ item_emb.double().numpy().T
    want = np.argsort(-dense, axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(items.numpy(), want)
    np.testing.assert_allclose(scores.numpy(), np.take_along_axis(dense, want, 1), rtol=1e-5)


def test_excluded_and_non_candidate_items_never_appear(rng):
    n_users, n_items = 60, 500
    user_emb = torch.from_numpy(rng.normal(size=(n_users, 4))).float()
    item_emb = torch.from_numpy(rng.normal(size=(n_items, 4))).float()
    exclude = sp.random(n_users, n_items, density=0.5, format="csr", random_state=rng)
    cand = np.flatnonzero(rng.random(n_items) < 0.5)
    items, _ = topk_items(user_emb, item_emb, 50, candidates=torch.from_numpy(cand),
                          exclude=exclude, user_chunk=7, item_chunk=33)
    items = items.numpy()
    assert (items >= 0).all()
    rows = np.repeat(np.arange(n_users), items.shape[1])
    assert not exclude.toarray()[rows, items.ravel()].any()
    assert np.isin(items, cand).all()
    assert all(np.unique(row).size == row.size for row in items)


def test_fewer_allowed_items_than_k_pads_with_minus_one_and_neg_inf():
    user_emb = torch.ones(2, 2)
    item_emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    exclude = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 1.0]]).to_sparse_csr()
    items, scores = topk_items(user_emb, item_emb, 4, exclude=exclude, item_chunk=2)
    assert items.tolist() == [[2, 0, -1, -1], [-1, -1, -1, -1]]
    assert scores[0, :2].tolist() == [3.0, 1.0]
    assert torch.isneginf(scores[0, 2:]).all() and torch.isneginf(scores[1]).all()


def test_no_candidates_or_no_users_give_padding_or_empty_output():
    items, scores = topk_items(torch.ones(2, 2), torch.ones(3, 2), 2,
                               candidates=torch.zeros(3, dtype=torch.bool))
    assert (items == -1).all() and torch.isneginf(scores).all()
    items, scores = topk_items(torch.ones(0, 2), torch.ones(3, 2), 2)
    assert items.shape == (0, 2) and scores.shape == (0, 2)


def test_constant_scores_are_shuffled_not_index_ordered():
    user_emb, item_emb = torch.zeros(200, 4), torch.zeros(50, 4)
    items, scores = topk_items(user_emb, item_emb, 5, item_chunk=16,
                               generator=torch.Generator().manual_seed(1))
    assert (scores == 0).all()
    rows = {tuple(r) for r in items.tolist()}
    assert (0, 1, 2, 3, 4) not in rows
    assert len(rows) > 190  # each user gets its own shuffle
    assert len(set(items[:, 0].tolist())) > 40  # first slot spread over the catalogue


def test_tie_order_is_reproducible_for_a_seed_and_changes_with_it():
    user_emb, item_emb = torch.zeros(30, 2), torch.zeros(40, 2)
    run = lambda seed: topk_items(user_emb, item_emb, 10, item_chunk=9,  # noqa: E731
                                  generator=torch.Generator().manual_seed(seed))[0]
    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert torch.equal(topk_items(user_emb, item_emb, 10)[0], topk_items(user_emb, item_emb, 10)[0])


def test_ties_at_the_cut_are_broken_uniformly_across_chunks():
    # k=1 over 10 tied items split into uneven chunks: every item should win ~1/10 of users.
    user_emb, item_emb = torch.ones(6000, 1), torch.ones(10, 1)
    items, _ = topk_items(user_emb, item_emb, 1, item_chunk=3,
                          generator=torch.Generator().manual_seed(11))
    counts = np.bincount(items[:, 0].numpy(), minlength=10)
    assert counts.min() > 480 and counts.max() < 720  # expected 600, sd ~23


def test_ties_only_reorder_equal_scores():
    user_emb = torch.tensor([[1.0]])
    item_emb = torch.tensor([[1.0], [3.0], [1.0], [2.0], [3.0], [1.0]])
    items, scores = topk_items(user_emb, item_emb, 6, item_chunk=4)
    assert scores[0].tolist() == [3.0, 3.0, 2.0, 1.0, 1.0, 1.0]
    assert set(items[0, :2].tolist()) == {1, 4} and items[0, 2] == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "k must be a positive int"),
        ({"user_chunk": -1}, "user_chunk"),
        ({"candidates": torch.ones(3, dtype=torch.bool)}, r"expected \(5,\)"),
        ({"candidates": torch.tensor([0, 5])}, r"within \[0, 4\]"),
        ({"exclude": sp.csr_matrix((2, 4))}, r"expected \(n_users, n_items\) = \(2, 5\)"),
        ({"exclude": torch.zeros(2, 5)}, "torch sparse CSR"),
    ],
)
def test_bad_arguments_raise_config_error(kwargs, match):
    args = {"user_emb": torch.zeros(2, 3), "item_emb": torch.zeros(5, 3), "k": 2} | kwargs
    with pytest.raises(ConfigError, match=match):
        topk_items(**args)


def test_mismatched_or_non_finite_embeddings_raise_config_error():
    with pytest.raises(ConfigError, match="same d"):
        topk_items(torch.zeros(2, 3), torch.zeros(5, 4), 1)
    with pytest.raises(ConfigError, match="NaN or inf"):
        topk_items(torch.tensor([[float("nan")]]), torch.zeros(5, 1), 1)
