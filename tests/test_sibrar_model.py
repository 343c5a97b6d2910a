"""SiBraR: a known-answer checkerboard for warm and cold items, and missing-modality views."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from sibrar.config import DataConfig, EvalConfig, SplitConfig, TrainConfig, parse_run_config
from sibrar.data import modalities as M
from sibrar.data.dataset import Dataset, IdMap, load_dataset
from sibrar.data.inputs import ModelInputs, build_inputs
from sibrar.data.splits import Split, make_split
from sibrar.eval.evaluator import evaluate
from sibrar.errors import ConfigError
from sibrar.models.base import FULL_VIEW, Batch, Model, SideView, View, create_model
from sibrar.models.modules import BranchConfig
from sibrar.models.sibrar import SiBraR, SiBraRConfig, TowerConfig
from sibrar.train.run import Prepared, prepare
from sibrar.train.trainer import Trainer


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


class RandomScores(Model):
    """Fixed random embeddings: the 'random' reference every quality check is compared with."""

    name = "random-reference"

    def __init__(self, inputs: ModelInputs, dim: int = 16) -> None:
        super().__init__(None, inputs)
        g = torch.Generator().manual_seed(123)
        self.register_buffer("users", torch.randn(inputs.n_users, dim, generator=g))
        self.register_buffer("items", torch.randn(inputs.n_items, dim, generator=g))

    def loss(self, batch):  # pragma: no cover - never trained
        raise NotImplementedError

    def user_embeddings(self, users, view=FULL_VIEW):
        return self.users[users]

    def item_embeddings(self, items, view=FULL_VIEW):
        return self.items[items]


# ------------------------------------------------------------------------------ known answer


def checkerboard(n_users: int = 24, n_items: int = 32) -> Dataset:
    """SYNTHETIC checkerboard: user u likes exactly the items of its own parity (i % 2 == u % 2).

    Items carry a categorical `parity` modality that reveals the answer, so a working SiBraR ranks
    every withheld own-parity item above every other-parity item -- also for cold items, which it
    can only embed from `parity`.
    """
    pairs = np.array([(u, i) for u in range(n_users) for i in range(n_items) if i % 2 == u % 2])
    inter = pl.DataFrame({"user_idx": pairs[:, 0], "item_idx": pairs[:, 1], "rating": np.ones(len(pairs)),
                          "timestamp": np.arange(len(pairs), dtype=np.float64)})
    parity = M.categorical("parity", ["even" if i % 2 == 0 else "odd" for i in range(n_items)])
    return Dataset("checkerboard-synthetic", None, IdMap(np.array([f"u{u}" for u in range(n_users)])),
                   IdMap(np.array([f"i{i}" for i in range(n_items)])), inter,
                   M.EntityFeatures("user", n_users), M.EntityFeatures("item", n_items, {"parity": parity}))


def train_checkerboard(protocol: str) -> tuple[Model, ModelInputs, Split]:
    dataset = checkerboard()
    split = make_split(dataset, SplitConfig(protocol=protocol, seed=3))  # type: ignore[arg-type]
    inputs = build_inputs(dataset, split)
    config = SiBraRConfig(dim=16, item=TowerConfig(
        modalities=("interactions", "parity"), common_dim=16, sampling="pairwise", contrastive_weight=0.1,
        branch=BranchConfig(hidden=(16,), input_dropout=0.0)))
    model = SiBraR(config, inputs)
    train = TrainConfig(epochs=6, batch_size=32, lr=1e-2, n_negatives=4, patience=100)
    Trainer(model, inputs, split, train, EVAL_ALL, progress=False).fit()
    return model, inputs, split


# every candidate not masked: own-parity items left are exactly the relevant ones
EVAL_ALL = EvalConfig(ks=(1, 10), metrics=("ndcg", "hit"), candidates="all")


@pytest.mark.parametrize("protocol", ["random", "cold_item"])
def test_known_answer_checkerboard_ranks_withheld_items_first(protocol):
    model, inputs, split = train_checkerboard(protocol)
    test_items = split.test["item_idx"].unique().to_numpy()
    if protocol == "cold_item":
        assert np.array_equal(np.sort(split.cold_items("test")), np.sort(test_items))  # all test items are cold
        assert not inputs.item["interactions"].available[torch.from_numpy(test_items)].any()
    else:
        assert len(split.cold_items("test")) == 0
    trained = evaluate(model, inputs, split, "test", EVAL_ALL).summary
    random = evaluate(RandomScores(inputs), inputs, split, "test", EVAL_ALL).summary
    assert trained["hit@1"] >= 0.95, trained  # the withheld item comes first for (almost) every user
    assert trained["ndcg@10"] >= 0.95, trained
    assert random["ndcg@10"] < 0.6 and trained["ndcg@10"] > random["ndcg@10"] + 0.35, (trained, random)


def test_untrained_model_does_not_already_solve_the_checkerboard():
    dataset = checkerboard()
    split = make_split(dataset, SplitConfig(protocol="cold_item", seed=3))
    inputs = build_inputs(dataset, split)
    config = SiBraRConfig(dim=16, item=TowerConfig(modalities=("interactions", "parity"), common_dim=16,
                                                   branch=BranchConfig(hidden=(16,), input_dropout=0.0)))
    # users of one parity share one interaction vector and cold items one parity embedding, so a random
    # init gets both parities right by chance (about 1 in 4): judge the mean over several inits
    scores = []
    for seed in range(6):
        torch.manual_seed(seed)
        scores.append(evaluate(SiBraR(config, inputs), inputs, split, "test", EVAL_ALL).summary["ndcg@10"])
    assert np.mean(scores) < 0.9, scores


# ---------------------------------------------------------------------- missing-modality views


@pytest.fixture(scope="module")
def rich(synthetic_shared_dir: Path) -> tuple[SiBraR, ModelInputs, Split]:
    """An untrained eval-mode SiBraR over every item modality of the synthetic data (cold_item split).

    Item modalities: interactions, id, genres (tags), year (numeric), studio (categorical),
    embedding and text (vectors); several are missing for some items.
    """
    torch.manual_seed(0)
    dataset = load_dataset(DataConfig(dataset=str(synthetic_shared_dir), k_core=0))
    split = make_split(dataset, SplitConfig(protocol="cold_item", seed=1))
    inputs = build_inputs(dataset, split)
    item = TowerConfig(modalities=("interactions", "id", "genres", "year", "studio", "embedding", "text"),
                       common_dim=16, branch=BranchConfig(hidden=(16,)))
    model = SiBraR(SiBraRConfig(dim=8, item=item), inputs)
    # non-trivial BatchNorm running statistics, as after training
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval(), inputs, split


def items_of(inputs: ModelInputs) -> torch.Tensor:
    return torch.arange(inputs.n_items)


def available(inputs: ModelInputs, name: str) -> torch.Tensor:
    return inputs.item[name].available


def test_missing_view_changes_only_the_items_it_names(rich, rng):
    model, inputs, _ = rich
    items = items_of(inputs)
    missing = torch.from_numpy(rng.random(inputs.n_items) < 0.5)
    with torch.no_grad():
        full = model.item_embeddings(items)
        view = View(item=SideView(missing={"genres": missing}))
        partial = model.item_embeddings(items, view)
    untouched = ~missing | ~available(inputs, "genres")
    torch.testing.assert_close(partial[untouched], full[untouched], rtol=1e-5, atol=1e-6)
    changed = missing & available(inputs, "genres")
    assert changed.sum() >= 5
    assert (partial[changed] - full[changed]).abs().amax(dim=1).min() > 1e-4
    torch.testing.assert_close(model.user_embeddings(torch.arange(inputs.n_users), view),
                               model.user_embeddings(torch.arange(inputs.n_users)))


def test_missing_view_equals_dropping_the_modality_for_exactly_those_items(rich):
    model, inputs, _ = rich
    items = items_of(inputs)
    everyone = torch.ones(inputs.n_items, dtype=torch.bool)
    names = ("interactions", "id", "year", "studio", "embedding", "text")
    with torch.no_grad():
        all_missing = model.item_embeddings(items, View(item=SideView(missing={"genres": everyone})))
        subset = model.item_embeddings(items, View(item=SideView(modalities=names)))
    torch.testing.assert_close(all_missing, subset, rtol=1e-5, atol=1e-6)


def test_subset_view_with_one_modality_gives_different_embeddings(rich):
    model, inputs, _ = rich
    items = items_of(inputs)
    with torch.no_grad():
        full = model.item_embeddings(items)
        only_text = model.item_embeddings(items, View(item=SideView(modalities=("text",))))
    has_text = available(inputs, "text")
    others = inputs.item.availability([m for m in model.item_tower.names if m != "text"]).any(dim=1)
    differs = (only_text - full).abs().amax(dim=1) > 1e-4
    assert differs[has_text & others].all()
    assert (only_text[~has_text] == 0).all()


def test_entity_without_any_usable_modality_gets_the_zero_vector(rich):
    model, inputs, _ = rich
    items = items_of(inputs)
    none_left = torch.zeros(inputs.n_items, dtype=torch.bool)
    none_left[:5] = True
    view = View(item=SideView(missing={m: none_left for m in model.item_tower.names}))
    with torch.no_grad():
        emb = model.item_embeddings(items, view)
        full = model.item_embeddings(items)
    assert (emb[:5] == 0).all()
    torch.testing.assert_close(emb[5:], full[5:], rtol=1e-5, atol=1e-6)
    # the same under training-time sampling: an occurrence with nothing available embeds to zero
    empty = SiBraR(model.config, dataclasses.replace(
        inputs, item=M.EntityFeatures("item", inputs.n_items, {
            name: m.with_available(torch.zeros(inputs.n_items, dtype=torch.bool)) if name == "genres" else m
            for name, m in inputs.item.modalities.items()})))
    tower = empty.item_tower
    tower.available[:3] = False
    emb_train, _, distinct = tower.sample(torch.tensor([0, 1, 2, 10]), torch.Generator().manual_seed(0))
    assert (emb_train[:3] == 0).all() and not distinct[:3].any()
    assert emb_train[3].abs().sum() > 0


def test_cold_items_never_use_interactions_or_id(rich):
    model, inputs, split = rich
    cold = torch.from_numpy(np.concatenate([split.cold_items("valid"), split.cold_items("test")]))
    warm = torch.from_numpy(split.train["item_idx"].unique().to_numpy())
    assert len(cold) > 0
    for name in ("interactions", "id"):
        assert not inputs.item[name].available[cold].any()
        assert inputs.item[name].available[warm].all()
    perturbed = SiBraR(model.config, inputs)
    perturbed.load_state_dict(model.state_dict())
    perturbed.eval()
    with torch.no_grad():
        for name in ("interactions", "id"):
            for p in perturbed.item_tower.projections[name].parameters():
                p.add_(torch.randn_like(p))
        before, after = model.item_embeddings(items_of(inputs)), perturbed.item_embeddings(items_of(inputs))
        torch.testing.assert_close(after[cold], before[cold], rtol=1e-5, atol=1e-6)  # cold: side information only
        assert (after[warm] - before[warm]).abs().amax(dim=1).min() > 1e-4  # warm items do use them
        # training-time sampling of cold occurrences never draws them either (batch of cold items only)
        perturbed.train(), model.train()
        for m in (model, perturbed):
            m.item_tower.branch.eval()  # BN in running-stats mode so only the drawn modalities matter
        a, _, _ = model.item_tower.sample(cold.repeat(20), torch.Generator().manual_seed(1))
        b, _, _ = perturbed.item_tower.sample(cold.repeat(20), torch.Generator().manual_seed(1))
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    model.eval()


def test_view_of_the_other_side_leaves_items_alone(rich):
    model, inputs, _ = rich
    view = View(user=SideView(modalities=("interactions",)))
    with torch.no_grad():
        torch.testing.assert_close(model.item_embeddings(items_of(inputs), view), model.item_embeddings(items_of(inputs)))


def test_embeddings_have_declared_shape_and_are_finite(rich):
    model, inputs, _ = rich
    with torch.no_grad():
        users = model.user_embeddings(torch.arange(inputs.n_users))
        items = model.all_item_embeddings(chunk=7)  # chunking must not change anything
    assert users.shape == (inputs.n_users, 8) and items.shape == (inputs.n_items, 8)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    torch.testing.assert_close(items, model.item_embeddings(items_of(inputs)), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- paper user tower, temperature


def small_run(dataset: Path, model: dict, **train: object) -> Prepared:
    return prepare(parse_run_config({
        "data": {"dataset": str(dataset), "k_core": 0}, "split": {"protocol": "cold_item", "seed": 1},
        "model": {"name": "sibrar", "dim": 16, **model},
        "train": {"batch_size": 64, "n_negatives": 4, **train}, "eval": {"ks": [10], "metrics": ["ndcg"]}}))


def train_steps(prep: Prepared, steps: int, lr: float = 1e-2) -> tuple[SiBraR, list[float]]:
    """`steps` AdamW steps on random training batches (users, positive + 4 random training items)."""
    model = create_model(prep.config.model, prep.inputs)
    assert isinstance(model, SiBraR)
    model.generator = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(1)
    users_all = torch.from_numpy(prep.split.train["user_idx"].to_numpy().copy())
    items_all = torch.from_numpy(prep.split.train["item_idx"].to_numpy().copy())
    losses = []
    model.train()
    for _ in range(steps):
        rows = torch.randint(len(users_all), (64,), generator=gen)
        negatives = prep.inputs.train_items[torch.randint(len(prep.inputs.train_items), (64, 4), generator=gen)]
        parts = model.loss(Batch(users_all[rows], torch.cat([items_all[rows, None], negatives], dim=1)))
        opt.zero_grad()
        parts["loss"].backward()
        opt.step()
        losses.append(parts["loss"].item())
    return model.eval(), losses


def test_paper_user_tower_is_the_default_and_its_embeddings_take_negative_values(synthetic_shared_dir):
    prep = small_run(synthetic_shared_dir, {"item": {"modalities": ["interactions", "genres"], "common_dim": 16,
                                                     "branch": {"hidden": [16]}}})
    assert prep.config.model.user.branch.norm_position == "after"
    model, _ = train_steps(prep, 20)
    with torch.no_grad():
        users = model.user_embeddings(torch.arange(prep.inputs.n_users))
        items = model.all_item_embeddings()
    assert (users < 0).float().mean() > 0.2  # Lin -> ReLU -> BN: centred by BatchNorm, both signs
    assert (items >= 0).all()  # the item branch still ends in a ReLU
    plain = dataclasses.replace(prep.config.model.user.branch, norm_position="before")
    old_order = dataclasses.replace(prep, config=dataclasses.replace(prep.config, model=dataclasses.replace(
        prep.config.model, user=dataclasses.replace(prep.config.model.user, branch=plain))))
    model, _ = train_steps(old_order, 20)
    with torch.no_grad():
        assert (model.user_embeddings(torch.arange(prep.inputs.n_users)) >= 0).all()  # Lin -> BN -> ReLU


def test_smallest_temperature_trains_without_nan(synthetic_shared_dir):
    tiny = {"contrastive_weight": 0.1, "temperature": 1e-3}
    prep = small_run(synthetic_shared_dir, {
        "user": {"modalities": ["interactions", "id"], "common_dim": 16, "sampling": "pairwise", **tiny},
        "item": {"modalities": ["interactions", "genres", "year"], "common_dim": 16, "branch": {"hidden": [16]}, **tiny}})
    model, losses = train_steps(prep, 8)
    assert all(np.isfinite(losses)), losses
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("side", ["item", "user"])
def test_temperature_below_the_supported_minimum_is_a_config_error(side):
    with pytest.raises(ConfigError, match=r"model\.(item|user)\.temperature is 0\.0005; expected a finite number >= 0\.001"):
        parse_run_config({"model": {"name": "sibrar", side: {"temperature": 5e-4}}})
