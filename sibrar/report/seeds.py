"""Repeated runs of one experiment (e.g. `--set base.train.seed=N`) summarised as mean ± standard deviation.

One seed's table says which model won on that draw; the spread over seeds says whether the gap between
two models is larger than what retraining alone moves. Input: `sibrar run` results folders of the same
experiment, dataset and split protocol with the same models; output: seeds.{md,csv,json}.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
from sibrar.errors import ConfigError
from sibrar.results import lower_is_better
from sibrar.report.grid import ResultsFolder, check_folders


@dataclass(frozen=True)
class SeedSummary:
    folders: tuple[ResultsFolder, ...]
    models: tuple[str, ...]  # the first folder's order
    metrics: tuple[str, ...]
    values: dict[tuple[str, str], np.ndarray]  # (model, metric) -> one value per folder

    def mean(self, model: str, metric: str) -> float:
        return float(np.mean(self.values[(model, metric)]))

    def std(self, model: str, metric: str) -> float:
        """Sample standard deviation (ddof 1) over the folders."""
        return float(np.std(self.values[(model, metric)], ddof=1))

    def wins(self, model: str, metric: str) -> int:
        """In how many folders `model` had the best value of `metric` (ties count for every tied model)."""
        table = np.stack([self.values[(m, metric)] for m in self.models])  # (models, folders)
        best = np.nanmin(table, axis=0) if lower_is_better(metric) else np.nanmax(table, axis=0)
        return int(np.sum(table[self.models.index(model)] == best))

    def best_mean(self, metric: str) -> str:
        means = np.array([self.mean(m, metric) for m in self.models])
        return self.models[int(np.nanargmin(means) if lower_is_better(metric) else np.nanargmax(means))]


def summarise_seeds(folders: Sequence[ResultsFolder], metrics: Sequence[str]) -> SeedSummary:
    """Check that `folders` repeat one experiment (same name, dataset, protocol, models) and collect `metrics`."""
    if len(folders) < 2:
        raise ConfigError(f"{len(folders)} results folder(s) given; a spread over seeds needs at least 2")
    check_folders(folders, metrics)
    first = folders[0]
    for f in folders[1:]:
        for field in ("experiment", "dataset", "protocol"):
            if getattr(f, field) != getattr(first, field):
                raise ConfigError(f"{f.path}: {field} is {getattr(f, field)!r} but {first.path} has "
                                  f"{getattr(first, field)!r}; expected repeats of one experiment")
        if set(f.models) != set(first.models):
            odd = sorted(set(f.models) ^ set(first.models))
            raise ConfigError(f"{f.path}: models differ from {first.path} ({', '.join(odd)}); "
                              "expected the same models in every repeat")
    values = {(m, k): np.array([f.test[m].get(k, math.nan) for f in folders]) for m in first.models for k in metrics}
    return SeedSummary(tuple(folders), first.models, tuple(metrics), values)


def seeds_markdown(summary: SeedSummary, title: str) -> str:
    """Rows models, columns metrics: mean ± std (best mean bold) and, per metric, wins out of n folders."""
    n = len(summary.folders)
    split_hashes = {f.split_hash for f in summary.folders}
    same_split = "the same split" if len(split_hashes) == 1 else f"{len(split_hashes)} different splits"
    lines = [f"# {title}", "",
             f"{summary.folders[0].experiment}: {summary.folders[0].dataset} {summary.folders[0].protocol}, "
             f"{n} runs on {same_split}. Test set: mean ± sample standard deviation over the runs "
             f"(best mean in **bold**); wins = runs in which the model had the best value.", "",
             "| model | " + " | ".join(f"{k} | wins" for k in summary.metrics) + " |",
             "|---|" + "---:|---:|" * len(summary.metrics)]
    best = {metric: summary.best_mean(metric) for metric in summary.metrics}
    for model in summary.models:
        cells = []
        for metric in summary.metrics:
            text = f"{summary.mean(model, metric):.4f} ± {summary.std(model, metric):.4f}"
            cells += [f"**{text}**" if best[metric] == model else text, f"{summary.wins(model, metric)}/{n}"]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "## Runs", "", "| results folder | split hash |", "|---|---|"]
    lines += [f"| `{f.path}` | `{f.split_hash[:12]}` |" for f in summary.folders]
    return "\n".join(lines) + "\n"


def write_seeds(out: str | Path, summary: SeedSummary, title: str = "Spread over seeds") -> str:
    """seeds.md, seeds.csv (one row per model, metric and run) and seeds.json, atomically; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": m, "metric": k, "results_dir": str(f.path), "value": float(summary.values[(m, k)][j])}
            for m in summary.models for k in summary.metrics for j, f in enumerate(summary.folders)]
    with atomic_write(out / "seeds.csv") as tmp:
        pl.DataFrame(rows, schema={"model": pl.Utf8, "metric": pl.Utf8, "results_dir": pl.Utf8, "value": pl.Float64}).write_csv(tmp)
    markdown = seeds_markdown(summary, title)
    write_text_atomic(out / "seeds.md", markdown)
    write_json_atomic(out / "seeds.json", {
        "title": title, "experiment": summary.folders[0].experiment, "dataset": summary.folders[0].dataset,
        "protocol": summary.folders[0].protocol, "results_dirs": [str(f.path) for f in summary.folders],
        "split_hashes": [f.split_hash for f in summary.folders],
        "models": {m: {k: {"mean": summary.mean(m, k), "std": summary.std(m, k), "wins": summary.wins(m, k),
                           "values": summary.values[(m, k)].tolist()} for k in summary.metrics} for m in summary.models},
    })
    return markdown
