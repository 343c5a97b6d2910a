"""Full-ranking evaluation of any Model on a split part, under any view (missing-modality scenario)."""

from __future__ import annotations

import difflib
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
import torch

from sibrar.config import EvalConfig
from sibrar.data.inputs import ModelInputs
from sibrar.data.splits import Part, Split
from sibrar.errors import ConfigError, SplitError
from sibrar.eval.metrics import compute_metrics
from sibrar.eval.ranking import topk_items
from sibrar.models.base import FULL_VIEW, Model, SideView, View


@dataclass(frozen=True)
class EvalResult:
    """Mean metrics, per-user values (aligned with `users`), and group breakdowns."""

    part: str
    view: str
    summary: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray  # (U,) user indices evaluated
    groups: dict[str, dict[str, float]] = field(default_factory=dict)  # e.g. cold_items -> metrics
    topk: np.ndarray | None = None  # (U, K) item indices


def part_matrix(split: Split, part: Part) -> sp.csr_array:
    frame = split.part(part)
    rows, cols = frame["user_idx"].to_numpy(), frame["item_idx"].to_numpy()
    return sp.csr_array((np.ones(len(rows)), (rows, cols)), shape=(split.n_users, split.n_items))


@torch.no_grad()
def evaluate(
    model: Model, inputs: ModelInputs, split: Split, part: Literal["valid", "test"], config: EvalConfig = EvalConfig(),
    *, view: View = FULL_VIEW, keep_topk: bool = False,
) -> EvalResult:
    """Rank the candidate items for every user with >= 1 interaction in `part`.

    Training items are masked, and validation items too when evaluating `test`.
    Interaction modalities always come from the training part only.
    """
    truth, users, exclude, candidates = _targets(split, part, config.candidates)
    was_training = model.training
    model.eval()
    device = model.device
    item_emb = model.all_item_embeddings(view)
    user_idx = torch.from_numpy(users).to(device)
    user_emb = torch.cat([model.user_embeddings(user_idx[s : s + config.batch_users], view)
                          for s in range(0, len(users), config.batch_users)])
    model.train(was_training)
    k = max(config.ks)
    gen = torch.Generator().manual_seed(config.seed)
    topk, _ = topk_items(user_emb.float().cpu(), item_emb.float().cpu(), k, candidates=torch.from_numpy(candidates),
                         exclude=exclude, generator=gen, user_chunk=config.batch_users)
    topk_np = topk.numpy()
    pop = inputs.item_popularity.cpu().numpy()
    report = compute_metrics(topk_np, truth, config.ks, metrics=config.metrics, item_popularity=pop, candidates=candidates)
    groups = _groups(split, part, users, truth, topk_np, config, pop, candidates)
    return EvalResult(part, view.name, report.summary, report.per_user, users, groups, topk_np if keep_topk else None)


_TARGETS: weakref.WeakKeyDictionary[Split, dict[tuple[str, str], Any]] = weakref.WeakKeyDictionary()


def _targets(split: Split, part: Part, protocol: Literal["split", "all"]) -> tuple[sp.csr_array, np.ndarray, sp.csr_array, np.ndarray]:
    """(truth rows (U, I), evaluated users (U,), masked items (U, I), candidates) of a split part.

    Built once per split object and reused: validation runs every epoch on the same split, and
    these polars -> scipy conversions cost as much as the ranking itself on ML-1M.
    """
    cache = _TARGETS.setdefault(split, {})
    key = (part, protocol)
    if key not in cache:
        truth = part_matrix(split, part)
        users = np.flatnonzero(np.diff(truth.indptr) > 0)
        if len(users) == 0:
            raise SplitError(f"split part {part!r} has no interactions to evaluate")
        exclude = part_matrix(split, "train")
        if part == "test":
            exclude = exclude + part_matrix(split, "valid")
        truth_rows = truth[users]
        truth_rows.sort_indices()
        cache[key] = (truth_rows, users, exclude[users].tocsr(), split.candidates(part, protocol))
    return cache[key]


