"""SiBraR: two towers whose modalities all pass through one shared branch per entity type.

Training: each entity occurrence samples 1-2 of its *available* modalities; its embedding is the mean
of their branch outputs; BPR on dot products plus a symmetric InfoNCE between the two sampled
modality embeddings. Inference: mean over all available eval modalities, so a cold item (no
`interactions`, no `id`) is embedded from its side information by the same network.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.inputs import ModelInputs
from sibrar.data.modalities import EntityFeatures
from sibrar.errors import ConfigError
from sibrar.models.base import FULL_VIEW, Batch, Model, SideView, View, register_model
from sibrar.models.objective import Contrastive, Pair, two_tower_loss
from sibrar.models.modules import DEFAULT_NUMERIC_ENCODING, BranchConfig, Projection, SharedBranch
from sibrar.models.numeric import NumericEncoding
from sibrar.models.sampling import sample_modalities


@dataclass(frozen=True, kw_only=True)
class TowerConfig:
    """One tower. With `branch: null` and one modality it is a plain tower (ID embedding, or
    ReLU(W x + b) over the interaction vector)."""

    modalities: tuple[str, ...] = ("interactions",)
    eval_modalities: tuple[str, ...] | None = None  # default: `modalities`
    common_dim: int = 128  # c: width every projection maps to
    branch: BranchConfig | None = field(default_factory=BranchConfig)
    sampling: Literal["single", "pairwise", "central"] = "pairwise"
    central: str = "interactions"
    contrastive_weight: float = 1e-4  # λ; 0 disables the InfoNCE term
    # τ; the paper searched [1e-3, 0.5]. Below 1e-3 is a config error (sibrar.config.RANGES), never a clamp
    temperature: float = 0.1
    similarity: Literal["dot", "cosine"] = "dot"
    projection_hidden: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per-modality hidden widths
    # how numeric modalities (year, age, float columns) enter p_m; see sibrar.models.numeric
    numeric_encoding: NumericEncoding = DEFAULT_NUMERIC_ENCODING


def paper_user_tower() -> TowerConfig:
    """The paper's item-SiBraR user tower: interactions -> Lin(n_items, 128) -> ReLU,
    then L2 -> Lin(128, 128) -> ReLU -> BatchNorm (norm after the activation), no dropout, one
    modality, no contrastive term. Its embeddings take both signs, unlike Lin -> BN -> ReLU."""
    return TowerConfig(common_dim=128, sampling="single", contrastive_weight=0.0, branch=BranchConfig(
        hidden=(), norm_every=-1, norm_position="after", input_dropout=0.0))


@dataclass(frozen=True, kw_only=True)
class SiBraRConfig:
    """SiBraR. The defaults are a deliberate *small* preset (the paper's "small" sizes and its small-config
    optimisation: train.lr 1e-3, train.weight_decay 1e-6): d = c = 128 and one hidden layer of 256 on
    the item side, with the paper's user tower; fast on a CPU. The paper's ML-1M architecture and
    optimisation are the `sibrar-paper-ml1m` preset, the CPU experiments' settings `sibrar-cpu`
    (`preset: NAME` in a run config or an experiment's model entry; see sibrar/configs/presets/)."""

    name: Literal["sibrar"] = "sibrar"
    dim: int = 128  # d: embedding width of both towers
    user: TowerConfig = field(default_factory=paper_user_tower)
    item: TowerConfig = field(default_factory=lambda: TowerConfig(modalities=("interactions", "genres")))


class Tower(nn.Module):
    """Projections p_m for each modality + shared branch g + mean aggregation."""

    def __init__(self, features: EntityFeatures, config: TowerConfig, dim: int, where: str) -> None:
        super().__init__()
        self.config = config
        self.entity = features.entity
        missing = [m for m in (*config.modalities, *(config.eval_modalities or ())) if m not in features]
        if missing:
            raise ConfigError(f"{where}.modalities: {features.entity} modality {missing[0]!r} not in the data; "
                              f"available: {', '.join(features.names)}")
        if config.branch is None and config.common_dim != dim:  # plain tower: projections are the output
            config = replace(config, common_dim=dim)
            self.config = config
        self.names = list(dict.fromkeys([*config.modalities, *(config.eval_modalities or ())]))
        self.train_idx = torch.tensor([self.names.index(m) for m in config.modalities])
        self.eval_names = list(config.eval_modalities or config.modalities)
        self.projections = nn.ModuleDict({
            m: Projection(features[m], config.common_dim, tuple(config.projection_hidden.get(m, ())), config.numeric_encoding)
            for m in self.names})
        self.branch = SharedBranch(config.common_dim, dim, config.branch) if config.branch else nn.Identity()
        self.available = torch.stack([features[m].available for m in self.names], dim=1)  # (n, M) bool
        if config.sampling == "central" and config.central not in config.modalities:
            raise ConfigError(f"{where}.central: {config.central!r} is not one of the tower's modalities")
        # position of the central modality among the training modalities
        self.central = list(config.modalities).index(config.central) if config.sampling == "central" else None

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        super()._apply(fn, recurse)
        self.available = fn(self.available)
        self.train_idx = fn(self.train_idx)
        return self

    def encode(self, entities: Tensor, chosen: Tensor) -> Tensor:
        """Branch outputs for (entity, modality) pairs: entities (P,), chosen (P,) -> (P, d).

        Each modality projects its own rows (unique entities once); g then runs once over the mixed
        rows, so BatchNorm statistics are shared by all modalities.
        """
        projected = None
        for m_idx, name in enumerate(self.names):
            rows = (chosen == m_idx).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            uniq, inverse = entities[rows].unique(return_inverse=True)
            out = self.projections[name](uniq)[inverse]
            if projected is None:
                projected = out.new_zeros(len(entities), out.shape[1])
            projected[rows] = out.to(projected.dtype)  # under autocast, modalities differ in dtype
        if projected is None:
            raise ValueError("no modality rows to encode")
        return self.branch(projected)

    def draw(self, entities: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
        """Modality draw per entity row: (chosen (N, k) tower-wide indices, distinct (N,), has any (N,))."""
        available = self.available[entities][:, self.train_idx]  # (N, M_train)
        chosen, distinct = sample_modalities(available, self.config.sampling, generator=generator, central=self.central)
        has_any = available.any(dim=1)
        return self.train_idx[chosen], distinct & has_any, has_any

    def encode_draws(self, entities: Tensor, chosen: Tensor, has_any: Tensor,
                     unique_rows: bool = False) -> tuple[Tensor, Tensor | None]:
        """(emb (N, d), per-modality (N, 2, d) or None) for drawn modalities `chosen` (N, k).

        unique_rows: run g once per distinct (entity, modality) row and gather (equal to the per-row
        pass up to dropout masks and BatchNorm batch statistics, which then see each row once).
        """
        k = chosen.shape[1]
        rows_entity, rows_modality = entities.repeat_interleave(k), chosen.reshape(-1)
        if unique_rows:
            n_mod = len(self.names)
            keys, inverse = (rows_entity * n_mod + rows_modality).unique(return_inverse=True)
            z = self.encode(torch.div(keys, n_mod, rounding_mode="floor"), keys % n_mod)[inverse]
        else:
            z = self.encode(rows_entity, rows_modality)
        z = z.reshape(len(entities), k, -1)
        emb = z.mean(dim=1) * has_any.unsqueeze(1)
        return emb, (z if k == 2 else None)

    def sample(self, entities: Tensor, generator: torch.Generator | None,
               unique_rows: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """Training forward, one draw per row: (emb (N, d), per-modality (N, 2, d) or None, distinct (N,) bool)."""
        chosen, distinct, has_any = self.draw(entities, generator)
        emb, z = self.encode_draws(entities, chosen, has_any, unique_rows)
        return emb, z, distinct

    def sample_views(self, entities: Tensor, generator: torch.Generator | None,
                     unique_rows: bool = False) -> tuple[Tensor, list[Pair]]:
        """Training forward: (embedding (N, d), the modality pairs for the contrastive term)."""
        emb, z, distinct = self.sample(entities, generator, unique_rows)
        return emb, ([] if z is None else [(z[:, 0], z[:, 1], distinct)])

    def embed(self, entities: Tensor, view: SideView) -> Tensor:
        """Inference: mean of branch outputs over the eval modalities each entity may use under `view`."""
        names = list(view.modalities) if view.modalities is not None else self.eval_names
        unknown = [m for m in (*names, *view.missing) if m not in self.names]  # a typo must not pass as "no effect"
        if unknown:
            raise ConfigError(f"view names {self.entity} modality {unknown[0]!r}; this tower has {', '.join(self.names)}")
        cols = torch.tensor([self.names.index(m) for m in names], device=entities.device)
        use = self.available[entities][:, cols].clone()  # (N, M_view)
        for j, m in enumerate(names):
            if m in view.missing:
                use[:, j] &= ~view.missing[m].to(entities.device)[entities]
        pair_entity, pair_col = use.nonzero(as_tuple=True)
        if pair_entity.numel() == 0:
            return torch.zeros(len(entities), self._out_dim(), device=entities.device)
        z = self.encode(entities[pair_entity], cols[pair_col])
        total = torch.zeros(len(entities), z.shape[1], device=z.device, dtype=z.dtype).index_add_(0, pair_entity, z)
        count = use.sum(dim=1, keepdim=True).clamp_min(1)
        return total / count  # entities with no usable modality get the zero vector

    def _out_dim(self) -> int:
        for module in reversed(list(self.modules())):
            if isinstance(module, nn.Linear):
                return module.out_features
            if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
                return module.embedding_dim
        raise RuntimeError("tower without layers")


@register_model("sibrar", SiBraRConfig)
class SiBraR(Model):
    """Single-branch two-tower recommender (item-SiBraR, user-SiBraR or both, by config)."""

    supports_cold_items = True
    supports_cold_users = True
    supports_shared_negatives = True
    tower_class: type[Tower] = Tower  # the multi-branch ablation swaps in its own tower

    def __init__(self, config: SiBraRConfig, inputs: ModelInputs) -> None:
        super().__init__(config, inputs)
        self.user_tower = self.tower_class(inputs.user, config.user, config.dim, "model.user")
        self.item_tower = self.tower_class(inputs.item, config.item, config.dim, "model.item")
        self.generator: torch.Generator | None = None  # set by the trainer: seeded modality sampling

    def loss(self, batch: Batch) -> dict[str, Tensor]:
        return towers_loss(batch, self.user_tower, self.item_tower, self.generator)

    def user_embeddings(self, users: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.user_tower.embed(users, view.user)

    def item_embeddings(self, items: Tensor, view: View = FULL_VIEW) -> Tensor:
        return self.item_tower.embed(items, view.item)


def towers_loss(batch: Batch, user_tower: Tower, item_tower: Tower, generator: torch.Generator | None) -> dict[str, Tensor]:
    """The two-tower objective of SiBraR and the multi-branch ablation, through each tower's `sample_views`."""
    rows = batch.dedup == "rows"
    return two_tower_loss(batch, lambda e: user_tower.sample_views(e, generator, rows),
                          lambda e: item_tower.sample_views(e, generator, rows),
                          contrastive_of(user_tower.config), contrastive_of(item_tower.config))


def contrastive_of(config: TowerConfig) -> Contrastive:
    return Contrastive(config.contrastive_weight, config.temperature, config.similarity)
