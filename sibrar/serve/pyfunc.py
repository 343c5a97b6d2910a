"""A trained run as an MLflow pyfunc model: ``predict`` on a frame of user ids gives their top-k.

The logged model carries its own arrays (user and item ids and embeddings, the seen-items matrix,
titles) in one ``.npz``, so loading it needs neither the dataset nor the run folder, and
``mlflow models serve`` answers with plain numpy. Scores are exact inner products; seen items are
excluded, as in `sibrar recommend`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

try:  # MLflow is imported by the caller that logs; loading the model imports it anyway
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[assignment,misc]

ARTIFACT = "recommender"
DEFAULT_K = 10


def export_arrays(model: Any, prepared: Any, path: str | Path) -> Path:
    """Write the arrays ``predict`` needs for a trained model and its prepared data to ``path`` (.npz)."""
    import polars as pl

    from sibrar._io import atomic_write
    from sibrar.retrieval.recommender import all_embeddings
    from sibrar.serve.service import _titles

    user_emb, item_emb = all_embeddings(model)
    split, dataset = prepared.split, prepared.dataset
    seen = pl.concat([split.part("train"), split.part("valid")]).sort("user_idx")
    indptr = np.searchsorted(seen["user_idx"].to_numpy(), np.arange(dataset.n_users + 1))
    titles = _titles(dataset.item_table, dataset.n_items)
    path = Path(path)
    with atomic_write(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, user_ids=dataset.users.ids.astype(str), item_ids=dataset.items.ids.astype(str),
                     user_emb=user_emb, item_emb=item_emb, seen_indptr=indptr.astype(np.int64),
                     seen_items=seen["item_idx"].to_numpy().astype(np.int64),
                     titles=np.array(["" if t is None else t for t in titles], dtype=str))
    return path


class RecommenderModel(PythonModel):  # type: ignore[misc,valid-type]
    """pyfunc: DataFrame with ``user_id`` (and optionally ``k``) → user_id, rank, item_id, title, score."""

    def load_context(self, context: Any) -> None:
        data = np.load(context.artifacts[ARTIFACT], allow_pickle=False)
        self.user_ids, self.item_ids, self.titles = data["user_ids"], data["item_ids"], data["titles"]
        self.user_emb, self.item_emb = data["user_emb"], data["item_emb"]
        self.indptr, self.seen = data["seen_indptr"], data["seen_items"]
        self.lookup = {u: i for i, u in enumerate(self.user_ids.tolist())}

    def predict(self, context, model_input, params=None):  # noqa: ANN001, ANN201 (MLflow reads type hints as a schema)
        """Top-k rows per input user; ``k`` from ``params``, a ``k`` column, or 10."""
        import pandas as pd

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if "user_id" not in frame.columns:
            raise ValueError(f"input needs a user_id column; got columns {list(frame.columns)}")
        ids = frame["user_id"].astype(str).tolist()
        unknown = [u for u in ids if u not in self.lookup]
        if unknown:
            raise ValueError(f"unknown user id {unknown[0]!r} ({len(unknown)} unknown; the model knows {len(self.lookup)})")
        k = int((params or {}).get("k") or (frame["k"].iloc[0] if "k" in frame.columns else DEFAULT_K))
        if not 1 <= k <= len(self.item_ids):
            raise ValueError(f"k must be in [1, {len(self.item_ids)}], got {k}")
        users = np.fromiter((self.lookup[u] for u in ids), dtype=np.int64, count=len(ids))
        scores = self.user_emb[users] @ self.item_emb.T  # (Q, I)
        starts, stops = self.indptr[users], self.indptr[users + 1]
        lens = stops - starts
        rows = np.repeat(np.arange(len(users)), lens)
        cols = self.seen[np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens) + np.repeat(starts, lens)]
        scores[rows, cols] = -np.inf
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)  # (Q, k)
        best = np.take_along_axis(scores, top, axis=1)
        return pd.DataFrame({"user_id": np.repeat(np.asarray(ids, dtype=str), k),
                             "rank": np.tile(np.arange(1, k + 1), len(ids)),
                             "item_id": self.item_ids[top.ravel()], "title": self.titles[top.ravel()],
                             "score": best.ravel().astype(np.float64)})
