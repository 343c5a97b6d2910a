"""Serving a trained run: top-k for known users, new items and new users embedded from side information.

Unknown categories / tags in new-entity features follow ``on_unknown``: ``"error"`` (default) raises
RetrievalError naming the modality and value; ``"ignore"`` drops them with one DataWarning (count).
New entities never train anything: their rows are fed through the model's own tower with
``interactions`` / ``id`` unavailable, exactly how a cold item of a cold-start split is embedded.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import scipy.sparse as sp
import torch

from sibrar._io import atomic_write
from sibrar.data.modalities import Modality
from sibrar.errors import DataError, DataWarning, RetrievalError
from sibrar.retrieval.index import AppendOnly, IndexConfig, ItemIndex, choose_config

OnUnknown = Literal["error", "ignore"]
_TRAINED_ONLY = ("interactions", "id")  # modalities a new entity cannot have (built from training data)
DENSE_MAX_SCORES = 4_000_000  # a flat index answers small queries × catalogue products by one dense GEMM
GEMM_MAX_ITEMS = 200_000  # recommend_all: exact blocked GEMM up to this size, the index above (if approximate)


class Recommender:
    """A loaded run with its user/item embeddings and a FAISS index over the items.

    Items are indexed by position: 0..n_items-1 are the run's items, added items follow. Seen items
    (training + validation interactions) are never recommended to a known user.
    """

    def __init__(self, run: Any, user_emb: np.ndarray, item_emb: np.ndarray, index: ItemIndex) -> None:
        self.run = run
        self.user_emb = user_emb  # (U, d) float32
        self._item_emb = AppendOnly(item_emb)  # (I, d) float32: the run's items, then the added ones
        self.index = index
        prep = run.prepared
        self.user_ids = prep.dataset.users
        self._item_ids = AppendOnly(np.array([str(v) for v in prep.dataset.items.ids.tolist()], dtype=object))
        self._item_pos = {v: i for i, v in enumerate(self._item_ids.view.tolist())}
        self.removed = np.empty(0, dtype=np.int64)  # sorted positions taken out (remove_items): never returned
        split = prep.split
        seen = pl.concat([split.part("train"), split.part("valid")])
        rows, cols = seen["user_idx"].to_numpy(), seen["item_idx"].to_numpy()
        self.seen = sp.csr_array((np.ones(len(rows), dtype=np.float32), (rows, cols)),
                                 shape=(prep.dataset.n_users, prep.dataset.n_items))  # (U, I)

    @classmethod
    def load(cls, run_dir: str | Path, *, device: str = "cpu", index_config: IndexConfig | None = None,
             rebuild: bool = False) -> Recommender:
        """Load a run and its index from ``<run_dir>/index/`` (built and saved there when absent).

        ``rebuild`` (or an ``index_config`` whose kind differs from the saved one) builds anew and
        overwrites the saved index. A saved index from another run raises RetrievalError.
        """
        from sibrar.train.run import load_run

        run = load_run(run_dir, device=device)
        user_emb, item_emb = all_embeddings(run.model)
        folder = Path(run_dir) / "index"
        fingerprint = run_fingerprint(run_dir)
        index = None
        if (folder / "index.json").is_file() and not rebuild:
            index = ItemIndex.load(folder, expected_fingerprint=fingerprint)
            if index.n_items != item_emb.shape[0] or index.dim != item_emb.shape[1]:
                raise RetrievalError(f"{folder}: index holds {index.n_items} items of dim {index.dim}, the run has "
                                     f"{item_emb.shape[0]} of dim {item_emb.shape[1]}; rebuild it (`sibrar index`)")
            if index_config is not None and index_config.kind != index.config.kind:
                index = None
        if index is None:
            config = index_config or choose_config(item_emb.shape[0])
            index = ItemIndex.build(item_emb, config=config, fingerprint=fingerprint)
            index.save(folder)
        return cls(run, user_emb, item_emb, index)

    # ------------------------------------------------------------------------------ known users

    @property
    def n_items(self) -> int:
        return self._item_ids.n

    def item_embeddings(self, positions: np.ndarray | None = None) -> np.ndarray:
        """(n, d) embeddings of items by position (all items, added ones included, when None)."""
        emb = self._item_emb.view
        return emb if positions is None else emb[np.asarray(positions, dtype=np.int64)]

    def item_ids(self, positions: np.ndarray) -> np.ndarray:
        """Item positions → external ids (None for the -1 padding)."""
        ids = self._item_ids.view
        return np.where(positions >= 0, ids[np.maximum(positions, 0)], None)

    def recommend(self, user_ids: Sequence[str] | str, k: int = 10) -> pl.DataFrame:
        """Top-k unseen items per known user: columns user_id, rank (1..k), item_id, score.

        Each user gets k rows whenever k unseen items exist (fewer only when the catalogue runs out).
        """
        ids = [user_ids] if isinstance(user_ids, str) else [str(u) for u in user_ids]
        self.check_k(k)
        try:
            users = self.user_ids.idx(ids, what="user id")
        except DataError as exc:
            raise RetrievalError(f"{exc}; recommend() knows the run's users only (use recommend_new_user "
                                 "for others)") from exc
        return self._search(np.asarray(ids, dtype=object), self.user_emb[users], self.seen[users], k)

    def recommend_all(self, k: int = 10, *, batch: int = 4096, exact: bool | None = None) -> pl.DataFrame:
        """:meth:`recommend` for every user of the run, in batches.

        ``exact`` (default: catalogue ≤ GEMM_MAX_ITEMS) ranks by one blocked GEMM over all items,
        which beats any index for batches of users on small catalogues; above it an approximate
        index (ivfpq, hnsw, ivf) answers, and a flat one falls back to the exact GEMM.
        """
        self.check_k(k)
        if exact is None:  # a flat index is exact already and needs no dense score block
            exact = self.n_items <= GEMM_MAX_ITEMS or self.index.config.kind == "flat"
        parts = []
        for s in range(0, len(self.user_ids), batch):
            users = np.arange(s, min(s + batch, len(self.user_ids)))
            ids = self.user_ids.id_of(users).astype(object)
            if exact:
                pos, scores = self._gemm_topk(self.user_emb[users], self.seen[users], k)
                parts.append(self._frame(ids, pos, scores))
            else:
                parts.append(self._search(ids, self.user_emb[users], self.seen[users], k))
        return pl.concat(parts)

    def _gemm_topk(self, query: np.ndarray, seen: sp.csr_array, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact (Q, k) positions and scores by dense scoring (seen and removed items excluded)."""
        from sibrar.eval.ranking import topk_items

        exclude = self._exclusions(seen)
        pos, scores = topk_items(torch.from_numpy(np.ascontiguousarray(query, dtype=np.float32)),
                                 torch.from_numpy(self.item_embeddings()), k, exclude=exclude, user_chunk=256)
        pos, scores = pos.numpy().astype(np.int64), scores.numpy().astype(np.float32)
        return np.where(np.isfinite(scores), pos, -1), scores

    def write_all(self, path: str | Path, k: int = 10) -> Path:
        """Recommendations for every user written atomically to parquet (nothing written on error)."""
        frame = self.recommend_all(k)
        with atomic_write(path) as tmp:
            frame.write_parquet(tmp)
        return Path(path)

    def check_k(self, k: int) -> None:
        """Raise RetrievalError unless 1 <= k <= the catalogue size (added items included)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_items:
            raise RetrievalError(f"k must be an integer in [1, {self.n_items}] (the catalogue size), got {k!r}")

    def search_positions(self, query: np.ndarray, seen: sp.csr_array | None, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(Q, k) item positions (-1 padding) and scores for query vectors; ``seen`` (Q, ≤I) excluded too.

        The low-level call a server uses: no id strings, no frame. Removed items are never returned.
        """
        query = np.ascontiguousarray(query, dtype=np.float32)
        if seen is None:
            seen = sp.csr_array((query.shape[0], self.n_items), dtype=np.float32)
        if self.index.config.kind == "flat" and query.shape[0] * self.n_items <= DENSE_MAX_SCORES:
            return self._dense_topk(query, seen, k)
        hits = self.index.search(query, k, exclude=self._exclusions(seen))
        return hits.ids, hits.scores

    def _dense_topk(self, query: np.ndarray, seen: sp.csr_array, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k by one small GEMM (what a flat index computes, without its exclusion bookkeeping)."""
        scores = query @ self.item_embeddings().T  # (Q, I)
        rows = np.repeat(np.arange(seen.shape[0]), np.diff(seen.indptr))
        scores[rows, seen.indices] = -np.inf
        scores[:, self.removed] = -np.inf
        k = min(k, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        best = np.take_along_axis(scores, top, axis=1)
        order = np.lexsort((top, -best), axis=1)  # best first; ties by position, so answers are reproducible
        top, best = np.take_along_axis(top, order, axis=1), np.take_along_axis(best, order, axis=1)
        return np.where(np.isfinite(best), top, -1), best

    def _exclusions(self, seen: sp.csr_array) -> sp.csr_array:
        """``seen`` widened to the whole catalogue, plus the removed items in every row."""
        exclude = sp.csr_array((seen.data, seen.indices, seen.indptr), shape=(seen.shape[0], self.n_items))
        if self.removed.size:
            rows = np.repeat(np.arange(seen.shape[0]), self.removed.size)
            gone = sp.csr_array((np.ones(rows.size, dtype=np.float32), (rows, np.tile(self.removed, seen.shape[0]))),
                                shape=exclude.shape)
            exclude = (exclude + gone).tocsr()
        return exclude

    def _search(self, user_ids: np.ndarray, query: np.ndarray, seen: sp.csr_array, k: int) -> pl.DataFrame:
        return self._frame(user_ids, *self.search_positions(query, seen, k))

    def _frame(self, user_ids: np.ndarray, pos: np.ndarray, scores: np.ndarray) -> pl.DataFrame:
        """(Q, k) positions and scores → rows user_id, rank, item_id, score (padding dropped)."""
        k = pos.shape[1]
        keep = (pos >= 0).ravel()
        return pl.DataFrame({
            "user_id": np.repeat(user_ids, k)[keep].astype(str),
            "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(user_ids))[keep],
            "item_id": self.item_ids(pos.ravel()[keep]).astype(str),
            "score": scores.ravel()[keep],
        })

    def find(self, item_id: str) -> int:
        """Position of a live item (run or added), -1 for unknown or removed ids."""
        pos = self._item_pos.get(str(item_id), -1)
        return -1 if pos < 0 or self.is_removed(pos) else pos

    def item_position(self, item_id: str) -> int:
        """Position of a live item (run or added); RetrievalError for unknown or removed ids."""
        pos = self.find(item_id)
        if pos < 0:
            raise RetrievalError(f"unknown item id {str(item_id)!r} ({self.n_items - self.removed.size} items known)")
        return pos

    def is_removed(self, pos: int) -> bool:
        i = np.searchsorted(self.removed, pos)
        return bool(i < self.removed.size and self.removed[i] == pos)

    def remove_items(self, item_ids: Sequence[str]) -> np.ndarray:
        """Take items out of every result from now on (the index keeps their rows); returns their positions.

        An added item's id may be added again afterwards (it gets a new position).
        """
        pos = np.array([self.item_position(v) for v in item_ids], dtype=np.int64)
        self.removed = np.union1d(self.removed, pos)
        return pos

    def rebuild_index(self, config: IndexConfig | None = None) -> None:
        """Index every item (added ones included) anew, e.g. after loading many added items at start-up.

        The saved index next to the run is not touched.
        """
        ids = np.arange(self.n_items)
        self.index = ItemIndex.build(self.item_embeddings(), ids, config or self.index.config,
                                     fingerprint=self.index.fingerprint)

    # ------------------------------------------------------------------------------ new entities

    def embed_items(self, features: pl.DataFrame | Mapping[str, Sequence[Any]], *,
                    on_unknown: OnUnknown = "error") -> np.ndarray:
        """(n, d) embeddings of new items from side information alone (one column per item modality).

        Columns are named like the item modalities (or their source column in the run's data config):
        strings for categorical, lists of strings (or space-separated strings) for tags, numbers for
        numeric (raw, scaled with the run's training min/max), lists of floats for vectors. A null or
        absent column means the item lacks that modality; an item with none of them is rejected.
        """
        model = self.run.model
        tower = getattr(model, "item_tower", None)
        if tower is None or not model.supports_cold_items:
            raise RetrievalError(f"model {model.name!r} cannot embed items from side information; "
                                 "new items need a SiBraR run whose item tower uses side modalities")
        frame = features if isinstance(features, pl.DataFrame) else pl.DataFrame(dict(features))
        columns = _source_columns(self.run.config.data.item_modalities)
        return _embed_new(tower, frame, columns, "item", on_unknown, extra={})

    def add_items(self, item_ids: Sequence[str], features: pl.DataFrame | Mapping[str, Sequence[Any]], *,
                  on_unknown: OnUnknown = "error") -> np.ndarray:
        """Embed new items (see :meth:`embed_items`) and add them to the index; returns their positions.

        The saved index on disk is left as built from the run; additions live in this object only.
        """
        ids = [str(v) for v in item_ids]
        dup = [v for v in ids if v in self._item_pos and not self.is_removed(self._item_pos[v])]
        if dup or len(set(ids)) != len(ids):
            bad = dup[0] if dup else next(v for v in ids if ids.count(v) > 1)
            raise RetrievalError(f"new item id {bad!r} is already in the catalogue (or repeated); give unused ids")
        frame = features if isinstance(features, pl.DataFrame) else pl.DataFrame(dict(features))
        if frame.height != len(ids):
            raise RetrievalError(f"{len(ids)} new item ids but {frame.height} feature rows")
        emb = self.embed_items(frame, on_unknown=on_unknown)
        return self.add_embedded(ids, emb)

    def add_embedded(self, item_ids: Sequence[str], emb: np.ndarray) -> np.ndarray:
        """Add items already embedded by :meth:`embed_items` (ids checked by the caller); their positions."""
        ids = [str(v) for v in item_ids]
        start = self.n_items
        self.index.add(emb)
        self._item_emb.append(emb)
        for i, v in enumerate(ids):
            self._item_pos[v] = start + i
        self._item_ids.append(np.array(ids, dtype=object))
        return np.arange(start, self.n_items)

    def embed_new_user(self, item_ids: Sequence[str] = (), features: pl.DataFrame | Mapping[str, Any] | None = None,
                       *, on_unknown: OnUnknown = "error") -> np.ndarray:
        """(d,) embedding of a user not in the run, from a few interacted items and/or user side modalities.

        Supported when the user tower uses ``interactions`` (the item ids must be the run's items,
        not added ones) and/or side modalities such as demographics; an ``id``-only tower cannot.
        """
        model = self.run.model
        tower = getattr(model, "user_tower", None)
        if tower is None or not model.supports_cold_users:
            raise RetrievalError(f"model {model.name!r} cannot embed unknown users; use a SiBraR run")
        frame = pl.DataFrame(dict(features)) if isinstance(features, Mapping) else features
        frame = frame if frame is not None else pl.DataFrame({"__row": [0]})
        if frame.height != 1:
            raise RetrievalError(f"embed_new_user takes one user's features, got {frame.height} rows")
        extra: dict[str, Modality] = {}
        if item_ids:
            if "interactions" not in tower.eval_names:
                raise RetrievalError(f"the user tower does not use interactions (it uses {', '.join(tower.eval_names)})")
            pos = [self._item_pos.get(str(v), -1) for v in item_ids]
            bad = [v for v, p in zip(item_ids, pos) if p < 0 or p >= model.n_items]
            if bad:
                raise RetrievalError(f"unknown item id {str(bad[0])!r} in the new user's history; only the run's "
                                     f"{model.n_items} items can describe a user")
            cols = torch.tensor(sorted(set(pos)), dtype=torch.long)
            csr = torch.sparse_csr_tensor(torch.tensor([0, len(cols)]), cols, torch.ones(len(cols)),
                                          size=(1, model.n_items), check_invariants=False)
            extra["interactions"] = Modality("interactions", "interactions", torch.ones(1, dtype=torch.bool), csr)
        columns = _source_columns(self.run.config.data.user_modalities)
        return _embed_new(tower, frame, columns, "user", on_unknown, extra=extra)[0]

    def recommend_new_user(self, item_ids: Sequence[str] = (), features: pl.DataFrame | Mapping[str, Any] | None = None,
                           k: int = 10, *, on_unknown: OnUnknown = "error") -> pl.DataFrame:
        """Top-k for a user not in the run (the given history items are excluded); user_id is ``<new>``."""
        self.check_k(k)
        emb = self.embed_new_user(item_ids, features, on_unknown=on_unknown)
        pos = np.array(sorted({self._item_pos[str(v)] for v in item_ids}), dtype=np.int64)
        seen = sp.csr_array((np.ones(len(pos), dtype=np.float32), (np.zeros(len(pos), dtype=np.int64), pos)),
                            shape=(1, self.n_items))
        return self._search(np.array(["<new>"], dtype=object), emb[None, :], seen, k)


def all_embeddings(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(U, d) user and (I, d) item embeddings of every entity of a trained model (in eval mode), float32 numpy."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            item_emb = model.all_item_embeddings().float().cpu().numpy()
            users = torch.arange(model.n_users, device=model.device)
            user_emb = torch.cat([model.user_embeddings(users[s:s + 4096]) for s in range(0, model.n_users, 4096)])
    finally:
        model.train(was_training)
    return user_emb.float().cpu().numpy(), item_emb


def run_fingerprint(run_dir: str | Path) -> str:
    """What a saved index is tied to: the run's split hash and model name (from manifest.json)."""
    import json

    path = Path(run_dir) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RetrievalError(f"{path}: cannot read the run manifest ({exc})") from exc
    return f"{manifest.get('split_hash')}:{manifest.get('model')}"


def _source_columns(specs: Mapping[str, Any] | None) -> dict[str, str]:
    """Modality name → the column a new-entity frame may carry it in (besides the name itself)."""
    return {name: spec.column for name, spec in (specs or {}).items() if getattr(spec, "column", None)}


def _embed_new(tower: Any, frame: pl.DataFrame, columns: dict[str, str], entity: str, on_unknown: OnUnknown,
               extra: dict[str, Modality]) -> np.ndarray:
    """Run `tower.embed` on new rows: each projection temporarily sees only the new rows' modality."""
    if on_unknown not in ("error", "ignore"):
        raise RetrievalError(f"on_unknown must be 'error' or 'ignore', got {on_unknown!r}")
    n = frame.height
    if n == 0:
        raise RetrievalError(f"no new {entity}s given")
    new: dict[str, Modality] = {}
    for name in tower.names:
        old = tower.projections[name].modality
        if name in extra:
            new[name] = extra[name]
        elif name in _TRAINED_ONLY:
            new[name] = _absent(old, n)
        else:
            col = name if name in frame.columns else columns.get(name)
            new[name] = (_convert(old, frame[col], entity, on_unknown) if col in frame.columns else _absent(old, n))
    usable = torch.stack([new[m].available for m in tower.eval_names], dim=1)  # (n, M_eval)
    if not usable.any(dim=1).all():
        row = int((~usable.any(dim=1)).nonzero()[0, 0])
        sides = [m for m in tower.eval_names if m not in _TRAINED_ONLY or m in extra]
        raise RetrievalError(f"new {entity} row {row} has none of the modalities the {entity} tower uses "
                             f"({', '.join(sides) or 'none besides id'}); give at least one of them")
    with _swapped(tower, new):
        device = tower.available.device
        with torch.no_grad():
            emb = tower.embed(torch.arange(n, device=device), _full_side_view())
    return emb.float().cpu().numpy()


def _full_side_view() -> Any:
    from sibrar.models.base import SideView

    return SideView()


@contextmanager
def _swapped(tower: Any, new: dict[str, Modality]) -> Iterator[None]:
    """Point every projection (and the tower's availability) at the new rows; restore afterwards."""
    device = tower.available.device
    saved = {name: tower.projections[name].modality for name in tower.names}
    saved_available = tower.available
    try:
        for name in tower.names:
            m = new[name]
            tower.projections[name].modality = replace(m, available=m.available.to(device), values=m.values.to(device))
        tower.available = torch.stack([new[m].available for m in tower.names], dim=1).to(device)
        yield
    finally:
        for name, m in saved.items():
            tower.projections[name].modality = m
        tower.available = saved_available


def _absent(old: Modality, n: int) -> Modality:
    """The modality with n rows, all unavailable."""
    available = torch.zeros(n, dtype=torch.bool)
    if old.kind == "interactions":
        values = torch.sparse_csr_tensor(torch.zeros(n + 1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                                         torch.zeros(0), size=(n, old.values.shape[1]), check_invariants=False)
    elif old.kind == "categorical":
        values = torch.zeros(n, dtype=torch.long)
    elif old.kind == "tags":
        values = torch.zeros(n, 1, dtype=torch.long)
    else:
        values = torch.zeros(n, old.values.shape[1])
    return replace(old, available=available, values=values)


def _convert(old: Modality, col: pl.Series, entity: str, on_unknown: OnUnknown) -> Modality:
    """One frame column → the modality's tensors, through the run's vocabulary / scale / width."""
    where = f"new {entity} modality {old.name!r}"
    n = len(col)
    if old.kind in ("categorical", "tags"):
        lookup = {tok: code for code, tok in enumerate(old.vocab) if code > 0}
        if old.kind == "categorical":
            rows = [[None if v is None or v == "" else str(v)] for v in col.cast(pl.Utf8).to_list()]
        else:
            lists = col.to_list() if col.dtype == pl.List(pl.Utf8) else [
                None if v is None else str(v).split() for v in col.cast(pl.Utf8).to_list()]
            rows = [[str(t) for t in (lst or []) if t not in (None, "")] for lst in lists]
        codes, unknown = [], []
        for lst in rows:
            found = [lookup.get(t, 0) for t in lst if t is not None]
            unknown += [t for t in lst if t is not None and t not in lookup]
            codes.append(list(dict.fromkeys(c for c in found if c > 0)))
        if unknown:
            if on_unknown == "error":
                raise RetrievalError(f"{where}: unknown value {unknown[0]!r} ({len(unknown)} unknown in all; the run "
                                     f"knows {len(old.vocab) - 1}); pass on_unknown='ignore' to drop unknown values")
            warnings.warn(f"{where}: {len(unknown)} unknown values dropped (e.g. {unknown[0]!r})", DataWarning,
                          stacklevel=4)
        if old.kind == "categorical":
            values = torch.tensor([c[0] if c else 0 for c in codes], dtype=torch.long)
            return replace(old, available=values > 0, values=values)
        width = max(1, max(map(len, codes), default=1))
        mat = torch.zeros(n, width, dtype=torch.long)
        for i, c in enumerate(codes):
            mat[i, : len(c)] = torch.tensor(c, dtype=torch.long)
        return replace(old, available=(mat > 0).any(dim=1), values=mat)
    if old.kind == "numeric":
        width = old.values.shape[1]
        if isinstance(col.dtype, (pl.List, pl.Array)):
            lists = col.to_list()
            bad = next((i for i, v in enumerate(lists) if v is not None and len(v) != width), None)
            if bad is not None:
                raise RetrievalError(f"{where}: row {bad}: expected {width} number(s) per row, got {len(lists[bad])}")
            rows = [[float("nan")] * width if v is None else [float("nan") if x is None else x for x in v] for v in lists]
            arr = np.asarray(rows, dtype=np.float64).reshape(n, width)
        else:
            try:
                raw = col if col.dtype == pl.Float64 else col.cast(pl.Float64, strict=True)
            except pl.exceptions.PolarsError as exc:
                raise RetrievalError(f"{where}: expected numbers, got {col.dtype}") from exc
            arr = raw.fill_null(float("nan")).to_numpy().reshape(n, -1)
            if arr.shape[1] != width:
                raise RetrievalError(f"{where}: expected {width} number(s) per row, got {arr.shape[1]}")
        available = ~np.isnan(arr).any(axis=1)
        lo, hi = old.scale or (0.0, 1.0)
        span = hi - lo if hi > lo else 1.0
        scaled = np.clip((np.nan_to_num(arr) - lo) / span, 0.0, 1.0) * available[:, None]
        return replace(old, available=torch.from_numpy(available), values=torch.from_numpy(scaled).float())
    if old.kind == "vector":
        expected = old.values.shape[1]
        lists = col.to_list()
        vec = np.zeros((n, expected), dtype=np.float32)
        available = np.zeros(n, dtype=bool)
        for i, v in enumerate(lists):
            if v is None:
                continue
            arr = np.asarray(v, dtype=np.float32).ravel()
            if arr.shape[0] != expected:
                raise RetrievalError(f"{where}: row {i} has a vector of dimension {arr.shape[0]}, expected {expected}")
            vec[i], available[i] = arr, True
        return replace(old, available=torch.from_numpy(available), values=torch.from_numpy(vec))
    raise RetrievalError(f"{where}: kind {old.kind!r} cannot be given for a new {entity}")
