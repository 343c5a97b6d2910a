"""Optuna hyperparameter search judged on validation only: `sibrar tune` and experiment-level studies.

`space` parses a search (parameters, `when:` conditions, subsets), `study` runs one (storage, resume,
heartbeat, workers), `runner` is the `sibrar tune` command's loop and report, and `compare` gives
every model of an experiment its own study with the same budget (`sibrar run EXPERIMENT --tune N`).
"""

from sibrar.tune.compare import (
    TuneSettings,
    default_spaces,
    parse_tune_settings,
    plan_studies,
    reuse_tuning,
    tune_experiment,
)
from sibrar.tune.components import PRUNERS, SAMPLERS
from sibrar.tune.runner import TuneResult, finalize, tune
from sibrar.tune.space import Param, Search, load_search, parse_search
from sibrar.tune.study import (
    PruningCallback,
    Tracking,
    enqueue_default,
    open_storage,
    open_study,
    run_worker,
    spawn_workers,
    study_parent_run,
    suggest,
)

__all__ = [
    "PRUNERS", "SAMPLERS", "Param", "PruningCallback", "Search", "Tracking", "TuneResult", "TuneSettings",
    "default_spaces", "enqueue_default", "finalize", "load_search", "open_storage", "open_study", "parse_search",
    "parse_tune_settings", "plan_studies", "reuse_tuning", "run_worker", "spawn_workers", "study_parent_run", "suggest", "tune",
    "tune_experiment",
]
