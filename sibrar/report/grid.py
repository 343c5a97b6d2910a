"""The paper's results grid: several `sibrar run` results folders merged into models × (dataset, scenario, metric)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
from sibrar.errors import ConfigError
from sibrar.results import DEFAULT_TABLE, lower_is_better
from sibrar.registry import unknown_name_message

SCENARIOS = {"random": "Warm", "temporal": "Temporal", "cold_item": "Cold item", "cold_user": "Cold user",
             "cold_both": "Cold both"}  # split protocol -> the paper's scenario name
ABSENT = "–"  # a model that the folder did not train


@dataclass(frozen=True)
class ResultsFolder:
    """What the grid needs from one `sibrar run` folder (its results.json and the row order of results.csv)."""

    path: Path
    experiment: str
    dataset: str
    protocol: str
    synthetic: bool
    split_hash: str
    candidates: str
    models: tuple[str, ...]  # in the experiment's order
    test: dict[str, dict[str, float]]  # label -> metric -> test value
    winners: dict[str, str | None]  # metric -> label significantly better than all others, or None
    views: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)  # label -> view -> metric -> test value
    run_dirs: dict[str, Path] = field(default_factory=dict)  # label -> its run folder under path/runs


    @property
    def metrics(self) -> list[str]:
        return list(next(iter(self.test.values()), {}))


@dataclass(frozen=True)
class GridColumn:
    header: str  # e.g. "Cold item ml-100k"; "[SYNTHETIC]" for synthetic data
    folder: ResultsFolder


@dataclass(frozen=True)
class Cell:
    value: float
    significant: bool  # † in the folder's table: better than every other model there (paired t-test, Bonferroni)
    best: bool  # the best value of its column and metric (ties: all of them)


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]  # union over folders, first-seen order
    columns: tuple[GridColumn, ...]
    metrics: tuple[str, ...]
    cells: dict[tuple[str, int, str], Cell]  # (model, column index, metric); absent model -> no key

    def rows(self) -> list[dict[str, Any]]:
        """Long format: one row per (model, column, metric) that has a value."""
        out = []
        for metric in self.metrics:
            for j, column in enumerate(self.columns):
                f = column.folder
                for model in self.models:
                    cell = self.cells.get((model, j, metric))
                    if cell is not None:
                        out.append({"model": model, "dataset": f.dataset, "protocol": f.protocol, "metric": metric,
                                    "value": cell.value, "significant": cell.significant, "best": cell.best,
                                    "synthetic": f.synthetic, "experiment": f.experiment, "column": column.header})
        return out


def load_results_folder(path: str | Path) -> ResultsFolder:
    """Read a `sibrar run` results folder; a missing or foreign results.json is a ConfigError naming it."""
    path = Path(path)
    payload_path = path / "results.json"
    if not payload_path.is_file():
        hint = f"; {path} does not exist" if not path.exists() else ""
        if (path / "config.yaml").is_file() and (path / "metrics.json").is_file():
            hint = f"; {path} is one run folder, pass the results folder two levels up"
        raise ConfigError(f"{path}: not a results folder of `sibrar run` (no results.json){hint}")
    try:
        payload = json.loads(payload_path.read_text(encoding="utf-8"))
        models = payload["models"]
        test = {str(label): {str(k): float(v) for k, v in info["test"].items()} for label, info in models.items()}
        views = {str(label): {str(view): {str(k): float(v) for k, v in values.items()}
                              for view, values in (info.get("views") or {}).items()} for label, info in models.items()}
        run_dirs = {str(label): path / "runs" / Path(str(info["run_dir"])).name
                    for label, info in models.items() if info.get("run_dir")}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ConfigError(f"{payload_path}: not a `sibrar run` results.json (expected 'models' with each model's "
                          f"'test' metrics): {exc!r}") from exc
    missing = [k for k in ("dataset", "protocol") if not payload.get(k)]
    if missing or not test:
        what = f"no {missing[0]!r}" if missing else "no models"
        raise ConfigError(f"{payload_path}: {what}; expected the meta and models that `sibrar run` writes")
    order = _csv_order(path / "results.csv")  # results.json has sorted keys; results.csv keeps the experiment's order
    labels = sorted(test, key=lambda m: order.index(m) if m in order else len(order))
    winners = payload.get("significant_winner") or {}
    return ResultsFolder(path=path, experiment=str(payload.get("experiment") or path.name), dataset=str(payload["dataset"]),
                         protocol=str(payload["protocol"]), synthetic=bool(payload.get("synthetic")),
                         split_hash=str(payload.get("split_hash") or ""), candidates=str(payload.get("candidates") or ""),
                         models=tuple(labels), test=test,
                         winners={str(k): (str(v) if v is not None else None) for k, v in winners.items()},
                         views=views, run_dirs=run_dirs)


def _csv_order(path: Path) -> list[str]:
    if not path.is_file():
        return []
    try:
        return pl.read_csv(path, columns=["model"], schema_overrides={"model": pl.Utf8})["model"].to_list()
    except (pl.exceptions.PolarsError, OSError):
        return []


def parse_metrics(text: str | None) -> tuple[str, ...]:
    """'precision@10,ndcg@10' -> names (default: the paper's five @10 metrics)."""
    if text is None:
        return DEFAULT_TABLE
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ConfigError(f"--metrics {text!r} is empty; expected e.g. {','.join(DEFAULT_TABLE)}")
    return names


def build_grid(folders: Sequence[ResultsFolder], metrics: Sequence[str]) -> Grid:
    """Merge folders (one column group each, in the given order); every metric must be in every folder."""
    if not folders:
        raise ConfigError("no results folders given")
    check_folders(folders, metrics)
    columns = _columns(folders)
    models = tuple(dict.fromkeys(m for f in folders for m in f.models))
    cells: dict[tuple[str, int, str], Cell] = {}
    for j, column in enumerate(columns):
        f = column.folder
        for metric in metrics:
            values = {m: f.test[m].get(metric, math.nan) for m in f.models}
            finite = [v for v in values.values() if not math.isnan(v)]
            best = (min(finite) if lower_is_better(metric) else max(finite)) if finite else math.nan
            for m, v in values.items():
                cells[(m, j, metric)] = Cell(v, f.winners.get(metric) == m, v == best)
    return Grid(models, columns, tuple(metrics), cells)


def check_folders(folders: Sequence[ResultsFolder], metrics: Sequence[str]) -> None:
    """No folder given twice, and every metric a test metric of every folder; errors name the folder."""
    seen_paths = [f.path.resolve() for f in folders]
    for i, p in enumerate(seen_paths):
        if p in seen_paths[:i]:
            raise ConfigError(f"{folders[i].path}: results folder given twice")
    for metric in metrics:
        lacking = [f for f in folders if metric not in f.metrics]
        if len(lacking) == len(folders):
            known = dict.fromkeys(m for f in folders for m in f.metrics)
            raise ConfigError(f"--metrics: {unknown_name_message('metric', metric, known)} (the folders' test metrics)")
        if lacking:
            raise ConfigError(f"--metrics: {metric!r} is not in {lacking[0].path}/results.json; "
                              f"that folder has: {', '.join(lacking[0].metrics)}")


def _columns(folders: Sequence[ResultsFolder]) -> tuple[GridColumn, ...]:
    headers = [f"{SCENARIOS.get(f.protocol, f.protocol)} {f.dataset}{' [SYNTHETIC]' if f.synthetic else ''}" for f in folders]
    if len(set(headers)) < len(headers):  # e.g. two cold-item runs on one dataset: tell them apart
        headers = [f"{h} ({f.experiment})" if headers.count(h) > 1 else h for h, f in zip(headers, folders)]
    if len(set(headers)) < len(headers):
        headers = [f"{h} ({f.path.name})" if headers.count(h) > 1 else h for h, f in zip(headers, folders)]
    return tuple(GridColumn(h, f) for h, f in zip(headers, folders))


def grid_markdown(grid: Grid, title: str = "Results grid") -> str:
    """One table per metric (rows: models; columns: scenario × dataset), as the paper's tables."""
    lines = [f"# {title}", "",
             "Test set, @k as named. Best per column in **bold**; † = significantly better than every other model "
             "of that column (paired two-sided t-test on per-user values, Bonferroni-corrected, α = 0.05; "
             f"none for distribution metrics such as coverage); {ABSENT} = model not run in that column.", ""]
    for metric in grid.metrics:
        lines += [f"## {metric}", "", "| model | " + " | ".join(c.header for c in grid.columns) + " |",
                  "|---|" + "---:|" * len(grid.columns)]
        for model in grid.models:
            cells = []
            for j in range(len(grid.columns)):
                cell = grid.cells.get((model, j, metric))
                if cell is None:
                    cells.append(ABSENT)
                    continue
                text = f"{cell.value:.4f}" + ("†" if cell.significant else "")
                cells.append(f"**{text}**" if cell.best else text)
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Columns", "", "| column | experiment | results folder | candidates | split hash |", "|---|---|---|---|---|"]
    for c in grid.columns:
        f = c.folder
        lines.append(f"| {c.header} | {f.experiment} | `{f.path}` | {f.candidates} | `{f.split_hash[:12]}` |")
    return "\n".join(lines) + "\n"


def write_grid(out: str | Path, grid: Grid, title: str = "Results grid") -> str:
    """grid.md, grid.csv (long format) and grid.json in `out`, each written atomically; returns the markdown."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = grid.rows()
    schema = {"model": pl.Utf8, "dataset": pl.Utf8, "protocol": pl.Utf8, "metric": pl.Utf8, "value": pl.Float64,
              "significant": pl.Boolean, "best": pl.Boolean, "synthetic": pl.Boolean, "experiment": pl.Utf8,
              "column": pl.Utf8}
    with atomic_write(out / "grid.csv") as tmp:
        pl.DataFrame(rows, schema=schema).write_csv(tmp)
    markdown = grid_markdown(grid, title)
    write_text_atomic(out / "grid.md", markdown)
    write_json_atomic(out / "grid.json", {
        "title": title, "metrics": list(grid.metrics), "models": list(grid.models),
        "columns": [{"header": c.header, "dataset": c.folder.dataset, "protocol": c.folder.protocol,
                     "synthetic": c.folder.synthetic, "experiment": c.folder.experiment, "results_dir": str(c.folder.path),
                     "candidates": c.folder.candidates, "split_hash": c.folder.split_hash,
                     "models": list(c.folder.models)} for c in grid.columns],
        "cells": rows,
    })
    return markdown
