"""Missing-modality robustness: a trained model's test metrics as a growing share of items lose a modality.

For one modality m and fractions f_1 < f_2 < ..., the items that lose m at f_1 also lose it at f_2:
one seeded permutation of the test items that have m, and fraction f removes its first
round(f · n) items. The curve therefore only ever removes more, and every model sees the same items
removed. (`evaluator.missing_view` draws each fraction independently, so its sets do not nest.)
No retraining: each point is one `evaluate` under a view ("missing modality").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from sibrar.config import EvalConfig
from sibrar.data.inputs import ModelInputs
from sibrar.data.splits import Split
from sibrar.errors import ConfigError
from sibrar.eval.evaluator import evaluate
from sibrar.models.base import FULL_VIEW, Model, SideView, View

DEFAULT_FRACTIONS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
# SRMM (arXiv 2408.07445, Table I), UPMC Food-101 accuracy %: complete modalities vs text present for
# 30 % of test samples. Another task and metric: context for the relative drop only.
FOOD101_REFERENCE = (("ViLT", 91.9, 65.9), ("SRMM (single-branch)", 94.6, 84.8))
REFERENCE_FRACTION = 0.7  # "text present for 30 % of test samples"


@dataclass(frozen=True)
class RobustnessPoint:
    """One model's test metrics with `modality` removed from `n_missing` of `n_pool` test items."""

    model: str
    modality: str
    fraction: float
    n_missing: int
    n_pool: int  # test items that have the modality at all
    uses_modality: bool  # False: the model never reads it, so the curve is flat by construction
    summary: dict[str, float]  # mean over the mask repeats
    spread: dict[str, float] = field(default_factory=dict)  # standard deviation over the mask repeats (0 for one)
    repeats: int = 1


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Sorted distinct fractions in [0, 1], always including 0 (the reference of every relative change)."""
    out = set()
    for f in fractions:
        value = float(f)
        if math.isnan(value) or not 0.0 <= value <= 1.0:
            raise ConfigError(f"missing fraction {f!r}; expected numbers in [0, 1] (e.g. --fractions 0,0.3,0.7,1)")
        out.add(value)
    return tuple(sorted(out | {0.0}))


def nested_missing_masks(n: int, pool: np.ndarray, fractions: Sequence[float], *, seed: int) -> torch.Tensor:
    """(F, n) bool: row f marks the first round(fractions[f] · len(pool)) entities of one seeded
    permutation of `pool` as missing. Rows are nested: a larger fraction is a superset."""
    pool = np.asarray(pool, dtype=np.int64)
    order = np.random.default_rng(seed).permutation(pool)  # (P,)
    rank = np.full(n, len(pool), dtype=np.int64)  # entities outside the pool are never removed
    rank[order] = np.arange(len(pool))
    counts = np.rint(np.asarray(fractions, dtype=np.float64) * len(pool)).astype(np.int64)  # (F,)
    return torch.from_numpy(rank[None, :] < counts[:, None])  # (F, n)


def nested_missing_views(n: int, modality: str, fractions: Sequence[float], *, pool: np.ndarray, seed: int,
                         side: Literal["user", "item"] = "item") -> list[View]:
    """One view per fraction, named like `missing_view`'s ('item:-text@0.7'), with nested masks."""
    masks = nested_missing_masks(n, pool, fractions, seed=seed)
    views = []
    for fraction, mask in zip(fractions, masks):
        side_view = SideView(missing={modality: mask})
        name = f"{side}:-{modality}@{fraction:g}"
        views.append(View(item=side_view, name=name) if side == "item" else View(user=side_view, name=name))
    return views


def view_modalities(model: Model, side: Literal["user", "item"] = "item") -> tuple[str, ...] | None:
    """The inputs a view can remove from `model`'s `side` at inference, or None when the model
    ignores views (Pop, Rand, MF, DeepMF: their curves are flat)."""
    tower = getattr(model, f"{side}_tower", None)
    names = getattr(tower, "eval_names", None) or getattr(tower, "names", None)
    return tuple(names) if names is not None else None


def modality_pool(inputs: ModelInputs, split: Split, modality: str, config: EvalConfig,
                  part: Literal["valid", "test"] = "test") -> np.ndarray:
    """Candidate items of `part` that have `modality` (the items a missing fraction is taken of)."""
    if modality not in inputs.item:
        raise ConfigError(f"robustness modality {modality!r} is not an item modality of this dataset; "
                          f"available: {', '.join(inputs.item.names)}")
    candidates = split.candidates(part, config.candidates)
    has = inputs.item[modality].available.cpu().numpy()
    return candidates[has[candidates]]


