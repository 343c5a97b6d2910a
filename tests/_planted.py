"""A small SYNTHETIC dataset with planted taste groups, shared by the trainer and distributed tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from sibrar.data.atomic import write_atomic


def write_planted(folder: Path, rng: np.random.Generator, *, n_users: int = 80, n_items: int = 60, n_groups: int = 4,
                  per_user: int = 12, noise: float = 0.15) -> Path:
    """A SYNTHETIC dataset with planted taste groups: users and items in `n_groups` groups; each user
    picks 85 % of its items from its own group. Items carry a `genres` tag naming their group (plus
    a neighbouring group for some), so both interactions and side information carry the signal."""
    name = "planted-synthetic"
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    user_group = np.arange(n_users) % n_groups
    item_group = rng.permutation(np.arange(n_items) % n_groups)
    users, items = [], []
    for u in range(n_users):
        own, other = np.flatnonzero(item_group == user_group[u]), np.flatnonzero(item_group != user_group[u])
        n_noise = int(round(noise * per_user))
        picks = np.concatenate([rng.choice(own, per_user - n_noise, replace=False), rng.choice(other, n_noise, replace=False)])
        users += [f"u{u}"] * per_user
        items += [f"i{i}" for i in picks]
    inter = pl.DataFrame({"user_id": users, "item_id": items, "rating": np.ones(len(users)),
                          "timestamp": np.arange(len(users), dtype=np.float64)})
    write_atomic(out / f"{name}.inter", inter, {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"})
    genres = [[f"g{g}"] + ([f"g{(g + 1) % n_groups}"] if rng.random() < noise else []) for g in item_group]
    write_atomic(out / f"{name}.item", pl.DataFrame({"item_id": [f"i{i}" for i in range(n_items)], "genres": genres}),
                 {"item_id": "token", "genres": "token_seq"})
    return out
