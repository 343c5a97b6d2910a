"""CLCRec (Wei et al., ACM MM'21), simplified as in the reference framework ("IFMF"/"UFMF").

MF ID embeddings plus a content encoder f per side; an entity is represented by the mean of its ID
embedding and f(content), trained with BPR plus a symmetric InfoNCE that pulls each entity's ID
and content embeddings together: items within each batch row's 1+N candidates, users across the
batch (the reference's user term had 1×1 logits and was identically 0; ours contrasts).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.data.modalities import EntityFeatures
from sibrar.errors import ConfigError
from sibrar.models.base import FULL_VIEW, Batch, Model, SideView, View, register_model
from sibrar.models.baselines.dropoutnet import view_usage
from sibrar.models.baselines.mf import IdEmbedding
from sibrar.models.objective import Contrastive, batch_slots, contrastive_loss, ranking_loss
from sibrar.models.modules import Projection

_CONTENT_KINDS = ("categorical", "tags", "numeric", "vector")


@dataclass(frozen=True, kw_only=True)
class CLCRecSideConfig:
    """One side. Empty `modalities` makes it a plain MF side (no content, no contrastive term)."""

    modalities: tuple[str, ...] = ()  # content modalities; f = mean of their projections to d
    hidden: tuple[int, ...] = ()  # hidden widths of f for numeric/vector modalities (reference: [], 16-128)
    contrastive_weight: float = 1e-4  # λ (reference: [1e-6, 1e-3], default 1e-4)
    temperature: float = 0.1  # τ; >= 1e-3 like SiBraR's (sibrar.config.RANGES), else a config error
    similarity: Literal["dot", "cosine"] = "dot"


@dataclass(frozen=True, kw_only=True)
class CLCRecConfig:
    name: Literal["clcrec"] = "clcrec"
    dim: int = 64  # d of ID and content embeddings (reference: [32, 512])
    item_bias: bool = True
    # How an entity without training interactions is represented: "content" = f(content) alone;
    # "mean" = mean(untrained shared ID row, f(content)) as in the reference. Both rank a cold-only
    # candidate set identically; "content" puts cold items on the warm items' scale when both are
    # ranked together (candidates: all), which scored better on validation.
    cold: Literal["content", "mean"] = "content"
    user: CLCRecSideConfig = field(default_factory=CLCRecSideConfig)
    item: CLCRecSideConfig = field(default_factory=lambda: CLCRecSideConfig(modalities=("genres",)))


class CLCRecTower(nn.Module):
    """ID embedding (+ bias) and content encoder f of one entity type."""

    def __init__(self, features: EntityFeatures, config: CLCRecSideConfig, dim: int, *, bias: bool,
                 cold: str, where: str) -> None:
        super().__init__()
        for m in config.modalities:
            if m not in features or features[m].kind not in _CONTENT_KINDS or m == "id":
                valid = [n for n in features.names if features[n].kind in _CONTENT_KINDS and n != "id"]
                raise ConfigError(f"{where}.modalities: {m!r} is not a {features.entity} content modality; "
                                  f"available: {', '.join(valid) or '(none)'}")
        self.config, self.cold, self.entity = config, cold, features.entity
        self.names = ("id", *config.modalities)  # the inputs a view can select
        self.ids = IdEmbedding(features, dim, bias=bias)
        self.content = nn.ModuleDict({m: Projection(features[m], dim, config.hidden) for m in config.modalities})
        self.available = torch.stack([features[m].available for m in self.names], dim=1)  # (n, 1+M); col 0: warm

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.available = fn(self.available)
        return self

    def parts(self, rows: Tensor, use: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(id (P, d), f(content) (P, d), has id (P,), has content (P,)) for entity rows (P,).

        f = mean of the projections of the content modalities the entity has (and `use` allows).
        An entity without a usable ID (cold, or removed by `use`) gets the shared, untrained
        "missing" row of the ID table, the same for all such entities.
        """
        available = self.available[rows] if use is None else self.available[rows] & use  # (P, 1+M)
        has_id = available[:, 0]
        id_emb = self.ids(rows, has_id)
        content = torch.zeros_like(id_emb)
        for j, enc in enumerate(self.content.values(), start=1):
            content = content + enc(rows) * available[:, j : j + 1].to(id_emb.dtype)
        n_content = available[:, 1:].sum(dim=1, keepdim=True)
        return id_emb, content / n_content.clamp_min(1), has_id, n_content.squeeze(1) > 0

    def combine(self, id_emb: Tensor, content: Tensor, has_id: Tensor, has_content: Tensor) -> Tensor:
        """(P, d) representation: mean(id, f); without content, id alone. Without a usable ID,
        f alone (cold="content") or mean(shared missing-ID row, f) (cold="mean", the reference)."""
        w_id = has_id if self.cold == "content" else torch.ones_like(has_id)
        w_id, w_content = w_id.unsqueeze(1).to(id_emb.dtype), has_content.unsqueeze(1).to(id_emb.dtype)
        return (w_id * id_emb + w_content * content) / (w_id + w_content).clamp_min(1)

    def bias(self, rows: Tensor, has_id: Tensor) -> Tensor:
        """(P, 1) item bias; without a usable ID the missing row's, which starts at 0 and is never trained."""
        return self.ids.bias_of(rows, has_id)

    def embed(self, rows: Tensor, view: SideView) -> tuple[Tensor, Tensor]:
        """Inference under a view ("id" and content modalities can be removed per entity):
        (representation (P, d), has usable id (P,))."""
        id_emb, content, has_id, has_content = self.parts(rows, view_usage(self.names, rows, view, self.entity))
        return self.combine(id_emb, content, has_id, has_content), has_id


