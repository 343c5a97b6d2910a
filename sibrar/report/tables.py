"""Comparison tables (markdown, CSV, JSON) and plots for an experiment's report folder."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
from sibrar.report.figures import pyplot, save_figure
from sibrar.results import ModelOutcome, significance


def write_results(out: Path, outcomes: Sequence[ModelOutcome], table_metrics: Sequence[str],
                  meta: Mapping[str, Any]) -> dict[str, Any]:
    """results.csv (one row per model, a `model` column, metric columns like `ndcg@10`),
    results.json, results.md (with † for significance over all others) and PNG plots."""
    out.mkdir(parents=True, exist_ok=True)
    metric_keys = list(outcomes[0].test)
    winners = {m: significance(outcomes, m) for m in metric_keys if m in outcomes[0].per_user}
    rows = [{"model": o.label, "model_name": o.model_name, **o.test, "best_epoch": o.best_epoch, "seconds": round(o.seconds, 1)}
            for o in outcomes]
    frame = pl.DataFrame(rows)
    with atomic_write(out / "results.csv") as tmp:
        frame.write_csv(tmp)
    payload = {
        **meta,
        "models": {o.label: {"model": o.model_name, "test": o.test, "valid": o.valid, "best_epoch": o.best_epoch,
                             "seconds": o.seconds, "views": o.views, "run_dir": str(o.run_dir),
                             **({"tuning": o.tuning} if o.tuning is not None else {})} for o in outcomes},
        "significant_winner": winners,
    }
    write_json_atomic(out / "results.json", payload)
    markdown = render_markdown(outcomes, table_metrics, winners, meta)
    write_text_atomic(out / "results.md", markdown)
    plot_curves(outcomes, out / "training_curves.png", meta)
    plot_bars(outcomes, table_metrics, out / "metrics.png", meta)
    return payload


def render_markdown(outcomes: Sequence[ModelOutcome], table_metrics: Sequence[str], winners: Mapping[str, str | None],
                    meta: Mapping[str, Any]) -> str:
    synthetic = " — SYNTHETIC data" if meta.get("synthetic") else ""
    lines = [f"# {meta.get('experiment', 'experiment')}: {meta.get('dataset')} {meta.get('protocol')}{synthetic}", "",
             f"Test set, candidates: {meta.get('candidates')}; split hash `{str(meta.get('split_hash'))[:12]}`. "
             "Best per column in **bold**; † = significantly better than every other model "
             "(paired two-sided t-test on per-user values, Bonferroni-corrected, α = 0.05).", ""]
    lines += comparison_table(outcomes, table_metrics, winners)
    if meta.get("tuning"):
        lines += ["", *tuning_section([(o.label, o.tuning, o.valid, o.test) for o in outcomes], meta["tuning"])]
    views = [v for v in outcomes[0].views]
    if views:
        lines += ["", "## Missing modalities (test, no retraining)", "",
                  "nDCG@10 under each view and its relative change against complete modalities.", ""]
        lines += ["| model | all | " + " | ".join(views) + " |", "|---|---:|" + "---:|" * len(views)]
        for o in outcomes:
            base = o.test.get("ndcg@10", math.nan)
            cells = [f"{o.views[v].get('ndcg@10', math.nan):.4f} ({_rel(o.views[v].get('ndcg@10', math.nan), base)})" for v in views]
            lines.append(f"| {o.label} | {base:.4f} | " + " | ".join(cells) + " |")
    lines += ["", "| model | best epoch | seconds |", "|---|---:|---:|"]
    lines += [f"| {o.label} | {o.best_epoch} | {o.seconds:.0f} |" for o in outcomes]
    return "\n".join(lines) + "\n"


def comparison_table(outcomes: Sequence[ModelOutcome], metrics: Sequence[str], winners: Mapping[str, str | None]) -> list[str]:
    lines = ["| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    best = {m: max((o.test.get(m, -math.inf) for o in outcomes), default=math.nan) for m in metrics}
    for o in outcomes:
        cells = []
        for m in metrics:
            v = o.test.get(m, math.nan)
            text = f"{v:.4f}" + ("†" if winners.get(m) == o.label else "")
            cells.append(f"**{text}**" if v == best[m] else text)
        untuned = " (untuned)" if o.tuning is not None and not o.tuning.get("tuned") else ""
        lines.append(f"| {o.label}{untuned} | " + " | ".join(cells) + " |")
    return lines


def tuning_section(rows: Sequence[tuple[str, Mapping[str, Any] | None, Mapping[str, float], Mapping[str, float]]],
                   budget: Mapping[str, Any]) -> list[str]:
    """The budget, and per model (label, tuning, valid, test) its study's best validation value, the final
    run's validation and test values and the tuned settings (or why it was not tuned)."""
    metric = str(budget["metric"])
    lines = ["## Tuning (equal budget, validation only)", "",
             f"Every tuned model had its own Optuna study of **{budget['trials']} trials** on validation {metric} "
             f"(sampler {_spec(budget['sampler'])}, pruner {_spec(budget['pruner'])}, {budget.get('workers', 1)} "
             "worker(s)); trial 0 is the file's config when it lies inside the space. The best trial's config was "
             "then trained once more and tested once; no test value was read during tuning."
             + (f" Here the tuned settings were taken from `{budget['from']}` (its studies, not rerun) and "
                "trained again with this run's config (e.g. another seed)." if budget.get("from") else ""), "",
             f"| model | trials (complete / pruned / failed) | valid {metric}, file's config | valid, best trial "
             f"| valid, final run | test {metric} | tuned settings |", "|---|---|---:|---:|---:|---:|---|"]
    for label, tuning, valid, tested in rows:
        t = tuning or {}
        final_valid, test = valid.get(metric, math.nan), tested.get(metric, math.nan)
        if not t.get("tuned"):
            lines.append(f"| {label} | untuned ({t.get('reason', 'not in the study plan')}) | – | – | {final_valid:.4f} "
                         f"| {test:.4f} | – |")
            continue
        counts = t.get("counts", {})
        settings = ", ".join(f"`{k}`={_value(v)}" for k, v in t.get("params", {}).items()) or "(the file's config won)"
        default = "outside the space" if t.get("default_valid") is None else f"{t['default_valid']:.4f}"
        interrupted = f" (+{counts['interrupted']} interrupted, run again)" if counts.get("interrupted") else ""
        lines.append(f"| {label} | {counts.get('complete', 0)} / {counts.get('pruned', 0)} / {counts.get('fail', 0)}{interrupted} "
                     f"| {default} | {t.get('valid', math.nan):.4f} (trial {t.get('best_trial')}) | {final_valid:.4f} "
                     f"| {test:.4f} | {settings} |")
    return lines