def _groups(split: Split, part: Part, users: np.ndarray, truth: sp.csr_array, topk: np.ndarray, config: EvalConfig,
            pop: np.ndarray, candidates: np.ndarray) -> dict[str, dict[str, float]]:
    """Cold/warm breakdown where the part mixes both (items: truth restricted; users: rows)."""
    groups: dict[str, dict[str, float]] = {}
    cache = _TARGETS.setdefault(split, {})
    if ("groups", part) not in cache:
        cache["groups", part] = (split.cold_items(part), split.part(part)["item_idx"].unique().to_numpy(),
                                 split.cold_users(part))
    cold_items, part_items, cold_users = cache["groups", part]
    if 0 < len(cold_items) < len(part_items):
        is_cold = np.zeros(split.n_items, dtype=bool)
        is_cold[cold_items] = True
        for name, keep in (("cold_items", is_cold), ("warm_items", ~is_cold)):
            restricted = truth.multiply(keep[None, :]).tocsr()
            groups[name] = compute_metrics(topk, restricted, config.ks, metrics=config.metrics, item_popularity=pop,
                                           candidates=candidates).summary
    if 0 < len(cold_users) < len(users):
        mask = np.isin(users, cold_users)
        for name, rows in (("cold_users", mask), ("warm_users", ~mask)):
            groups[name] = compute_metrics(topk[rows], truth[rows], config.ks, metrics=config.metrics,
                                           item_popularity=pop, candidates=candidates).summary
    return groups


def missing_view(n: int, modality: str, fraction: float, *, side: Literal["user", "item"] = "item",
                 entities: np.ndarray | None = None, seed: int = 0) -> View:
    """A view where a random `fraction` of `entities` (default all) lack `modality` (no retraining)."""
    if not 0.0 <= fraction <= 1.0:
        raise SplitError(f"missing fraction {fraction}; expected a number in [0, 1]")
    pool = np.arange(n) if entities is None else np.asarray(entities)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=int(round(fraction * len(pool))), replace=False)
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.from_numpy(chosen)] = True
    side_view = SideView(missing={modality: mask})
    name = f"{side}:-{modality}@{fraction:g}"
    return View(item=side_view, name=name) if side == "item" else View(user=side_view, name=name)


def subset_view(modalities: tuple[str, ...], side: Literal["user", "item"] = "item") -> View:
    """A view where one side uses only `modalities`."""
    name = f"{side}:{'+'.join(modalities)}"
    return View(item=SideView(modalities=modalities), name=name) if side == "item" else View(user=SideView(modalities=modalities), name=name)


def parse_view(spec: str, n_users: int, n_items: int, seed: int = 0,
               modalities: Mapping[str, Sequence[str]] | None = None) -> View:
    """'item:genres+text' -> only those item modalities; 'item:-text@0.7' -> 70 % of items lack text.

    With `modalities` ({"user": names, "item": names}) every named modality must exist on its side;
    a typo gets the closest name.
    """
    side, sep, rest = spec.partition(":")
    if not sep or side not in ("user", "item") or not rest:
        close = difflib.get_close_matches(side, ["user", "item"], n=1) if sep else []
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"view {spec!r} (--view, or an experiment's views){hint} expected 'item:MOD+MOD' or "
                          "'item:-MOD@FRACTION' (or user:…)")
    if rest.startswith("-"):
        modality, _, frac = rest[1:].partition("@")
        try:
            fraction = float(frac) if frac else 1.0
        except ValueError:
            raise ConfigError(f"view {spec!r}: fraction {frac!r} is not a number in [0, 1]") from None
        if not 0.0 <= fraction <= 1.0:  # NaN included
            raise ConfigError(f"view {spec!r}: fraction {frac!r}; expected a number in [0, 1]")
        _check_view_modalities(spec, side, (modality,), modalities)
        return missing_view(n_items if side == "item" else n_users, modality, fraction, side=side, seed=seed)  # type: ignore[arg-type]
    names = tuple(rest.split("+"))
    _check_view_modalities(spec, side, names, modalities)
    return subset_view(names, side)  # type: ignore[arg-type]


def _check_view_modalities(spec: str, side: str, names: Sequence[str], known: Mapping[str, Sequence[str]] | None) -> None:
    if known is None:
        return
    valid = list(known.get(side, ()))
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"view {spec!r}: {side} modality {name!r} is not in the data{hint} "
                              f"{side} modalities: {', '.join(valid) or 'none'}")
