"""Vectorised uniform negative sampling with rejection of the user's own training items."""

from __future__ import annotations

import torch
from torch import Tensor


def interaction_keys(users: Tensor, items: Tensor, n_items: int) -> Tensor:
    """Sorted unique keys user * n_items + item: membership tests become one searchsorted."""
    return torch.unique(users.long() * n_items + items.long())


def sample_negatives(
    users: Tensor, n: int, *, candidates: Tensor, positive_keys: Tensor, n_items: int,
    generator: torch.Generator | None = None, max_rounds: int = 100,
) -> Tensor:
    """(len(users), n) items drawn uniformly with replacement from `candidates`, re-drawing any that
    the user interacted with in training (RecBole's `uniform` strategy). No per-row Python."""
    draw = lambda size: candidates[torch.randint(len(candidates), size, generator=generator, device=candidates.device)]  # noqa: E731
    negatives = draw((len(users), n))
    user_col = users.long().unsqueeze(1).expand_as(negatives)
    for _ in range(max_rounds):
        keys = user_col * n_items + negatives
        pos = torch.searchsorted(positive_keys, keys).clamp_max(len(positive_keys) - 1)
        clash = positive_keys[pos] == keys
        if not clash.any():
            break
        negatives = torch.where(clash, draw(negatives.shape), negatives)
    return negatives
