"""Modalities: per-entity inputs of one kind, each with a boolean availability mask.

Kinds (one vocabulary everywhere):
  categorical  (n,) long codes, 0 = missing           e.g. gender, occupation, the `id` modality
  tags         (n, L) long codes, 0 = padding         e.g. genres, knowledge-graph entities
  numeric      (n, 1) float, min-max scaled           e.g. age, release year
  vector       (n, d) float                           e.g. text / image / audio embeddings
  interactions (n, n_other) sparse CSR of the *training* split only
A missing value is `available[e] == False`: never silently zero-filled into a real value.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import polars as pl
import torch

ModalityKind = Literal["categorical", "tags", "numeric", "vector", "interactions"]
MODALITY_KINDS: tuple[ModalityKind, ...] = ("categorical", "tags", "numeric", "vector", "interactions")
MISSING_TOKEN = "<missing>"
N_QUANTILES = 16  # numeric modalities: quantile knots 0, 1/16, ..., 1 of the training values


@dataclass(frozen=True, eq=False)
class Modality:
    """One modality of every entity of one type (all users, or all items)."""

    name: str
    kind: ModalityKind
    available: torch.Tensor  # (n,) bool
    values: torch.Tensor  # see module docstring; for `interactions` a sparse CSR float matrix
    vocab: tuple[str, ...] = ()  # categorical/tags: code -> token; code 0 is MISSING_TOKEN
    scale: tuple[float, float] | None = None  # numeric: (min, max) used to scale raw values
    # numeric, set by fit_scale from training entities, in scaled units: (k, N_QUANTILES + 1) quantiles
    # per column and (2, k) mean / std; models use them to encode the value (sibrar.models.numeric)
    quantiles: torch.Tensor | None = None
    moments: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return int(self.available.shape[0])

    @property
    def dim(self) -> int:
        """Input width: vector/interactions/numeric width, or the vocabulary size for codes."""
        if self.kind in ("categorical", "tags"):
            return len(self.vocab)
        return int(self.values.shape[1])

    @property
    def coverage(self) -> float:
        return float(self.available.float().mean()) if self.n else 0.0

    def subset(self, rows: np.ndarray) -> Modality:
        """The same modality restricted to entity rows `rows` (used when k-core drops entities)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        values = self.values.to_dense()[idx].to_sparse_csr() if self.kind == "interactions" else self.values[idx]
        return replace(self, available=self.available[idx], values=values)

    def with_available(self, available: torch.Tensor) -> Modality:
        return replace(self, available=available)


@dataclass(frozen=True, eq=False)
class EntityFeatures:
    """All modalities of one entity type, in a fixed order (the order a model indexes them by)."""

    entity: Literal["user", "item"]
    n: int
    modalities: dict[str, Modality] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for m in self.modalities.values():
            if m.n != self.n:
                raise ValueError(f"{self.entity} modality {m.name!r} has {m.n} rows, expected {self.n}")

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

    def __getitem__(self, name: str) -> Modality:
        return self.modalities[name]

    def __contains__(self, name: object) -> bool:
        return name in self.modalities

    def availability(self, names: list[str] | None = None) -> torch.Tensor:
        """(n, M) bool: which of `names` (default all) each entity has."""
        names = self.names if names is None else names
        if not names:
            return torch.zeros(self.n, 0, dtype=torch.bool)
        return torch.stack([self.modalities[m].available for m in names], dim=1)

    def select(self, names: list[str]) -> EntityFeatures:
        return EntityFeatures(self.entity, self.n, {m: self.modalities[m] for m in names})

    def with_modality(self, modality: Modality) -> EntityFeatures:
        return EntityFeatures(self.entity, self.n, {**self.modalities, modality.name: modality})

    def subset(self, rows: np.ndarray) -> EntityFeatures:
        return EntityFeatures(self.entity, len(rows), {k: m.subset(rows) for k, m in self.modalities.items()})


def categorical(name: str, tokens: list[str | None] | np.ndarray) -> Modality:
    """Codes for string categories; None/'' is missing (code 0). Vocabulary sorted for stability."""
    arr = np.asarray(["" if t is None else str(t) for t in tokens], dtype=str)
    vocab, inverse = np.unique(arr, return_inverse=True)
    if len(vocab) and vocab[0] == "":
        vocab, codes = vocab[1:], inverse
    else:
        codes = inverse + 1
    codes_t = torch.from_numpy(codes.astype(np.int64))
    return Modality(name, "categorical", codes_t > 0, codes_t, (MISSING_TOKEN, *vocab.tolist()))


