"""Model inputs for one split: side modalities plus the `interactions` and `id` modalities of the
training part, numeric modalities scaled on training entities only. Built once, preloaded as tensors."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from sibrar.data import modalities as M
from sibrar.data.dataset import Dataset
from sibrar.data.splits import Split


@dataclass(frozen=True, eq=False)
class ModelInputs:
    """Everything a model may read. Cold entities have `interactions` and `id` marked unavailable."""

    n_users: int
    n_items: int
    user: M.EntityFeatures
    item: M.EntityFeatures
    train_matrix: torch.Tensor  # (n_users, n_items) sparse CSR float, 1 for training interactions
    item_popularity: torch.Tensor  # (n_items,) training interaction counts
    train_items: torch.Tensor  # (n_train_items,) long, items with >= 1 training interaction

    def features(self, entity: str) -> M.EntityFeatures:
        return self.user if entity == "user" else self.item


def csr_from_pairs(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """A binary sparse CSR matrix from (row, col) pairs (duplicates collapse to 1)."""
    key = np.sort(rows.astype(np.int64) * shape[1] + cols.astype(np.int64))
    key = key[np.r_[True, key[1:] != key[:-1]][: len(key)]]  # unique; numpy 2.4's hash-based np.unique is ~90x slower
    r, c = key // shape[1], key % shape[1]
    crow = np.zeros(shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=shape[0]), out=crow[1:])
    with warnings.catch_warnings():  # torch labels sparse CSR "beta"; the ops used here are stable
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(torch.from_numpy(crow), torch.from_numpy(c), torch.ones(len(c)), size=shape,
                                       check_invariants=False)


def build_inputs(dataset: Dataset, split: Split) -> ModelInputs:
    """Attach training-derived modalities to the dataset's side modalities for this split."""
    train = split.train
    users = train["user_idx"].to_numpy()
    items = train["item_idx"].to_numpy()
    n_u, n_i = dataset.n_users, dataset.n_items
    matrix = csr_from_pairs(users, items, (n_u, n_i))
    matrix_t = csr_from_pairs(items, users, (n_i, n_u))
    user_count = torch.from_numpy(np.bincount(users, minlength=n_u))
    item_count = torch.from_numpy(np.bincount(items, minlength=n_i))
    train_users = np.flatnonzero(user_count.numpy() > 0)
    train_items = np.flatnonzero(item_count.numpy() > 0)

    def side(features: M.EntityFeatures, fit_rows: np.ndarray, csr: torch.Tensor, counts: torch.Tensor) -> M.EntityFeatures:
        scaled = {name: M.fit_scale(m, fit_rows) for name, m in features.modalities.items()}
        warm = counts > 0
        codes = torch.where(warm, torch.arange(1, features.n + 1), torch.zeros(features.n, dtype=torch.long))
        interactions = M.Modality("interactions", "interactions", warm, csr)
        ident = M.Modality("id", "categorical", warm, codes, tuple(["<missing>", *map(str, range(features.n))]))
        return M.EntityFeatures(features.entity, features.n, {"interactions": interactions, "id": ident, **scaled})

    return ModelInputs(
        n_users=n_u,
        n_items=n_i,
        user=side(dataset.user_side, train_users, matrix, user_count),
        item=side(dataset.item_side, train_items, matrix_t, item_count),
        train_matrix=matrix,
        item_popularity=item_count.float(),
        train_items=torch.from_numpy(train_items),
    )
