"""Experiments: several models on one split, compared with paired significance tests.

An experiment YAML holds a shared `base` run config (data, split, train, eval), a list of `models`
(each a label, a `model:` section and optional `train:`/`eval:` overrides), and optional missing-
modality `views` evaluated on test without retraining. `run_experiment` trains every model into
`<out>/runs/<label>` and writes results.{md,csv,json} plus PNG plots through `sibrar.report`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sibrar.config import RunConfig, apply_overrides, deep_merge, load_preset, load_yaml, parse_run_config
from sibrar.errors import ConfigError
from sibrar.eval.metrics import METRICS
from sibrar.eval.stats import best_model_significance

if TYPE_CHECKING:
    from sibrar.train.run import RunResult
    from sibrar.train.trainer import Callback

LOWER_IS_BETTER = ("arp", "gini")  # popularity-bias metrics: smaller is better
DEFAULT_TABLE = ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")


def lower_is_better(metric: str) -> bool:
    """True for metrics such as 'arp@10' where a smaller value is the better one."""
    return metric.partition("@")[0] in LOWER_IS_BETTER


@dataclass(frozen=True)
class ModelSpec:
    label: str
    config: RunConfig


@dataclass(frozen=True)
class Experiment:
    name: str
    models: tuple[ModelSpec, ...]
    views: tuple[str, ...] = ()
    table_metrics: tuple[str, ...] = DEFAULT_TABLE
    source: str = ""


@dataclass
class ModelOutcome:
    label: str
    model_name: str
    run_dir: Path
    test: dict[str, float]
    valid: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    history: list[dict[str, float]]
    views: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    best_epoch: int = -1


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Parse and validate an experiment file before anything is trained."""
    path = Path(path)
    raw = apply_overrides(load_yaml(path), overrides)
    return parse_experiment(raw, str(path), default_name=path.stem)


def parse_experiment(raw: Mapping[str, Any], where: str = "experiment", default_name: str = "experiment") -> Experiment:
    unknown = set(raw) - {"name", "base", "models", "views", "table_metrics"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {min(unknown)!r}; valid keys: name, base, models, views, table_metrics")
    base = raw.get("base") or {}
    models = raw.get("models")
    if not models or not isinstance(models, list):
        raise ConfigError(f"{where}: field 'models' must be a non-empty list of {{label, model, train?, eval?}}")
    specs = []
    for i, entry in enumerate(models):
        at = f"{where}: models[{i}]"
        if not isinstance(entry, Mapping) or not ("model" in entry or "preset" in entry):
            raise ConfigError(f"{at}: expected a mapping with a 'model' section (or a 'preset')")
        extra = set(entry) - {"label", "preset", "model", "train", "eval"}
        if extra:
            raise ConfigError(f"{at}: unknown key {min(extra)!r}; valid keys: label, preset, model, train, eval")
        # base, then the entry's preset (sibrar/configs/presets), then the entry's own sections
        preset = load_preset(entry["preset"], f"{at}.preset") if "preset" in entry else {}
        merged = deep_merge(deep_merge(base, preset), {k: entry[k] for k in ("model", "train", "eval") if k in entry})
        config = parse_run_config(merged, f"{at}")
        label = str(entry.get("label") or config.model.name)
        specs.append(ModelSpec(label, config))
    labels = [s.label for s in specs]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}: duplicate model labels {labels}; give each a distinct 'label'")
    first = specs[0].config
    for spec in specs[1:]:
        if spec.config.data != first.data or spec.config.split != first.split:
            raise ConfigError(f"{where}: model {spec.label!r} uses other data or split settings; put data/split in 'base'")
    table = tuple(raw.get("table_metrics") or DEFAULT_TABLE)
    for key in table:
        metric, _, k = str(key).partition("@")
        METRICS.get(metric)
        if not k.isdigit() or int(k) not in first.eval.ks:
            raise ConfigError(f"{where}: table_metrics entry {key!r}: expected METRIC@K with K in eval.ks {list(first.eval.ks)}")
    views = tuple(str(v) for v in raw.get("views") or ())
    from sibrar.eval.evaluator import parse_view

    for view in views:  # syntax only here; modality names are checked against each trained model
        parse_view(view, 1, 1)
    return Experiment(str(raw.get("name") or default_name), tuple(specs), views, table, where)


