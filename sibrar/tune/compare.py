"""Equal-budget tuning for an experiment: one Optuna study per model on VALIDATION, then each best config
trained and tested once by `run_experiment`, with the budget and the tuned settings in results.md.

The experiment file's `tune:` section (or `sibrar run EXPERIMENT --tune N`) sets the budget every
tuned model gets alike::

    tune:
      trials: 20                      # per model, the same for every tuned model
      metric: ndcg@10                 # validation only; early stopping and the pruner follow it too
      sampler: {name: tpe, seed: 42}  # the same seed for every study
      pruner: {name: median, n_startup_trials: 5, n_warmup_steps: 1}
      storage: null                   # default: a journal file per study under OUT/studies/<label>/
      workers: 1                      # local processes per study

A model's search space is its family's default (`sibrar/configs/search_spaces.yaml`) with the model
entry's `space:` laid over it key by key (`null` drops a key); `tune: false` on an entry, or a family
without a space (Rand, Pop), leaves a model untuned, and the report says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sibrar.config import load_yaml, to_dict
from sibrar.errors import ConfigError
from sibrar.experiment import Experiment, ModelSpec
from sibrar.paths import slug
from sibrar.tune.components import PRUNERS, SAMPLERS, check_component
from sibrar.tune.runner import TuneResult, tune
from sibrar.tune.space import Search, config_with, lookup, parse_search
from sibrar.tune.study import Tracking, study_parent_run

SPACES_FILE = Path(__file__).resolve().parents[1] / "configs" / "search_spaces.yaml"
TUNE_KEYS = ("trials", "metric", "sampler", "pruner", "storage", "workers")
DEFAULT_PRUNER = {"name": "median", "n_startup_trials": 5, "n_warmup_steps": 1}


@dataclass(frozen=True)
class TuneSettings:
    """The budget every tuned model of an experiment gets alike."""

    trials: int
    metric: str = "ndcg@10"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 42})
    pruner: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_PRUNER))
    storage: str | None = None  # SQLAlchemy URL or journal path; None: a journal file per study
    workers: int = 1

    def budget(self) -> dict[str, Any]:
        """What results.md states (no storage URL: it may hold a password)."""
        return {"trials": self.trials, "metric": self.metric, "sampler": dict(self.sampler),
                "pruner": dict(self.pruner), "workers": self.workers}


@dataclass(frozen=True)
class PlannedStudy:
    """One model's study, or why it has none (`search` is None)."""

    spec: ModelSpec
    search: Search | None
    untuned: str = ""  # the reason when not tuned
    left_out: tuple[str, ...] = ()  # default parameters whose path this model's config lacks


def default_spaces() -> dict[str, dict[str, Any]]:
    """Model name -> its family's default space (the file's `_`-prefixed entries are YAML anchors only)."""
    raw = load_yaml(SPACES_FILE)
    return {name: dict(space or {}) for name, space in raw.items() if not str(name).startswith("_")}


