"""Shared fixtures: a seeded generator, ML-100K fetched once per machine, a small synthetic atomic dataset."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest

SEED = 20240607
TEST_DATA_ENV = "SIBRAR_TEST_DATA"  # overrides where the test data cache lives


@pytest.fixture
def rng() -> np.random.Generator:
    """The only source of randomness in tests: a generator with a constant seed."""
    return np.random.default_rng(SEED)


# ------------------------------------------------------------------------------------ real data


@pytest.fixture(scope="session")
def test_data_root(request: pytest.FixtureRequest) -> Path:
    """A data root that survives between runs, so the registry wheels are downloaded once.

    $SIBRAR_TEST_DATA if set, else a folder in pytest's cache dir, else ~/.cache/sibrar-test.
    """
    if os.environ.get(TEST_DATA_ENV):
        root = Path(os.environ[TEST_DATA_ENV]).expanduser()
    elif getattr(request.config, "cache", None) is not None:  # absent under -p no:cacheprovider
        root = Path(request.config.cache.mkdir("sibrar-data"))
    else:
        root = Path.home() / ".cache" / "sibrar-test"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _fingerprint(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def ml100k_dir(test_data_root: Path) -> Iterator[Path]:
    """ML-100K as atomic files, fetched from the `recbole` wheel on PyPI once and reused.

    Shared by every test: read it, never write into it (split outputs go to tmp_path). The
    teardown checks that no test changed or added a file.
    """
    from sibrar.data.sources import fetch

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIBRAR_DATA", str(test_data_root))  # the wheel cache (.downloads) lives there too
        mp.setenv("SIBRAR_MOVIELENS_ROUTE", "wheel")  # deterministic: the registry copy, never the web
        folder = fetch("ml-100k", test_data_root)
    before = _fingerprint(folder)
    yield folder
    assert _fingerprint(folder) == before, f"a test modified the shared ML-100K folder {folder}"


# ------------------------------------------------------------------------------- synthetic data

SYNTHETIC_NAME = "synthetic-small"


def write_synthetic_dataset(
    folder: Path, rng: np.random.Generator, *, n_users: int = 40, n_items: int = 30, per_user: int = 12,
    name: str = SYNTHETIC_NAME,
) -> Path:
    """A small atomic dataset labelled synthetic, using all four field types and missing values.

    `.inter`: every user rates `per_user` distinct items (ratings 1..5, integer timestamps), plus a few
    repeated (user, item) pairs at a later time. `.user`: age (float, some missing), gender (token).
    `.item`: genres (token_seq, some empty), year (float, some missing), studio (token, some missing),
    embedding (float_seq of length 4, some missing). `features/item_text.*`: 8-d vectors for every
    other item. Returns the dataset folder `folder/<name>`.
    """
    from sibrar.data.atomic import write_atomic
    from sibrar.data.features import write_features

    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    user_ids = [f"u{u:03d}" for u in range(n_users)]
    item_ids = [f"i{i:03d}" for i in range(n_items)]

    users, items = [], []
    for u in range(n_users):
        users += [user_ids[u]] * per_user
        items += [item_ids[i] for i in rng.choice(n_items, size=per_user, replace=False)]
    n = len(users)
    ratings = rng.integers(1, 6, size=n).astype(float)
    stamps = rng.integers(1_000_000, 2_000_000, size=n).astype(float)
    repeat = rng.choice(n, size=max(1, n // 20), replace=False)  # later duplicates of existing pairs
    inter = pl.DataFrame({
        "user_id": users + [users[r] for r in repeat],
        "item_id": items + [items[r] for r in repeat],
        "rating": np.concatenate([ratings, rng.integers(1, 6, size=len(repeat)).astype(float)]),
        "timestamp": np.concatenate([stamps, stamps[repeat] + rng.integers(1, 1000, size=len(repeat))]),
    })
    write_atomic(out / f"{name}.inter", inter, {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"})

    age = rng.integers(15, 70, size=n_users).astype(float)
    user = pl.DataFrame({
        "user_id": user_ids,
        "age": [None if u % 7 == 3 else float(a) for u, a in enumerate(age)],
        "gender": [None if u % 11 == 5 else ("F" if u % 2 else "M") for u in range(n_users)],
    })
    write_atomic(out / f"{name}.user", user, {"user_id": "token", "age": "float", "gender": "token"})

    genre_names = ["Action", "Comedy", "Drama", "Horror", "Sci-Fi"]
    embedding = rng.normal(size=(n_items, 4)).round(3)
    item = pl.DataFrame({
        "item_id": item_ids,
        "genres": [[] if i % 6 == 1 else sorted(set(rng.choice(genre_names, size=1 + i % 3).tolist()))
                   for i in range(n_items)],
        "year": [None if i % 5 == 2 else float(1950 + 2 * i) for i in range(n_items)],
        "studio": [None if i % 4 == 0 else f"studio{i % 3}" for i in range(n_items)],
        "embedding": [None if i % 9 == 4 else embedding[i].tolist() for i in range(n_items)],
    }, schema={"item_id": pl.Utf8, "genres": pl.List(pl.Utf8), "year": pl.Float64, "studio": pl.Utf8,
               "embedding": pl.List(pl.Float64)})
    write_atomic(out / f"{name}.item", item, {"item_id": "token", "genres": "token_seq", "year": "float",
                                              "studio": "token", "embedding": "float_seq"})

    with_text = item_ids[::2]
    write_features(out / "features", "item", "text", with_text,
                   rng.normal(size=(len(with_text), 8)).astype(np.float32), encoder="synthetic")
    return out


@pytest.fixture
def make_synthetic_dataset(tmp_path: Path, rng: np.random.Generator) -> Callable[..., Path]:
    """Factory: `make_synthetic_dataset(n_users=..., ...)` writes a fresh synthetic dataset under tmp_path."""
    counter = iter(range(1_000_000))

    def make(**kwargs: object) -> Path:
        return write_synthetic_dataset(tmp_path / f"gen{next(counter)}", rng, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def synthetic_dir(make_synthetic_dataset: Callable[..., Path]) -> Path:
    """A fresh folder of synthetic atomic files (see `write_synthetic_dataset`), safe to modify."""
    return make_synthetic_dataset()


@pytest.fixture(scope="session")
def synthetic_shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same synthetic dataset, written once per session: read it, never write into it."""
    folder = write_synthetic_dataset(tmp_path_factory.mktemp("shared"), np.random.default_rng(SEED))
    before = _fingerprint(folder)
    yield folder
    assert _fingerprint(folder) == before, f"a test modified the shared synthetic folder {folder}"


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> Iterator[None]:
    """Test tensors are tiny: one intra-op thread is ~10x faster than two on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
