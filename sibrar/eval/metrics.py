"""Ranking metrics: per-user accuracy (nDCG, recall, ...) and catalogue-level beyond-accuracy metrics.

Definitions follow the `rmet` library of the SiBraR reference code, with binary relevance
and 1-based ranks j; ``rel`` is the user's set of relevant items, ``r_j`` the relevance at rank j:

=============  ===================================================================================
ndcg@k         sum_{j<=k} r_j / log2(j+1), divided by the same sum for min(|rel|, k) leading hits
recall@k       hits in top-k / |rel|
precision@k    hits in top-k / k (padding slots count as misses)
map@k          AP@k = sum_{j<=k} P@j * r_j / |rel| -- normalised by |rel|, *not* min(k, |rel|), as
               the reference code (SiBraR's `rmet`) does; so a perfect list scores min(k, |rel|) / |rel|
map_recbole@k  the same sum divided by min(k, |rel|), as RecBole's MAP@k: a perfect list scores 1, so
               numbers compare with RecBole-based papers (equal to map@k for users with |rel| <= k)
mrr@k          1 / rank of the first hit in top-k, 0 if none
hit@k          1 if any hit in top-k else 0
f1@k           harmonic mean of precision@k and recall@k, 0 when both are 0
coverage@k     |union of all users' top-k| / |candidate items|
arp@k          mean training popularity (interaction count) of all recommended slots
tail_share@k   fraction of recommended slots whose item is in the long tail (see ``head_fraction``)
gini@k         Gini index of how often each candidate item is recommended (0 = even, -> 1 = one item)
entropy@k      Shannon entropy of the same distribution divided by log(|candidates|), so in [0, 1]
=============  ===================================================================================

Per-user metrics are NaN for users without any relevant item and such users are left out of the
means (``MetricReport.summary``); the distribution metrics use every row of the ranking, padding
(-1) excluded, so pass only the evaluated users' rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from sibrar.errors import ConfigError
from sibrar.registry import Registry

__all__ = ["DEFAULT_METRICS", "METRICS", "MetricReport", "MetricSpec", "compute_metrics"]


@dataclass(frozen=True)
class _Ranked:
    """What every metric reads: the ranking, its relevance pattern and the catalogue statistics."""

    topk: np.ndarray  # (U, K) int64 item indices, -1 = padding
    rel: np.ndarray  # (U, K) bool, topk[u, j] is relevant for u
    n_rel: np.ndarray  # (U,) int64 relevant items per user
    cand_idx: np.ndarray  # (C,) int64 candidate items
    n_items: int
    popularity: np.ndarray | None  # (I,) float64 training interaction counts
    head: np.ndarray | None  # (I,) bool, item is in the popular head


@dataclass(frozen=True)
class MetricSpec:
    """A registered metric: ``fn(ranked, k)`` gives (U,) per-user values or one float."""

    name: str
    per_user: bool  # True: one value per user, averaged over users with a relevant item
    needs_popularity: bool
    fn: Callable[[_Ranked, int], Any]


@dataclass(frozen=True)
class MetricReport:
    """Metric values keyed ``"<metric>@<k>"``, e.g. ``"ndcg@10"``."""

    per_user: dict[str, np.ndarray]  # (U,) float64 each; NaN for users without relevant items
    summary: dict[str, float]  # per-user means over evaluated users, plus distribution metrics
    n_users: int  # rows in the ranking
    n_evaluated: int  # users with at least one relevant item (the ones averaged)


METRICS: Registry[MetricSpec] = Registry("metric")
DEFAULT_METRICS: tuple[str, ...] = (
    "ndcg", "recall", "precision", "map", "map_recbole", "mrr", "hit", "f1",
    "coverage", "arp", "tail_share", "gini", "entropy",
)  # reporting order; arp and tail_share are dropped when no popularity is given


def _metric(
    name: str, *, per_user: bool = True, needs_popularity: bool = False
) -> Callable[[Callable[[_Ranked, int], Any]], Callable[[_Ranked, int], Any]]:
    """Register ``fn(ranked, k)`` under ``name`` in ``METRICS``."""

    def decorator(fn: Callable[[_Ranked, int], Any]) -> Callable[[_Ranked, int], Any]:
        METRICS.register(name)(MetricSpec(name, per_user, needs_popularity, fn))
        return fn

    return decorator


def compute_metrics(
    topk: np.ndarray | torch.Tensor,
    truth: sp.spmatrix | sp.sparray | torch.Tensor,
    ks: Sequence[int],
    *,
    metrics: Sequence[str] | None = None,
    item_popularity: np.ndarray | torch.Tensor | None = None,
    candidates: np.ndarray | torch.Tensor | None = None,
    head_fraction: float = 0.2,
) -> MetricReport:
    """Evaluate rankings against held-out interactions at every cut-off in ``ks``.

    Args:
        topk: (U, K) item indices per user, best first, -1 = padding (``topk_items`` output).
        truth: (U, I) relevant items per user, row u for row u of ``topk``: a scipy.sparse matrix
            (any format; torch sparse CSR is converted). Every stored non-zero entry is relevant.
        ks: cut-offs, each in [1, K].
        metrics: registered names (``METRICS.names()``), reported in this order; default
            ``DEFAULT_METRICS`` (arp and tail_share only when ``item_popularity`` is given).
        item_popularity: (I,) training interaction count per item; needed by arp and tail_share.
        candidates: the rankable items, bool mask (I,) or indices; default all I items. Sets the
            denominator of coverage and the support of gini and entropy.
        head_fraction: the popular head is the top ``head_fraction`` of all I items by training
            count (items tied with the last one included; zero-count items are never head); the
            rest is the long tail of tail_share.
    """
    ranking = _as_ranking(topk)
    relevant = _as_csr(truth)
    n_users, n_k = ranking.shape
    n_items = relevant.shape[1]
    if relevant.shape[0] != n_users:
        raise ConfigError(
            f"compute_metrics: truth has {relevant.shape[0]} rows but topk has {n_users}; "
            "row u of both must be the same user"
        )
    _check_ranking(ranking, n_items)
    ks = _check_ks(ks, n_k)
    if metrics is None:
        with_pop = item_popularity is not None
        metrics = [n for n in DEFAULT_METRICS if with_pop or not METRICS.get(n).needs_popularity]
    specs = [METRICS.get(name) for name in metrics]
    popularity = head = None
    if item_popularity is not None:
        popularity = np.asarray(_to_numpy(item_popularity), dtype=np.float64)
        if popularity.shape != (n_items,) or (popularity < 0).any():
            raise ConfigError(
                f"compute_metrics: item_popularity must be ({n_items},) non-negative counts, got "
                f"shape {popularity.shape}"
            )
        head = _head_items(popularity, head_fraction)
    elif any(spec.needs_popularity for spec in specs):
        needing = [s.name for s in specs if s.needs_popularity]
        raise ConfigError(
            f"compute_metrics: metrics {needing} need item_popularity (training counts per item)"
        )

    ranked = _Ranked(
        topk=ranking,
        rel=_relevance(ranking, relevant),
        n_rel=np.diff(relevant.indptr).astype(np.int64),
        cand_idx=_candidate_index(candidates, n_items),
        n_items=n_items,
        popularity=popularity,
        head=head,
    )
    evaluated = ranked.n_rel > 0
    per_user: dict[str, np.ndarray] = {}
    summary: dict[str, float] = {}
    for spec in specs:
        for k in ks:
            key = f"{spec.name}@{k}"
            if spec.per_user:
                with np.errstate(divide="ignore", invalid="ignore"):
                    values = np.asarray(spec.fn(ranked, k), dtype=np.float64)
                values = np.where(evaluated, values, np.nan)
                per_user[key] = values
                summary[key] = float(values[evaluated].mean()) if evaluated.any() else math.nan
            else:
                summary[key] = float(spec.fn(ranked, k))
    return MetricReport(per_user, summary, n_users=n_users, n_evaluated=int(evaluated.sum()))


# --- per-user accuracy metrics -------------------------------------------------------------------


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))  # (k,) 1 / log2(j + 1) for ranks j = 1..k


@_metric("ndcg")
def _ndcg(r: _Ranked, k: int) -> np.ndarray:
    disc = _discounts(k)
    dcg = r.rel[:, :k] @ disc
    ideal = np.concatenate([[0.0], np.cumsum(disc)])[np.minimum(r.n_rel, k)]
    return dcg / ideal


@_metric("recall")
def _recall(r: _Ranked, k: int) -> np.ndarray:
    return r.rel[:, :k].sum(1) / r.n_rel


@_metric("precision")
def _precision(r: _Ranked, k: int) -> np.ndarray:
    return r.rel[:, :k].sum(1) / k


def _precision_sum(r: _Ranked, k: int) -> np.ndarray:
    """(U,) sum over hit ranks j <= k of P@j, the numerator both AP normalisations share."""
    hits = r.rel[:, :k]
    precision_at_j = np.cumsum(hits, 1) / np.arange(1, k + 1)  # (U, k)
    return (precision_at_j * hits).sum(1)


@_metric("map")
def _average_precision(r: _Ranked, k: int) -> np.ndarray:
    return _precision_sum(r, k) / r.n_rel


@_metric("map_recbole")
def _average_precision_recbole(r: _Ranked, k: int) -> np.ndarray:
    return _precision_sum(r, k) / np.minimum(r.n_rel, k)


@_metric("mrr")
def _reciprocal_rank(r: _Ranked, k: int) -> np.ndarray:
    hits = r.rel[:, :k]
    return np.where(hits.any(1), 1.0 / (hits.argmax(1) + 1), 0.0)


@_metric("hit")
def _hit(r: _Ranked, k: int) -> np.ndarray:
    return r.rel[:, :k].any(1).astype(np.float64)


@_metric("f1")
def _f1(r: _Ranked, k: int) -> np.ndarray:
    p, rec = _precision(r, k), _recall(r, k)
    return np.where(p + rec > 0, 2 * p * rec / (p + rec), 0.0)


# --- distribution (beyond-accuracy) metrics ------------------------------------------------------


def _recommended(r: _Ranked, k: int) -> np.ndarray:
    """All non-padding item indices in the top-k lists, flattened."""
    slots = r.topk[:, :k]
    return slots[slots >= 0]


def _candidate_counts(r: _Ranked, k: int) -> np.ndarray:
    """(C,) how often each candidate item was recommended."""
    return np.bincount(_recommended(r, k), minlength=r.n_items)[r.cand_idx]


@_metric("coverage", per_user=False)
def _coverage(r: _Ranked, k: int) -> float:
    n_cand = r.cand_idx.size
    return float((_candidate_counts(r, k) > 0).sum() / n_cand) if n_cand else math.nan


@_metric("arp", per_user=False, needs_popularity=True)
def _arp(r: _Ranked, k: int) -> float:
    items = _recommended(r, k)
    return float(r.popularity[items].mean()) if items.size else math.nan


@_metric("tail_share", per_user=False, needs_popularity=True)
def _tail_share(r: _Ranked, k: int) -> float:
    items = _recommended(r, k)
    return float((~r.head[items]).mean()) if items.size else math.nan


@_metric("gini", per_user=False)
def _gini(r: _Ranked, k: int) -> float:
    counts = np.sort(_candidate_counts(r, k)).astype(np.float64)  # ascending
    n, total = counts.size, counts.sum()
    if total == 0:
        return math.nan
    return float(((2 * np.arange(1, n + 1) - n - 1) * counts).sum() / (n * total))


@_metric("entropy", per_user=False)
def _entropy(r: _Ranked, k: int) -> float:
    counts = _candidate_counts(r, k)
    total = counts.sum()
    if total == 0 or counts.size < 2:
        return math.nan
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum() / math.log(counts.size))


# --- input handling ------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _as_ranking(topk: Any) -> np.ndarray:
    ranking = _to_numpy(topk)
    if ranking.ndim != 2 or not np.issubdtype(ranking.dtype, np.integer):
        raise ConfigError(
            f"compute_metrics: topk must be a 2-d integer array (U, K), got {ranking.dtype} of "
            f"shape {ranking.shape}"
        )
    return ranking.astype(np.int64, copy=False)


def _as_csr(truth: Any) -> sp.csr_array:
    """Canonical boolean CSR: sorted indices, no duplicates, no explicit zeros."""
    if isinstance(truth, torch.Tensor) and truth.layout == torch.sparse_csr:
        truth = sp.csr_array(
            (_to_numpy(truth.values()), _to_numpy(truth.col_indices()), _to_numpy(truth.crow_indices())),
            shape=tuple(truth.shape),
        )
    if not sp.issparse(truth):
        raise ConfigError(
            f"compute_metrics: truth must be a scipy.sparse matrix (U, I), got {type(truth).__name__}"
        )
    csr = sp.csr_array(truth, dtype=np.float64, copy=True)
    csr.sum_duplicates()
    csr.eliminate_zeros()
    csr.sort_indices()
    return csr


def _check_ranking(ranking: np.ndarray, n_items: int) -> None:
    if ranking.size and (ranking.min() < -1 or ranking.max() >= n_items):
        raise ConfigError(
            f"compute_metrics: topk holds item indices in [{ranking.min()}, {ranking.max()}], "
            f"expected -1 (padding) or [0, {n_items - 1}]"
        )
    ordered = np.sort(ranking, axis=1)
    dup = (ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)
    if dup.any():
        user, col = np.argwhere(dup)[0]
        raise ConfigError(
            f"compute_metrics: topk row {user} lists item {ordered[user, col + 1]} twice; each "
            "item may appear at most once per user"
        )


def _check_ks(ks: Sequence[int], n_k: int) -> list[int]:
    ks = list(ks)
    if not ks:
        raise ConfigError("compute_metrics: ks is empty; give at least one cut-off, e.g. [10]")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_k:
            raise ConfigError(
                f"compute_metrics: cut-off k={k!r} must be an int in [1, {n_k}] (the ranking length)"
            )
    return sorted({int(k) for k in ks})


def _relevance(ranking: np.ndarray, truth: sp.csr_array) -> np.ndarray:
    """(U, K) bool: is ranking[u, j] among u's relevant items (binary search in the CSR)."""
    n_users, n_items = truth.shape
    rows = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(truth.indptr))
    truth_keys = rows * n_items + truth.indices  # ascending: row-major with sorted indices
    rec_keys = np.arange(n_users, dtype=np.int64)[:, None] * n_items + np.maximum(ranking, 0)
    pos = np.searchsorted(truth_keys, rec_keys).clip(max=max(truth_keys.size - 1, 0))
    found = truth_keys[pos] == rec_keys if truth_keys.size else np.zeros(ranking.shape, bool)
    return found & (ranking >= 0)


