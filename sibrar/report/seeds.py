"""Repeated runs of one experiment (e.g. `--set base.train.seed=N`) summarised as mean ± standard deviation.

One seed's table says which model won on that draw; the spread over seeds says whether the gap between
two models is larger than what retraining alone moves. Input: `sibrar run` results folders of the same
experiment, dataset and split protocol with the same models; output: seeds.{md,csv,json}.

When the runs' per-user test values are still on disk (`runs/<model>/per_user.parquet`), each user's
value is averaged over the runs and the best model is tested against every other one on those
averages (paired t-test, Bonferroni), so † here means "ahead of every other model across retraining",
not on one draw. `pairs` add head-to-head tests (e.g. SiBraR against the multi-branch ablation) on
every metric and on the per-user loss under each missing-modality view.
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
from sibrar.paths import slug
from sibrar.eval.stats import PairedTest, SignificanceResult, best_model_significance, paired_t_test
from sibrar.results import lower_is_better
from sibrar.report.grid import ResultsFolder, check_folders
from sibrar.train.folder import VIEWS_PER_USER


ROBUSTNESS_METRIC = "ndcg@10"  # the metric whose change under each view is reported (the first one when absent)


@dataclass(frozen=True)
class PairResult:
    """Model a against model b on per-user values averaged over the runs (t > 0: a ahead)."""

    a: str
    b: str
    metrics: dict[str, PairedTest]  # metric -> a vs b
    views: dict[str, PairedTest]  # view -> a's per-user change (view minus complete) vs b's


@dataclass(frozen=True)
class SeedSummary:
    folders: tuple[ResultsFolder, ...]
    models: tuple[str, ...]  # the first folder's order
    metrics: tuple[str, ...]
    values: dict[tuple[str, str], np.ndarray]  # (model, metric) -> one value per folder
    view_changes: dict[tuple[str, str], np.ndarray]  # (model, view) -> relative change of robustness_metric per folder
    robustness_metric: str
    significance: dict[str, SignificanceResult]  # per-user metric -> best vs every other on run-averaged values
    pairs: tuple[PairResult, ...]
    no_paired_tests: str = ""  # why there are no paired tests ("" when there are)

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

    @property
    def views(self) -> list[str]:
        return list(dict.fromkeys(view for _, view in self.view_changes))


def summarise_seeds(folders: Sequence[ResultsFolder], metrics: Sequence[str],
                    pairs: Sequence[tuple[str, str]] = ()) -> SeedSummary:
    """Check that `folders` repeat one experiment (same name, dataset, protocol, models) and collect `metrics`.

    `pairs` (model a, model b) get head-to-head paired tests; they, like the best-vs-all tests, need
    every run's per-user files and one split for all runs (otherwise `no_paired_tests` says why).
    """
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
    for a, b in pairs:
        for name in (a, b):
            if name not in first.models:
                raise ConfigError(f"--pair {a},{b}: no model {name!r} in {first.path}; models: {', '.join(first.models)}")
        if a == b:
            raise ConfigError(f"--pair {a},{b}: a model against itself; expected two different models")
    values = {(m, k): np.array([f.test[m].get(k, math.nan) for f in folders]) for m in first.models for k in metrics}
    robustness = ROBUSTNESS_METRIC if ROBUSTNESS_METRIC in metrics else metrics[0]
    shared_views = set.intersection(*({v for m in f.models for v in f.views.get(m, {})} for f in folders))
    views = list(dict.fromkeys(v for m in first.models for v in first.views.get(m, {}) if v in shared_views))
    view_changes = {(m, v): np.array([_relative_change(f, m, v, robustness) for f in folders])
                    for m in first.models for v in views}
    significance: dict[str, SignificanceResult] = {}
    pair_results: list[PairResult] = []
    why = _paired_tests_impossible(folders)
    if not why:
        per_user = {m: _run_averaged(folders, m, "per_user.parquet") for m in first.models}
        for metric in metrics:
            if all(metric in frame.columns for frame in per_user.values()):
                significance[metric] = best_model_significance(
                    {m: frame[metric].to_numpy() for m, frame in per_user.items()}, higher_is_better=not lower_is_better(metric))
        paired_models = list(dict.fromkeys(m for pair in pairs for m in pair))
        changes = _per_user_view_changes(folders, paired_models, per_user, views, robustness)
        pair_results = [_pair(a, b, per_user, changes, metrics) for a, b in pairs]
    return SeedSummary(tuple(folders), first.models, tuple(metrics), values, view_changes, robustness, significance,
                       tuple(pair_results), why)


def _relative_change(folder: ResultsFolder, model: str, view: str, metric: str) -> float:
    complete = folder.test[model].get(metric, math.nan)
    under = folder.views.get(model, {}).get(view, {}).get(metric, math.nan)
    return (under - complete) / complete if complete else math.nan


def _paired_tests_impossible(folders: Sequence[ResultsFolder]) -> str:
    if len({f.split_hash for f in folders}) > 1:
        return "the runs use different splits, so their users cannot be paired"
    for f in folders:
        for model in f.models:
            path = _run_dir(f, model) / "per_user.parquet"
            if not path.is_file():
                return (f"{path} is missing (run folders are not committed; rerun the experiment with --resume "
                        "to restore them)")
    return ""


def _run_dir(folder: ResultsFolder, model: str) -> Path:
    return folder.run_dirs.get(model, folder.path / "runs" / slug(model))


def _run_averaged(folders: Sequence[ResultsFolder], model: str, name: str) -> pl.DataFrame:
    """The model's per-user values (per view for the views file) averaged over the runs, sorted by user."""
    frames = [pl.read_parquet(_run_dir(f, model) / name) for f in folders]
    keys = ["view", "user_idx"] if "view" in frames[0].columns else ["user_idx"]
    merged = pl.concat(frames, how="diagonal_relaxed")
    counts = merged.group_by(keys).len()
    if counts["len"].min() != len(folders) or counts["len"].max() != len(folders):
        raise ConfigError(f"{model}: the runs' {name} files hold different users; expected one split for all runs")
    return merged.group_by(keys).mean().sort(keys)


