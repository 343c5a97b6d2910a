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
    draw = lambda size: torch.randint(len(candidates), size, generator=generator, device=candidates.device)  # noqa: E731
    negatives = candidates[draw((len(users), n))]
    flat_neg = negatives.view(-1)
    flat_user = users.long().repeat_interleave(n)
    todo = torch.arange(flat_neg.numel(), device=flat_neg.device)  # entries not yet checked clean
    for _ in range(max_rounds):
        # only entries that clashed are checked again: heavy users need ~20 rounds on ML-1M, and
        # re-checking the whole matrix every round made sampling several times slower. Each round still
        # draws a full matrix, so the random stream (and every seeded result) is that of a full re-check.
        keys = flat_user[todo] * n_items + flat_neg[todo]
        pos = torch.searchsorted(positive_keys, keys).clamp_max(len(positive_keys) - 1)
        todo = todo[positive_keys[pos] == keys]
        if todo.numel() == 0:
            break
        flat_neg[todo] = candidates[draw(negatives.shape).view(-1)[todo]]
    return negatives


def training_csr(positive_keys: Tensor, n_users: int, n_items: int) -> tuple[Tensor, Tensor]:
    """(crow (n_users+1,), col) of the training matrix from the sorted keys of `interaction_keys`."""
    rows = torch.div(positive_keys, n_items, rounding_mode="floor")
    crow = torch.searchsorted(rows, torch.arange(n_users + 1, device=rows.device))
    return crow, positive_keys - rows * n_items


def sample_shared_negatives(n: int, *, candidates: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """(min(n, C),) distinct items drawn uniformly without replacement from `candidates` (C,)."""
    if n >= len(candidates):
        return candidates
    return candidates[torch.randperm(len(candidates), generator=generator, device=candidates.device)[:n]]


def shared_negative_mask(users: Tensor, shared: Tensor, crow: Tensor, col: Tensor, n_items: int) -> Tensor:
    """(B, S) bool: True where distinct item shared[s] is a training item of users[b].

    Walks only the batch users' training rows (about B x mean profile entries), never B x S keys.
    """
    slot = torch.full((n_items,), -1, dtype=torch.long, device=shared.device)
    slot[shared] = torch.arange(len(shared), device=shared.device)
    starts = crow[users]
    lengths = crow[users + 1] - starts
    total = int(lengths.sum())
    row = torch.repeat_interleave(torch.arange(len(users), device=users.device), lengths, output_size=total)
    first = torch.cumsum(lengths, 0) - lengths
    within = torch.arange(total, device=users.device) - torch.repeat_interleave(first, lengths, output_size=total)
    where = slot[col[torch.repeat_interleave(starts, lengths, output_size=total) + within]]
    hit = where >= 0
    mask = torch.zeros(len(users), len(shared), dtype=torch.bool, device=users.device)
    mask[row[hit], where[hit]] = True
    return mask