def _spec(spec: Mapping[str, Any]) -> str:
    options = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name")
    return f"{spec.get('name')}" + (f" ({options})" if options else "")


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _rel(value: float, base: float) -> str:
    return f"{(value - base) / base:+.1%}" if base and not math.isnan(base) else "n/a"


def plot_curves(outcomes: Sequence[ModelOutcome], path: Path, meta: Mapping[str, Any], key: str = "valid/ndcg@10") -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for o in outcomes:
        points = [(h["epoch"], h[key]) for h in o.history if key in h and h[key] is not None]
        if len(points) > 1:
            ax.plot(*zip(*points), marker="o", ms=3, label=o.label)
        elif points:
            ax.axhline(points[0][1], ls="--", lw=1, label=f"{o.label} (not trained)")
    ax.set_xlabel("epoch (-1 = untrained)")
    ax.set_ylabel(key)
    ax.set_title(_title(meta, "validation curve"))
    ax.legend(fontsize=7)
    save_figure(fig, path)


def plot_bars(outcomes: Sequence[ModelOutcome], metrics: Sequence[str], path: Path, meta: Mapping[str, Any]) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(metrics) * max(1, len(outcomes)) / 3), 4))
    width = 0.8 / max(1, len(outcomes))
    for i, o in enumerate(outcomes):
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(xs, [o.test.get(m, 0.0) for m in metrics], width=width, label=o.label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(metrics))], list(metrics))
    ax.set_title(_title(meta, "test metrics"))
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _title(meta: Mapping[str, Any], what: str) -> str:
    synthetic = " [SYNTHETIC]" if meta.get("synthetic") else ""
    return f"{meta.get('dataset')} {meta.get('protocol')}{synthetic}: {what}"
