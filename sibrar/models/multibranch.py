"""Single- vs multi-branch ablation: {shared, per-modality} branch × {sampling on, off} ×
{contrastive on, off}, all in one model so the 2×2×2 grid is just eight configs.

With `shared=True` a tower *is* SiBraR's `Tower` (same modules, same state-dict keys, same random
draws), so `shared=True, sampling="pairwise"` reproduces SiBraR exactly; `shared=False` gives every
modality its own branch g_m (same widths, no weight sharing). `sampling="none"` encodes every
available training modality of every occurrence; the contrastive term then averages the symmetric
InfoNCE over all modality pairs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from torch import Tensor, nn

from sibrar.data.modalities import EntityFeatures
from sibrar.models.base import register_model
from sibrar.models.objective import Pair
from sibrar.models.modules import SharedBranch
from sibrar.models.sibrar import SiBraR, Tower, TowerConfig


@dataclass(frozen=True, kw_only=True)
class BranchTowerConfig(TowerConfig):
    """SiBraR's TowerConfig plus the two ablation switches."""

    shared: bool = True  # one branch g for all modalities (SiBraR) or one g_m per modality
    # "none": no modality sampling, every available training modality every time
    sampling: Literal["single", "pairwise", "central", "none"] = "pairwise"  # type: ignore[assignment]


@dataclass(frozen=True, kw_only=True)
class MultiBranchConfig:
    name: Literal["multibranch"] = "multibranch"
    dim: int = 128  # d: embedding width of both towers
    user: BranchTowerConfig = field(
        default_factory=lambda: BranchTowerConfig(branch=None, sampling="single", contrastive_weight=0.0))
    item: BranchTowerConfig = field(
        default_factory=lambda: BranchTowerConfig(modalities=("interactions", "genres"), shared=False))


class BranchTower(Tower):
    """SiBraR's tower with an optional branch per modality and optional 'no sampling' training."""

    config: BranchTowerConfig

    def __init__(self, features: EntityFeatures, config: BranchTowerConfig, dim: int, where: str) -> None:
        super().__init__(features, config, dim, where)
        if not config.shared and config.branch is not None:
            self.branch = nn.ModuleDict(  # type: ignore[assignment]
                {m: SharedBranch(config.common_dim, dim, config.branch) for m in self.names})

    def encode(self, entities: Tensor, chosen: Tensor) -> Tensor:
        """(P,) entities, (P,) modality indices -> (P, d).

        Per-modality branches batch-normalise only their own rows, so in training every modality
        needs >= 2 rows per batch (BatchNorm1d's rule); use `norm: layer` for tiny batches.
        """
        if not isinstance(self.branch, nn.ModuleDict):
            return super().encode(entities, chosen)
        out = None
        for m_idx, name in enumerate(self.names):  # a loop over modalities, not rows
            rows = (chosen == m_idx).nonzero(as_tuple=True)[0]
            if rows.numel() == 0:
                continue
            uniq, inverse = entities[rows].unique(return_inverse=True)
            z = self.branch[name](self.projections[name](uniq)[inverse])  # (P_m, d)
            if out is None:
                out = z.new_zeros(len(entities), z.shape[1])
            out[rows] = z.to(out.dtype)  # under autocast, branches over different projections differ in dtype
        if out is None:
            raise ValueError("no modality rows to encode")
        return out

    def sample_views(self, entities: Tensor, generator: torch.Generator | None,
                     unique_rows: bool = False) -> tuple[Tensor, list[Pair]]:
        """Training forward: (embedding (N, d), the modality pairs for the contrastive term)."""
        if self.config.sampling != "none":
            return super().sample_views(entities, generator, unique_rows)
        available = self.available[entities][:, self.train_idx]  # (N, M)
        ent, col = available.nonzero(as_tuple=True)
        if ent.numel() == 0:
            return torch.zeros(len(entities), self._out_dim(), device=entities.device), []
        z_flat = self.encode(entities[ent], self.train_idx[col])  # (P, d)
        z = z_flat.new_zeros(*available.shape, z_flat.shape[1])  # (N, M, d)
        z[ent, col] = z_flat
        emb = z.sum(dim=1) / available.sum(dim=1, keepdim=True).clamp_min(1)
        pairs = [(z[:, a], z[:, b], available[:, a] & available[:, b])
                 for a, b in itertools.combinations(range(available.shape[1]), 2)]
        return emb, pairs


@register_model("multibranch", MultiBranchConfig)
class MultiBranch(SiBraR):
    """Two towers that are SiBraR's (shared=True) or multi-branch (shared=False)."""

    tower_class = BranchTower


ABLATION_AXES = ("shared", "sampling", "contrastive")


def ablation_grid(base: MultiBranchConfig = MultiBranchConfig(), *, contrastive_weight: float = 1e-4) -> dict[str, MultiBranchConfig]:
    """The eight ablation cells as configs, keyed e.g. 'single+sampling+contrastive'.

    Applied to every tower with a branch and >= 2 training modalities (one-modality towers have
    nothing to share, sample or contrast). 'sampling' = pairwise, off = "none"; contrastive off = λ 0.
    """
    cells = {}
    for shared, sampling, contrastive in itertools.product((True, False), repeat=3):
        weight = contrastive_weight if contrastive else 0.0
        key = "+".join(["single" if shared else "multi", "sampling" if sampling else "all",
                        "contrastive" if contrastive else "bpr"])
        cells[key] = replace(base, user=_cell(base.user, shared, sampling, weight),
                             item=_cell(base.item, shared, sampling, weight))
    return cells


def _cell(tower: BranchTowerConfig, shared: bool, sampling: bool, weight: float) -> BranchTowerConfig:
    if tower.branch is None or len(tower.modalities) < 2:
        return tower
    return replace(tower, shared=shared, sampling="pairwise" if sampling else "none", contrastive_weight=weight)
