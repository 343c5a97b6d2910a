"""Vectorised modality sampling per entity occurrence, only among the modalities it has."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

SamplingMode = Literal["single", "pairwise", "central"]


def sample_modalities(
    available: Tensor, mode: SamplingMode, *, generator: torch.Generator | None = None, central: int | None = None
) -> tuple[Tensor, Tensor]:
    """Draw modality indices for each row of `available` (N, M) bool.

    Returns (chosen (N, k) long, distinct (N,) bool): k = 1 for 'single', 2 otherwise. 'pairwise'
    draws two distinct available modalities uniformly; 'central' takes modality `central` (when the
    entity has it) plus one other. A row with a single available modality repeats it in both slots
    (`distinct` False: it carries no contrastive signal). Rows with none get index 0 and must be
    masked by the caller via `available.any(1)`. Uses Gumbel-top-k: one `torch.rand` call, no loop.
    """
    keys = torch.rand(available.shape, generator=generator, device=available.device)
    keys = keys.masked_fill(~available, -1.0)
    n_avail = available.sum(dim=1)
    if mode == "single":
        return keys.argmax(dim=1, keepdim=True), torch.zeros(len(available), dtype=torch.bool, device=available.device)
    if mode == "central":
        if central is None:
            raise ValueError("central sampling needs the index of the central modality")
        has_central = available[:, central]
        others = keys.clone()
        others[:, central] = -1.0
        first = torch.where(has_central, torch.full_like(n_avail, central), others.argmax(dim=1))
        others = others.scatter(1, first.unsqueeze(1), -1.0)
        second = torch.where(others.max(dim=1).values >= 0, others.argmax(dim=1), first)
    elif mode == "pairwise":
        top = keys.topk(min(2, keys.shape[1]), dim=1).indices
        first = top[:, 0]
        second = torch.where(n_avail >= 2, top[:, -1], first)
    else:
        raise ValueError(f"unknown sampling mode {mode!r}; expected single, pairwise or central")
    return torch.stack([first, second], dim=1), second != first
