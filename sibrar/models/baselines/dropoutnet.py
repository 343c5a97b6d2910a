"""DropoutNet (Volkovs et al., NeurIPS'17), as in the reference framework.

Per side: a preference encoder on the training interaction vector plus one content encoder per
side modality, concatenated and mapped by an MLP (ReLU output) to d; score = dot product. In
training each entity occurrence has its preference input zeroed with probability p, so the
network learns to embed entities from content alone: exactly what a cold entity looks like.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.data.modalities import EntityFeatures
from sibrar.errors import ConfigError
from sibrar.models.base import FULL_VIEW, Batch, Model, SideView, View, register_model
from sibrar.models.baselines.deepmf import InteractionMLP
from sibrar.models.objective import batch_slots, ranking_loss
from sibrar.models.modules import Projection, init_weights

_CONTENT_KINDS = ("categorical", "tags", "numeric", "vector")


def view_usage(names: tuple[str, ...], rows: Tensor, view: SideView, entity: str) -> Tensor:
    """(P, len(names)) bool: which of a tower's inputs `view` lets each entity of `rows` use.

    `view.modalities` (None = all) picks inputs; `view.missing` removes them per entity. Whether an
    entity *has* the input is the caller's business (availability masks / empty interaction rows).
    """
    allowed = names if view.modalities is None else view.modalities
    unknown = [m for m in (*allowed, *view.missing) if m not in names]  # a typo must not pass as "no effect"
    if unknown:
        raise ConfigError(f"view names {entity} modality {unknown[0]!r}; this tower has {', '.join(names)}")
    use = torch.tensor([m in allowed for m in names], device=rows.device).expand(len(rows), -1).clone()
    for j, m in enumerate(names):
        if m in view.missing:
            use[:, j] &= ~view.missing[m].to(rows.device)[rows]
    return use


@dataclass(frozen=True, kw_only=True)
class DropoutNetSideConfig:
    """One side. Content encoders: categorical/tags -> embedding (bag) of width `content_dim`;
    numeric/vector -> Linear -> ReLU to `content_dim` (reference: 8-16 for codes, 64-256 dense)."""

    modalities: tuple[str, ...] = ()  # content modalities; the preference input is always used
    preference_dim: int = 64  # ReLU(W x + b) over the interaction vector
    content_dim: int = 16
    content_dims: dict[str, int] = field(default_factory=dict)  # per-modality width overrides
    hidden: tuple[int, ...] = (64,)  # MLP after the concatenation, then d
    preference_dropout: float = 0.5  # probability of zeroing an occurrence's preference input

    def __post_init__(self) -> None:
        if not 0.0 <= self.preference_dropout <= 1.0:
            raise ConfigError(f"preference_dropout is {self.preference_dropout}; expected a probability in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class DropoutNetConfig:
    name: Literal["dropoutnet"] = "dropoutnet"
    dim: int = 64  # d (reference: 64-256)
    user: DropoutNetSideConfig = field(default_factory=DropoutNetSideConfig)
    item: DropoutNetSideConfig = field(default_factory=lambda: DropoutNetSideConfig(modalities=("genres",)))


class DropoutNetTower(nn.Module):
    """[content encoders..., preference encoder] -> concat -> MLP -> ReLU, for one entity type."""

    def __init__(self, features: EntityFeatures, config: DropoutNetSideConfig, dim: int, where: str) -> None:
        super().__init__()
        for m in config.modalities:
            if m not in features or features[m].kind not in _CONTENT_KINDS:
                valid = [n for n in features.names if features[n].kind in _CONTENT_KINDS and n != "id"]
                raise ConfigError(f"{where}.modalities: {m!r} is not a {features.entity} content modality; "
                                  f"available: {', '.join(valid) or '(none)'}")
        self.config = config
        self.entity = features.entity
        self.names = ("interactions", *config.modalities)  # the inputs a view can select
        self.preference = InteractionMLP(features["interactions"], (config.preference_dim,), output_activation=True)
        widths = {m: config.content_dims.get(m, config.content_dim) for m in config.modalities}
        self.content = nn.ModuleDict({m: Projection(features[m], w) for m, w in widths.items()})
        self.available = (torch.stack([features[m].available for m in config.modalities], dim=1)
                          if config.modalities else torch.zeros(features.n, 0, dtype=torch.bool))  # (n, M)
        layer_widths = [config.preference_dim + sum(widths.values()), *config.hidden, dim]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(layer_widths):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.mlp = nn.Sequential(*layers)
        init_weights(self.mlp)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.available = fn(self.available)
        return self

    def forward(self, rows: Tensor, keep: Tensor | None = None, use: Tensor | None = None) -> Tensor:
        """rows (P,) -> (P, d). keep (P,) bool: False drops the preference input of that occurrence;
        use (P, M) bool: False drops that content input (a missing-modality view)."""
        available = self.available[rows] if use is None else self.available[rows] & use  # (P, M)
        weights = available.to(self.preference.bias.dtype)  # missing content -> zero input
        parts = [enc(rows) * weights[:, j : j + 1] for j, enc in enumerate(self.content.values())]
        parts.append(self.preference(rows, keep))
        return self.mlp(torch.cat(parts, dim=1))

    def embed(self, rows: Tensor, view: SideView) -> Tensor:
        """Inference under a view (interactions and content can be removed per entity)."""
        use = view_usage(self.names, rows, view, self.entity)  # (P, 1+M)
        return self(rows, keep=use[:, 0], use=use[:, 1:])


@register_model("dropoutnet", DropoutNetConfig)
class DropoutNet(Model):
    """Two DropoutNet towers; cold entities (empty interaction vector) are embedded from content."""

    supports_cold_items = True
    supports_cold_users = True
    supports_shared_negatives = True

    def __init__(self, config: DropoutNetConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        self.user_tower = DropoutNetTower(inputs.user, config.user, config.dim, "model.user")
        self.item_tower = DropoutNetTower(inputs.item, config.item, config.dim, "model.item")
        self.generator: torch.Generator | None = None  # set by the trainer: seeded preference dropout

    def _keep(self, n: int, p: float, device: torch.device) -> Tensor | None:
        if p <= 0.0:
            return None
        return torch.rand(n, generator=self.generator, device=device) >= p  # (n,) bool

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        slots = batch_slots(batch)  # one pass (and one preference-dropout draw) per distinct entity
        keep_users = self._keep(len(slots.users), self.config.user.preference_dropout, batch.users.device)
        keep_items = self._keep(len(slots.items), self.config.item.preference_dropout, batch.items.device)
        user_emb = self.user_tower(slots.users, keep_users)[slots.user_of]  # (B, d)
        item_emb = self.item_tower(slots.items, keep_items)  # (Ui, d)
        loss = ranking_loss(user_emb, item_emb, slots, batch)
        return {"loss": loss, batch.objective: loss}

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.user_tower.embed(users, view.user)

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.item_tower.embed(items, view.item)
