"""The batch objective: one tower pass per distinct entity, shared negatives, BPR and sampled softmax."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sibrar.config import parse_run_config, to_dict
from sibrar.models.base import Batch, create_model
from sibrar.models.losses import bpr_loss, sym_infonce
from sibrar.models.objective import Slots, batch_slots, ranking_loss
from sibrar.models.sibrar import SiBraR
from sibrar.train.run import Prepared, prepare

ITEM_MODALITIES = ["interactions", "genres", "release_year"]


@pytest.fixture(scope="module")
def prep(ml100k_dir: Path) -> Prepared:
    item = {"modalities": ITEM_MODALITIES, "common_dim": 16, "contrastive_weight": 0.5, "temperature": 0.2,
            "branch": {"hidden": [16, 16], "input_dropout": 0.0}}
    user = {"modalities": ["interactions", "gender", "occupation"], "common_dim": 16, "sampling": "pairwise",
            "contrastive_weight": 0.3, "temperature": 0.2, "branch": {"hidden": [16], "input_dropout": 0.0}}
    return prepare(parse_run_config({
        "data": {"dataset": str(ml100k_dir), "rating_threshold": 4, "k_core": 10,
                 "user_modalities": {"gender": {"column": "gender"}, "occupation": {"column": "occupation"}},
                 "item_modalities": {m: {"column": m} for m in ITEM_MODALITIES[1:]}},
        "split": {"protocol": "cold_item"}, "model": {"name": "sibrar", "dim": 16, "item": item, "user": user}}))


def per_row_batch(prep: Prepared, b: int = 96, n: int = 6, seed: int = 0) -> Batch:
    """A batch with many repeats: users and negatives drawn from small pools."""
    gen = torch.Generator().manual_seed(seed)
    train = prep.split.train
    rows = torch.randint(len(train), (b,), generator=gen) % 200  # repeated users and positives
    users = torch.from_numpy(train["user_idx"].to_numpy().copy())[rows]
    pos = torch.from_numpy(train["item_idx"].to_numpy().copy())[rows]
    pool = prep.inputs.train_items[:40]
    negatives = pool[torch.randint(len(pool), (b, n), generator=gen)]
    return Batch(users, torch.cat([pos[:, None], negatives], dim=1))


def model_of(prep: Prepared) -> SiBraR:
    torch.manual_seed(0)
    model = SiBraR(prep.config.model, prep.inputs)
    return model.eval()  # BatchNorm on running statistics, see the test below


def grads(model: torch.nn.Module, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def test_dedup_pass_equals_the_per_slot_pass_with_the_same_draws(prep: Prepared) -> None:
    """One tower pass per distinct entity = every slot encoded separately with its entity's draw.

    BatchNorm runs on running statistics (eval mode) in both passes: in training mode its batch
    statistics see each distinct entity once here but once per slot in the per-slot pass, so the
    normalisation itself (not the deduplication) would differ. Dropout is 0 for the same reason.
    """
    model, batch = model_of(prep), per_row_batch(prep)
    slots = batch_slots(batch)
    assert len(slots.items) < batch.items.numel() / 2 and len(slots.users) < len(batch.users)  # repeats exist
    model.generator = torch.Generator().manual_seed(5)
    dedup = model.loss(batch)
    dedup_grads = grads(model, dedup["loss"])

    # the reference: every slot encoded separately, with the draw its entity got in the dedup pass
    gen = torch.Generator().manual_seed(5)
    u_chosen, u_distinct, u_any = model.user_tower.draw(slots.users, gen)  # same order: users first
    i_chosen, i_distinct, i_any = model.item_tower.draw(slots.items, gen)
    item_of = slots.grid.reshape(-1)  # (B·(1+N),)
    user_emb, user_z = model.user_tower.encode_draws(batch.users, u_chosen[slots.user_of], u_any[slots.user_of])
    item_emb, item_z = model.item_tower.encode_draws(batch.items.reshape(-1), i_chosen[item_of], i_any[item_of])
    scores = torch.einsum("bd,bkd->bk", user_emb, item_emb.reshape(*batch.items.shape, -1))
    bpr = bpr_loss(scores[:, 0], scores[:, 1:])
    # InfoNCE over the distinct entities, read from each entity's first slot
    first_item = torch.full((len(slots.items),), len(item_of)).scatter_reduce(0, item_of, torch.arange(len(item_of)), "amin")
    first_user = torch.full((len(slots.users),), len(batch.users)).scatter_reduce(
        0, slots.user_of, torch.arange(len(batch.users)), "amin")
    cfg_i, cfg_u = model.item_tower.config, model.user_tower.config
    nce_i = sym_infonce(item_z[first_item, 0], item_z[first_item, 1], temperature=cfg_i.temperature,
                        weights=i_distinct.float())
    nce_u = sym_infonce(user_z[first_user, 0], user_z[first_user, 1], temperature=cfg_u.temperature,
                        weights=u_distinct.float())
    reference = bpr + cfg_i.contrastive_weight * nce_i + cfg_u.contrastive_weight * nce_u

    for name, value in (("bpr", bpr), ("infonce_item", nce_i), ("infonce_user", nce_u), ("loss", reference)):
        torch.testing.assert_close(dedup[name], value, rtol=1e-5, atol=1e-6, msg=name)
    ref_grads = grads(model, reference)
    assert ref_grads.keys() == dedup_grads.keys() and len(ref_grads) > 10
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dedup_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_per_slot_mode_encodes_every_slot(prep: Prepared) -> None:
    batch = per_row_batch(prep)
    slots = batch_slots(Batch(batch.users, batch.items, dedup="none"))
    assert torch.equal(slots.items, batch.items.reshape(-1)) and torch.equal(slots.users, batch.users)
    dedup = batch_slots(batch)
    assert torch.equal(dedup.items[dedup.pos], batch.items[:, 0]) and torch.equal(dedup.items[dedup.neg], batch.items[:, 1:])
    assert torch.equal(dedup.users[dedup.user_of], batch.users)


def test_masked_shared_negatives_leave_the_loss_as_if_they_were_absent() -> None:
    """A masked shared negative contributes nothing: BPR and softmax equal those without it."""
    g = torch.Generator().manual_seed(0)
    users = torch.arange(32)
    emb_u, emb_i = torch.randn(32, 8, generator=g), torch.randn(41, 8, generator=g)
    shared = torch.arange(1, 41)
    mask = torch.rand(32, 40, generator=g) < 0.3
    mask[:, :10] = True  # the first ten hidden from every user
    pos = torch.zeros(32, dtype=torch.long)
    full = Slots(users, users, torch.arange(41), pos, shared)
    kept = Slots(users, users, torch.arange(41), pos, shared[10:])
    for objective in ("bpr", "softmax"):
        a = ranking_loss(emb_u, emb_i, full, Batch(users, pos[:, None], shared=shared, shared_mask=mask, objective=objective))
        b = ranking_loss(emb_u, emb_i, kept, Batch(users, pos[:, None], shared=shared[10:], shared_mask=mask[:, 10:],
                                                   objective=objective))
        torch.testing.assert_close(a, b)
        unmasked = ranking_loss(emb_u, emb_i, full, Batch(users, pos[:, None], shared=shared, objective=objective))
        assert not torch.allclose(a, unmasked)


def test_softmax_equals_cross_entropy_of_the_positive() -> None:
    g = torch.Generator().manual_seed(0)
    emb_u, emb_i = torch.randn(4, 3, generator=g), torch.randn(6, 3, generator=g)
    users = torch.arange(4)
    slots = Slots(users, users, torch.arange(6), torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5]))
    batch = Batch(users, torch.arange(4)[:, None], shared=torch.tensor([4, 5]), objective="softmax")
    scores = emb_u @ emb_i.T
    expected = torch.stack([-torch.log_softmax(scores[b, [b, 4, 5]], 0)[0] for b in range(4)]).mean()
    torch.testing.assert_close(ranking_loss(emb_u, emb_i, slots, batch), expected)


def test_row_dedup_equals_the_per_slot_pass(prep: Prepared) -> None:
    """dedup="rows" draws per slot like the reference and encodes each distinct (entity, modality)
    row once: with the same draws (same seed) its loss and gradients equal the per-slot pass
    (BatchNorm on running statistics, dropout 0, as above)."""
    model, batch = model_of(prep), per_row_batch(prep)
    out = {}
    for mode in ("rows", "none"):
        model.generator = torch.Generator().manual_seed(9)
        parts = model.loss(Batch(batch.users, batch.items, dedup=mode))
        out[mode] = (parts, grads(model, parts["loss"]))
    for name in ("loss", "bpr", "infonce_item", "infonce_user"):
        torch.testing.assert_close(out["rows"][0][name], out["none"][0][name], rtol=1e-5, atol=1e-6, msg=name)
    for name, grad in out["none"][1].items():
        torch.testing.assert_close(out["rows"][1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_autocast_mixes_modality_kinds_and_stays_close_to_fp32(prep: Prepared) -> None:
    """Categorical, numeric and interaction projections come out of autocast in different dtypes."""
    model, batch = model_of(prep), per_row_batch(prep)
    out = {}
    for enabled in (False, True):
        model.generator = torch.Generator().manual_seed(2)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=enabled):
            out[enabled] = model.loss(batch)["loss"]
    assert out[True].dtype == torch.float32
    torch.testing.assert_close(out[True], out[False], rtol=3e-2, atol=1e-3)


def test_deepmf_encodes_each_distinct_entity_once_with_the_per_slot_loss_and_gradients(prep: Prepared) -> None:
    """DeepMF has no dropout or BatchNorm: its one-pass-per-entity loss is the per-slot loss."""
    config = parse_run_config({**to_dict(prep.config), "model": {"name": "deepmf", "hidden": [32], "dim": 8}})
    torch.manual_seed(0)
    model = create_model(config.model, prep.inputs)
    batch = per_row_batch(prep)
    encoded: list[int] = []
    hook = model.item_mlp.register_forward_hook(lambda _m, args, _out: encoded.append(len(args[0])))
    dedup = model.loss(batch)["loss"]
    hook.remove()
    assert encoded == [len(batch.items.unique())] and encoded[0] < batch.items.numel() / 2
    dedup_grads = grads(model, dedup)
    per_slot = model.loss(Batch(batch.users, batch.items, dedup="none"))["loss"]
    user_emb = model.user_embeddings(batch.users)
    item_emb = model.item_embeddings(batch.items.reshape(-1)).reshape(*batch.items.shape, -1)
    scores = torch.einsum("bd,bkd->bk", user_emb, item_emb)
    torch.testing.assert_close(per_slot, bpr_loss(scores[:, 0], scores[:, 1:]), rtol=0, atol=0)  # the reference pass
    torch.testing.assert_close(dedup, per_slot, rtol=1e-6, atol=1e-7)
    ref_grads = grads(model, per_slot)
    assert ref_grads.keys() == dedup_grads.keys() and len(ref_grads) == 8
    for name, grad in ref_grads.items():
        torch.testing.assert_close(dedup_grads[name], grad, rtol=1e-4, atol=1e-7, msg=name)