def _candidate_index(candidates: Any, n_items: int) -> np.ndarray:
    if candidates is None:
        return np.arange(n_items)
    cand = _to_numpy(candidates)
    if cand.dtype == np.bool_:
        if cand.shape != (n_items,):
            raise ConfigError(f"compute_metrics: candidates mask has shape {cand.shape}, expected ({n_items},)")
        return np.flatnonzero(cand)
    if cand.ndim != 1 or not np.issubdtype(cand.dtype, np.integer):
        raise ConfigError(
            f"compute_metrics: candidates must be a bool mask ({n_items},) or 1-d item indices, got "
            f"{cand.dtype} of shape {cand.shape}"
        )
    if cand.size and (cand.min() < 0 or cand.max() >= n_items):
        raise ConfigError(f"compute_metrics: candidate indices must lie in [0, {n_items - 1}]")
    return np.unique(cand)


def _head_items(popularity: np.ndarray, head_fraction: float) -> np.ndarray:
    """(I,) bool: the most popular ``head_fraction`` of items (ties at the cut kept, counts > 0)."""
    if not 0.0 <= head_fraction <= 1.0:
        raise ConfigError(f"compute_metrics: head_fraction must lie in [0, 1], got {head_fraction!r}")
    n_head = math.ceil(head_fraction * popularity.size)
    if n_head == 0:
        return np.zeros(popularity.size, dtype=bool)
    cut = np.sort(popularity)[::-1][n_head - 1]
    return (popularity >= cut) & (popularity > 0)
