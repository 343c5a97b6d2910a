"""`sibrar tune SEARCH.yaml`: an Optuna study on a validation metric, then one test of the best config."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from sibrar.commands.train import add_tracking_arguments, tracking_uri


def register(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser("tune", help="hyperparameter search with Optuna (validation metric; best config tested once)")
    tune.add_argument("search", help="search YAML: base + model + search (metric, sampler, pruner, space)")
    tune.add_argument("--trials", type=int, required=True, help="the study's total number of trials (all workers)")
    tune.add_argument("--storage", help="SQLAlchemy URL (e.g. postgresql+psycopg2://user:pw@host/db) or a journal "
                                        "file path; default: OUT/study.journal, safe for processes on one machine")
    tune.add_argument("--study", help="study name (default: the search file's name); workers with the same name join it")
    tune.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    tune.add_argument("--out", help="output folder (default results/tune-<study>)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a value of the search file, e.g. --set base.train.epochs=3")
    tune.add_argument("--no-final", action="store_true", help="only run trials: no best.yaml and no test evaluation")
    add_tracking_arguments(tune)  # trials nest under one MLflow run per study
    tune.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)  # set by --workers for its processes
    tune.add_argument("--parent-run-id", help=argparse.SUPPRESS)
    tune.set_defaults(func=_tune)


def _tune(args: argparse.Namespace) -> int:
    from sibrar.tune import Tracking, load_search, open_storage, open_study, run_worker, study_parent_run, tune

    from sibrar.errors import ConfigError

    for flag, value in (("--trials", args.trials), ("--workers", args.workers)):
        if value < 1:
            raise ConfigError(f"{flag} is {value}; expected an integer >= 1")
    search = load_search(args.search, args.overrides)
    study_name = args.study or search.name
    out = Path(args.out) if args.out else Path("results") / f"tune-{study_name}"
    tracking = Tracking()
    uri = tracking_uri(args)  # checked before any trial starts
    if uri is not None:
        parent = args.parent_run_id or study_parent_run(uri, args.mlflow_experiment, study_name, search)
        tracking = Tracking(uri, args.mlflow_experiment, parent)
    if args.worker:  # one process of `--workers`: trials only, its own sampler seed
        if os.environ.get("SIBRAR_THREADS"):
            import torch

            torch.set_num_threads(int(os.environ["SIBRAR_THREADS"]))
        study = open_study(search, open_storage(args.storage, out), study_name, seed_offset=args.worker)
        run_worker(search, study, args.trials, out, tracking=tracking, log=lambda m: print(f"[worker {args.worker}] {m}", flush=True))
        return 0
    tune(search, args.trials, out, storage=args.storage, study_name=study_name, workers=args.workers,
         tracking=tracking, final=not args.no_final)
    print(f"output folder: {out}" + ("" if args.no_final else f"  (best config: {out / 'best.yaml'})"))
    return 0
