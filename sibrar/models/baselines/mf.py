"""MF: BPR matrix factorisation with ID embeddings and an optional item bias."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.data.modalities import EntityFeatures
from sibrar.models.base import FULL_VIEW, Batch, Model, View, register_model
from sibrar.models.losses import bpr_loss
from sibrar.models.modules import Projection


@dataclass(frozen=True, kw_only=True)
class MFConfig:
    name: Literal["mf"] = "mf"
    dim: int = 64  # d; the reference swept [32, 512] (ML-1M best 512)
    item_bias: bool = True  # score u·i + b_i, kept a dot product via a constant-1 user dimension


class IdEmbedding(nn.Module):
    """Per-entity ID vectors (optionally with a scalar bias) through the `id` modality.

    The `id` modality codes every entity without training interactions as 0, so all cold entities
    share one row that never gets a gradient (only weight decay): their scores tie exactly, and
    the evaluator's seeded tie-breaking ranks them randomly. That is MF's "natural" cold behaviour
    without a per-entity draw of untrained noise.
    """

    def __init__(self, features: EntityFeatures, dim: int, bias: bool) -> None:
        super().__init__()
        self.table = Projection(features["id"], dim)  # (n+1, d) embedding, N(0, 0.1²/d)
        self.bias = nn.Embedding(self.table.modality.dim, 1) if bias else None
        if self.bias is not None:
            nn.init.zeros_(self.bias.weight)

    def codes(self, rows: Tensor, usable: Tensor | None = None) -> Tensor:
        """(P,) `id` codes of entity rows; 0 (the shared missing row) where `usable` is False."""
        codes = self.table.modality.values[rows]
        return codes if usable is None else torch.where(usable, codes, torch.zeros_like(codes))

    def forward(self, rows: Tensor, usable: Tensor | None = None) -> Tensor:  # (P,) -> (P, d)
        return self.table.embed(self.codes(rows, usable))

    def bias_of(self, rows: Tensor, usable: Tensor | None = None) -> Tensor:  # (P,) -> (P, 1)
        if self.bias is None:
            raise RuntimeError("no bias configured")
        return self.bias(self.codes(rows, usable))


@register_model("mf", MFConfig)
class MF(Model):
    """Score e_u·e_i + b_i; user embedding [e_u, 1], item embedding [e_i, b_i] so it stays a dot product."""

    def __init__(self, config: MFConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        self.users = IdEmbedding(inputs.user, config.dim, bias=False)
        self.items = IdEmbedding(inputs.item, config.dim, bias=config.item_bias)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        b, k = batch.items.shape
        user_emb = self.user_embeddings(batch.users)  # (B, d[+1])
        item_emb = self.item_embeddings(batch.items.reshape(-1)).reshape(b, k, -1)  # (B, 1+N, d[+1])
        scores = torch.einsum("bd,bkd->bk", user_emb, item_emb)
        bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        return {"loss": bpr, "bpr": bpr}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        emb = self.users(users)
        return torch.cat([emb, emb.new_ones(len(users), 1)], dim=1) if self.config.item_bias else emb

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        emb = self.items(items)
        return torch.cat([emb, self.items.bias_of(items)], dim=1) if self.config.item_bias else emb
