"""DeepMF (Xue et al., IJCAI'17): MLPs over the training multi-hot rows/columns, cosine score."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.data.modalities import Modality
from sibrar.models.base import FULL_VIEW, Batch, Model, View, register_model
from sibrar.models.losses import bpr_loss
from sibrar.models.modules import csr_rows, init_weights
from sibrar.models.objective import batch_slots


class InteractionMLP(nn.Module):
    """MLP over an entity's multi-hot training interaction vector x (row of R, or column for items).

    widths = (first, ..., out); ReLU between layers, after the last only with `output_activation`.
    The first layer W x + b is a sum embedding bag over the interacted columns, never a dense
    n × n_other matrix; W is initialised like `nn.Linear(n_other, first)` (Kaiming, ReLU gain).
    An entity without training interactions gets x = 0, i.e. a constant output.
    """

    def __init__(self, modality: Modality, widths: tuple[int, ...], *, output_activation: bool) -> None:
        super().__init__()
        self.modality = modality  # data, not parameters: kept out of the state dict
        self.first = nn.EmbeddingBag(modality.dim, widths[0], mode="sum")
        self.bias = nn.Parameter(torch.zeros(widths[0]))
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.ReLU(), nn.Linear(a, b)]
        if output_activation:
            layers.append(nn.ReLU())
        self.rest = nn.Sequential(*layers)
        init_weights(self.rest)
        bound = math.sqrt(6.0 / modality.dim)  # kaiming_uniform_ with fan_in = n_other
        nn.init.uniform_(self.first.weight, -bound, bound)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        """`.to(device)` moves the interaction matrix along with the parameters."""
        super()._apply(fn, recurse)
        m = self.modality
        self.modality = replace(m, available=fn(m.available), values=fn(m.values))
        return self

    def forward(self, rows: Tensor, keep: Tensor | None = None) -> Tensor:
        """rows (P,) entity indices -> (P, out). keep (P,) bool: False zeroes that row's input x."""
        indices, offsets = csr_rows(self.modality.values, rows)
        hidden = self.first(indices, offsets)  # (P, first) = W x
        if keep is not None:
            hidden = hidden * keep.unsqueeze(1).to(hidden.dtype)
        return self.rest(hidden + self.bias)


@dataclass(frozen=True, kw_only=True)
class DeepMFConfig:
    name: Literal["deepmf"] = "deepmf"
    hidden: tuple[int, ...] = (64,)  # hidden widths of both MLPs (reference: 64; swept 16-256)
    dim: int = 16  # output width (reference: 16; swept 8-64)
    output_activation: bool = False  # ReLU after the last layer too
    # Clamp training cosines below at μ (DMF's μ = 1e-6). Off by default: under BPR the clamp zeroes
    # the gradient of every pair whose positive is below μ, and training collapsed (ML-100K random,
    # val nDCG@10 0.001 with it vs 0.136 without, 3 epochs).
    min_similarity: float | None = None


@register_model("deepmf", DeepMFConfig)
class DeepMF(Model):
    """Two MLPs, users on their item row and items on their user column; score = cosine similarity.

    Embeddings are L2-normalised so that the dot product *is* the cosine. The optional clamp at μ
    only acts in the training loss (DMF needs it to keep its log-loss finite); ranking by the
    unclamped cosine orders the same items, except that items below μ do not all tie.
    Cold entities have an empty interaction vector, hence one constant embedding each side.
    Training runs each MLP once per distinct user and item of a batch (`Batch.dedup`); without
    dropout or BatchNorm that is the per-slot loss and gradient, at a fraction of the cost
    (ML-1M: 12-16 s per epoch instead of 115 s, benchmarks/epoch_speed.py). The loss is always BPR over
    per-row negatives, whatever `train.objective` says.
    """

    def __init__(self, config: DeepMFConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        widths = (*config.hidden, config.dim)
        self.user_mlp = InteractionMLP(inputs.user["interactions"], widths, output_activation=config.output_activation)
        self.item_mlp = InteractionMLP(inputs.item["interactions"], widths, output_activation=config.output_activation)

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        slots = batch_slots(batch)  # each distinct user and item encoded once (Batch.dedup)
        user_emb = self.user_embeddings(slots.users)[slots.user_of]  # (B, d)
        item_emb = self.item_embeddings(slots.items)  # (Ui, d)
        scores = torch.einsum("bd,bkd->bk", user_emb, item_emb[slots.grid])  # cosines
        if self.config.min_similarity is not None:
            scores = scores.clamp_min(self.config.min_similarity)
        bpr = bpr_loss(scores[:, 0], scores[:, 1:])
        return {"loss": bpr, "bpr": bpr}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        return F.normalize(self.user_mlp(users), dim=-1)

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        return F.normalize(self.item_mlp(items), dim=-1)
