"""Plots of the analysis commands: robustness curves per modality and 2-D projections of modality embeddings."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from sibrar.report.figures import pyplot, save_figure

MODALITY_COLOURS = {"interactions": "tab:blue", "id": "tab:cyan", "genres": "tab:orange", "year": "tab:green",
                    "text": "tab:red", "image": "tab:purple", "audio": "tab:brown", "demographics": "tab:pink"}


def plot_robustness(rows: Sequence[Mapping[str, object]], modality: str, metric: str, path: Path, *, title: str,
                    reference: float | None = 0.7) -> None:
    """Two panels for one modality: `metric` vs fraction of test items missing it, and its relative change."""
    plt = pyplot()
    fig, (ax, rel_ax) = plt.subplots(1, 2, figsize=(9.5, 3.8))
    models = list(dict.fromkeys(str(r["model"]) for r in rows if r["modality"] == modality))
    for model in models:
        mine = sorted((r for r in rows if r["modality"] == modality and r["model"] == model),
                      key=lambda r: float(r["fraction_missing"]))  # type: ignore[arg-type]
        xs = [100 * float(r["fraction_missing"]) for r in mine]  # type: ignore[arg-type]
        flat = not mine[0]["uses_modality"]
        style = {"ls": "--", "lw": 1, "marker": None} if flat else {"ls": "-", "lw": 1.6, "marker": "o", "ms": 3.5}
        name = f"{model} (does not use {modality})" if flat else model
        ys = np.array([float(r[metric]) for r in mine])  # type: ignore[arg-type]
        line, = ax.plot(xs, ys, label=name, **style)  # type: ignore[arg-type]
        sd = np.array([float(r.get(f"sd_{metric}", 0.0)) for r in mine])  # type: ignore[arg-type]
        if (sd > 0).any():
            ax.fill_between(xs, ys - sd, ys + sd, color=line.get_color(), alpha=0.15, lw=0)
        rel = [100 * float(r[f"rel_{metric}"]) for r in mine]  # type: ignore[arg-type]
        if not flat and not all(math.isnan(v) for v in rel):
            rel_ax.plot(xs, rel, color=line.get_color(), label=name, **style)  # type: ignore[arg-type]
    for a in (ax, rel_ax):
        a.set_xlabel(f"test items without {modality} (%)")
        a.set_xlim(-3, 103)
        a.grid(alpha=0.3)
        if reference is not None:
            a.axvline(100 * reference, color="grey", lw=0.8, ls=":")
    ax.set_ylabel(f"test {metric}")
    rel_ax.set_ylabel(f"change of {metric} vs complete (%)")
    rel_ax.axhline(0, color="black", lw=0.6)
    repeats = max(int(r.get("repeats", 1)) for r in rows if r["modality"] == modality)  # type: ignore[call-overload]
    ax.set_title(title + (f" (band: ± sd over {repeats} mask sets)" if repeats > 1 else ""), fontsize=9)
    rel_ax.set_title("relative change" + (f" (dotted: {modality} present for {1 - reference:.0%})" if reference is not None else ""),
                     fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_projection(projected: Mapping[str, Mapping[str, np.ndarray]], path: Path, *, title: str,
                    links: Mapping[str, np.ndarray] | None = None) -> None:
    """One panel per model: 2-D points per modality (model -> modality -> (n, 2)), coloured by modality.

    `links` (model -> (L, M, 2)): a few items whose modality points are joined by a thin grey line.
    """
    plt = pyplot()
    n = max(1, len(projected))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), squeeze=False)
    for ax, (model, by_modality) in zip(axes[0], projected.items()):
        if links is not None and model in links:
            for item in links[model]:  # (M, 2): one item's modality points
                ax.plot(item[:, 0], item[:, 1], color="grey", lw=0.5, alpha=0.6, zorder=1)
        for modality, points in by_modality.items():
            ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.45, lw=0, label=f"{modality} ({len(points)})",
                       color=MODALITY_COLOURS.get(modality), zorder=2, rasterized=True)
        ax.set_title(model, fontsize=10)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        ax.legend(fontsize=7, markerscale=3)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
