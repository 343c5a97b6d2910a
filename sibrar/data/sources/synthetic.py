"""A seeded SYNTHETIC music dataset shaped like Music4All-Onion: demographics, genre tags, dense
audio/text/image-like vectors that carry signal about taste, long-tail listening counts.

Everything it writes is labelled synthetic (name, meta JSON, feature manifests)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from sibrar.data.sources.base import register_source
from sibrar.data.sources.music import GENRES, TOP_COUNTRIES, FeatureArrays, MusicTables, _write_meta
from sibrar.errors import ConfigError

_MODALITIES = ("audio", "text", "image")
_YEAR_S = 365 * 86400


@dataclass(frozen=True, kw_only=True)
class SyntheticOnionConfig:
    """Generator parameters; the defaults give ~2,000 users x 3,000 items and ~100k kept pairs."""

    n_users: int = 2000
    n_items: int = 3000
    density: float = 0.017  # target share of user x item pairs kept (>= min_count listens)
    seed: int = 42
    n_factors: int = 16  # latent taste dimensions shared by users, items and the dense features
    zipf_exponent: float = 1.0  # item popularity ~ rank^-a (mixed with taste in the choice logits)
    taste_weight: float = 2.0  # scale of the user.item affinity in the choice logits
    demographic_share: float = 0.5  # share of a user's taste variance explained by gender, age and country
    mean_extra_listens: float = 2.0  # listens per chosen pair = 1 + Poisson(mean * exp(affinity / 2))
    min_count: int = 2  # pairs with fewer listens are dropped, as Onion's min_n_interactions
    year: int = 2018  # first-listen timestamps fall in this UTC year
    audio_dim: int = 64
    text_dim: int = 48
    image_dim: int = 32
    audio_noise: float = 0.5  # std of the Gaussian noise added to the projected item factors
    text_noise: float = 1.0
    image_noise: float = 2.0
    audio_missing: float = 0.05  # exact share of items without the modality
    text_missing: float = 0.1
    image_missing: float = 0.2
    genres_missing: float = 0.0

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "n_factors", "min_count", *(f"{m}_dim" for m in _MODALITIES)):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"synthetic-onion: {name} is {getattr(self, name)!r}; expected an integer >= 1")
        if self.n_users < 2 or self.n_items < 10:
            raise ConfigError(f"synthetic-onion: needs n_users >= 2 and n_items >= 10, got {self.n_users}, {self.n_items}")
        if not 0 < self.density <= 0.5:
            raise ConfigError(f"synthetic-onion: density is {self.density!r}; expected a share in (0, 0.5]")
        for m in (*_MODALITIES, "genres"):
            if not 0 <= getattr(self, f"{m}_missing") < 1:
                raise ConfigError(f"synthetic-onion: {m}_missing is {getattr(self, f'{m}_missing')!r}; expected [0, 1)")
        if not 0 <= self.demographic_share <= 1:
            raise ConfigError(f"synthetic-onion: demographic_share is {self.demographic_share!r}; expected [0, 1]")
        if not self.mean_extra_listens > 0:
            raise ConfigError(f"synthetic-onion: mean_extra_listens is {self.mean_extra_listens!r}; expected > 0")
        for name in ("zipf_exponent", "taste_weight", *(f"{m}_noise" for m in _MODALITIES)):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"synthetic-onion: {name} is {getattr(self, name)!r}; expected a number >= 0")


def simulate_onion(config: SyntheticOnionConfig) -> MusicTables:
    """Draw users, items, dense features and listening counts from one seeded generator (no I/O)."""
    c = config
    rng = np.random.default_rng(c.seed)
    k, nu, ni = c.n_factors, c.n_users, c.n_items
    # users: demographics and taste = demographic part + individual part
    country_p = 1.0 / np.arange(1, 11)
    country = rng.choice(10, nu, p=country_p / country_p.sum())
    female = rng.random(nu) < 0.3
    age = np.clip(np.round(rng.gamma(4.0, 3.5, nu) + 13), 14, 70)
    demo = (rng.normal(size=(10, k))[country] + rng.normal(size=(2, k))[female.astype(int)]
            + ((age - age.mean()) / age.std())[:, None] * rng.normal(size=k)) / np.sqrt(3)
    user_f = np.sqrt(c.demographic_share) * demo + np.sqrt(1 - c.demographic_share) * rng.normal(size=(nu, k))
    # items: genre prototypes + noise; popularity is a Zipf law over a random item order
    n_genres = len(GENRES)
    genre_p = 1.0 / np.arange(1, n_genres + 1) ** 0.7
    proto = rng.normal(size=(n_genres, k))
    primary = rng.choice(n_genres, ni, p=genre_p / genre_p.sum())
    item_f = 0.8 * proto[primary] + 0.6 * rng.normal(size=(ni, k))
    log_pop = -c.zipf_exponent * np.log(rng.permutation(ni) + 1.0)
    t0 = float(np.datetime64(f"{c.year}-01-01", "s").astype(np.int64))
    first = np.maximum(t0 + (rng.random(ni) * 1.5 - 0.75) * _YEAR_S, t0)  # items released during the year start later
    # each user samples items without replacement from softmax(taste + popularity) (Gumbel top-k, in draw
    # order), listens 1 + Poisson times, and keeps the first `target` items heard >= min_count times
    keep_rate = 1.0 - sum(math.exp(-c.mean_extra_listens) * c.mean_extra_listens ** j / math.factorial(j)
                          for j in range(c.min_count - 1))
    activity = rng.lognormal(0.0, 0.8, nu)
    target = np.clip(np.round(activity / activity.mean() * c.density * ni), 3, ni // 2).astype(np.int64)
    n_cand = np.minimum(np.ceil(1.5 * target / keep_rate).astype(np.int64) + 5, ni)
    block = max(1, 4_000_000 // ni)
    users, items = [], []
    for s in range(0, nu, block):
        aff = user_f[s:s + block] @ item_f.T / np.sqrt(k)  # (b, ni)
        keys = c.taste_weight * aff + log_pop + rng.gumbel(size=aff.shape)
        m = int(n_cand[s:s + block].max())
        top = np.argpartition(-keys, m - 1, axis=1)[:, :m]
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1, kind="stable"), 1)
        rows, cols = np.nonzero(np.arange(m) < n_cand[s:s + block, None])
        users.append(rows + s)
        items.append(order[rows, cols])
    u, i = np.concatenate(users), np.concatenate(items)  # user-major, draw order within a user
    aff = np.einsum("nk,nk->n", user_f[u], item_f[i]) / np.sqrt(k)
    count = 1 + rng.poisson(c.mean_extra_listens * np.exp(aff / 2) / np.exp(aff / 2).mean())
    ts = np.floor(first[i] + rng.random(len(i)) * (t0 + _YEAR_S - first[i]))
    repeated = count >= c.min_count
    done = np.cumsum(repeated)
    rank = done - np.concatenate([[0], done])[np.searchsorted(u, np.arange(nu))][u]  # repeated items so far
    kept = repeated & (rank <= target[u])
    uid, iid = _ids("u", nu), _ids("t", ni)
    inter = pl.DataFrame({"user_id": uid[u[kept]], "item_id": iid[i[kept]], "count": count[kept].astype(np.float64),
                          "timestamp": ts[kept]}).sort("timestamp", "user_id", "item_id")
    user = pl.DataFrame({"user_id": uid, "gender": np.where(female, "f", "m"), "age": age.astype(np.float64),
                         "country": np.asarray(TOP_COUNTRIES)[country]})
    # genres: the primary genre, plus the nearest other prototypes with probability 0.5 and 0.2
    sims = item_f @ proto.T
    sims[np.arange(ni), primary] = -np.inf
    extra = np.argsort(-sims, axis=1, kind="stable")[:, :2]
    chosen = np.column_stack([primary, extra])
    use = np.column_stack([np.ones(ni, bool), rng.random(ni) < 0.5, rng.random(ni) < 0.2])
    use &= ~_missing(rng, ni, c.genres_missing)[:, None]
    rows, cols = np.nonzero(use)
    long = pl.DataFrame({"i": rows, "genre": np.asarray(GENRES)[chosen[rows, cols]]})
    genres = long.group_by("i", maintain_order=True).agg("genre")
    item = pl.DataFrame({"i": np.arange(ni), "item_id": iid}).join(genres, on="i", how="left").select(
        "item_id", pl.col("genre").alias("genres"))
    feats = {}
    for m in _MODALITIES:
        dim, noise = getattr(c, f"{m}_dim"), getattr(c, f"{m}_noise")
        x = item_f @ rng.normal(size=(k, dim)) / np.sqrt(k) + noise * rng.normal(size=(ni, dim))
        present = ~_missing(rng, ni, getattr(c, f"{m}_missing"))
        feats[m] = FeatureArrays(iid[present], x[present].astype(np.float32), m, "synthetic-onion")
    return MusicTables(inter, user, item, feats)


def _ids(prefix: str, n: int) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), len(str(n - 1))))


def _missing(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """A mask with exactly round(share * n) True entries at random positions."""
    mask = np.zeros(n, bool)
    mask[rng.permutation(n)[: round(share * n)]] = True
    return mask


def generate_synthetic_onion(folder: str | Path, name: str = "synthetic-onion", *,
                             config: SyntheticOnionConfig | None = None, **overrides: Any) -> Path:
    """Write a synthetic Onion-like dataset (labelled synthetic) into `folder`; same config -> same bytes.

    `overrides` are SyntheticOnionConfig fields, e.g. `n_users=50, n_items=80, seed=1`.
    """
    valid = {f.name for f in fields(SyntheticOnionConfig)}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise ConfigError(f"synthetic-onion: unknown parameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(valid))}")
    config = replace(config or SyntheticOnionConfig(), **overrides)
    folder = Path(folder)
    tables = simulate_onion(config)
    label = {"synthetic": True, "generator": "synthetic-onion", "seed": config.seed}
    tables.write(folder, name, **label)
    density = tables.inter.height / (config.n_users * config.n_items)
    _write_meta(folder, name, tables, {**label, "params": asdict(config), "density": round(density, 6),
                                       "note": "SYNTHETIC data shaped like Music4All-Onion; not real listening data"})
    return folder


@register_source("synthetic-onion", "SYNTHETIC Onion-like music data (seeded; demographics, genres, "
                 "audio/text/image vectors)", synthetic=True)
def _build_synthetic_onion(folder: Path, name: str) -> None:
    generate_synthetic_onion(folder, name)
