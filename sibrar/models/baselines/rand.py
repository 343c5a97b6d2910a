"""Rand: fixed, seeded random vectors; a floor every recommender must beat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sibrar.data.inputs import ModelInputs
from sibrar.models.base import FULL_VIEW, Batch, Model, View, register_model
from sibrar.models.losses import bpr_loss


@dataclass(frozen=True, kw_only=True)
class RandConfig:
    name: Literal["rand"] = "rand"
    dim: int = 64  # wider vectors make the scores of one user's items closer to independent
    seed: int = 0


@register_model("rand", RandConfig)
class Rand(Model):
    """Scores u·i of standard-normal vectors drawn once from `seed`.

    The reference draws a fresh uniform number per candidate and call; fixed vectors keep the
    model on the embedding interface and make evaluation reproducible. For a user, the scores of
    different items are independent given the user vector, so the ranking is a random permutation.
    """

    trainable = False
    supports_cold_items = True
    supports_cold_users = True
    user_vectors: Tensor  # (n_users, d) buffer
    item_vectors: Tensor  # (n_items, d) buffer

    def __init__(self, config: RandConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        gen = torch.Generator().manual_seed(config.seed)
        self.register_buffer("user_vectors", torch.randn(inputs.n_users, config.dim, generator=gen))  # (n_u, d)
        self.register_buffer("item_vectors", torch.randn(inputs.n_items, config.dim, generator=gen))  # (n_i, d)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        scores = torch.einsum("bd,bkd->bk", self.user_vectors[batch.users], self.item_vectors[batch.items])
        bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        return {"loss": bpr, "bpr": bpr}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.user_vectors[users]

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.item_vectors[items]
