"""The evaluator masks what it must, ranks only candidates, and equals a dense oracle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from sibrar.config import DataConfig, EvalConfig, SplitConfig
from sibrar.data.dataset import Dataset, load_dataset
from sibrar.data.inputs import ModelInputs, build_inputs
from sibrar.data.splits import Split, make_split
from sibrar.eval.evaluator import evaluate, missing_view, part_matrix
from sibrar.models.base import FULL_VIEW, Model, View


class Cheater(Model):
    """Scores 3 for the user's training items, 2 for validation, 1 for test, 0 otherwise.

    Unmasked, every ranking would start with the training items: the adversary for masking.
    Embeddings: user = weighted interaction rows, item = one-hot.
    """

    name = "cheater"

    def __init__(self, inputs: ModelInputs, split: Split) -> None:
        super().__init__(None, inputs)
        weights = 3 * part_matrix(split, "train") + 2 * part_matrix(split, "valid") + part_matrix(split, "test")
        self.register_buffer("users", torch.from_numpy(weights.toarray()).float())
        self.register_buffer("items", torch.eye(inputs.n_items))

    def loss(self, batch):  # pragma: no cover
        raise NotImplementedError

    def user_embeddings(self, users, view=FULL_VIEW):
        return self.users[users]

    def item_embeddings(self, items, view=FULL_VIEW):
        return self.items[items]


class Fixed(Model):
    """Given embedding matrices, for the dense oracle."""

    name = "fixed"

    def __init__(self, inputs: ModelInputs, users: torch.Tensor, items: torch.Tensor) -> None:
        super().__init__(None, inputs)
        self.register_buffer("users", users)
        self.register_buffer("items", items)

    def loss(self, batch):  # pragma: no cover
        raise NotImplementedError

    def user_embeddings(self, users, view=FULL_VIEW):
        return self.users[users]

    def item_embeddings(self, items, view=FULL_VIEW):
        return self.items[items]


@pytest.fixture(scope="module")
def dataset(synthetic_shared_dir: Path) -> Dataset:
    return load_dataset(DataConfig(dataset=str(synthetic_shared_dir), k_core=0))


@pytest.fixture(scope="module", params=["random", "cold_item"])
def setup(request, dataset) -> tuple[ModelInputs, Split]:
    split = make_split(dataset, SplitConfig(protocol=request.param, seed=11))
    return build_inputs(dataset, split), split


def items_by_user(split: Split, part: str) -> dict[int, set[int]]:
    out: dict[int, set[int]] = {}
    for u, i in split.part(part).select("user_idx", "item_idx").iter_rows():  # type: ignore[arg-type]
        out.setdefault(u, set()).add(i)
    return out


K = EvalConfig(ks=(5, 40), metrics=("ndcg", "recall", "precision"))


def test_validation_ranking_never_contains_a_training_item(setup):
    inputs, split = setup
    result = evaluate(Cheater(inputs, split), inputs, split, "valid", K, keep_topk=True)
    assert result.topk is not None and result.topk.shape == (len(result.users), 40)
    train, valid = items_by_user(split, "train"), items_by_user(split, "valid")
    for u, row in zip(result.users.tolist(), result.topk.tolist()):
        ranked = [i for i in row if i >= 0]
        assert not set(ranked) & train.get(u, set()), f"user {u}: a training item was ranked"
        # the validation items score highest among what is left, so they come first
        assert set(ranked[: len(valid[u])]) == valid[u]
    assert result.summary["recall@40"] == pytest.approx(1.0)


def test_test_ranking_never_contains_a_training_or_validation_item(setup):
    inputs, split = setup
    result = evaluate(Cheater(inputs, split), inputs, split, "test", K, keep_topk=True)
    assert result.topk is not None
    train, valid, test = items_by_user(split, "train"), items_by_user(split, "valid"), items_by_user(split, "test")
    for u, row in zip(result.users.tolist(), result.topk.tolist()):
        ranked = set(i for i in row if i >= 0)
        assert not ranked & train.get(u, set()) and not ranked & valid.get(u, set()), f"user {u}"
        assert set(row[: len(test[u])]) == test[u]
    assert result.summary["ndcg@40"] == pytest.approx(1.0)


def test_only_candidates_are_ranked_and_only_users_with_truth_are_evaluated(setup):
    inputs, split = setup
    for part in ("valid", "test"):
        result = evaluate(Cheater(inputs, split), inputs, split, part, K, keep_topk=True)
        assert result.topk is not None
        allowed = set(split.candidates(part).tolist())  # type: ignore[arg-type]
        assert set(result.topk[result.topk >= 0].tolist()) <= allowed
        assert np.array_equal(result.users, np.sort(split.part(part)["user_idx"].unique().to_numpy()))
        if split.is_cold:
            assert allowed == set(split.part(part)["item_idx"].unique().to_list())  # type: ignore[arg-type]


def test_candidates_all_ranks_the_whole_catalogue_minus_masked(setup):
    inputs, split = setup
    cfg = EvalConfig(ks=(40,), metrics=("recall",), candidates="all")
    result = evaluate(Cheater(inputs, split), inputs, split, "test", cfg, keep_topk=True)
    assert result.topk is not None
    if split.is_cold:  # warm training items of other users are now candidates too
        assert set(result.topk[result.topk >= 0].tolist()) - set(split.candidates("test").tolist())


def dense_oracle(user_emb: torch.Tensor, item_emb: torch.Tensor, users: np.ndarray, exclude: sp.csr_array,
                 candidates: np.ndarray, k: int) -> np.ndarray:
    """Naive top-k: every score, masked items to -inf, a full argsort per user."""
    scores = (user_emb[torch.from_numpy(users)] @ item_emb.T).numpy().astype(np.float64)
    allowed = np.zeros(item_emb.shape[0], dtype=bool)
    allowed[candidates] = True
    out = np.full((len(users), k), -1)
    for row, u in enumerate(users):
        s = np.where(allowed, scores[row], -np.inf)
        s[exclude[[u]].indices] = -np.inf
        order = [i for i in np.argsort(-s, kind="stable") if np.isfinite(s[i])][:k]
        out[row, : len(order)] = order
    return out


@pytest.mark.parametrize("part", ["valid", "test"])
def test_evaluator_equals_a_dense_oracle_for_any_user_chunk(setup, part, rng):
    inputs, split = setup
    user_emb = torch.from_numpy(rng.normal(size=(inputs.n_users, 6))).float()
    item_emb = torch.from_numpy(rng.normal(size=(inputs.n_items, 6))).float()
    model = Fixed(inputs, user_emb, item_emb)
    exclude = part_matrix(split, "train") + (part_matrix(split, "valid") if part == "test" else 0)
    whole = evaluate(model, inputs, split, part, EvalConfig(ks=(10,), metrics=("ndcg",)), keep_topk=True)  # type: ignore[arg-type]
    chunked = evaluate(model, inputs, split, part, EvalConfig(ks=(10,), metrics=("ndcg",), batch_users=3),  # type: ignore[arg-type]
                       keep_topk=True)
    oracle = dense_oracle(user_emb, item_emb, whole.users, sp.csr_array(exclude), split.candidates(part), 10)  # type: ignore[arg-type]
    assert whole.topk is not None and chunked.topk is not None
    np.testing.assert_array_equal(whole.topk, oracle)
    np.testing.assert_array_equal(chunked.topk, oracle)
    assert whole.summary == chunked.summary


def test_evaluation_restores_the_training_mode(setup):
    inputs, split = setup
    model = Cheater(inputs, split).train()
    evaluate(model, inputs, split, "valid", K)
    assert model.training
    model.eval()
    evaluate(model, inputs, split, "valid", K)
    assert not model.training


def test_missing_view_is_named_in_the_result(setup):
    inputs, split = setup
    view = missing_view(inputs.n_items, "genres", 0.5, seed=3)
    assert isinstance(view, View) and view.name == "item:-genres@0.5"
    assert int(view.item.missing["genres"].sum()) == round(0.5 * inputs.n_items)
    assert evaluate(Cheater(inputs, split), inputs, split, "valid", K, view=view).view == "item:-genres@0.5"
