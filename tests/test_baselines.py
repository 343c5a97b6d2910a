"""Baselines (Rand, Pop, MF, DeepMF, DropoutNet, CLCRec) on the one Model interface, on a small ML-100K cut."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sibrar.config import EvalConfig, RunConfig, parse_run_config
from sibrar.errors import ConfigError
from sibrar.eval.evaluator import evaluate, missing_view, subset_view
from sibrar.models.base import MODELS, Batch, Model, create_model
from sibrar.models.baselines.clcrec import CLCRec
from sibrar.models.baselines.dropoutnet import DropoutNet
from sibrar.train.run import Prepared, prepare, train_run

# ML-100K, 5-star ratings only, 10-core: ~540 users, ~450 items, ~13k training pairs (seconds per epoch)
ITEM_CONTENT = ["genres", "release_year", "kg_directed_by", "kg_actor"]
USER_CONTENT = ["gender", "age", "occupation"]
MODELS_UNDER_TEST: dict[str, dict[str, Any]] = {
    "rand": {"name": "rand", "dim": 16},
    "pop": {"name": "pop"},
    "mf": {"name": "mf", "dim": 16},
    "mf_nobias": {"name": "mf", "dim": 16, "item_bias": False},
    "deepmf": {"name": "deepmf", "hidden": [32], "dim": 16},
    "deepmf_clamped": {"name": "deepmf", "hidden": [32], "dim": 16, "output_activation": True, "min_similarity": 1e-6},
    "dropoutnet": {"name": "dropoutnet", "dim": 16, "item": {"modalities": ITEM_CONTENT, "hidden": [32]},
                   "user": {"modalities": ["gender", "age"], "hidden": [32]}},
    # item cold start: a user side without content gains nothing from dropping its only input
    "dropoutnet_items": {"name": "dropoutnet", "dim": 16, "item": {"modalities": ITEM_CONTENT, "hidden": [32]},
                         "user": {"preference_dropout": 0.0, "hidden": [32]}},
    "clcrec": {"name": "clcrec", "dim": 16, "item": {"modalities": ITEM_CONTENT},
               "user": {"modalities": ["gender", "occupation"]}},
    "clcrec_items": {"name": "clcrec", "dim": 16, "item": {"modalities": ITEM_CONTENT}},
    "clcrec_mean": {"name": "clcrec", "dim": 16, "cold": "mean", "item": {"modalities": ["genres"]}},
    # the SiBraR family through the same contract (more in test_multibranch.py)
    "sibrar": {"name": "sibrar", "dim": 16, "item": {"modalities": ["interactions", *ITEM_CONTENT], "common_dim": 16}},
    "multibranch": {"name": "multibranch", "dim": 16, "item": {"modalities": ["interactions", *ITEM_CONTENT],
                                                               "common_dim": 16, "sampling": "none"}},
}
FAST_TRAIN = {"epochs": 1, "batch_size": 512, "lr": 0.01, "n_negatives": 4, "patience": 5}
FAST_EVAL = {"ks": [10], "metrics": ["ndcg"]}


def run_config(dataset: Path, protocol: str, model: dict[str, Any], **train: Any) -> RunConfig:
    return parse_run_config({
        "data": {"dataset": str(dataset), "rating_threshold": 5, "k_core": 10,
                 "user_modalities": {m: {"column": m} for m in USER_CONTENT},
                 "item_modalities": {m: {"column": m} for m in ITEM_CONTENT}},
        "split": {"protocol": protocol}, "model": model, "train": {**FAST_TRAIN, **train}, "eval": FAST_EVAL})


def with_model(prep: Prepared, model: dict[str, Any], **train: Any) -> Prepared:
    """The same data and split with another model / training config."""
    config = run_config(Path(prep.config.data.dataset), prep.config.split.protocol, model, **train)
    return Prepared(config, prep.dataset, prep.split, prep.inputs)


@pytest.fixture(scope="module")
def warm(ml100k_dir: Path) -> Prepared:
    return prepare(run_config(ml100k_dir, "random", {"name": "rand"}))


@pytest.fixture(scope="module")
def cold(ml100k_dir: Path) -> Prepared:
    return prepare(run_config(ml100k_dir, "cold_item", {"name": "rand"}))


def build(prep: Prepared, model: dict[str, Any], seed: int = 0) -> Model:
    torch.manual_seed(seed)
    return create_model(with_model(prep, model).config.model, prep.inputs)


def one_step(model: Model, prep: Prepared, seed: int = 0) -> dict[str, torch.Tensor]:
    """One AdamW step on a batch of real training pairs (with 4 random negatives)."""
    gen = torch.Generator().manual_seed(seed)
    train = prep.split.train
    rows = torch.randint(len(train), (128,), generator=gen)
    users = torch.from_numpy(train["user_idx"].to_numpy().copy())[rows]
    pos = torch.from_numpy(train["item_idx"].to_numpy().copy())[rows]
    negatives = prep.inputs.train_items[torch.randint(len(prep.inputs.train_items), (128, 4), generator=gen)]
    model.generator = gen  # type: ignore[assignment]
    model.train()
    parts = model.loss(Batch(users, torch.cat([pos[:, None], negatives], dim=1)))
    if model.trainable:
        opt = torch.optim.AdamW(model.parameters(), lr=0.01)
        parts["loss"].backward()
        opt.step()
    model.eval()
    return parts


def scores(model: Model, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.score(model.user_embeddings(users), model.item_embeddings(items))


# ------------------------------------------------------------------------------------------ contract


def test_every_baseline_is_registered_with_its_config() -> None:
    for name in ("rand", "pop", "mf", "deepmf", "dropoutnet", "clcrec", "multibranch", "sibrar"):
        assert name in MODELS
        assert MODELS.get(name).config_cls().name == name


@pytest.mark.parametrize("key", list(MODELS_UNDER_TEST))
def test_embeddings_are_finite_with_declared_shapes_and_score_is_their_dot(key: str, cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST[key])
    parts = one_step(model, cold)
    assert "loss" in parts and all(torch.isfinite(v) for v in parts.values())
    users, items = torch.arange(cold.inputs.n_users), torch.arange(cold.inputs.n_items)
    with torch.no_grad():
        user_emb, item_emb = model.user_embeddings(users), model.all_item_embeddings()
    assert user_emb.ndim == 2 and user_emb.shape[0] == cold.inputs.n_users
    assert item_emb.shape == (cold.inputs.n_items, user_emb.shape[1])
    assert torch.isfinite(user_emb).all() and torch.isfinite(item_emb).all()
    torch.testing.assert_close(model.score(user_emb[:50], item_emb), user_emb[:50] @ item_emb.T)
    batched = scores(model, users[:7], items)
    torch.testing.assert_close(batched[3], scores(model, users[3:4], items)[0])  # batch == per user


@pytest.mark.parametrize("key", list(MODELS_UNDER_TEST))
def test_state_dict_round_trip_gives_equal_scores(key: str, cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST[key], seed=1)
    one_step(model, cold)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    fresh = build(cold, MODELS_UNDER_TEST[key], seed=2)  # different init: only the load makes them equal
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    users, items = torch.arange(0, cold.inputs.n_users, 5), torch.arange(cold.inputs.n_items)
    torch.testing.assert_close(scores(fresh, users, items), scores(model, users, items), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------ quality


@pytest.fixture(scope="module")
def rand_valid(warm: Prepared, cold: Prepared) -> dict[str, float]:
    out = {}
    for name, prep in (("random", warm), ("cold_item", cold)):
        out[name] = evaluate(build(prep, {"name": "rand"}), prep.inputs, prep.split, "valid",
                             prep.config.eval).summary["ndcg@10"]
    return out


@pytest.mark.parametrize(("protocol", "key", "epochs", "margin"), [
    ("random", "pop", 1, 0.05), ("random", "mf", 1, 0.05), ("random", "deepmf", 1, 0.05),
    ("cold_item", "dropoutnet_items", 3, 0.02), ("cold_item", "clcrec_items", 3, 0.02),
])
def test_baseline_beats_rand_on_validation(protocol: str, key: str, epochs: int, margin: float, warm: Prepared,
                                           cold: Prepared, rand_valid: dict[str, float]) -> None:
    prep = with_model(warm if protocol == "random" else cold, MODELS_UNDER_TEST[key], epochs=epochs)
    result = train_run(prep.config, progress=False, prepared=prep)
    assert result.train.history[0]["epoch"] == -1  # the untrained model is evaluated first
    assert len(result.train.history) == (1 if key == "pop" else 1 + epochs)
    assert result.valid.summary["ndcg@10"] > rand_valid[protocol] + margin


def test_untrainable_models_run_through_train_run_and_save_a_loadable_model(cold: Prepared, tmp_path: Path) -> None:
    for name in ("pop", "rand"):
        prep = with_model(cold, {"name": name})
        result = train_run(prep.config, tmp_path / name, progress=False, prepared=prep)
        assert [h["epoch"] for h in result.train.history] == [-1]
        assert (tmp_path / name / "metrics.json").is_file()
        fresh = create_model(prep.config.model, prep.inputs)
        fresh.load_state_dict(torch.load(tmp_path / name / "model.pt", weights_only=True)["model"])  # + "run_id"
        items = torch.arange(cold.inputs.n_items)
        torch.testing.assert_close(scores(fresh, torch.arange(9), items), scores(result.model, torch.arange(9), items))


# ------------------------------------------------------------------------------------------ cold items


@pytest.mark.parametrize("key", ["pop", "mf"])
def test_cold_items_tie_and_the_evaluator_breaks_ties_per_user_reproducibly(key: str, cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST[key])
    one_step(model, cold)
    cold_items = torch.from_numpy(cold.split.cold_items("valid"))
    tied = scores(model, torch.arange(20), cold_items)
    assert (tied == tied[:, :1]).all()  # every cold item scores the same for a user

    def topk(seed: int) -> np.ndarray:
        config = EvalConfig(ks=(10,), metrics=("ndcg",), seed=seed)
        result = evaluate(model, cold.inputs, cold.split, "valid", config, keep_topk=True)
        assert result.topk is not None
        return result.topk

    first = topk(0)
    assert len({tuple(row) for row in first}) > len(first) // 2  # lists differ between users
    by_index = np.sort(cold.split.candidates("valid"))[:10]
    assert not (np.sort(first, axis=1) == by_index).all(axis=1).any()  # never the lowest indices
    np.testing.assert_array_equal(topk(0), first)  # reproducible with the seed
    assert (topk(1) != first).any()  # and the seed matters


def test_deepmf_embeds_every_cold_item_as_one_constant(cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST["deepmf"])
    one_step(model, cold)
    with torch.no_grad():
        emb = model.item_embeddings(torch.from_numpy(cold.split.cold_items("valid")))
    torch.testing.assert_close(emb, emb[:1].expand_as(emb))
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(len(emb)))  # L2-normalised: dot = cosine


@pytest.mark.parametrize("key", ["dropoutnet", "clcrec"])
def test_content_models_embed_cold_items_from_content_and_honour_views(key: str, cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST[key])
    one_step(model, cold)
    items = torch.from_numpy(cold.split.cold_items("valid"))
    with torch.no_grad():
        full = model.item_embeddings(items)
        genres_only = model.item_embeddings(items, subset_view(("genres",)))
    assert len(torch.unique(full.round(decimals=5), dim=0)) > len(items) // 2  # distinct content, distinct vectors
    assert not torch.allclose(full, genres_only)
    with pytest.raises(ConfigError, match="plot"):
        model.item_embeddings(items, subset_view(("plot",)))
    with pytest.raises(ConfigError, match="plot"):
        model.item_embeddings(items, missing_view(cold.inputs.n_items, "plot", 0.5))


def test_dropoutnet_drops_preference_inputs_with_the_seeded_generator(cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST["dropoutnet"])
    assert isinstance(model, DropoutNet)
    batch = Batch(torch.arange(64), cold.inputs.train_items[:64 * 5].reshape(64, 5))

    def loss(seed: int) -> torch.Tensor:
        model.generator = torch.Generator().manual_seed(seed)
        return model.loss(batch)["loss"]

    assert torch.equal(loss(3), loss(3))
    assert not torch.equal(loss(3), loss(4))
    keep = model._keep(100_000, 0.5, torch.device("cpu"))
    assert keep is not None and abs(float(keep.float().mean()) - 0.5) < 0.01


def test_clcrec_contrasts_users_across_the_batch(cold: Prepared) -> None:
    model = build(cold, MODELS_UNDER_TEST["clcrec"])
    assert isinstance(model, CLCRec)
    parts = one_step(model, cold)
    assert parts["infonce_user"] > 0.1 and parts["infonce_item"] > 0.1  # not the reference's 1×1 logits (== 0)
    model.zero_grad()
    model.loss(Batch(torch.arange(32), cold.inputs.train_items[:32 * 5].reshape(32, 5)))["infonce_user"].backward()
    grads = [p.grad for p in model.user_tower.content.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_clcrec_cold_modes_rank_cold_only_candidates_identically(cold: Prepared) -> None:
    content = build(cold, {**MODELS_UNDER_TEST["clcrec_mean"], "cold": "content"}, seed=5)
    mean = build(cold, MODELS_UNDER_TEST["clcrec_mean"], seed=5)
    one_step(content, cold)
    mean.load_state_dict(content.state_dict())
    items = torch.from_numpy(cold.split.cold_items("valid"))
    a, b = scores(content, torch.arange(30), items), scores(mean, torch.arange(30), items)
    assert not torch.allclose(a, b)
    np.testing.assert_array_equal(a.argsort(dim=1).numpy(), b.argsort(dim=1).numpy())