def _per_user_view_changes(folders: Sequence[ResultsFolder], models: Sequence[str], per_user: dict[str, pl.DataFrame],
                           views: list[str], robustness: str) -> dict[tuple[str, str], np.ndarray]:
    """(model, view) -> each user's run-averaged change of `robustness` under the view; each views file read once."""
    if not views or not all((_run_dir(f, m) / VIEWS_PER_USER).is_file() for f in folders for m in models):
        return {}
    change = {}
    for m in models:
        under = _run_averaged(folders, m, VIEWS_PER_USER)
        for view in views:
            rows = under.filter(pl.col("view") == view)
            if rows.height == per_user[m].height:
                change[(m, view)] = rows[robustness].to_numpy() - per_user[m][robustness].to_numpy()
    return change


def _pair(a: str, b: str, per_user: dict[str, pl.DataFrame], change: dict[tuple[str, str], np.ndarray],
          metrics: Sequence[str]) -> PairResult:
    tests = {k: paired_t_test(per_user[a][k].to_numpy(), per_user[b][k].to_numpy())
             for k in metrics if k in per_user[a].columns}
    views = dict.fromkeys(v for _, v in change)
    view_tests = {v: paired_t_test(change[(a, v)], change[(b, v)]) for v in views
                  if (a, v) in change and (b, v) in change}
    return PairResult(a, b, tests, view_tests)


def _p(test: PairedTest) -> str:
    p = test.p_value
    if math.isnan(p):
        return "–"
    if p == 0.0:  # below the smallest double: scipy returns 0
        return "< 1e-300"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


def _pct(values: np.ndarray) -> str:
    return f"{100 * np.mean(values):+.1f}% ± {100 * np.std(values, ddof=1):.1f}%"


def seeds_markdown(summary: SeedSummary, title: str) -> str:
    """Rows models, columns metrics: mean ± std (best mean bold, † when significant over the runs) and wins."""
    n = len(summary.folders)
    split_hashes = {f.split_hash for f in summary.folders}
    same_split = "the same split" if len(split_hashes) == 1 else f"{len(split_hashes)} different splits"
    dagger = (" † = significantly better than every other model on per-user values averaged over the runs "
              "(paired two-sided t-test, Bonferroni-corrected, α = 0.05)." if summary.significance else "")
    lines = [f"# {title}", "",
             f"{summary.folders[0].experiment}: {summary.folders[0].dataset} {summary.folders[0].protocol}, "
             f"{n} runs on {same_split}. Test set: mean ± sample standard deviation over the runs "
             f"(best mean in **bold**); wins = runs in which the model had the best value.{dagger}", "",
             "| model | " + " | ".join(f"{k} | wins" for k in summary.metrics) + " |",
             "|---|" + "---:|---:|" * len(summary.metrics)]
    best = {metric: summary.best_mean(metric) for metric in summary.metrics}
    for model in summary.models:
        cells = []
        for metric in summary.metrics:
            text = f"{summary.mean(model, metric):.4f} ± {summary.std(model, metric):.4f}"
            sig = summary.significance.get(metric)
            text += "†" if sig is not None and sig.winner == model else ""
            cells += [f"**{text}**" if best[metric] == model else text, f"{summary.wins(model, metric)}/{n}"]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += _paired_section(summary) + _views_section(summary) + _pairs_section(summary)
    lines += ["", "## Runs", "", "| results folder | split hash |", "|---|---|"]
    lines += [f"| `{f.path}` | `{f.split_hash[:12]}` |" for f in summary.folders]
    return "\n".join(lines) + "\n"