def parse_tune_settings(section: Mapping[str, Any] | None, where: str, *, trials: int | None = None,
                        storage: str | None = None, workers: int | None = None) -> TuneSettings:
    """The `tune:` section checked, with the command line's --tune/--storage/--workers laid over it."""
    section = dict(section or {})
    unknown = set(section) - set(TUNE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key tune.{min(unknown)}; valid keys: {', '.join(TUNE_KEYS)}")
    for key, value in (("trials", trials), ("storage", storage), ("workers", workers)):
        if value is not None:
            section[key] = value
    n = section.get("trials")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{where}: tune.trials is {n!r}; expected a positive integer (or --tune N)")
    n_workers = section.get("workers", 1)
    if isinstance(n_workers, bool) or not isinstance(n_workers, int) or n_workers < 1:
        raise ConfigError(f"{where}: tune.workers is {n_workers!r}; expected a positive integer")
    return TuneSettings(
        trials=n, metric=str(section.get("metric", "ndcg@10")),
        sampler=check_component(section.get("sampler"), SAMPLERS, {"name": "tpe", "seed": 42}, f"{where}: tune.sampler"),
        pruner=check_component(section.get("pruner"), PRUNERS, dict(DEFAULT_PRUNER), f"{where}: tune.pruner"),
        storage=None if section.get("storage") is None else str(section["storage"]), workers=n_workers)


def plan_studies(experiment: Experiment, settings: TuneSettings) -> tuple[PlannedStudy, ...]:
    """Every model's search, fully checked before any trial runs (paths, ranges, metric, edges)."""
    spaces = default_spaces()
    plans = []
    for i, spec in enumerate(experiment.models):
        if not spec.tune:
            plans.append(PlannedStudy(spec, None, "tune: false in the experiment file"))
            continue
        resolved = to_dict(spec.config)
        space, left_out = _applicable(spaces.get(spec.config.model.name, {}), resolved)
        for path, param in (spec.space or {}).items():
            if param is None:
                space.pop(str(path), None)
            else:
                space[str(path)] = param
        if not space:
            plans.append(PlannedStudy(spec, None, f"no search space for {spec.config.model.name}", left_out))
            continue
        model = resolved.pop("model")
        name = f"{experiment.name}-{slug(spec.label)}"
        raw = {"name": name, "base": resolved, "model": model,
               "search": {"metric": settings.metric, "sampler": dict(settings.sampler),
                          "pruner": dict(settings.pruner), "space": space}}
        search = parse_search(raw, f"{experiment.source}: models[{i}] ({spec.label}) search space", default_name=name)
        plans.append(PlannedStudy(spec, search, "", left_out))
    return tuple(plans)


def _applicable(defaults: Mapping[str, Any], resolved: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """The default parameters that exist in this model's config (and whose `when` paths do too)."""
    kept: dict[str, Any] = {}
    left_out = []
    for path, param in defaults.items():
        conditions = (param.get("when") or {}) if isinstance(param, Mapping) else {}
        needed = [path, *(p for p in conditions if p not in kept)]
        if all(lookup(resolved, p, missing=KeyError) is not KeyError for p in needed):
            kept[path] = dict(param)
        else:
            left_out.append(path)
    return kept, tuple(left_out)


def tune_experiment(experiment: Experiment, out: str | Path, settings: TuneSettings, *, resume: bool = False,
                    tracking_uri: str | None = None, mlflow_experiment: str = "sibrar",
                    log: Callable[[str], None] = print) -> tuple[Experiment, dict[str, Any]]:
    """Run every model's study on validation; return the experiment with the best configs and the
    tuning report (`run_experiment(..., tuning=...)`). Nothing here evaluates the test split.

    With `tracking_uri`, each study is an MLflow run (`study-<experiment>-<label>`) with its trials nested.
    """
    plans = plan_studies(experiment, settings)
    out = Path(out)
    tuned = [p for p in plans if p.search is not None]
    log(f"tuning {len(tuned)} of {len(plans)} models: {settings.trials} trials each on valid {settings.metric}, "
        f"sampler {settings.sampler}, pruner {settings.pruner}")
    specs, report = [], {}
    for i, plan in enumerate(plans, start=1):
        if plan.search is None:
            log(f"[tune {i}/{len(plans)}] {plan.spec.label}: untuned ({plan.untuned})")
            specs.append(plan.spec)
            report[plan.spec.label] = {"tuned": False, "reason": plan.untuned}
            continue
        log(f"[tune {i}/{len(plans)}] {plan.spec.label}: study {plan.search.name!r}, {len(plan.search.params)} parameters"
            + (f" (left out, not in this config: {', '.join(plan.left_out)})" if plan.left_out else ""))
        folder = out / "studies" / slug(plan.spec.label)
        tracking = Tracking()
        if tracking_uri is not None:
            parent = study_parent_run(tracking_uri, mlflow_experiment, plan.search.name, plan.search)
            tracking = Tracking(tracking_uri, mlflow_experiment, parent)
        result = tune(plan.search, settings.trials, folder, storage=settings.storage, study_name=plan.search.name,
                      workers=settings.workers, tracking=tracking, test=False, resume=resume, seed_offset=0,
                      log=lambda m: log(f"    {m}"))
        assert result is not None
        specs.append(dataclasses.replace(plan.spec, config=result.best_config))
        report[plan.spec.label] = _study_report(plan, result, settings, folder)
    return dataclasses.replace(experiment, models=tuple(specs)), {"budget": settings.budget(), "models": report}


def reuse_tuning(experiment: Experiment, tuned_dir: str | Path) -> tuple[Experiment, dict[str, Any]]:
    """The experiment with the settings an earlier tuned run chose (its results.json), no study run:
    e.g. the same tuned configs trained with other seeds (`--tuned-from DIR --set base.train.seed=1`)."""
    path = Path(tuned_dir) / "results.json"
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--tuned-from {tuned_dir}: cannot read {path}: {exc}") from exc
    budget, models = payload.get("tuning"), payload.get("models", {})
    if not budget:
        raise ConfigError(f"--tuned-from {tuned_dir}: {path} comes from a run without tuning (no 'tuning' entry)")
    missing = [spec.label for spec in experiment.models if "tuning" not in models.get(spec.label, {})]
    if missing:
        raise ConfigError(f"--tuned-from {tuned_dir}: no tuning recorded for model(s) {', '.join(missing)}; "
                          f"tuned there: {', '.join(sorted(models))}")
    specs, report = [], {}
    for i, spec in enumerate(experiment.models):
        tuning = dict(models[spec.label]["tuning"])
        if tuning.get("tuned"):
            values = {"train.monitor": budget["metric"], **tuning["params"]}
            config = config_with(to_dict(spec.config), values, f"{experiment.source}: models[{i}] ({spec.label}) "
                                                               f"with the settings of {tuned_dir}")
            spec = dataclasses.replace(spec, config=config)
        specs.append(spec)
        report[spec.label] = tuning
    return dataclasses.replace(experiment, models=tuple(specs)), {"budget": {**budget, "from": str(tuned_dir)}, "models": report}


def _study_report(plan: PlannedStudy, result: TuneResult, settings: TuneSettings, folder: Path) -> dict[str, Any]:
    return {"tuned": True, "study": result.study_name, "trials": settings.trials, "counts": dict(result.counts),
            "best_trial": result.best_trial, "valid": result.best_value, "default_valid": result.default_value,
            "params": dict(result.best_params), "left_out": list(plan.left_out), "folder": str(folder)}
