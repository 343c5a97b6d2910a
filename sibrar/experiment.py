"""Experiments: several models on one split, compared with paired significance tests.

An experiment YAML holds a shared `base` run config (data, split, train, eval), a list of `models`
(each a label, a `model:` section and optional `train:`/`eval:` overrides), and optional missing-
modality `views` evaluated on test without retraining. `run_experiment` trains every model into
`<out>/runs/<label>` and writes results.{md,csv,json} plus PNG plots through `sibrar.report`.

An optional `tune:` section (and per-model `space:` / `tune: false`) asks for one equal-budget
Optuna study per model on validation first; it is kept here as written and carried out by
`sibrar.tune.compare`, which hands the tuned configs back to `run_experiment`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sibrar.config import RunConfig, apply_overrides, deep_merge, load_preset, load_yaml, parse_run_config
from sibrar.errors import ConfigError
from sibrar.paths import slug
from sibrar.registry import MODELS
from sibrar.eval.evaluator import evaluate, parse_view
from sibrar.eval.metrics import METRICS
from sibrar.report.tables import write_results
from sibrar.results import DEFAULT_TABLE, LOWER_IS_BETTER, ModelOutcome, lower_is_better, significance
from sibrar.train.run import (RunResult, can_continue, load_finished_run, prepare, torch_threads, train_run,
                              write_views_per_user)
from sibrar.train.trainer import Callback

__all__ = ["DEFAULT_TABLE", "LOWER_IS_BETTER", "Experiment", "ModelOutcome", "ModelSpec", "load_experiment",
           "lower_is_better", "parse_experiment", "run_experiment", "significance", "slug"]


@dataclass(frozen=True)
class ModelSpec:
    label: str
    config: RunConfig
    space: Mapping[str, Any] | None = None  # search-space overrides for this model (`space:`), as written
    tune: bool = True  # False: never tuned (`tune: false`), reported as untuned


@dataclass(frozen=True)
class Experiment:
    name: str
    models: tuple[ModelSpec, ...]
    views: tuple[str, ...] = ()
    table_metrics: tuple[str, ...] = DEFAULT_TABLE
    source: str = ""
    tune: Mapping[str, Any] | None = None  # the `tune:` section as written (checked by sibrar.tune.compare)


def load_experiment(path: str | Path, overrides: Sequence[str] = ()) -> Experiment:
    """Parse and validate an experiment file before anything is trained."""
    path = Path(path)
    raw = apply_overrides(load_yaml(path), overrides)
    return parse_experiment(raw, str(path), default_name=path.stem)


def parse_experiment(raw: Mapping[str, Any], where: str = "experiment", default_name: str = "experiment") -> Experiment:
    unknown = set(raw) - {"name", "base", "models", "views", "table_metrics", "tune"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {min(unknown)!r}; valid keys: name, base, models, views, table_metrics, tune")
    tune = raw.get("tune")
    if tune is not None and not isinstance(tune, Mapping):
        raise ConfigError(f"{where}: field 'tune' must be a mapping such as {{trials: 20, metric: ndcg@10}}, got {tune!r}")
    base = raw.get("base") or {}
    models = raw.get("models")
    if not models or not isinstance(models, list):
        raise ConfigError(f"{where}: field 'models' must be a non-empty list of {{label, model, train?, eval?}}")
    _check_base(base, where)
    specs = []
    for i, entry in enumerate(models):
        at = f"{where}: models[{i}]"
        if not isinstance(entry, Mapping) or not ("model" in entry or "preset" in entry):
            raise ConfigError(f"{at}: expected a mapping with a 'model' section (or a 'preset')")
        extra = set(entry) - {"label", "preset", "model", "train", "eval", "space", "tune"}
        if extra:
            raise ConfigError(f"{at}: unknown key {min(extra)!r}; valid keys: label, preset, model, train, eval, space, tune")
        # base, then the entry's preset (sibrar/configs/presets), then the entry's own sections
        preset = load_preset(entry["preset"], f"{at}.preset") if "preset" in entry else {}
        merged = deep_merge(deep_merge(base, preset), {k: entry[k] for k in ("model", "train", "eval") if k in entry})
        try:
            config = parse_run_config(merged, f"{at}")
        except ConfigError as exc:
            _check_base(base, where, with_model=False)  # a bad key of `base` is named as typed: base.train.lr
            message = _as_typed(str(exc), f"models[{i}]", entry, base)
            if message != str(exc):
                raise type(exc)(message) from exc
            raise
        label = str(entry.get("label") or config.model.name)
        space = entry.get("space")
        if space is not None and not isinstance(space, Mapping):
            raise ConfigError(f"{at}: field 'space' must map config paths to parameter specs (or null to drop one), got {space!r}")
        if not isinstance(entry.get("tune", True), bool):
            raise ConfigError(f"{at}: field 'tune' must be true or false, got {entry['tune']!r}")
        specs.append(ModelSpec(label, config, space, bool(entry.get("tune", True))))
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
    for view in views:  # syntax only here; modality names are checked against each trained model
        parse_view(view, 1, 1)
    return Experiment(str(raw.get("name") or default_name), tuple(specs), views, table, where, tune)


def _check_base(base: Any, where: str, *, with_model: bool = True) -> None:
    """Check the `base` section on its own, so its errors name `base.…` as the user typed it.

    With `with_model`, only `base.model.name` (every entry of `models` overrides it, so a typo there
    would otherwise be silently ignored); else the other sections, parsed without the models' overrides.
    """
    if not isinstance(base, Mapping):
        raise ConfigError(f"{where}: field 'base' must be a mapping of config sections (data, split, train, eval)")
    model = base.get("model")
    if with_model:
        if isinstance(model, Mapping) and "name" in model:
            try:
                MODELS.get(str(model["name"]))
            except ConfigError as exc:
                raise type(exc)(f"{where}: base.model.name: {exc}") from None
        return
    try:
        parse_run_config({k: v for k, v in base.items() if k != "model"}, "base")
    except ConfigError as exc:
        raise type(exc)(f"{where}: {exc}") from exc


def _as_typed(message: str, at: str, entry: Mapping[str, Any], base: Mapping[str, Any]) -> str:
    """Rename `models[i].model.dim` to `base.model.dim` in a message when the key came from `base`."""
    found = re.search(re.escape(at) + r"((?:\.[A-Za-z_][\w]*)+)", message)
    if not found:
        return message
    keys = found.group(1).strip(".").split(".")
    node: Any = entry
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            break
        node = node[key]
    else:
        return message  # the entry itself holds the key
    node = base
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return message
        node = node[key]
    return message.replace(f"{at}.", "base.")


def run_experiment(experiment: Experiment, out: str | Path, *, progress: bool = True,
                   log: Callable[[str], None] = print,
                   callbacks_for: Callable[[ModelSpec], Sequence[Callback]] | None = None,
                   on_model_end: Callable[[ModelSpec, RunResult, ModelOutcome], None] | None = None,
                   resume: bool = False, tuning: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Train and evaluate every model on the shared split; write the report folder.

    With `resume`, a model whose run folder under `out/runs` finished with the same config and split
    is read back instead of retrained, one interrupted (or given more epochs) continues from its last
    checkpoint, and one whose config changed otherwise is trained afresh.

    `callbacks_for(spec)` gives each model's Trainer callbacks (e.g. MLflow tracking); `on_model_end` sees
    each model's result and outcome (views included) once it is evaluated, before the next one trains.
    `tuning` ({"budget": {...}, "models": {label: {...}}}, from `sibrar.tune.compare`) is reported next to
    the test values; the configs in `experiment` are then the tuned ones.
    """
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
            known = {side: list(prep.inputs.features(side).modalities) for side in ("user", "item")}
            for view_spec in experiment.views:  # a mistyped modality fails now, not after the first model trained
                parse_view(view_spec, prep.inputs.n_users, prep.inputs.n_items, modalities=known)
        log(f"[{i}/{len(experiment.models)}] {spec.label} ({spec.config.model.name})")
        t0 = time.perf_counter()
        callbacks = callbacks_for(spec) if callbacks_for is not None else ()
        run_dir = out / "runs" / slug(spec.label)
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
                               seconds=seconds, best_epoch=result.train.best_epoch,
                               tuning=dict(tuning["models"][spec.label]) if tuning else None)
        view_results = {}
        for view_spec in experiment.views:
            view = parse_view(view_spec, prep.inputs.n_users, prep.inputs.n_items, seed=spec.config.eval.seed,
                              modalities=known)
            with torch_threads(spec.config.train.threads):  # as in training: scores depend on the thread count
                view_results[view_spec] = evaluate(result.model, prep.inputs, prep.split, "test", spec.config.eval,
                                                   view=view)
            outcome.views[view_spec] = view_results[view_spec].summary
        if result.run_dir is not None:
            write_views_per_user(result.run_dir, view_results)
        log(f"    test ndcg@10 {outcome.test.get('ndcg@10', float('nan')):.4f}  recall@10 {outcome.test.get('recall@10', float('nan')):.4f}"
            f"  ({seconds:.0f} s, best epoch {outcome.best_epoch})")
        outcomes.append(outcome)
        if on_model_end is not None:
            on_model_end(spec, result, outcome)
    meta = {"experiment": experiment.name, "source": experiment.source, "dataset": prep.dataset.name,
            "synthetic": prep.dataset.synthetic, "protocol": prep.split.protocol, "split_hash": prep.split.hash,
            "candidates": experiment.models[0].config.eval.candidates}
    if tuning:
        meta["tuning"] = dict(tuning["budget"])
    return write_results(out, outcomes, experiment.table_metrics, meta)