def _paired_section(summary: SeedSummary) -> list[str]:
    lines = ["", "## Paired tests over the runs", ""]
    if not summary.significance:
        return lines + [f"Not computed: {summary.no_paired_tests or 'no per-user metric among the columns'}."]
    metrics = list(summary.significance)
    lines += ["Each user's value is averaged over the runs; the best mean is tested against every other model "
              "(two-sided paired t-test). Cell: model minus best (p-value); the per-test level is "
              f"{next(iter(summary.significance.values())).corrected_alpha:.4f} (α = 0.05, Bonferroni). The test's "
              "unit is the user: it says whether a gap holds across users; the ± and wins above say how much "
              "retraining moves it.", "",
              "| model | " + " | ".join(metrics) + " |", "|---|" + "---:|" * len(metrics)]
    for model in summary.models:
        cells = []
        for metric in metrics:
            sig = summary.significance[metric]
            test = sig.tests.get(model)
            cells.append("best" + ("†" if sig.winner == model else "") if test is None
                         else f"{-test.mean_diff:+.4f} ({_p(test)})")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _views_section(summary: SeedSummary) -> list[str]:
    if not summary.views:
        return []
    lines = ["", "## Missing modalities over the runs", "",
             f"Relative change of test {summary.robustness_metric} under each view against complete modalities "
             "(no retraining): mean ± sample standard deviation over the runs.", "",
             "| model | " + " | ".join(summary.views) + " |", "|---|" + "---:|" * len(summary.views)]
    for model in summary.models:
        lines.append(f"| {model} | " + " | ".join(_pct(summary.view_changes[(model, v)]) for v in summary.views) + " |")
    return lines


def _pairs_section(summary: SeedSummary) -> list[str]:
    lines: list[str] = []
    for pair in summary.pairs:
        a, b = pair.a, pair.b
        lines += ["", f"## {a} against {b}", "",
                  "Two-sided paired t-test on per-user values averaged over the runs (not corrected for the other "
                  "rows). Under a view the paired values are each user's change against complete modalities, "
                  f"so a positive difference means {a} loses less.", "",
                  f"| measure | {a} | {b} | {a} − {b} | p |", "|---|---:|---:|---:|---:|"]
        for metric, test in pair.metrics.items():
            lines.append(f"| {metric} | {summary.mean(a, metric):.4f} ± {summary.std(a, metric):.4f} | "
                         f"{summary.mean(b, metric):.4f} ± {summary.std(b, metric):.4f} | {test.mean_diff:+.4f} | {_p(test)} |")
        for view, test in pair.views.items():
            lines.append(f"| {summary.robustness_metric} change under {view} | {_pct(summary.view_changes[(a, view)])} | "
                         f"{_pct(summary.view_changes[(b, view)])} | {test.mean_diff:+.4f} | {_p(test)} |")
        if summary.views and not pair.views:
            lines += ["", f"No per-user values under the views ({VIEWS_PER_USER}); rerun the experiments with --resume "
                          "to write them."]
    return lines


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

    def test_json(test: PairedTest) -> dict[str, float]:
        return {"mean_diff": test.mean_diff, "p_value": test.p_value, "n_users": test.n_pairs}

    write_json_atomic(out / "seeds.json", {
        "title": title, "experiment": summary.folders[0].experiment, "dataset": summary.folders[0].dataset,
        "protocol": summary.folders[0].protocol, "results_dirs": [str(f.path) for f in summary.folders],
        "split_hashes": [f.split_hash for f in summary.folders],
        "models": {m: {k: {"mean": summary.mean(m, k), "std": summary.std(m, k), "wins": summary.wins(m, k),
                           "values": summary.values[(m, k)].tolist()} for k in summary.metrics} for m in summary.models},
        "paired": {k: {"best": sig.best, "winner": sig.winner, "tests": {m: test_json(t) for m, t in sig.tests.items()}}
                   for k, sig in summary.significance.items()},
        "no_paired_tests": summary.no_paired_tests,
        "views": {"metric": summary.robustness_metric,
                  "relative_change": {m: {v: summary.view_changes[(m, v)].tolist() for v in summary.views}
                                      for m in summary.models}},
        "pairs": [{"a": p.a, "b": p.b, "metrics": {k: test_json(t) for k, t in p.metrics.items()},
                   "views": {v: test_json(t) for v, t in p.views.items()}} for p in summary.pairs],
    })
    return markdown
