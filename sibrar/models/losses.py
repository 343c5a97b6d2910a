"""Training losses: BPR with N negatives and symmetric InfoNCE between two modality embeddings."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

# The lowest τ the paper searched (log-uniform [1e-3, 0.5]); its ablation collapses below it.
# Configs reject lower values (no silent clamp); logits are formed in float32 so τ = 1e-3 cannot overflow.
MIN_TEMPERATURE = 1e-3


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """mean over (b, n) of softplus(-(s_pos[b] - s_neg[b, n])).  pos (B,) or (B,1), neg (B, N)."""
    return F.softplus(-(pos_scores.reshape(-1, 1) - neg_scores)).mean()


def sym_infonce(
    a: Tensor,
    b: Tensor,
    *,
    temperature: float,
    similarity: Literal["dot", "cosine"] = "dot",
    ids: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """Symmetric (CLIP-style) InfoNCE between paired views a[..., j, :] and b[..., j, :].

    a, b: (G, K, d) — G independent groups of K entities (item tower: one group per batch row with
    its 1+N candidates; user tower: one group of the B users), or (K, d) for a single group.
    Logits a_j·b_k / τ (cosine: on L2-normalised vectors); targets on the diagonal; the two
    directions' mean cross-entropies are summed.
    ids: (G, K) entity ids; pairs j≠k with the same id are the same entity (a repeated negative or a
    repeated user) and are masked out of the denominators instead of counted as false negatives.
    weights: (G, K) row weights (0 drops a row, e.g. an entity with only one modality available).
    The logits and their log-softmax are computed in at least float32, with autocast off, whatever the
    inputs' dtype (bf16/fp16 logits a·b/τ at τ = 1e-3 lose all precision or overflow).
    """
    if not temperature >= MIN_TEMPERATURE:
        raise ValueError(f"temperature {temperature:g} is below the supported minimum {MIN_TEMPERATURE:g}")
    dtype = torch.promote_types(a.dtype, torch.float32)
    with torch.autocast(a.device.type, enabled=False):
        return _sym_infonce(a.to(dtype), b.to(dtype), temperature, similarity, ids, weights)


def _sym_infonce(a: Tensor, b: Tensor, temperature: float, similarity: str, ids: Tensor | None,
                 weights: Tensor | None) -> Tensor:
    if a.dim() == 2:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
        ids = ids.unsqueeze(0) if ids is not None else None
        weights = weights.unsqueeze(0) if weights is not None else None
    if similarity == "cosine":
        a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = torch.einsum("gjd,gkd->gjk", a, b) / temperature  # (G, K, K)
    k = logits.shape[-1]
    eye = torch.eye(k, dtype=torch.bool, device=logits.device)
    if ids is not None:
        same = (ids.unsqueeze(-1) == ids.unsqueeze(-2)) & ~eye
        logits = logits.masked_fill(same, float("-inf"))
    target = torch.arange(k, device=logits.device).expand(logits.shape[0], k)
    w = torch.ones(logits.shape[:2], device=logits.device) if weights is None else weights.to(logits.dtype)
    denom = w.sum().clamp_min(1.0)
    ce_ab = F.cross_entropy(logits.reshape(-1, k), target.reshape(-1), reduction="none")
    ce_ba = F.cross_entropy(logits.transpose(1, 2).reshape(-1, k), target.reshape(-1), reduction="none")
    return ((ce_ab * w.reshape(-1)).sum() + (ce_ba * w.reshape(-1)).sum()) / denom
