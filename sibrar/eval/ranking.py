"""Exact chunked full-ranking top-k by dot product, with seeded random tie-breaking."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from sibrar.errors import ConfigError

__all__ = ["topk_items"]

_INT64_MAX = torch.iinfo(torch.int64).max
_INT64_MIN = torch.iinfo(torch.int64).min
_DEFAULT_TIE_SEED = 0x5EED
# Odd 64-bit constants (golden ratio, murmur3 fmix64), written as signed int64.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_PRIME_U = 0x2545F4914F6CDD1D
_FMIX_1 = 0xFF51AFD7ED558CCD - (1 << 64)
_FMIX_2 = 0xC4CEB9FE1A85EC53 - (1 << 64)


def topk_items(
    user_emb: Tensor,
    item_emb: Tensor,
    k: int,
    *,
    candidates: Tensor | None = None,
    exclude: Tensor | sp.spmatrix | sp.sparray | None = None,
    user_chunk: int = 1024,
    item_chunk: int = 262144,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """The k highest-scoring allowed items per user, score = ``user_emb @ item_emb.T``.

    Exact: scores are computed densely, block by block (``user_chunk`` x ``item_chunk``), and the
    per-block top-k lists are merged, so extra memory is about ``6 * user_chunk * item_chunk``
    bytes for fp32 scores (~1.5 GiB at the defaults; lower ``user_chunk`` on a small CPU box),
    up to about twice that when many scores tie at the cut, whatever the catalogue size.

    Ties: items are ordered by (score, tie key) lexicographically, where the tie key is a 62-bit
    hash of (seed, user index, item index) and the seed is drawn once from ``generator`` (a fixed
    seed when ``None``, so evaluation is reproducible). Exactly tied items are therefore shuffled
    independently per user -- never by index order, unlike ``torch.topk``
    -- while distinct scores keep their exact order. The order of two tied items depends on
    neither the chunk sizes nor the other candidates, so results are identical for any chunking.

    Args:
        user_emb: (U, d) user embeddings.
        item_emb: (I, d) item embeddings, same device and dtype as ``user_emb``.
        k: list length, >= 1.
        candidates: the rankable items, a bool mask (I,) or item indices (long); None = all.
        exclude: (U, I) torch sparse CSR or scipy sparse matrix; every stored entry (whatever its
            value) removes that item for that user, e.g. training items.
        user_chunk: users per block.
        item_chunk: items per block.
        generator: draws the tie-breaking seed.

    Returns:
        ``(items, scores)``, both (U, k), best first: long item indices into ``item_emb`` and their
        scores. A user with fewer than k allowed items is padded with item -1 and score -inf.
        Items scoring -inf are treated as not allowed.
    """
    _check_embeddings(user_emb, item_emb)
    for name, value in (("k", k), ("user_chunk", user_chunk), ("item_chunk", item_chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"topk_items: {name} must be a positive int, got {value!r}")
    n_users, n_items = user_emb.shape[0], item_emb.shape[0]
    device = user_emb.device
    cand_idx = _candidate_index(candidates, n_items, device)  # (C,) sorted original item indices
    excl_crow, excl_col = _exclusion_csr(exclude, n_users, n_items, cand_idx, device)
    seed = _draw_seed(generator)

    score_dtype = torch.promote_types(user_emb.dtype, torch.float32)
    out_items = torch.full((n_users, k), -1, dtype=torch.long, device=device)
    out_scores = torch.full((n_users, k), float("-inf"), dtype=score_dtype, device=device)
    cand_emb = (item_emb if candidates is None else item_emb[cand_idx]).to(score_dtype)  # (C, d)
    n_cand = cand_idx.numel()
    for u0 in range(0, n_users, user_chunk):
        u1 = min(u0 + user_chunk, n_users)
        users = torch.arange(u0, u1, device=device)  # (Uc,)
        block_emb = user_emb[u0:u1].to(score_dtype)  # (Uc, d)
        rows, cols = _exclusions_for_users(excl_crow, excl_col, u0, u1)
        best_scores = torch.empty((u1 - u0, 0), dtype=score_dtype, device=device)
        best_items = torch.empty((u1 - u0, 0), dtype=torch.long, device=device)
        for i0 in range(0, n_cand, item_chunk):
            i1 = min(i0 + item_chunk, n_cand)
            scores = block_emb @ cand_emb[i0:i1].T  # (Uc, Ic)
            in_block = (cols >= i0) & (cols < i1)
            scores[rows[in_block], cols[in_block] - i0] = float("-inf")
            sel_scores, sel_items = _block_topk(scores, cand_idx[i0:i1], users, k, seed)
            del scores  # free the block before the next matmul allocates its successor
            best_scores, best_items = _merge(
                torch.cat([best_scores, sel_scores], 1), torch.cat([best_items, sel_items], 1),
                users, k, seed,
            )
        width = best_items.shape[1]
        allowed = best_scores > float("-inf")
        out_items[u0:u1, :width] = torch.where(allowed, best_items, -1)
        out_scores[u0:u1, :width] = best_scores
    return out_items, out_scores


def _block_topk(
    scores: Tensor, item_idx: Tensor, users: Tensor, k: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Lexicographic (score, tie key) top-k of one block; unsorted, as (scores, item indices)."""
    kk = min(k, scores.shape[1])
    if kk == scores.shape[1]:  # the whole block is kept
        return scores, item_idx.expand(scores.shape[0], kk)
    top_scores, top = scores.topk(kk + 1, dim=1)  # (Uc, kk + 1), sorted
    sel, kth = top[:, :kk], top_scores[:, kk - 1 : kk]  # (Uc, kk), (Uc, 1)
    # topk's set is already exact unless the (kk+1)-th score ties the kk-th; only for those rows
    # (rare with learned scores, all rows for constant scores) do the tie keys decide.
    ambiguous = (top_scores[:, kk] == kth.squeeze(1)) & (kth.squeeze(1) > float("-inf"))
    tied_rows = ambiguous.nonzero().squeeze(1)
    group = max(1, scores.shape[0] // 8)  # int64 keys cost ~24 B/score: hash a few rows at a time
    for g0 in range(0, tied_rows.numel(), group):
        rows = tied_rows[g0 : g0 + group]
        sub, sub_kth = scores[rows], kth[rows]  # (Ug, Ic), (Ug, 1)
        keys = _tie_keys(users[rows, None], item_idx[None, :], seed)  # (Ug, Ic)
        keys.masked_fill_(sub > sub_kth, _INT64_MAX).masked_fill_(sub < sub_kth, _INT64_MIN)
        sel[rows] = keys.topk(kk, dim=1, sorted=False).indices
    return scores.gather(1, sel), item_idx[sel]


def _merge(scores: Tensor, items: Tensor, users: Tensor, k: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sort (Uc, m) candidates by (score, tie key) descending and keep the first k."""
    keys = _tie_keys(users[:, None], items, seed)  # (Uc, m)
    by_key = keys.argsort(dim=1, descending=True)
    scores_by_key = scores.gather(1, by_key)
    order = by_key.gather(1, scores_by_key.sort(dim=1, descending=True, stable=True).indices)
    order = order[:, :k]
    return scores.gather(1, order), items.gather(1, order)


def _tie_keys(users: Tensor, items: Tensor, seed: int) -> Tensor:
    """Pseudo-random key in [0, 2**62) per (user, item) pair (broadcast), from the seed.

    murmur3's 64-bit finaliser over ``seed + golden * user + prime * item`` in wrapping int64
    arithmetic: a pure function of its inputs, so chunking never changes the tie order.
    """
    x = users.long() * _GOLDEN + items.long() * _PRIME_U  # (broadcast) wraps mod 2**64
    x += seed
    tmp = torch.empty_like(x)
    for multiplier in (_FMIX_1, _FMIX_2, None):  # in place: these tensors can be block-sized
        torch.bitwise_right_shift(x, 33, out=tmp)
        x ^= tmp.bitwise_and_((1 << 31) - 1)  # logical shift
        if multiplier is not None:
            x *= multiplier
    return x.bitwise_right_shift_(2).bitwise_and_((1 << 62) - 1)  # in [0, 2**62)


def _draw_seed(generator: torch.Generator | None) -> int:
    if generator is None:
        return _DEFAULT_TIE_SEED
    if not isinstance(generator, torch.Generator):
        raise ConfigError(f"topk_items: generator must be a torch.Generator, got {type(generator).__name__}")
    draw = torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device)
    return int(draw.item())


def _check_embeddings(user_emb: Tensor, item_emb: Tensor) -> None:
    for name, emb in (("user_emb", user_emb), ("item_emb", item_emb)):
        if not isinstance(emb, Tensor) or emb.ndim != 2 or not emb.is_floating_point():
            shape = tuple(emb.shape) if isinstance(emb, Tensor) else type(emb).__name__
            raise ConfigError(f"topk_items: {name} must be a 2-d float tensor, got {shape}")
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ConfigError(
            f"topk_items: embedding sizes differ: user_emb {tuple(user_emb.shape)}, item_emb "
            f"{tuple(item_emb.shape)}; both need the same d"
        )
    if user_emb.device != item_emb.device or user_emb.dtype != item_emb.dtype:
        raise ConfigError(
            f"topk_items: user_emb is {user_emb.dtype} on {user_emb.device} but item_emb is "
            f"{item_emb.dtype} on {item_emb.device}; move them to one device and dtype"
        )
    for name, emb in (("user_emb", user_emb), ("item_emb", item_emb)):
        lowest, highest = torch.aminmax(emb) if emb.numel() else (emb.new_zeros(()), emb.new_zeros(()))
        if not bool(torch.isfinite(lowest) & torch.isfinite(highest)):  # NaN propagates; no copy
            raise ConfigError(f"topk_items: {name} holds NaN or inf values; scores would be undefined")


def _candidate_index(candidates: Tensor | None, n_items: int, device: torch.device) -> Tensor:
    """Sorted unique long indices of the rankable items, shape (C,)."""
    if candidates is None:
        return torch.arange(n_items, device=device)
    cand = torch.as_tensor(candidates, device=device)
    if cand.dtype == torch.bool:
        if cand.shape != (n_items,):
            raise ConfigError(
                f"topk_items: candidates mask has shape {tuple(cand.shape)}, expected ({n_items},)"
            )
        return cand.nonzero().squeeze(1)
    if cand.is_floating_point() or cand.is_complex() or cand.ndim != 1:
        raise ConfigError(
            f"topk_items: candidates must be a bool mask ({n_items},) or 1-d integer item "
            f"indices, got {cand.dtype} of shape {tuple(cand.shape)}"
        )
    cand = cand.long()
    if cand.numel() and (int(cand.min()) < 0 or int(cand.max()) >= n_items):
        raise ConfigError(
            f"topk_items: candidate indices span [{int(cand.min())}, {int(cand.max())}], "
            f"expected within [0, {n_items - 1}]"
        )
    return cand.unique(sorted=True)


def _exclusion_csr(
    exclude: Tensor | sp.spmatrix | sp.sparray | None,
    n_users: int,
    n_items: int,
    cand_idx: Tensor,
    device: torch.device,
) -> tuple[Tensor, Tensor]:
    """Exclusions as (crow (U+1,), col (nnz,)), columns renumbered to candidate positions."""
    if exclude is None:
        return torch.zeros(n_users + 1, dtype=torch.long, device=device), torch.empty(
            0, dtype=torch.long, device=device
        )
    if sp.issparse(exclude):
        csr = sp.csr_matrix(exclude)
        shape = csr.shape
        crow = torch.from_numpy(csr.indptr.astype(np.int64))
        col = torch.from_numpy(csr.indices.astype(np.int64))
    elif isinstance(exclude, Tensor) and exclude.layout == torch.sparse_csr:
        shape = tuple(exclude.shape)
        crow, col = exclude.crow_indices().long(), exclude.col_indices().long()
    else:
        raise ConfigError(
            f"topk_items: exclude must be a torch sparse CSR tensor or a scipy sparse matrix, got "
            f"{type(exclude).__name__}{getattr(exclude, 'layout', '')}"
        )
    if tuple(shape) != (n_users, n_items):
        raise ConfigError(
            f"topk_items: exclude has shape {tuple(shape)}, expected (n_users, n_items) = "
            f"({n_users}, {n_items})"
        )
    crow, col = crow.to(device), col.to(device)
    position = torch.full((n_items,), -1, dtype=torch.long, device=device)
    position[cand_idx] = torch.arange(cand_idx.numel(), device=device)
    new_col = position[col]
    keep = new_col >= 0
    rows = torch.repeat_interleave(torch.arange(n_users, device=device), crow.diff())
    new_crow = torch.zeros(n_users + 1, dtype=torch.long, device=device)
    new_crow[1:] = torch.bincount(rows[keep], minlength=n_users).cumsum(0)
    return new_crow, new_col[keep]


def _exclusions_for_users(crow: Tensor, col: Tensor, u0: int, u1: int) -> tuple[Tensor, Tensor]:
    """(row within the block, candidate position) of every exclusion of users [u0, u1)."""
    lo, hi = int(crow[u0]), int(crow[u1])
    counts = crow[u0 : u1 + 1].diff()
    rows = torch.repeat_interleave(torch.arange(u1 - u0, device=crow.device), counts)
    return rows, col[lo:hi]
