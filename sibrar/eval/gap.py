"""Modality gap: how close an item's own modality embeddings are, against other items' (the TORS'25 follow-up's analysis).

Each item is embedded from one modality at a time (a single-modality view: one branch output of
SiBraR's shared g, or of the multi-branch model's g_m). For every modality pair (a, b) and the items
having both, the mean distance between z_a(i) and z_b(i) ("own") is compared with that between
z_a(i) and z_b(j) for seeded random other items j ("random"). A ratio own/random well below 1 means
the modalities of one item land near each other; the centroid gap ‖mean ẑ_a − mean ẑ_b‖ of the
L2-normalised embeddings (Liang et al., NeurIPS'22) says whether each modality occupies its own region.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor
from torch.nn import functional as F

from sibrar.data.inputs import ModelInputs
from sibrar.errors import ConfigError
from sibrar.models.base import Model, SideView, View
from sibrar.models.sibrar import Tower

GAP_COLUMNS = ("n_items", "cos_own", "cos_random", "cos_ratio", "l2_own", "l2_random", "l2_ratio", "centroid_gap")


def branch_modalities(model: Model) -> tuple[str, ...]:
    """The item modalities `model` embeds through a branch (SiBraR, multibranch), or a ConfigError."""
    tower = getattr(model, "item_tower", None)
    if not isinstance(tower, Tower):
        raise ConfigError(f"modality gap needs a model whose item tower embeds each modality on its own "
                          f"(sibrar or multibranch); got a {model.name!r} model")
    return tuple(tower.names)


@torch.no_grad()
def modality_embeddings(model: Model, inputs: ModelInputs,
                        modalities: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, Tensor]]:
    """modality -> (item indices having it (n_m,), their single-modality embeddings (n_m, d))."""
    names = branch_modalities(model)
    chosen = tuple(modalities) if modalities is not None else names
    unknown = [m for m in chosen if m not in names]
    if unknown:
        raise ConfigError(f"modality {unknown[0]!r} is not in the {model.name!r} item tower; it has {', '.join(names)}")
    out = {}
    for m in chosen:  # one pass per modality, vectorised over items
        items = np.flatnonzero(inputs.item[m].available.cpu().numpy())
        if len(items) == 0:
            continue
        emb = model.all_item_embeddings(View(item=SideView(modalities=(m,)), name=f"item:{m}"))  # (n_items, d)
        out[m] = (items, emb[torch.from_numpy(items).to(emb.device)].float().cpu())
    return out


def random_partners(n: int, *, rng: np.random.Generator, draws: int = 1) -> np.ndarray:
    """(n, draws) indices j != i, uniform over the other n - 1 rows."""
    if n < 2:
        raise ConfigError(f"random pairs need at least 2 items, got {n}")
    return (np.arange(n)[:, None] + rng.integers(1, n, size=(n, draws))) % n


def pair_distances(za: Tensor, zb: Tensor, partners: np.ndarray) -> dict[str, float]:
    """Distance statistics for aligned rows za (n, d), zb (n, d) of the same items.

    own: row i of za vs row i of zb; random: row i of za vs rows `partners[i]` of zb (n, draws).
    Cosine distance = 1 − cos (a zero vector counts as cos 0); L2 on the raw embeddings, whose
    scale the dot-product score uses.
    """
    na, nb = F.normalize(za, dim=1), F.normalize(zb, dim=1)  # (n, d)
    idx = torch.from_numpy(partners)  # (n, draws)
    cos_own = 1.0 - (na * nb).sum(dim=1)  # (n,)
    cos_random = 1.0 - (na[:, None, :] * nb[idx]).sum(dim=2)  # (n, draws)
    l2_own = (za - zb).norm(dim=1)
    l2_random = (za[:, None, :] - zb[idx]).norm(dim=2)
    stats = {
        "n_items": float(len(za)),
        "cos_own": float(cos_own.mean()), "cos_random": float(cos_random.mean()),
        "l2_own": float(l2_own.mean()), "l2_random": float(l2_random.mean()),
        "centroid_gap": float((na.mean(dim=0) - nb.mean(dim=0)).norm()),
    }
    stats["cos_ratio"] = stats["cos_own"] / stats["cos_random"] if stats["cos_random"] > 0 else float("nan")
    stats["l2_ratio"] = stats["l2_own"] / stats["l2_random"] if stats["l2_random"] > 0 else float("nan")
    return stats


def modality_gap(embeddings: dict[str, tuple[np.ndarray, Tensor]], *, seed: int = 0, draws: int = 5) -> list[dict[str, object]]:
    """One row per modality pair (a, b): `pair_distances` over the items having both."""
    rows: list[dict[str, object]] = []
    for a, b in itertools.combinations(embeddings, 2):
        items_a, za = embeddings[a]
        items_b, zb = embeddings[b]
        common, ia, ib = np.intersect1d(items_a, items_b, assume_unique=True, return_indices=True)
        if len(common) < 2:
            continue
        rng = np.random.default_rng([seed, len(rows)])
        stats = pair_distances(za[torch.from_numpy(ia)], zb[torch.from_numpy(ib)], random_partners(len(common), rng=rng, draws=draws))
        rows.append({"pair": f"{a}–{b}", "a": a, "b": b, **stats})
    return rows


def pca_2d(x: np.ndarray) -> np.ndarray:
    """(n, d) -> (n, 2) projection on the two leading principal axes (numpy SVD, sign-fixed)."""
    centred = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    axes = vt[:2] * np.sign(vt[:2, :1] + (vt[:2, :1] == 0))  # deterministic orientation
    out = centred @ axes.T
    return out if out.shape[1] == 2 else np.pad(out, ((0, 0), (0, 2 - out.shape[1])))


def projection_sample(embeddings: dict[str, tuple[np.ndarray, Tensor]], n_items: int, *, points: int,
                      rng: np.random.Generator, links: int = 25) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """PCA of the modality embeddings of a random sample of `points` items, fitted on all of them.

    Returns modality -> (n_m, 2) points, and (L, M, 2) points of up to `links` sampled items that
    have every modality (to draw one item's modalities joined by a line).
    """
    sample = np.zeros(n_items, dtype=bool)
    sample[rng.choice(n_items, size=min(points, n_items), replace=False)] = True
    position = np.full((n_items, len(embeddings)), -1, dtype=np.int64)  # row of (item, modality) in `flat`
    stacked, start = [], 0
    for j, (items, emb) in enumerate(embeddings.values()):
        keep = sample[items]
        stacked.append(emb[torch.from_numpy(keep)].numpy())
        position[items[keep], j] = start + np.arange(int(keep.sum()))
        start += int(keep.sum())
    flat = pca_2d(np.concatenate(stacked)) if start else np.zeros((0, 2))
    by_modality = {m: flat[position[position[:, j] >= 0, j]] for j, m in enumerate(embeddings)}
    complete = np.flatnonzero((position >= 0).all(axis=1))
    chosen = complete[np.linspace(0, len(complete) - 1, min(links, len(complete))).astype(np.int64)] if len(complete) else complete
    return by_modality, flat[position[chosen]]  # (L, M, 2)


def gap_markdown(rows_by_model: dict[str, list[dict[str, object]]], *, title: str) -> str:
    """A table per metric family: own vs random distances, ratio and centroid gap, per model and pair."""
    lines = [f"# {title}", "",
             ("Per item, each modality embedded on its own (single-modality view). *own*: mean distance between "
             "one item's two modality embeddings; *random*: between modality a of an item and modality b of a "
             "random other item (seeded, 5 draws per item); *ratio* = own / random (< 1: an item's modalities "
             "are closer to each other than to other items'); *centroid gap*: distance between the modality "
             "means of the L2-normalised embeddings."), "",
             "| model | pair | items | cos own | cos random | cos ratio | L2 own | L2 random | L2 ratio | centroid gap |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for model, rows in rows_by_model.items():
        for r in rows:
            lines.append(f"| {model} | {r['pair']} | {int(r['n_items'])} | {r['cos_own']:.3f} | {r['cos_random']:.3f} | "  # type: ignore[call-overload]
                         f"{r['cos_ratio']:.2f} | {r['l2_own']:.3f} | {r['l2_random']:.3f} | {r['l2_ratio']:.2f} | "
                         f"{r['centroid_gap']:.3f} |")
    means = [(model, np.mean([float(r["cos_ratio"]) for r in rows]), np.mean([float(r["l2_ratio"]) for r in rows]),  # type: ignore[arg-type]
              np.mean([float(r["centroid_gap"]) for r in rows])) for model, rows in rows_by_model.items() if rows]  # type: ignore[arg-type]
    if means:
        lines += ["", "Mean over modality pairs:", "", "| model | cos ratio | L2 ratio | centroid gap |", "|---|---:|---:|---:|"]
        lines += [f"| {m} | {c:.2f} | {l2:.2f} | {g:.3f} |" for m, c, l2, g in means]
    return "\n".join(lines) + "\n"