def run_experiment(experiment: Experiment, out: str | Path, *, progress: bool = True,
                   log: Callable[[str], None] = print,
                   callbacks_for: Callable[[ModelSpec], Sequence[Callback]] | None = None,
                   on_model_end: Callable[[ModelSpec, RunResult, ModelOutcome], None] | None = None,
                   resume: bool = False) -> dict[str, Any]:
    """Train and evaluate every model on the shared split; write the report folder.

    With `resume`, a model whose run folder under `out/runs` finished with the same config and split
    is read back instead of retrained, one interrupted (or given more epochs) continues from its last
    checkpoint, and one whose config changed otherwise is trained afresh.

    `callbacks_for(spec)` gives each model's Trainer callbacks (e.g. MLflow tracking); `on_model_end` sees
    each model's result and outcome (views included) once it is evaluated, before the next one trains.
    """
    from sibrar.eval.evaluator import evaluate, parse_view
    from sibrar.train.run import can_continue, load_finished_run, prepare, train_run

    out = Path(out)
    cache: dict[Any, Any] = {}
    outcomes: list[ModelOutcome] = []
    for i, spec in enumerate(experiment.models, start=1):
        prep = prepare(spec.config, cache)
        if i == 1:
            stats = prep.dataset.stats()
            log(f"{experiment.name}: {stats['name']}{' (SYNTHETIC)' if stats['synthetic'] else ''} "
                f"{stats['users']:,} users / {stats['items']:,} items / {stats['interactions']:,} interactions; "
                f"split {prep.split.protocol} train {prep.split.train.height:,} valid {prep.split.valid.height:,} test {prep.split.test.height:,}")
        log(f"[{i}/{len(experiment.models)}] {spec.label} ({spec.config.model.name})")
        t0 = time.perf_counter()
        callbacks = callbacks_for(spec) if callbacks_for is not None else ()
        run_dir = out / "runs" / _slug(spec.label)
        result = load_finished_run(spec.config, run_dir, prep) if resume else None
        if result is None:
            result = train_run(spec.config, run_dir, callbacks=callbacks, progress=progress, prepared=prep,
                               resume=resume and can_continue(spec.config, run_dir))
            seconds = time.perf_counter() - t0
        else:  # the table keeps the original training time (sum of its epochs), not the reading time
            seconds = float(sum(h.get("seconds") or 0.0 for h in result.train.history))
            log(f"    reused the finished run {run_dir}")
        outcome = ModelOutcome(spec.label, spec.config.model.name, result.run_dir or out, result.test.summary,
                               result.valid.summary, result.test.per_user, result.test.users, result.train.history,
                               seconds=seconds, best_epoch=result.train.best_epoch)
        for view_spec in experiment.views:
            view = parse_view(view_spec, prep.inputs.n_users, prep.inputs.n_items, seed=spec.config.eval.seed)
            outcome.views[view_spec] = evaluate(result.model, prep.inputs, prep.split, "test", spec.config.eval, view=view).summary
        log(f"    test ndcg@10 {outcome.test.get('ndcg@10', float('nan')):.4f}  recall@10 {outcome.test.get('recall@10', float('nan')):.4f}"
            f"  ({seconds:.0f} s, best epoch {outcome.best_epoch})")
        outcomes.append(outcome)
        if on_model_end is not None:
            on_model_end(spec, result, outcome)
    from sibrar.report.tables import write_results

    meta = {"experiment": experiment.name, "source": experiment.source, "dataset": prep.dataset.name,
            "synthetic": prep.dataset.synthetic, "protocol": prep.split.protocol, "split_hash": prep.split.hash,
            "candidates": experiment.models[0].config.eval.candidates}
    return write_results(out, outcomes, experiment.table_metrics, meta)


def significance(outcomes: Sequence[ModelOutcome], metric: str) -> str | None:
    """The label of the model significantly better than all others on `metric` (paired t-test, Bonferroni)."""
    if len(outcomes) < 2 or metric not in outcomes[0].per_user:
        return None
    users = outcomes[0].users
    if any(not np.array_equal(o.users, users) for o in outcomes):
        raise ConfigError("models were evaluated on different users; significance needs the same test users")
    return best_model_significance({o.label: o.per_user[metric] for o in outcomes},
                                   higher_is_better=not lower_is_better(metric)).winner


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)
