"""A FAISS index over any item-embedding matrix: exact or approximate maximum-inner-product search."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, get_args

import faiss
import numpy as np
import scipy.sparse as sp

from sibrar._io import read_faiss_index, read_text
from sibrar.errors import ConfigError, RetrievalError

IndexKind = Literal["flat", "hnsw", "ivf", "ivfpq"]
MipsMethod = Literal["reduction", "native"]
Storage = Literal["float32", "sq8"]
_FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """How to index item embeddings; ranking is by inner product (MIPS) unless ``normalize``.

    ``flat`` is exact (``IndexFlatIP``). For ``hnsw``/``ivf``, ``mips="reduction"`` maps MIPS to L2
    search (Bachrach et al. 2014: items get an extra coordinate sqrt(M² − ‖x‖²), queries a 0, so
    L2 order = inner-product order); ``"native"`` builds and searches faiss's graph / cells with the
    inner product itself (ip-NSW, Morozov & Babenko 2018). ``storage="sq8"`` keeps 8-bit codes in
    the ANN index (less memory traffic) and a float32 copy that reranks 2k candidates exactly.
    ``ivfpq`` is IVF with fast-scan product quantisation (4-bit codes, ``pq_m`` sub-quantisers, scanned
    in SIMD registers; André et al. 2017): built for large query batches, it keeps the float32 vectors
    beside the codes and reranks ``rerank`` × k candidates exactly (``storage`` does not apply).
    """

    kind: IndexKind = "flat"
    normalize: bool = False  # rank by cosine: L2-normalise items and queries (scores are cosines)
    mips: MipsMethod = "native"  # hnsw/ivf; native beat the reduction on recall (retrieval_speed.py)
    storage: Storage = "sq8"  # hnsw/ivf codes; sq8 ~1.4× faster at equal recall there; flat is float32
    hnsw_m: int = 32  # HNSW graph degree (faiss M); about 8·M bytes per item on top of the vectors
    ef_construction: int = 128  # HNSW build beam: better graph vs slower build
    ef_search: int = 96  # HNSW search beam (max(ef_search, fetched k) is used): recall vs speed
    nlist: int = 1024  # IVF cells; capped at n_items // 39 so k-means has 39 points per centroid
    nprobe: int = 32  # IVF cells visited per query: recall vs speed
    pq_m: int = 0  # ivfpq sub-quantisers (4 bits each); 0 = dim // 2, i.e. one byte per 4 dimensions
    rerank: int = 10  # ivfpq: fetch rerank × k candidates by code distance, rerank them exactly
    threads: int | None = None  # faiss OpenMP threads (process-wide); None keeps faiss's default

    def __post_init__(self) -> None:
        for name, valid in (("kind", get_args(IndexKind)), ("mips", get_args(MipsMethod)),
                            ("storage", get_args(Storage))):
            if getattr(self, name) not in valid:
                raise ConfigError(f"retrieval.{name}: unknown value {getattr(self, name)!r}; valid: {', '.join(valid)}")
        for name in ("hnsw_m", "ef_construction", "ef_search", "nlist", "nprobe", "threads", "rerank"):
            value = getattr(self, name)
            if (value is not None or name != "threads") and (type(value) is not int or value < 1):
                raise ConfigError(f"retrieval.{name}: expected a positive integer, got {value!r}")
        if type(self.pq_m) is not int or self.pq_m < 0:
            raise ConfigError(f"retrieval.pq_m: expected an integer >= 0 (0 = dim // 2), got {self.pq_m!r}")

    @property
    def uses_reduction(self) -> bool:  # vectors carry the extra MIPS→L2 coordinate
        return self.kind != "flat" and not self.normalize and self.mips == "reduction"

    @property
    def lossy(self) -> bool:  # faiss holds quantised codes; exact vectors are kept beside it
        return self.kind == "ivfpq" or (self.kind != "flat" and self.storage == "sq8")

    @property
    def fetch_factor(self) -> int:  # candidates fetched per wanted result before exact reranking
        return self.rerank if self.kind == "ivfpq" else 2 if self.lossy else 1


class AppendOnly:
    """An array that grows at the end with spare capacity, so appending costs the rows added, not the total."""

    def __init__(self, data: np.ndarray) -> None:
        self._buf, self.n = data, len(data)

    @property
    def view(self) -> np.ndarray:
        return self._buf[: self.n]

    def append(self, rows: np.ndarray) -> None:
        need = self.n + len(rows)
        if need > len(self._buf):
            grown = np.empty((max(need, 2 * len(self._buf)), *self._buf.shape[1:]), dtype=self._buf.dtype)
            grown[: self.n] = self._buf[: self.n]
            self._buf = grown
        self._buf[self.n:need] = rows
        self.n = need


class Hits(NamedTuple):
    """Top-k results, best first. Rows with fewer than k candidates are padded with -1 / -inf."""
    ids: np.ndarray  # (Q, k) int64 item ids (= positions when the index was built without ids)
    scores: np.ndarray  # (Q, k) float32 exact inner products (cosines when normalize=True)


class ItemIndex:
    """Top-k inner-product search over item vectors, with exclusion, incremental add and save/load.

    Items have a position ``idx`` (0..n_items−1, in build/add order) and an integer ``id``
    (``item_ids``, or the position itself). ``exclude`` in :meth:`search` is given in positions.
    """

    def __init__(self, index: faiss.Index, item_ids: np.ndarray, config: IndexConfig, dim: int,
                 max_norm: float, fingerprint: str, exact: np.ndarray | None) -> None:
        self._index = index
        self._ids = AppendOnly(item_ids)  # (I,) int64 id of each position
        self.config, self.dim, self.fingerprint = config, dim, fingerprint
        self._max_norm = max_norm  # the M of the MIPS reduction (0 when unused)
        self._exact_rows = None if exact is None else AppendOnly(exact)  # lossy only: (I, d) float32 vectors

    @property
    def _item_ids(self) -> np.ndarray:
        return self._ids.view

    @property
    def _exact(self) -> np.ndarray | None:  # metric-space float32 vectors when the index is lossy, else None
        return None if self._exact_rows is None else self._exact_rows.view

    @classmethod
    def build(cls, item_emb: np.ndarray, item_ids: np.ndarray | None = None,
              config: IndexConfig | None = None, *, fingerprint: str = "") -> ItemIndex:
        """Index ``item_emb`` (I, d); ``fingerprint`` (e.g. run id or hash) is checked on load."""
        config = config or IndexConfig()
        item_emb = _check_matrix(item_emb, "item_emb", dim=None)
        n = item_emb.shape[0]
        ids = _check_ids(np.arange(n) if item_ids is None else item_ids, n, existing=None)
        index, max_norm = _build_faiss(item_emb, config)
        exact = _metric_space(item_emb, config) if config.lossy else None
        return cls(index, ids, config, item_emb.shape[1], max_norm, fingerprint, exact)

    @property
    def n_items(self) -> int:
        return len(self._item_ids)

    def ids(self, idx: np.ndarray) -> np.ndarray:
        """Positions → ids; -1 stays -1."""
        idx = np.asarray(idx, dtype=np.int64)
        return np.where(idx >= 0, self._item_ids[np.maximum(idx, 0)], -1)

    def set_search_params(self, *, ef_search: int | None = None, nprobe: int | None = None,
                          rerank: int | None = None) -> None:
        """Change the query-time recall/speed knobs without rebuilding."""
        changes = {k: v for k, v in (("ef_search", ef_search), ("nprobe", nprobe), ("rerank", rerank)) if v is not None}
        self.config = dataclasses.replace(self.config, **changes)
        _apply_search_params(self._index, self.config)

    def add(self, new_item_emb: np.ndarray, new_ids: np.ndarray | None = None) -> None:
        """Append items (ids default to their positions); they are searchable at once.

        With the MIPS reduction, a new item whose norm exceeds M (the largest norm indexed so
        far) would break the L2 ↔ inner-product equivalence, so the whole index is
        rebuilt with a larger M from the exact vectors (IVF then also retrains its centroids).
        Otherwise new items are appended; IVF centroids and sq8 ranges are not retrained.
        """
        new_item_emb = _check_matrix(new_item_emb, "new_item_emb", dim=self.dim)
        n, n_new = self.n_items, new_item_emb.shape[0]
        ids = _check_ids(np.arange(n, n + n_new) if new_ids is None else new_ids, n_new, existing=self._item_ids)
        _apply_search_params(self._index, self.config)
        if self.config.uses_reduction and _norms(new_item_emb).max(initial=0.0) > self._max_norm:
            every = np.concatenate([self._vectors(np.arange(n)), new_item_emb])
            self._index, self._max_norm = _build_faiss(every, self.config)
        else:
            self._index.add(_to_stored(new_item_emb, self.config, self._max_norm))
        if self._exact_rows is not None:
            self._exact_rows.append(_metric_space(new_item_emb, self.config))
        self._ids.append(ids)

    def search(self, query: np.ndarray, k: int,
               exclude: sp.spmatrix | sp.sparray | list[np.ndarray] | None = None) -> Hits:
        """Top-k items by inner product for each query row (Q, d).

        ``exclude`` lists, per query row, item positions never to return (e.g. the user's training
        items): a sparse matrix (Q, ≤ n_items; stored entries count) or a list of Q integer arrays.
        Each row gets k items whenever k non-excluded items exist, else is padded with -1 / -inf.
        Scores are recomputed exactly from float32 vectors and rows re-sorted by them.
        """
        query = _check_matrix(query, "query", dim=self.dim)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= self.n_items:
            raise RetrievalError(f"k must be an integer in [1, n_items={self.n_items}], got {k!r}")
        k = int(k)
        fetch = min(self.n_items, self.config.fetch_factor * k)  # quantised: rerank more candidates exactly
        _apply_search_params(self._index, self.config)
        keys, counts = _exclusion_keys(exclude, query.shape[0], self.n_items)
        q_stored = _to_stored(query, self.config, 0.0, is_query=True)  # (Q, d')
        top, n_valid = self._filtered_search(q_stored, fetch, keys, counts)
        q_metric = _metric_space(query, self.config)  # (Q, d)
        short = np.flatnonzero(n_valid < np.minimum(k, self.n_items - counts))  # ANN came up short
        if short.size:  # rare: the ANN index ran out of candidates, so brute-force those rows
            top[short] = self._brute_force(q_metric[short], short, fetch, keys)
        vecs = self._vectors(np.maximum(top, 0).ravel()).reshape(*top.shape, self.dim)  # (Q, fetch, d)
        scores = np.where(top >= 0, np.matmul(vecs, q_metric[:, :, None])[:, :, 0], -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(top, order, axis=1)
        return Hits(self.ids(top), np.take_along_axis(scores, order, axis=1).astype(np.float32))

    def _vectors(self, idx: np.ndarray) -> np.ndarray:
        """(len(idx), d) float32 exact metric-space vectors (normalised when ``normalize``)."""
        if self._exact is not None:
            return self._exact[idx]
        return self._index.reconstruct_batch(idx)[:, : self.dim]  # drops the reduction's extra coord

    def _filtered_search(self, q_stored: np.ndarray, k: int, keys: np.ndarray,
                         counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Fetch k + (row's excluded count) candidates, grouped by power-of-two sizes, and filter."""
        if not keys.size:  # the common case: nothing to filter
            cand = self._index.search(q_stored, k)[1].astype(np.int64, copy=False)
            return cand, (cand >= 0).sum(axis=1)
        n_query, n = q_stored.shape[0], self.n_items
        top = np.full((n_query, k), -1, dtype=np.int64)
        n_valid = np.zeros(n_query, dtype=np.int64)
        need = k + counts  # with `need` real candidates at least k survive the filter
        fetch = np.minimum(n, 1 << np.ceil(np.log2(need)).astype(np.int64))  # >= k since k <= n
        for size in np.unique(fetch):
            rows = np.flatnonzero(fetch == size)
            _, cand = self._index.search(q_stored[rows], int(size))
            top[rows], n_valid[rows] = _drop_excluded(cand.astype(np.int64, copy=False), rows, keys, n, k)
        return top, n_valid

    def _brute_force(self, q_metric: np.ndarray, rows: np.ndarray, k: int, keys: np.ndarray) -> np.ndarray:
        """Exact top-k over all items for a few rows (the rare ANN-exhausted case)."""
        n = self.n_items
        every = self._vectors(np.arange(n))  # (I, d)
        mine = keys[np.isin(keys // n, rows)]
        key_row, key_col = np.searchsorted(rows, mine // n), mine % n  # rows is sorted
        out = np.empty((rows.size, k), dtype=np.int64)
        for start in range(0, rows.size, 256):  # blocks of rows bound memory to 256 × I floats
            stop = start + 256
            scores = q_metric[start:stop] @ every.T  # (R, I)
            in_block = (key_row >= start) & (key_row < stop)
            scores[key_row[in_block] - start, key_col[in_block]] = -np.inf
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            out[start:stop] = np.where(np.isfinite(np.take_along_axis(scores, part, axis=1)), part, -1)
        return out

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write index.faiss, item_ids.npy, index.json (+ exact.npy) into a temp folder renamed to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            np.save(tmp / "item_ids.npy", self._item_ids)
            if self._exact is not None:
                np.save(tmp / "exact.npy", self._exact)
            manifest = {"format_version": _FORMAT_VERSION, "kind": self.config.kind,
                        "params": dataclasses.asdict(self.config), "dim": self.dim, "n_items": self.n_items,
                        "mips_max_norm": self._max_norm, "fingerprint": self.fingerprint,
                        "faiss_version": faiss.__version__}
            (tmp / "index.json").write_text(json.dumps(manifest, indent=2) + "\n")
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex}"
            if path.exists():
                path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], expected_fingerprint: str | None = None) -> ItemIndex:
        """Read an index written by :meth:`save`; the fingerprint is checked before the big files."""
        path = Path(path)
        try:
            manifest = json.loads(read_text(path / "index.json", "index manifest", RetrievalError))
        except RetrievalError:
            if (path / "index.json").exists():
                raise
            raise RetrievalError(f"{path / 'index.json'}: no index manifest; expected a folder written by "
                                 "ItemIndex.save") from None
        except FileNotFoundError:
            raise RetrievalError(f"{path / 'index.json'}: no index manifest; expected a folder written by "
                                 "ItemIndex.save") from None
        except json.JSONDecodeError as exc:
            raise RetrievalError(f"{path / 'index.json'}: not valid JSON ({exc})") from exc
        if manifest.get("format_version") != _FORMAT_VERSION:
            raise RetrievalError(f"{path}: index format {manifest.get('format_version')!r}, expected {_FORMAT_VERSION}")
        if expected_fingerprint is not None and manifest["fingerprint"] != expected_fingerprint:
            raise RetrievalError(f"{path}: index built from a different run: fingerprint "
                                 f"{manifest['fingerprint']!r}, expected {expected_fingerprint!r}; "
                                 "rebuild the index from this run's embeddings")
        config = IndexConfig(**manifest["params"])
        index = read_faiss_index(path / "index.faiss")
        try:
            ids = np.load(path / "item_ids.npy", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise RetrievalError(f"{path / 'item_ids.npy'}: cannot read the index's item ids ({exc}); rebuild the "
                                 "index with `sibrar index RUN_DIR`") from exc
        if not index.ntotal == ids.shape[0] == manifest["n_items"]:
            raise RetrievalError(f"{path}: index.faiss holds {index.ntotal} items, item_ids.npy "
                                 f"{ids.shape[0]} and the manifest says {manifest['n_items']}")
        exact = np.load(path / "exact.npy", allow_pickle=False) if config.lossy else None
        _apply_search_params(index, config)
        return cls(index, ids, config, int(manifest["dim"]), float(manifest["mips_max_norm"]),
                   str(manifest["fingerprint"]), exact)


ANN_MIN_ITEMS = 200_000  # `sibrar index --kind auto`: exact below, IVF fast-scan at and above


def choose_config(n_items: int) -> IndexConfig:
    """The index for a catalogue size: exact ``flat`` for small ones, ``ivfpq`` (fast-scan PQ + rerank) for large.

    Below ANN_MIN_ITEMS one exact scan is a few milliseconds per query; above it the fast-scan
    index keeps recall@10 ≥ 0.95 at a fraction of the cost (benchmarks/retrieval_speed.py).
    """
    if n_items < ANN_MIN_ITEMS:
        return IndexConfig(kind="flat")
    return IndexConfig(kind="ivfpq", nlist=2048, nprobe=128, rerank=20)


def recall_at_k(approx_idx: np.ndarray, exact_idx: np.ndarray, k: int) -> float:
    """Mean over rows of |approx top-k ∩ exact top-k| / |exact top-k| (padding -1 ignored)."""
    approx, exact = np.asarray(approx_idx)[:, :k], np.asarray(exact_idx)[:, :k]
    match = (approx[:, :, None] == exact[:, None, :]) & (exact[:, None, :] >= 0)  # (Q, k, k)
    found, total = match.any(axis=1).sum(axis=1), (exact >= 0).sum(axis=1)
    return float(np.mean(np.where(total > 0, found / np.maximum(total, 1), 1.0)))


def _check_matrix(x: np.ndarray, name: str, dim: int | None) -> np.ndarray:
    """Validate a (rows, d) finite real matrix and return it as C-contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 2 or 0 in x.shape or not np.issubdtype(x.dtype, np.number):
        raise RetrievalError(f"{name}: expected a non-empty 2-D numeric array (rows, d), got shape "
                             f"{x.shape} dtype {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise RetrievalError(f"{name}: dimension {x.shape[1]}, expected {dim} (the index dimension)")
    x = np.ascontiguousarray(x, dtype=np.float32)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise RetrievalError(f"{name}: row {bad[0]} holds NaN or inf ({bad.size} bad rows); expected finite vectors")
    return x


def _check_ids(ids: np.ndarray, n_rows: int, existing: np.ndarray | None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.shape != (n_rows,) or not np.issubdtype(ids.dtype, np.integer):
        raise RetrievalError(f"item ids: expected a 1-D integer array of length {n_rows}, got shape "
                             f"{ids.shape} dtype {ids.dtype}")
    ids = ids.astype(np.int64)
    if (ids < 0).any():
        raise RetrievalError(f"item ids: id {int(ids[ids < 0][0])} is negative; ids must be >= 0 (-1 marks padding)")
    uniq, counts = np.unique(ids, return_counts=True)
    dup = np.concatenate([uniq[counts > 1], ids[np.isin(ids, existing)] if existing is not None else []])
    if dup.size:
        raise RetrievalError(f"item ids: id {int(dup[0])} appears more than once; ids must be unique")
    return ids


def _norms(x: np.ndarray) -> np.ndarray:
    return np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64))


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(_norms(x), 1e-12)[:, None]).astype(np.float32)


def _metric_space(x: np.ndarray, config: IndexConfig) -> np.ndarray:
    """Vectors whose plain inner product is the ranking score (normalised for cosine)."""
    return _normalise(x) if config.normalize else x


def _to_stored(x: np.ndarray, config: IndexConfig, max_norm: float, is_query: bool = False) -> np.ndarray:
    """The vectors faiss holds: normalised, or with the MIPS extra coordinate appended."""
    if config.normalize:
        return _normalise(x)
    if not config.uses_reduction:
        return x
    extra = np.zeros(x.shape[0]) if is_query else np.sqrt(np.maximum(max_norm**2 - _norms(x) ** 2, 0.0))
    return np.ascontiguousarray(np.hstack([x, extra[:, None].astype(np.float32)]))


def _build_faiss(item_emb: np.ndarray, config: IndexConfig) -> tuple[faiss.Index, float]:
    """A filled faiss index for ``item_emb`` and the reduction's M (0 when unused)."""
    if config.threads is not None:
        faiss.omp_set_num_threads(config.threads)
    max_norm = float(_norms(item_emb).max()) if config.uses_reduction else 0.0
    stored = _to_stored(item_emb, config, max_norm)
    dim = stored.shape[1]
    # normalised vectors rank the same under IP and L2; only "native" MIPS searches with IP
    ip = not config.normalize and config.mips == "native"
    metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
    sq8 = faiss.ScalarQuantizer.QT_8bit
    if config.kind == "flat":
        index: faiss.Index = faiss.IndexFlatIP(dim)
    elif config.kind == "hnsw":
        index = (faiss.IndexHNSWSQ(dim, sq8, config.hnsw_m, metric) if config.lossy
                 else faiss.IndexHNSWFlat(dim, config.hnsw_m, metric))
        index.hnsw.efConstruction = config.ef_construction
    else:
        nlist = max(1, min(config.nlist, stored.shape[0] // 39))
        quantizer = faiss.IndexFlatIP(dim) if ip else faiss.IndexFlatL2(dim)
        if config.kind == "ivfpq":
            index = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, _pq_m(config, dim), 4, metric)
        else:
            index = (faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, sq8, metric) if config.lossy
                     else faiss.IndexIVFFlat(quantizer, dim, nlist, metric))
    if not index.is_trained:  # k-means on a seeded sample: 64 points per cell are plenty (faiss: 39 minimum)
        sample = max(64 * getattr(index, "nlist", 1), 50_000)
        pick = np.random.default_rng(0).choice(len(stored), sample, replace=False) if len(stored) > sample else None
        index.train(stored if pick is None else stored[np.sort(pick)])
    index.add(stored)
    if config.kind == "ivf" and not config.lossy:
        index.make_direct_map(True)  # reconstruct() for exact rescoring
    _apply_search_params(index, config)
    return index, max_norm


def _apply_search_params(index: faiss.Index, config: IndexConfig) -> None:
    """Set the run-time knobs: faiss threads (process-wide), ef_search, nprobe."""
    if config.threads is not None:
        faiss.omp_set_num_threads(config.threads)
    if config.kind == "hnsw":
        index.hnsw.efSearch = config.ef_search
    elif config.kind in ("ivf", "ivfpq"):
        faiss.extract_index_ivf(index).nprobe = config.nprobe


def _pq_m(config: IndexConfig, dim: int) -> int:
    """Sub-quantiser count: ``pq_m`` (or dim // 2), lowered to the nearest divisor of dim."""
    m = min(config.pq_m or max(1, dim // 2), dim)
    while dim % m:
        m -= 1
    return m


def _exclusion_keys(exclude: sp.spmatrix | sp.sparray | list[np.ndarray] | None, n_query: int,
                    n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique keys row·n_items + idx of excluded pairs, and the count per row (Q,)."""
    if exclude is None:
        return np.empty(0, dtype=np.int64), np.zeros(n_query, dtype=np.int64)
    if sp.issparse(exclude):
        csr = sp.csr_array(exclude)
        if csr.shape[0] != n_query or csr.shape[1] > n_items:
            raise RetrievalError(f"exclude: shape {csr.shape}, expected ({n_query}, <= {n_items}) "
                                 "(query rows × item positions)")
        rows = np.repeat(np.arange(n_query, dtype=np.int64), np.diff(csr.indptr))
        cols = csr.indices.astype(np.int64)
    elif isinstance(exclude, (list, tuple)):
        if len(exclude) != n_query:
            raise RetrievalError(f"exclude: {len(exclude)} arrays, expected one per query row ({n_query})")
        rows = np.repeat(np.arange(n_query), np.fromiter(map(len, exclude), dtype=np.int64, count=n_query))
        cols = np.concatenate([*exclude, np.empty(0, dtype=np.int64)]).astype(np.int64)
        if ((cols < 0) | (cols >= n_items)).any():
            bad = cols[(cols < 0) | (cols >= n_items)][0]
            raise RetrievalError(f"exclude: item position {int(bad)} outside [0, {n_items})")
    else:
        raise RetrievalError(f"exclude: expected a scipy sparse matrix or a list of arrays, "
                             f"got {type(exclude).__name__}")
    keys = np.unique(rows * n_items + cols)
    return keys, np.bincount(keys // n_items, minlength=n_query).astype(np.int64)


def _drop_excluded(cand: np.ndarray, rows: np.ndarray, keys: np.ndarray, n_items: int,
                   k: int) -> tuple[np.ndarray, np.ndarray]:
    """First k non-excluded candidates per row (order kept) and how many valid ones there were."""
    valid = cand >= 0  # (R, s)
    if keys.size:
        ckeys = rows[:, None] * n_items + cand
        valid &= keys[np.minimum(np.searchsorted(keys, ckeys), keys.size - 1)] != ckeys
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # valid first, rank order kept
    top = np.take_along_axis(cand, order, axis=1)
    n_valid = valid.sum(axis=1)
    top[np.arange(k)[None, :] >= n_valid[:, None]] = -1
    return top, np.minimum(n_valid, k)
