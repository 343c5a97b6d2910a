"""The single/multi-branch × sampling × contrastive ablation model on a small ML-100K cold-item split."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from sibrar.config import parse_run_config
from sibrar.errors import ConfigError
from sibrar.eval.evaluator import evaluate
from sibrar.models.base import Batch, create_model
from sibrar.models.modules import SharedBranch
from sibrar.models.multibranch import MultiBranch, MultiBranchConfig, ablation_grid
from sibrar.train.run import Prepared, prepare, train_run

ITEM_MODALITIES = ["interactions", "genres", "release_year", "kg_directed_by"]
SMALL_ITEM = {"modalities": ITEM_MODALITIES, "common_dim": 16, "branch": {"hidden": [16]}}


def config_dict(dataset: Path, model: dict[str, Any], epochs: int = 1) -> dict[str, Any]:
    return {
        "data": {"dataset": str(dataset), "rating_threshold": 5, "k_core": 10, "user_modalities": {},
                 "item_modalities": {m: {"column": m} for m in ITEM_MODALITIES[1:]}},
        "split": {"protocol": "cold_item"}, "model": model,
        "train": {"epochs": epochs, "batch_size": 512, "lr": 0.01, "n_negatives": 4},
        "eval": {"ks": [10], "metrics": ["ndcg"]}}


@pytest.fixture(scope="module")
def prep(ml100k_dir: Path) -> Prepared:
    return prepare(parse_run_config(config_dict(ml100k_dir, {"name": "multibranch", "dim": 16, "item": SMALL_ITEM})))


@pytest.fixture(scope="module")
def batch(prep: Prepared) -> Batch:
    gen = torch.Generator().manual_seed(0)
    train = prep.split.train
    rows = torch.randint(len(train), (64,), generator=gen)
    users = torch.from_numpy(train["user_idx"].to_numpy().copy())[rows]
    pos = torch.from_numpy(train["item_idx"].to_numpy().copy())[rows]
    negatives = prep.inputs.train_items[torch.randint(len(prep.inputs.train_items), (64, 4), generator=gen)]
    return Batch(users, torch.cat([pos[:, None], negatives], dim=1))


def base_config(prep: Prepared) -> MultiBranchConfig:
    config = prep.config.model
    assert isinstance(config, MultiBranchConfig)
    return config


def build(prep: Prepared, config: Any, seed: int = 0) -> Any:
    torch.manual_seed(seed)
    return create_model(config, prep.inputs)


def loss_with(model: Any, batch: Batch, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)  # dropout
    model.generator = torch.Generator().manual_seed(seed)
    return model.loss(batch)


def test_the_grid_has_eight_distinct_cells(prep: Prepared) -> None:
    grid = ablation_grid(base_config(prep))
    assert len(grid) == 8 and len({(c.item.shared, c.item.sampling, c.item.contrastive_weight > 0) for c in grid.values()}) == 8
    assert grid["single+sampling+contrastive"].user == base_config(prep).user  # one-modality towers untouched


@pytest.mark.parametrize("cell", list(ablation_grid()))
def test_every_ablation_cell_builds_and_takes_a_training_step(cell: str, prep: Prepared, batch: Batch) -> None:
    config = ablation_grid(base_config(prep))[cell]
    model = build(prep, config)
    model.train()
    parts = loss_with(model, batch, seed=1)
    assert ("infonce_item" in parts) == cell.endswith("+contrastive")
    assert all(torch.isfinite(v) for v in parts.values())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    parts["loss"].backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        items = model.all_item_embeddings()
    assert items.shape == (prep.inputs.n_items, 16) and torch.isfinite(items).all()


def test_shared_has_one_branch_and_multi_one_per_modality(prep: Prepared) -> None:
    grid = ablation_grid(base_config(prep))
    single = build(prep, grid["single+sampling+contrastive"])
    multi = build(prep, grid["multi+sampling+contrastive"])
    assert isinstance(single.item_tower.branch, SharedBranch)
    assert isinstance(multi.item_tower.branch, nn.ModuleDict)
    assert list(multi.item_tower.branch) == ITEM_MODALITIES
    assert all(isinstance(b, SharedBranch) for b in multi.item_tower.branch.values())
    n_branch = sum(p.numel() for p in single.item_tower.branch.parameters())
    assert sum(p.numel() for p in multi.item_tower.branch.parameters()) == len(ITEM_MODALITIES) * n_branch
    pointers = [p.data_ptr() for b in multi.item_tower.branch.values() for p in b.parameters()]
    assert len(set(pointers)) == len(pointers)  # no tensor shared between branches


def test_shared_pairwise_cell_is_exactly_sibrar(prep: Prepared, batch: Batch) -> None:
    config = ablation_grid(base_config(prep))["single+sampling+contrastive"]
    model = build(prep, config)
    sibrar_config = parse_run_config({"model": {"name": "sibrar", "dim": 16, "item": {**SMALL_ITEM, "contrastive_weight": 1e-4},
                                                "user": {"branch": None, "sampling": "single", "contrastive_weight": 0.0}}}).model
    sibrar = build(prep, sibrar_config, seed=7)
    assert set(sibrar.state_dict()) == set(model.state_dict())
    sibrar.load_state_dict(model.state_dict())
    for m in (model, sibrar):
        m.train()
    ours, theirs = loss_with(model, batch, seed=3), loss_with(sibrar, batch, seed=3)
    assert set(ours) == set(theirs)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key])
    for m in (model, sibrar):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.all_item_embeddings(), sibrar.all_item_embeddings())


def test_no_sampling_uses_every_modality_so_the_generator_does_not_matter(prep: Prepared, batch: Batch) -> None:
    grid = ablation_grid(base_config(prep))
    for cell, depends in (("multi+all+contrastive", False), ("multi+sampling+contrastive", True)):
        config = grid[cell]
        assert config.item.branch is not None
        config = replace(config, item=replace(config.item, branch=replace(config.item.branch, input_dropout=0.0)))
        model = build(prep, config)
        model.train()
        a, b = loss_with(model, batch, seed=1)["loss"], loss_with(model, batch, seed=2)["loss"]
        assert torch.equal(a, b) != depends


def test_multibranch_is_configured_from_yaml_keys(ml100k_dir: Path) -> None:
    config = parse_run_config(config_dict(ml100k_dir, {"name": "multibranch", "item": {"shared": False, "sampling": "none"}}))
    assert isinstance(config.model, MultiBranchConfig)
    assert config.model.item.shared is False and config.model.item.sampling == "none"
    with pytest.raises(ConfigError, match="sampling"):
        parse_run_config(config_dict(ml100k_dir, {"name": "multibranch", "item": {"sampling": "all"}}))


@pytest.mark.parametrize("cell", ["single+sampling+contrastive", "multi+sampling+contrastive"])
def test_branch_models_beat_rand_on_cold_items(cell: str, prep: Prepared) -> None:
    rand = create_model(parse_run_config({"model": {"name": "rand"}}).model, prep.inputs)
    floor = evaluate(rand, prep.inputs, prep.split, "valid", prep.config.eval).summary["ndcg@10"]
    config = replace(prep.config, model=ablation_grid(base_config(prep))[cell],
                     train=replace(prep.config.train, epochs=3))
    result = train_run(config, progress=False, prepared=Prepared(config, prep.dataset, prep.split, prep.inputs))
    assert isinstance(result.model, MultiBranch)
    assert result.valid.summary["ndcg@10"] > floor + 0.02
