"""The served state of one run: a Recommender, item titles, the added-items store and the locks.

Queries hold a shared (read) lock; adding or removing an item holds the exclusive (write) lock for
the moment the index and the id maps change, so no query sees a half-updated index. Embedding
through a tower swaps the tower's modality tensors for the new rows, so every tower call is
serialised by a separate lock (queries of known users never wait for it).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from sibrar.encoders.text import embed_texts, load_text_model
from sibrar.errors import ConflictError, DataError, NotFoundError, RetrievalError
from sibrar.retrieval.index import IndexConfig, choose_config
from sibrar.retrieval.recommender import Recommender
from sibrar.serve.store import ItemStore
from sibrar.serve.text import text_features

TITLE_COLUMNS = ("movie_title", "title", "name", "track_name", "item_name")
AUDIENCE_POOL = 50  # users checked for "the new item is in their top-k" after an add


class RWLock:
    """Many readers or one writer; a waiting writer blocks new readers (no writer starvation)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writer = False
        self._waiting = 0

    @contextmanager
    def read(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


@dataclass(frozen=True)
class Hit:
    item_id: str
    title: str | None
    rank: int
    score: float


class Service:
    """Thread-safe queries and catalogue changes over a loaded run (see the module docstring)."""

    def __init__(self, rec: Recommender, store: ItemStore, run_dir: Path) -> None:
        self.rec, self.store, self.run_dir = rec, store, run_dir
        self.lock = RWLock()
        self._embed_lock = threading.Lock()
        self.titles: list[str | None] = _titles(rec.run.prepared.dataset.item_table, rec.n_items)
        self.n_run_items = rec.n_items
        config = rec.run.config.data
        self.item_features = _feature_names(config.item_modalities, rec.run.model, "item_tower")
        self.user_features = _feature_names(config.user_modalities, rec.run.model, "user_tower")
        dataset = rec.run.prepared.dataset
        self.texts = text_features(dataset.folder, dataset.item_table, self.item_features)
        self._column_of = {name: spec.column for name, spec in (config.item_modalities or {}).items()
                           if getattr(spec, "column", None)}
        self._title_column = next((c for c in TITLE_COLUMNS if dataset.item_table is not None
                                   and c in dataset.item_table.columns), None)
        for feature in self.texts.values():  # columns a text is rendered from may be given too (not the title)
            self.item_features |= {c for c in feature.types if c != self._title_column}

    @classmethod
    def load(cls, run_dir: str | Path, *, index: str | None = None, device: str = "cpu") -> Service:
        """Load the run and its saved index (``index`` kind: built when different), then replay added items."""
        run_dir = Path(run_dir)
        rec = Recommender.load(run_dir, device=device, index_config=IndexConfig(kind=index) if index else None)
        service = cls(rec, ItemStore(run_dir), run_dir)
        for feature in service.texts.values():  # load the text encoders now, not in the first POST /items
            load_text_model(feature.encoder.model)
        service._replay(IndexConfig(kind=index) if index else None)
        return service

    def _replay(self, config: IndexConfig | None) -> None:
        """Re-embed the persisted adds (consecutive ones in one batch) and apply the removals, in order."""
        added = 0
        pending: list[dict[str, Any]] = []

        def flush() -> None:
            if pending:
                rows = self._with_texts([p["features"] for p in pending], [p.get("title") for p in pending])
                emb = self.rec.embed_items(_frame(rows), on_unknown="ignore")
                self._apply_add([str(p["item_id"]) for p in pending], [p.get("title") for p in pending], emb)
                pending.clear()

        for event in self.store.events():
            if event.op == "add":
                pending.extend(event.items)
                added += len(event.items)
            else:
                flush()
                self.rec.remove_items(event.item_ids)
        flush()
        if added:  # an ANN index trained on the run's items only would serve many added items badly
            self.rec.rebuild_index(config or choose_config(self.rec.n_items))

    # ------------------------------------------------------------------------------ reading

    def health(self) -> dict[str, Any]:
        with self.lock.read():
            n_live = self.rec.n_items - self.rec.removed.size
            return {"status": "ok", "run": self.run_dir.name, "model": self.rec.run.model.name,
                    "index": self.rec.index.config.kind, "n_users": len(self.rec.user_ids), "n_items": n_live,
                    "n_added": self.rec.n_items - self.n_run_items,
                    "item_modalities": sorted(self.item_features), "user_modalities": sorted(self.user_features)}

    def features(self) -> dict[str, list[dict[str, Any]]]:
        """The side features a new item / user may carry: name, kind, and the known values of categories and tags."""
        out = {}
        for entity, tower_name in (("item", "item_tower"), ("user", "user_tower")):
            tower = getattr(self.rec.run.model, tower_name, None)
            rows = []
            for name in (tower.names if tower is not None else []):
                if name in ("interactions", "id"):
                    continue
                m = tower.projections[name].modality
                rows.append({"name": name, "kind": m.kind, "values": sorted(m.vocab[1:]) if m.vocab else None,
                             "dim": int(m.values.shape[1]) if m.kind in ("numeric", "vector") else None})
            out[entity] = rows
        return out

    def user_ids(self, offset: int, limit: int) -> list[str]:
        return [str(v) for v in self.rec.user_ids.ids[offset:offset + limit].tolist()]

    def items(self, offset: int, limit: int) -> tuple[int, list[tuple[str, str | None]]]:
        """The live catalogue in position order (run items first, then added ones), one page of it."""
        with self.lock.read():
            live = np.setdiff1d(np.arange(self.rec.n_items), self.rec.removed, assume_unique=True)
            page = live[offset:offset + limit]
            return len(live), [(str(i), self.titles[p]) for i, p in zip(self.rec.item_ids(page).tolist(), page.tolist())]

    def _user(self, user_id: str) -> int:
        if user_id not in self.rec.user_ids:
            raise NotFoundError(f"unknown user id {user_id!r} ({len(self.rec.user_ids)} users known); "
                                "POST /recommendations serves users the model has never seen")
        return int(self.rec.user_ids.idx([user_id])[0])

    def history(self, user_id: str) -> list[tuple[str, str | None]]:
        u = self._user(user_id)
        pos = self.rec.seen[[u]].indices
        with self.lock.read():
            return [(str(i), self.titles[p]) for i, p in zip(self.rec.item_ids(pos), pos.tolist())]

    def recommend(self, user_id: str, k: int) -> list[Hit]:
        u = self._user(user_id)
        with self.lock.read():
            self._check_k(k)
            pos, scores = self.rec.search_positions(self.rec.user_emb[u:u + 1], self.rec.seen[[u]], k)
            return self._hits(pos[0], scores[0])

    def item(self, item_id: str) -> tuple[int, str | None]:
        with self.lock.read():
            pos = self._position(item_id)
            return pos, self.titles[pos]

    def _position(self, item_id: str) -> int:  # call under a lock
        try:
            return self.rec.item_position(item_id)
        except RetrievalError as exc:
            raise NotFoundError(str(exc)) from exc

    def similar(self, item_id: str, k: int) -> list[Hit]:
        with self.lock.read():
            pos = self._position(item_id)
            self._check_k(k)
            query = self.rec.item_embeddings(np.array([pos]))
            seen = sp.csr_array((np.ones(1, dtype=np.float32), (np.zeros(1, dtype=np.int64), np.array([pos]))),
                                shape=(1, self.rec.n_items))
            got, scores = self.rec.search_positions(query, seen, k)
            return self._hits(got[0], scores[0])

    def recommend_new_user(self, item_ids: Sequence[str], features: Mapping[str, Any], k: int) -> list[Hit]:
        """Top-k for a user described by liked items of the run and/or user features (liked items excluded)."""
        if not item_ids and not features:
            raise RetrievalError("item_ids, features: give at least one liked item id or one user feature")
        _check_names(features, self.user_features, "user")
        frame = _frame([dict(features)]) if features else None
        with self.lock.read():
            positions = [self.rec.find(v) for v in item_ids]
            for v, pos in zip(item_ids, positions):
                if pos < 0 or pos >= self.n_run_items:
                    raise RetrievalError(f"item_ids: unknown item id {str(v)!r}; a new user is described by items "
                                         f"of the trained run ({self.n_run_items} items)")
            history = np.unique(np.array(positions, dtype=np.int64))
        with self._embed_lock:
            emb = _guard(lambda: self.rec.embed_new_user(list(item_ids), frame), "features")
        seen = sp.csr_array((np.ones(history.size, dtype=np.float32), (np.zeros(history.size, dtype=np.int64), history)),
                            shape=(1, self.n_run_items))
        with self.lock.read():
            self._check_k(k)
            pos, scores = self.rec.search_positions(emb[None, :], seen, k)
            return self._hits(pos[0], scores[0])

    # ------------------------------------------------------------------------------ writing

    def add_item(self, item_id: str, title: str | None, features: Mapping[str, Any], k: int = 10) -> dict[str, Any]:
        """Embed an item from its features, persist it, index it; returns who now gets it in their top-k."""
        _check_names(features, self.item_features, "item")
        if not features:
            raise RetrievalError(f"features: give at least one item feature ({', '.join(sorted(self.item_features))})")
        self._check_new_id(item_id)
        with self._embed_lock:
            emb = _guard(lambda: self.rec.embed_items(_frame(self._with_texts([dict(features)], [title]))), "features")
        with self.lock.write():
            self._check_new_id(item_id)  # another request may have taken the id meanwhile
            self.store.add([{"item_id": item_id, "title": title, "features": dict(features)}])
            pos = int(self._apply_add([item_id], [title], emb)[0])
            n_live = self.rec.n_items - self.rec.removed.size
        return {"item_id": item_id, "title": title, "n_items": n_live, "k": k, "fits": self._audience(pos, emb[0], k)}

    def remove_item(self, item_id: str) -> int:
        """Take an item out of all results, persisted; returns the number of live items left."""
        with self.lock.write():
            self._position(item_id)
            self.store.remove([item_id])
            self.rec.remove_items([item_id])
            return self.rec.n_items - self.rec.removed.size

    def _with_texts(self, rows: list[dict[str, Any]], titles: list[str | None]) -> list[dict[str, Any]]:
        """Rows with each text modality the run rebuilds from columns filled in (when not given as a vector)."""
        if not self.texts:
            return rows
        rows = [dict(r) for r in rows]
        for name, feature in self.texts.items():
            todo, texts = [], []
            for i, (row, title) in enumerate(zip(rows, titles)):
                if isinstance(row.get(name), str):  # the text itself, e.g. a plot summary
                    todo.append(i)
                    texts.append(row[name])
                    continue
                if row.get(name) is not None:
                    continue
                values = {}
                for column in feature.types:
                    named = next((m for m, c in self._column_of.items() if c == column and m in row), None)
                    values[column] = row.get(column, row.get(named) if named else None)
                    if values[column] is None and column == self._title_column:
                        values[column] = title
                text = feature.render(values)
                if text:
                    todo.append(i)
                    texts.append(text)
            if texts:
                vectors = embed_texts(texts, feature.encoder)  # (n, d) by the run's own encoder settings
                for i, vec in zip(todo, vectors.tolist()):
                    rows[i][name] = vec
        return rows

    def _apply_add(self, ids: list[str], titles: list[str | None], emb: np.ndarray) -> np.ndarray:
        pos = self.rec.add_embedded(ids, emb)
        self.titles.extend(titles)
        return pos

    def _check_new_id(self, item_id: str) -> None:
        if self.rec.find(item_id) >= 0:
            raise ConflictError(f"item_id: {item_id!r} is already in the catalogue; use a new id "
                                f"(or DELETE /items/{item_id} first)")

    def _audience(self, pos: int, emb: np.ndarray, k: int) -> list[dict[str, Any]]:
        """Users among the AUDIENCE_POOL best-scoring ones whose top-k now contains item ``pos``."""
        scores = self.rec.user_emb @ emb  # (U,)
        pool = np.argsort(-scores, kind="stable")[:AUDIENCE_POOL]
        with self.lock.read():
            k = min(k, self.rec.n_items)
            top, _ = self.rec.search_positions(self.rec.user_emb[pool], self.rec.seen[pool], k)
        rows, ranks = np.nonzero(top == pos)
        return [{"user_id": str(self.rec.user_ids.id_of(pool[r])), "rank": int(c) + 1, "score": float(scores[pool[r]])}
                for r, c in zip(rows.tolist(), ranks.tolist())]

    # ------------------------------------------------------------------------------ helpers

    def _check_k(self, k: int) -> None:
        n = self.rec.n_items - self.rec.removed.size
        if not 1 <= k <= n:
            raise RetrievalError(f"k: must be in [1, {n}] (the catalogue size), got {k}")

    def _hits(self, pos: np.ndarray, scores: np.ndarray) -> list[Hit]:
        keep = pos >= 0
        pos, scores = pos[keep], scores[keep]
        ids = self.rec.item_ids(pos)
        return [Hit(str(i), self.titles[p], r + 1, float(s))
                for r, (i, p, s) in enumerate(zip(ids.tolist(), pos.tolist(), scores.tolist()))]


def _titles(table: pl.DataFrame | None, n: int) -> list[str | None]:
    """Item titles by position from the first title-like column (token lists joined by spaces)."""
    col = next((c for c in TITLE_COLUMNS if table is not None and c in table.columns), None)
    if col is None:
        return [None] * n
    series = table[col]
    if isinstance(series.dtype, pl.List):
        series = series.list.join(" ")
    return [None if v is None else str(v) for v in series.cast(pl.Utf8).to_list()]


def _feature_names(specs: Mapping[str, Any] | None, model: Any, tower_name: str) -> set[str]:
    """Features a new entity may carry: the tower's side modalities, by name or by source column."""
    tower = getattr(model, tower_name, None)
    if tower is None:
        return set()
    names = {m for m in tower.names if m not in ("interactions", "id")}
    columns = {getattr(spec, "column", None) for name, spec in (specs or {}).items() if name in names}
    return names | {c for c in columns if c}


def _check_names(features: Mapping[str, Any], valid: set[str], entity: str) -> None:
    bad = sorted(set(features) - valid)
    if bad:
        raise RetrievalError(f"features.{bad[0]}: not a {entity} feature of this run; valid: "
                             f"{', '.join(sorted(valid)) or 'none (the tower reads no side information)'}")


def _frame(rows: list[dict[str, Any]]) -> pl.DataFrame:
    """Feature dicts → one frame (missing keys are null: that entity lacks the modality)."""
    names = sorted({k for r in rows for k in r})
    try:
        return pl.DataFrame({n: [r.get(n) for r in rows] for n in names}, strict=False)
    except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise RetrievalError(f"features: values of one feature must have one type ({exc})") from exc


def _guard(call: Any, field: str) -> Any:
    """Run a tower call; low-level conversion failures become a RetrievalError naming the field."""
    try:
        return call()
    except (RetrievalError, DataError):
        raise
    except (ValueError, TypeError, pl.exceptions.PolarsError) as exc:
        raise RetrievalError(f"{field}: cannot be read ({' '.join(str(exc).split())[:200]})") from exc