def tags(name: str, tag_lists: pl.Series | list[list[str] | None], min_count: int = 1) -> Modality:
    """Padded code matrix for variable-length tag lists (duplicates dropped); no tags = missing.

    Tags carried by fewer than `min_count` entities are dropped: a tag seen on one entity cannot
    tie it to any other, and rare tags (e.g. one-film actors) would dominate the vocabulary.
    """
    series = tag_lists if isinstance(tag_lists, pl.Series) else pl.Series(name, tag_lists, dtype=pl.List(pl.Utf8))
    n = len(series)
    long = (
        pl.DataFrame({"row": np.arange(n), "tag": series})
        .explode("tag")
        .filter(pl.col("tag").is_not_null() & (pl.col("tag") != ""))
        .unique(subset=["row", "tag"], maintain_order=True)
    )
    if min_count > 1:
        long = long.filter(pl.len().over("tag") >= min_count)
    vocab = sorted(long["tag"].unique().to_list())
    lookup = pl.DataFrame({"tag": vocab, "code": np.arange(1, len(vocab) + 1)}, schema={"tag": pl.Utf8, "code": pl.Int64})
    long = long.join(lookup, on="tag", how="left", maintain_order="left").with_columns(
        pl.int_range(pl.len()).over("row").alias("pos")
    )
    width = int(long["pos"].max() + 1) if long.height else 1
    codes = np.zeros((n, width), dtype=np.int64)
    codes[long["row"].to_numpy(), long["pos"].to_numpy()] = long["code"].to_numpy()
    codes_t = torch.from_numpy(codes)
    return Modality(name, "tags", (codes_t > 0).any(dim=1), codes_t, (MISSING_TOKEN, *vocab))


def numeric(name: str, values: np.ndarray) -> Modality:
    """Raw numbers (n,) or (n, k); NaN marks missing. Scale with `fit_scale` before a model uses it."""
    arr = np.asarray(values, dtype=np.float64)
    arr = arr.reshape(len(arr), -1)
    available = ~np.isnan(arr).any(axis=1)
    return Modality(name, "numeric", torch.from_numpy(available), torch.from_numpy(np.nan_to_num(arr)).float())


def vector(name: str, vectors: np.ndarray, available: np.ndarray) -> Modality:
    """Dense vectors (n, d); rows where `available` is False are zeros and must not be used."""
    vec = np.asarray(vectors, dtype=np.float32)
    avail = np.asarray(available, dtype=bool)
    vec = np.where(avail[:, None], vec, 0.0).astype(np.float32)
    return Modality(name, "vector", torch.from_numpy(avail), torch.from_numpy(vec))


def fit_scale(modality: Modality, fit_rows: torch.Tensor | np.ndarray | None = None) -> Modality:
    """Min-max scale a numeric modality to [0, 1] using only `fit_rows` (e.g. training entities).

    Cold-start splits fit on training entities only, so held-out values never shape
    the scaler; values outside the fitted range are clipped to [0, 1]. Per column, the quantiles and
    the mean / std of the scaled training values are kept too (same rows), for the numeric encodings.
    """
    if modality.kind != "numeric":
        return modality
    rows = torch.arange(modality.n) if fit_rows is None else torch.as_tensor(fit_rows, dtype=torch.long)
    mask = modality.available[rows]
    fit = modality.values[rows][mask]  # (n_fit, k)
    lo, hi = (float(fit.min()), float(fit.max())) if fit.numel() else (0.0, 1.0)
    span = hi - lo if hi > lo else 1.0
    scaled = ((modality.values - lo) / span).clamp(0.0, 1.0) * modality.available[:, None]
    fit_scaled = ((fit.double() - lo) / span).clamp(0.0, 1.0)
    if not len(fit_scaled):
        fit_scaled = torch.tensor([[0.0, 1.0]], dtype=torch.float64).T.expand(2, modality.dim)
    probs = torch.linspace(0.0, 1.0, N_QUANTILES + 1, dtype=torch.float64)
    quantiles = torch.quantile(fit_scaled, probs, dim=0).T.float().contiguous()  # (k, Q+1)
    moments = torch.stack([fit_scaled.mean(dim=0), fit_scaled.std(dim=0, correction=0)]).float()  # (2, k)
    return replace(modality, values=scaled.float(), scale=(lo, hi), quantiles=quantiles, moments=moments)
