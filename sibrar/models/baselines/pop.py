"""Pop: rank items by training popularity, as 1-d embeddings (user 1, item log(1 + count))."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from sibrar.data.inputs import ModelInputs
from sibrar.models.base import FULL_VIEW, Batch, Model, View, register_model
from sibrar.models.losses import bpr_loss


@dataclass(frozen=True, kw_only=True)
class PopConfig:
    name: Literal["pop"] = "pop"


@register_model("pop", PopConfig)
class Pop(Model):
    """Most-popular. log(1 + count) ranks like the reference's share of interactions.

    Every cold item has count 0, so in item cold start all candidates tie; the evaluator breaks
    ties randomly per user with its seed (the reference fell back to index order).
    """

    trainable = False
    supports_cold_users = True  # every user gets the same list: no user history needed
    item_scores: Tensor  # (n_items, 1) buffer: log(1 + training count)

    def __init__(self, config: PopConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        self.register_buffer("item_scores", torch.log1p(inputs.item_popularity.float()).unsqueeze(1))  # (n_i, 1)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        scores = self.item_scores[batch.items].squeeze(-1)  # (B, 1+N)
        bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        return {"loss": bpr, "bpr": bpr}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.item_scores.new_ones(len(users), 1)  # (U, 1)

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.item_scores[items]  # (I, 1)