def robustness_curve(model: Model, inputs: ModelInputs, split: Split, config: EvalConfig, modality: str,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS, *, label: str | None = None, seed: int = 0,
                     repeats: int = 1, part: Literal["valid", "test"] = "test") -> list[RobustnessPoint]:
    """`model`'s metrics on `part` with `modality` removed from nested growing shares of its items.

    `repeats` > 1 draws that many independent nested mask sets (seeds seed, seed+1, ...) and reports
    the mean and standard deviation of every metric: which items lose the modality matters on a
    test set of ~100 items.
    """
    fractions = check_fractions(fractions)
    if repeats < 1:
        raise ConfigError(f"mask repeats {repeats}; expected an integer >= 1")
    pool = modality_pool(inputs, split, modality, config, part)
    if len(pool) == 0:
        raise ConfigError(f"no {part} item has modality {modality!r} (in item cold start, cold items have no "
                          f"'interactions' or 'id'); choose a content modality")
    label = label or model.name
    names = view_modalities(model)
    uses = names is not None and modality in names
    counts = np.rint(np.asarray(fractions) * len(pool)).astype(int)
    if not uses:  # the view cannot change anything: evaluate once
        summary = evaluate(model, inputs, split, part, config, view=FULL_VIEW).summary
        return [RobustnessPoint(label, modality, f, int(c), len(pool), False, summary) for f, c in zip(fractions, counts)]
    varies = (counts > 0) & (counts < len(pool))  # removing none or all items does not depend on the mask
    summaries: list[list[dict[str, float]]] = [[] for _ in fractions]  # per fraction, one summary per mask set
    for r in range(repeats):
        views = nested_missing_views(inputs.n_items, modality, fractions, pool=pool, seed=seed + r)
        for j, view in enumerate(views):
            if r == 0 or varies[j]:
                summaries[j].append(evaluate(model, inputs, split, part, config, view=view).summary)
    points = []
    for f, c, runs in zip(fractions, counts, summaries):
        values = {k: np.array([run[k] for run in runs], dtype=np.float64) for k in runs[0]}
        points.append(RobustnessPoint(label, modality, f, int(c), len(pool), True,
                                      {k: float(v.mean()) for k, v in values.items()},
                                      {k: float(v.std()) for k, v in values.items()}, len(runs)))
    return points


def relative_change(value: float, base: float) -> float:
    """(value - base) / base; NaN when the base is 0 or NaN."""
    return (value - base) / base if base and not math.isnan(base) else math.nan


def points_to_rows(points: Sequence[RobustnessPoint], metrics: Sequence[str]) -> list[dict[str, object]]:
    """Long table rows: model, modality, fraction, counts, each metric and its change against fraction 0."""
    base = {(p.model, p.modality): p.summary for p in points if p.fraction == 0.0}
    rows = []
    for p in points:
        row: dict[str, object] = {"model": p.model, "modality": p.modality, "fraction_missing": p.fraction,
                                  "n_missing": p.n_missing, "n_items": p.n_pool, "uses_modality": p.uses_modality}
        for m in metrics:
            value = p.summary.get(m, math.nan)
            row[m] = value
            row[f"sd_{m}"] = p.spread.get(m, 0.0)
            row[f"rel_{m}"] = relative_change(value, base.get((p.model, p.modality), {}).get(m, math.nan))
        row["repeats"] = p.repeats
        rows.append(row)
    return rows


def robustness_markdown(rows: Sequence[dict[str, object]], metric: str, *, title: str,
                        reference: float = REFERENCE_FRACTION) -> str:
    """Per modality: `metric` at each fraction; then the relative change at `reference` next to the
    Food-101 numbers."""
    modalities = list(dict.fromkeys(str(r["modality"]) for r in rows))
    models = list(dict.fromkeys(str(r["model"]) for r in rows))
    fractions = sorted({float(r["fraction_missing"]) for r in rows})  # type: ignore[arg-type]
    cell = {(r["model"], r["modality"], r["fraction_missing"]): r for r in rows}
    repeats = max(int(r.get("repeats", 1)) for r in rows)  # type: ignore[call-overload]
    lines = [f"# {title}", "",
             (f"Test {metric} with a modality removed from a growing share of the test items (nested seeded "
             "masks: the items removed at 30 % are also removed at 50 %); same trained models, no retraining. "
             "In brackets: change against complete modalities. *flat*: the model does not read this modality."
             + (f" Mean ± standard deviation over {repeats} independent mask sets." if repeats > 1 else "")), ""]
    for modality in modalities:
        lines += [f"## −{modality}", "", "| model | " + " | ".join(f"{f:.0%} missing" for f in fractions) + " |",
                  "|---|" + "---:|" * len(fractions)]
        for model in models:
            cells = []
            for f in fractions:
                r = cell.get((model, modality, f))
                if r is None:
                    cells.append("")
                    continue
                value, rel, sd = float(r[metric]), float(r[f"rel_{metric}"]), float(r[f"sd_{metric}"])  # type: ignore[arg-type]
                spread = f" ± {sd:.4f}" if sd > 0 else ""
                cells.append(f"{value:.4f}" if f == 0.0 else f"{value:.4f}{spread} ({rel:+.1%})")
            flat = "" if cell[(model, modality, 0.0)]["uses_modality"] else " *flat*"
            lines.append(f"| {model}{flat} | " + " | ".join(cells) + " |")
        lines.append("")
    if reference in fractions:
        present = f"{1 - reference:.0%}"
        lines += [f"## Relative drop with each modality present for only {present} of the test items", "",
                  f"| model | modality | complete | present for {present} | relative change |", "|---|---|---:|---:|---:|"]
        for modality in modalities:
            for model in models:
                full, part = cell.get((model, modality, 0.0)), cell.get((model, modality, reference))
                if full is None or part is None or not full["uses_modality"]:
                    continue
                sd = float(part[f"sd_{metric}"])  # type: ignore[arg-type]
                lines.append(f"| {model} | {modality} | {float(full[metric]):.4f} | {float(part[metric]):.4f}"  # type: ignore[arg-type]
                             + (f" ± {sd:.4f}" if sd > 0 else "") + f" | {float(part[f'rel_{metric}']):+.1%} |")  # type: ignore[arg-type]
        for name, full_acc, part_acc in FOOD101_REFERENCE:
            lines.append(f"| {name}, UPMC Food-101 accuracy % | text | {full_acc:.1f} | {part_acc:.1f} | "
                         f"{relative_change(part_acc, full_acc):+.1%} |")
        lines += ["", ("Food-101 rows: image classification accuracy, another task and metric, for the size of the effect "
                  "only. Their relative changes are computed from the two accuracies; the spec quotes 28.3 % and 12.3 % "
                  "(94.6 → 84.8 is −10.4 % relative, −9.8 points)."), ""]
    return "\n".join(lines)
