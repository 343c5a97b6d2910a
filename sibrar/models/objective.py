"""The ranking objective of a two-tower batch: distinct entities encoded once, per-row or shared
negatives, BPR or sampled softmax, and the towers' contrastive terms.

Positives and negatives of a batch share items (at batch 256 with 10 negatives about 1,800 of
the 2,816 item slots of an ML-1M batch are distinct; with shared negatives nearly every slot
repeats), so a tower runs once per distinct entity and every slot gathers its row. The gather's
backward sums the slots' gradients, so with the same modality draw per entity the loss and its
gradients equal those of encoding every slot separately (up to BatchNorm batch statistics, which
see each entity once instead of once per slot).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sibrar.models.base import Batch
from sibrar.models.losses import bpr_loss, sym_infonce

Pair = tuple[Tensor, Tensor, Tensor]  # (view a (N, d), view b (N, d), weight (N,) bool)
Encoder = Callable[[Tensor], tuple[Tensor, list[Pair]]]  # entities (N,) -> (emb (N, d), modality pairs)


@dataclass(frozen=True)
class Contrastive:
    """One tower's InfoNCE settings (weight λ, temperature τ, similarity)."""

    weight: float
    temperature: float
    similarity: Literal["dot", "cosine"] = "dot"


@dataclass(frozen=True)
class Slots:
    """The entities a batch encodes and where each slot finds its row among them."""

    users: Tensor  # (Ub,) users to encode
    user_of: Tensor  # (B,) row of each batch user in `users`
    items: Tensor  # (Ui,) items to encode
    pos: Tensor  # (B,) row of each positive in `items`
    neg: Tensor  # (B, N) per-row negatives, or (S,) shared ones: rows in `items`

    @property
    def grid(self) -> Tensor:
        """(B, 1+N) rows in `items` of each batch row's positive and per-row negatives."""
        return torch.cat([self.pos[:, None], self.neg], dim=1)


def batch_slots(batch: Batch) -> Slots:
    """Distinct users and items of `batch` (all slots, in order, unless `batch.dedup` is "entities")."""
    b = len(batch.users)
    flat = batch.items.reshape(-1) if batch.shared is None else torch.cat([batch.items[:, 0], batch.shared])
    if batch.dedup == "entities":
        users, user_of = batch.users.unique(return_inverse=True)
        items, item_of = flat.unique(return_inverse=True)
    else:
        users, user_of = batch.users, torch.arange(b, device=flat.device)
        items, item_of = flat, torch.arange(len(flat), device=flat.device)
    if batch.shared is None:
        grid = item_of.reshape(b, -1)
        return Slots(users, user_of, items, grid[:, 0], grid[:, 1:])
    return Slots(users, user_of, items, item_of[:b], item_of[b:])


def ranking_loss(user_emb: Tensor, item_emb: Tensor, slots: Slots, batch: Batch, item_bias: Tensor | None = None) -> Tensor:
    """BPR or sampled-softmax loss, in fp32 whatever the towers' precision.

    user_emb (B, d) per batch row; item_emb (Ui, d) and item_bias (Ui,) per encoded item.
    Shared negatives that are a user's own training item (`batch.shared_mask`) are left out of
    that user's pairs (BPR) or denominator (softmax).
    """
    user_emb, item_emb = user_emb.float(), item_emb.float()
    if batch.shared is None:  # one einsum over (B, 1+N), as the per-slot reference computes it (bit for bit)
        scores = torch.einsum("bd,bkd->bk", user_emb, item_emb[slots.grid])
        pos, neg = scores[:, 0], scores[:, 1:]  # (B,), (B, N)
    else:
        pos = (user_emb * item_emb[slots.pos]).sum(-1)  # (B,)
        neg = user_emb @ item_emb[slots.neg].T  # (B, S)
    if item_bias is not None:
        item_bias = item_bias.float()
        pos, neg = pos + item_bias[slots.pos], neg + item_bias[slots.neg]
    valid = None if batch.shared_mask is None else ~batch.shared_mask
    if batch.objective == "softmax":
        if valid is not None:
            neg = neg.masked_fill(~valid, float("-inf"))
        logits = torch.cat([pos[:, None], neg], dim=1)  # (B, 1+N): the positive is class 0
        return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))
    if valid is None:
        return bpr_loss(pos, neg)
    pair = F.softplus(-(pos[:, None] - neg))
    return (pair * valid).sum() / valid.sum().clamp_min(1)