@register_model("clcrec", CLCRecConfig)
class CLCRec(Model):
    """User and item CLCRec towers; score = user·item + item bias (a constant-1 user dimension)."""

    supports_cold_items = True
    supports_cold_users = True
    supports_shared_negatives = True

    def __init__(self, config: CLCRecConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        self.user_tower = CLCRecTower(inputs.user, config.user, config.dim, bias=False, cold=config.cold, where="model.user")
        self.item_tower = CLCRecTower(inputs.item, config.item, config.dim, bias=config.item_bias, cold=config.cold,
                                      where="model.item")

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        slots = batch_slots(batch)  # each distinct user and item encoded once
        user_id, user_f, user_has_id, user_has = self.user_tower.parts(slots.users)  # (Ub, d), (Ub, d), (Ub,), (Ub,)
        item_id, item_f, item_has_id, item_has = self.item_tower.parts(slots.items)  # (Ui, d) ... (Ui,)
        user_emb = self.user_tower.combine(user_id, user_f, user_has_id, user_has)[slots.user_of]  # (B, d)
        item_emb = self.item_tower.combine(item_id, item_f, item_has_id, item_has)  # (Ui, d)
        bias = self.item_tower.bias(slots.items, item_has_id).squeeze(1) if self.config.item_bias else None
        parts = {batch.objective: ranking_loss(user_emb, item_emb, slots, batch, bias)}
        total = parts[batch.objective]
        item_cfg, user_cfg = self.config.item, self.config.user
        # id vs content views: per batch row over its candidates (reference) or over the distinct entities
        for side, cfg, pair, ids, grid in (
                ("item", item_cfg, (item_id, item_f, item_has), slots.items, tuple(batch.items.shape)),
                ("user", user_cfg, (user_id, user_f, user_has), slots.users, (len(batch.users),))):
            if cfg.modalities and cfg.contrastive_weight > 0:
                settings = Contrastive(cfg.contrastive_weight, cfg.temperature, cfg.similarity)
                parts[f"infonce_{side}"] = contrastive_loss([pair], settings, ids, batch, grid)
                total = total + cfg.contrastive_weight * parts[f"infonce_{side}"]
        return {"loss": total, **parts}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        emb, _ = self.user_tower.embed(users, view.user)
        return torch.cat([emb, emb.new_ones(len(users), 1)], dim=1) if self.config.item_bias else emb

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        emb, has_id = self.item_tower.embed(items, view.item)
        return torch.cat([emb, self.item_tower.bias(items, has_id)], dim=1) if self.config.item_bias else emb
