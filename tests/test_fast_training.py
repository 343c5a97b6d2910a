"""The fast training step: shared negatives never hold a user's own training item, bf16 agrees with fp32,
and runs with it resume exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sibrar.config import apply_overrides
from sibrar.models.base import Batch
from sibrar.models.losses import sym_infonce
from sibrar.models.sibrar import SiBraR
from sibrar.train.run import Prepared, prepare, train_run
from sibrar.train.sampler import interaction_keys, sample_shared_negatives, shared_negative_mask, training_csr
from sibrar.train.trainer import LAST, Trainer

from _planted import write_planted
from test_trainer import StopAfter, config
from test_trainer import base_config as trainer_base_config


# test_trainer's planted-data run with a deeper branch and the shared step (its n_negatives back to the default)
FAST = ("model.item.branch.hidden=[16, 16]", "train.epochs=3", "train.n_negatives=10", "train.negatives=shared",
        "train.n_shared_negatives=24", "train.objective=softmax", "train.dedup=entities", "eval.metrics=[ndcg]")


def base_config(dataset: Path) -> dict[str, Any]:
    return apply_overrides(trainer_base_config(dataset), FAST)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Prepared]:
    folder = write_planted(tmp_path_factory.mktemp("planted"), np.random.default_rng(20240607))
    base = base_config(folder)
    return base, prepare(config(base))


def train_pairs(prep: Prepared) -> set[tuple[int, int]]:
    train = prep.split.train
    return set(zip(train["user_idx"].to_list(), train["item_idx"].to_list()))


class Recording(SiBraR):
    """SiBraR that keeps every training batch it is given."""

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.batches.append(batch)
        return super().loss(batch)


def recorded_batches(planted, *overrides: str) -> tuple[list[Batch], set[tuple[int, int]]]:
    """Every batch one epoch of the trainer builds with `overrides`, and the training (user, item) pairs."""
    base, prep = planted
    cfg = config(base, *overrides)
    torch.manual_seed(0)
    model = Recording(cfg.model, prep.inputs)
    model.batches = []
    Trainer(model, prep.inputs, prep.split, cfg.train, cfg.eval, progress=False).fit()
    assert len(model.batches) >= 5
    return model.batches, train_pairs(prep)


def test_shared_negative_mask_equals_a_loop(planted, rng) -> None:
    _, prep = planted
    train = prep.split.train
    users_all = torch.from_numpy(train["user_idx"].to_numpy().copy())
    keys = interaction_keys(users_all, torch.from_numpy(train["item_idx"].to_numpy().copy()), prep.inputs.n_items)
    crow, col = training_csr(keys, prep.inputs.n_users, prep.inputs.n_items)
    users = torch.from_numpy(rng.integers(0, prep.inputs.n_users, 50))
    shared = sample_shared_negatives(30, candidates=prep.inputs.train_items, generator=torch.Generator().manual_seed(0))
    assert len(shared.unique()) == 30  # distinct
    mask = shared_negative_mask(users, shared, crow, col, prep.inputs.n_items)
    pairs = train_pairs(prep)
    expected = torch.tensor([[(int(u), int(i)) in pairs for i in shared] for u in users])
    assert expected.any() and torch.equal(mask, expected)


def test_shared_negatives_never_include_a_users_own_training_item(planted) -> None:
    """Every batch the trainer builds: unmasked shared negatives are never the user's training items."""
    batches, pairs = recorded_batches(planted, "train.epochs=1")
    n_masked = 0
    for batch in batches:
        assert batch.shared is not None and batch.shared_mask is not None and batch.items.shape[1] == 1
        own = torch.tensor([[(int(u), int(i)) in pairs for i in batch.shared] for u in batch.users])
        assert torch.equal(batch.shared_mask, own)  # masked exactly where the item is the user's own
        n_masked += int(own.sum())
    assert n_masked > 0  # the check had something to catch