def contrastive_loss(pairs: list[Pair], cfg: Contrastive, ids: Tensor, batch: Batch, grid: tuple[int, ...]) -> Tensor:
    """Mean symmetric InfoNCE over a tower's modality pairs.

    Deduplicated (or with shared negatives): groups of at most `batch.contrastive_group` of the
    encoded entities (`grouped_infonce`). Per slot with per-row negatives: the
    reference grouping (`grid` = (B, 1+N) for items, each row's candidates; (B,) for users), with
    repeated ids masked out of the denominators.
    """
    terms = []
    for za, zb, w in pairs:
        za, zb, w = za.float(), zb.float(), w.float()
        if batch.dedup == "entities":
            terms.append(grouped_infonce(za, zb, w, None, cfg, batch.contrastive_group))
        elif batch.shared is not None:
            terms.append(grouped_infonce(za, zb, w, ids, cfg, batch.contrastive_group))
        else:
            terms.append(sym_infonce(za.reshape(*grid, -1), zb.reshape(*grid, -1), temperature=cfg.temperature,
                                     similarity=cfg.similarity, ids=ids.reshape(grid), weights=w.reshape(grid)))
    return terms[0] if len(terms) == 1 else torch.stack(terms).mean()


def grouped_infonce(za: Tensor, zb: Tensor, w: Tensor, ids: Tensor | None, cfg: Contrastive, size: int | None) -> Tensor:
    """Weighted mean symmetric InfoNCE over groups of at most `size` rows (None: one group of all).

    One group over every distinct entity of a large batch costs N² logits (at batch 2048 on ML-1M,
    3,300 items: more than the rest of the step); groups keep it linear in N, each row contrasted with
    `size` - 1 others. Groups are strided (rows g, g+k, g+2k, ...), so each spans the whole id range.
    """
    k = 1 if size is None else max(1, -(-len(za) // size))
    total, weight = za.new_zeros(()), w.sum()
    for g in range(k):
        wg = w[g::k]
        loss = sym_infonce(za[g::k], zb[g::k], temperature=cfg.temperature, similarity=cfg.similarity,
                           ids=None if ids is None else ids[g::k], weights=wg)
        total = total + loss * wg.sum().clamp_min(1.0)  # back to the group's weighted sum
    return total / weight.clamp_min(1.0)


def two_tower_loss(batch: Batch, encode_users: Encoder, encode_items: Encoder, user_cfg: Contrastive,
                   item_cfg: Contrastive) -> dict[str, Tensor]:
    """{'loss', 'bpr' | 'softmax', 'infonce_item', 'infonce_user'} for towers that give (emb, pairs).

    Users are encoded before items, so the random draws follow the reference order.
    """
    slots = batch_slots(batch)
    user_rows, user_pairs = encode_users(slots.users)  # (Ub, d)
    item_emb, item_pairs = encode_items(slots.items)  # (Ui, d)
    parts = {batch.objective: ranking_loss(user_rows[slots.user_of], item_emb, slots, batch)}
    total = parts[batch.objective]
    for side, pairs, cfg, ids, grid in (("item", item_pairs, item_cfg, slots.items, tuple(batch.items.shape)),
                                        ("user", user_pairs, user_cfg, slots.users, (len(batch.users),))):
        if pairs and cfg.weight > 0:
            parts[f"infonce_{side}"] = contrastive_loss(pairs, cfg, ids, batch, grid)
            total = total + cfg.weight * parts[f"infonce_{side}"]
    return {"loss": total, **parts}
