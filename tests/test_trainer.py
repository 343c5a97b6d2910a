"""The training loop: learns, is reproducible from its seed, resumes exactly, writes loadable checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from sibrar.config import RunConfig, apply_overrides, parse_run_config
from sibrar.data.inputs import ModelInputs
from sibrar.errors import ConfigError, TrainingError
from sibrar.eval.evaluator import evaluate
from sibrar.models.base import FULL_VIEW, Model
from sibrar.train.run import Prepared, RunResult, prepare, train_run
from sibrar.train.trainer import BEST, LAST, Callback

from _planted import write_planted


def base_config(dataset: Path) -> dict[str, Any]:
    return {
        "data": {"dataset": str(dataset), "k_core": 0},
        "split": {"protocol": "random", "seed": 5},
        "model": {"name": "sibrar", "dim": 16,
                  "item": {"modalities": ["interactions", "genres"], "common_dim": 16, "contrastive_weight": 0.01,
                           "branch": {"hidden": [16], "input_dropout": 0.1}}},  # dropout: the global RNG matters too
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "n_negatives": 4, "patience": 10},
        "eval": {"ks": [10], "metrics": ["ndcg", "recall", "hit"]},
    }


def config(base: dict[str, Any], *overrides: str) -> RunConfig:
    return parse_run_config(apply_overrides(base, overrides))


def without_time(history: list[dict[str, float]]) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


class StopAfter(Callback):
    """Simulates a crash: raises after the checkpoint of epoch `epoch` has been written."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt(f"simulated crash after epoch {epoch}")


class RandomScores(Model):
    """Fixed random embeddings: the 'random' reference."""

    name = "random-reference"

    def __init__(self, inputs: ModelInputs) -> None:
        super().__init__(None, inputs)
        g = torch.Generator().manual_seed(321)
        self.register_buffer("u", torch.randn(inputs.n_users, 16, generator=g))
        self.register_buffer("i", torch.randn(inputs.n_items, 16, generator=g))

    def loss(self, batch):  # pragma: no cover
        raise NotImplementedError

    def user_embeddings(self, users, view=FULL_VIEW):
        return self.u[users]

    def item_embeddings(self, items, view=FULL_VIEW):
        return self.i[items]


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Prepared]:
    folder = write_planted(tmp_path_factory.mktemp("planted"), np.random.default_rng(20240607))
    base = base_config(folder)
    return base, prepare(config(base))


@pytest.fixture(scope="module")
def straight(planted, tmp_path_factory) -> RunResult:
    """4 epochs, uninterrupted."""
    base, prep = planted
    return train_run(config(base), tmp_path_factory.mktemp("straight"), progress=False, prepared=prep)


@pytest.fixture(scope="module")
def extended(planted, tmp_path_factory) -> tuple[RunResult, RunResult]:
    """2 epochs, then the same run resumed with train.epochs=4."""
    base, prep = planted
    run_dir = tmp_path_factory.mktemp("extended")
    first = train_run(config(base, "train.epochs=2"), run_dir, progress=False, prepared=prep)
    resumed = train_run(config(base), run_dir, resume=True, progress=False, prepared=prep)
    return first, resumed


def test_training_beats_random_clearly_on_validation(straight, planted):
    _, prep = planted
    random = evaluate(RandomScores(prep.inputs), prep.inputs, prep.split, "valid",
                      prep.config.eval).summary
    trained = straight.valid.summary
    assert trained["ndcg@10"] > 2 * random["ndcg@10"] and trained["ndcg@10"] > random["ndcg@10"] + 0.15, (trained, random)
    assert trained["recall@10"] > random["recall@10"] + 0.2
    history = straight.train.history
    assert [row["epoch"] for row in history] == [-1, 0, 1, 2, 3]
    assert history[-1]["train/loss"] < history[1]["train/loss"]  # the loss falls
    assert straight.train.best_value == max(row["valid/ndcg@10"] for row in history)


def test_same_seed_gives_the_same_metrics(straight, extended):
    first, _ = extended  # an independent run with the same seed, stopped after 2 epochs
    assert without_time(first.train.history) == without_time(straight.train.history[:3])


def test_another_seed_gives_other_metrics(straight, planted):
    base, prep = planted
    other = train_run(config(base, "train.epochs=1", "train.seed=7"), None, progress=False, prepared=prep)
    assert other.train.history[1]["train/loss"] != straight.train.history[1]["train/loss"]


def test_resume_with_more_epochs_equals_the_uninterrupted_run(straight, extended):
    _, resumed = extended
    assert without_time(resumed.train.history) == without_time(straight.train.history)
    assert resumed.train.best_epoch == straight.train.best_epoch
    assert resumed.test.summary == straight.test.summary
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # BatchNorm statistics included


def test_resume_after_a_crash_equals_the_uninterrupted_run(straight, planted, tmp_path):
    base, prep = planted
    with pytest.raises(KeyboardInterrupt):
        train_run(config(base), tmp_path, callbacks=[StopAfter(1)], progress=False, prepared=prep)
    assert torch.load(tmp_path / LAST, weights_only=True)["epoch"] == 1
    resumed = train_run(config(base), tmp_path, resume=True, progress=False, prepared=prep)
    assert without_time(resumed.train.history) == without_time(straight.train.history)
    assert resumed.test.summary == straight.test.summary


def test_checkpoints_load_with_weights_only(straight):
    run_dir = straight.run_dir
    assert run_dir is not None
    saved = torch.load(run_dir / "model.pt", weights_only=True)  # {"model": state dict, "run_id": ...}
    state = saved["model"]
    assert state.keys() == straight.model.state_dict().keys()
    last = torch.load(run_dir / LAST, weights_only=True)
    assert last["epoch"] == 3 and last["optimizer"]["state"]  # AdamW moments travel with the model
    best = torch.load(run_dir / BEST, weights_only=True)
    assert best["epoch"] == straight.train.best_epoch
    for key, value in best["model"].items():
        assert torch.equal(value, state[key])  # model.pt holds the best epoch's weights
    assert len(pl.read_csv(run_dir / "history.csv")) == 5
    assert saved["run_id"] == last["run_id"] == best["run_id"] is not None  # one run id in every file


def test_resume_refuses_a_changed_hyperparameter(planted, straight):
    base, prep = planted
    with pytest.raises(ConfigError, match=r"train\.lr"):
        train_run(config(base, "train.lr=0.5"), straight.run_dir, resume=True, progress=False, prepared=prep)


def test_resume_without_a_checkpoint_is_an_error(planted, tmp_path):
    base, prep = planted
    with pytest.raises(TrainingError, match=LAST):
        train_run(config(base), tmp_path, resume=True, progress=False, prepared=prep)


def test_early_stopping_restores_the_best_epoch(planted):
    base, prep = planted
    result = train_run(config(base, "train.epochs=6", "train.patience=1", "train.lr=1e-9"), None, progress=False,
                       prepared=prep)
    history = result.train.history
    assert result.train.stopped_early and len(history) < 7
    best = max(history, key=lambda row: row["valid/ndcg@10"])
    assert result.train.best_value == best["valid/ndcg@10"]
    assert result.valid.summary["ndcg@10"] == pytest.approx(result.train.best_value)