def test_pooled_negatives_come_from_one_small_pool_per_batch_and_are_never_the_users_own(planted) -> None:
    batches, pairs = recorded_batches(planted, "train.epochs=1", "train.negatives=pooled", "train.n_negatives=5",
                                      "train.n_shared_negatives=12")
    pools = set()
    for batch in batches:
        assert batch.shared is None and batch.items.shape[1] == 1 + 5  # per-row negatives
        negatives = batch.items[:, 1:]
        assert len(negatives.unique()) <= 12  # drawn from the batch's pool
        assert not any((int(u), int(i)) in pairs for u, row in zip(batch.users, negatives) for i in row)
        pools.add(tuple(negatives.unique().tolist()))
    assert len(pools) > 1  # a new pool every batch


def test_grouped_infonce_is_the_weighted_mean_over_strided_groups() -> None:
    from sibrar.models.objective import Contrastive, grouped_infonce

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(7, 4, generator=gen), torch.randn(7, 4, generator=gen)
    w = torch.tensor([1.0, 1, 0, 1, 1, 1, 0])
    cfg = Contrastive(weight=1.0, temperature=0.5)
    one = sym_infonce(a, b, temperature=0.5, weights=w)
    torch.testing.assert_close(grouped_infonce(a, b, w, None, cfg, None), one)
    torch.testing.assert_close(grouped_infonce(a, b, w, None, cfg, 7), one)
    groups = [slice(0, None, 3), slice(1, None, 3), slice(2, None, 3)]  # size 3 -> 3 groups of rows g, g+3, ...
    sums = [sym_infonce(a[g], b[g], temperature=0.5, weights=w[g]) * w[g].sum() for g in groups]
    torch.testing.assert_close(grouped_infonce(a, b, w, None, cfg, 3), sum(sums) / w.sum())
    assert not torch.allclose(grouped_infonce(a, b, w, None, cfg, 3), one)  # groups change the negatives


def test_bf16_loss_and_gradients_agree_with_fp32(planted) -> None:
    base, prep = planted
    cfg = config(base)
    torch.manual_seed(0)
    model = SiBraR(cfg.model, prep.inputs).train()
    users = torch.from_numpy(prep.split.train["user_idx"].to_numpy()[:64].copy())
    pos = torch.from_numpy(prep.split.train["item_idx"].to_numpy()[:64].copy())
    batch = Batch(users, pos[:, None], shared=prep.inputs.train_items[:24], objective="softmax")
    out = {}
    for precision in ("fp32", "bf16"):
        model.generator = torch.Generator().manual_seed(3)
        torch.manual_seed(3)  # dropout
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = model.loss(batch)["loss"]
        assert loss.dtype == torch.float32
        model.zero_grad(set_to_none=True)
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        out[precision] = (loss.detach(), grad)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    torch.testing.assert_close(out["bf16"][0], out["fp32"][0], rtol=2e-2, atol=1e-3)
    cosine = torch.nn.functional.cosine_similarity(out["bf16"][1], out["fp32"][1], dim=0)
    assert cosine > 0.99


@pytest.mark.parametrize("overrides", [("train.precision=bf16",), ("train.negatives=pooled",),
                                       ("train.negatives=per_row", "train.dedup=none", "train.objective=bpr")])
def test_resume_after_a_crash_equals_the_uninterrupted_run(planted, tmp_path, overrides) -> None:
    base, prep = planted
    cfg = config(base, *overrides)
    straight = train_run(cfg, tmp_path / "straight", progress=False, prepared=prep)
    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, tmp_path / "crashed", callbacks=[StopAfter(0)], progress=False, prepared=prep)
    assert torch.load(tmp_path / "crashed" / LAST, weights_only=True)["epoch"] == 0
    resumed = train_run(cfg, tmp_path / "crashed", resume=True, progress=False, prepared=prep)
    strip = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert strip(resumed.train.history) == strip(straight.train.history)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bf16_training_learns_as_well_as_fp32(planted) -> None:
    base, prep = planted
    best = {p: train_run(config(base, f"train.precision={p}", "train.epochs=4"), None, progress=False, prepared=prep,
                         test=False).train.best_value for p in ("fp32", "bf16")}
    untrained = train_run(config(base, "train.epochs=0"), None, progress=False, prepared=prep, test=False).train.best_value
    assert best["fp32"] > untrained + 0.1
    assert abs(best["bf16"] - best["fp32"]) < 0.05
