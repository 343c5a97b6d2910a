"""`sibrar run EXPERIMENT`, `sibrar demo` and `sibrar report RESULTS_DIR`."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sibrar.commands.train import add_tracking_arguments, ending_on_error, tracking_uri

if TYPE_CHECKING:
    from sibrar.experiment import Experiment

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_ml100k.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train several models on one split and compare them (tables, significance, plots)")
    run.add_argument("experiment", help="experiment YAML (base + models [+ views])")
    run.add_argument("--out", help="report folder (default results/<experiment name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a value of the experiment file, e.g. --set base.train.epochs=3")
    run.add_argument("--resume", action="store_true",
                     help="reuse the finished model runs under OUT/runs trained with the same config, continue "
                          "interrupted ones from their last checkpoint, train the rest; continue interrupted studies")
    run.add_argument("--tune", type=int, metavar="N",
                     help="first tune every model that has a search space with its own N-trial Optuna study on "
                          "validation (the same budget, sampler seed and pruner for all; sets tune.trials)")
    run.add_argument("--no-tune", action="store_true", help="ignore the file's tune: section (train the configs as written)")
    run.add_argument("--tuned-from", metavar="DIR", help="no studies: train each model with the settings a tuned run "
                                                       "chose (DIR/results.json), e.g. with another --set base.train.seed")
    run.add_argument("--storage", help="with tuning: SQLAlchemy URL or journal path for the studies "
                                       "(default: a journal file per model under OUT/studies/)")
    run.add_argument("--workers", type=int, help="with tuning: local worker processes per study (default 1)")
    run.add_argument("--no-progress", action="store_true")
    add_tracking_arguments(run)
    run.set_defaults(func=_run)

    demo = sub.add_parser("demo", help="the main job: ML-100K cold-item comparison of SiBraR and the baselines")
    demo.add_argument("--out", default="results/demo", help="report folder (default results/demo)")
    demo.add_argument("--root", help="data root")
    demo.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(func=_demo)

    report = sub.add_parser("report", help="print (and rewrite) the markdown report of a results folder")
    report.add_argument("results_dir")
    report.set_defaults(func=_report)


class _Log:
    """A stdout that also appends to a log file, opened at the first output (an early error leaves no file)."""

    def __init__(self, stdout: TextIO, path: Path, header: str) -> None:
        self.stdout, self.path, self.header = stdout, path, header
        self.file: TextIO | None = None

    def write(self, text: str) -> int:
        self.stdout.write(text)
        if self.file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = self.path.open("a", encoding="utf-8", buffering=1)
            self.file.write(self.header)
        self.file.write(text)
        return len(text)

    def flush(self) -> None:
        self.stdout.flush()
        if self.file is not None:
            self.file.flush()


@contextmanager
def logged_to(path: Path, command_line: Sequence[str]) -> Iterator[None]:
    """Everything the command prints also goes to `path`, after a line with the command and the time.

    Appended, so a `--resume` adds its own section under the first one; progress bars (stderr) stay out.
    A failure after the first output ends the section with the error, so the log says how the run stopped.
    """
    log = _Log(sys.stdout, path, f"$ {shlex.join(command_line)}   # {time.strftime('%Y-%m-%d %H:%M:%S %z')}\n")
    try:
        with redirect_stdout(log):
            yield
    except BaseException as exc:
        if log.file is not None:
            log.file.write(f"# stopped: {type(exc).__name__}: {exc}\n")
        raise
    finally:
        if log.file is not None:
            log.file.close()


def _run(args: argparse.Namespace) -> int:
    from sibrar.experiment import load_experiment

    experiment = load_experiment(args.experiment, args.overrides)
    out = Path(args.out) if args.out else Path("results") / experiment.name
    with logged_to(out / "run.log", args.command_line):
        return _run_logged(args, experiment, out)


def _run_logged(args: argparse.Namespace, experiment: Experiment, out: Path) -> int:
    from sibrar.experiment import run_experiment
    from sibrar.tune.compare import parse_tune_settings, reuse_tuning, tune_experiment

    uri = tracking_uri(args)
    tuning = None
    if args.tuned_from:
        experiment, tuning = reuse_tuning(experiment, args.tuned_from)
    elif (experiment.tune is not None or args.tune is not None) and not args.no_tune:
        settings = parse_tune_settings(experiment.tune, experiment.source, trials=args.tune, storage=args.storage,
                                       workers=args.workers)
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # each trial is logged once, by sibrar
        experiment, tuning = tune_experiment(experiment, out, settings, resume=args.resume, tracking_uri=uri,
                                             mlflow_experiment=args.mlflow_experiment)  # checks every space first
    elif args.storage or args.workers:
        print("sibrar: note: --storage and --workers apply to tuning only (--tune N or a tune: section)")
    if uri is None:
        run_experiment(experiment, out, progress=not args.no_progress, resume=args.resume, tuning=tuning)
    else:
        _run_tracked(experiment, out, uri, args, tuning)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"report folder: {out}")
    return 0


def _run_tracked(experiment: Experiment, out: Path, uri: str, args: argparse.Namespace,
                 tuning: dict[str, Any] | None = None) -> None:
    """One parent MLflow run for the experiment (the results folder as artifacts), one child run per model."""
    from sibrar.experiment import ModelOutcome, ModelSpec, run_experiment
    from sibrar.tracking import (
        MLflowCallback,
        flatten_config,
        log_to_run,
        parent_run,
        run_tags,
    )
    from sibrar.train.run import RunResult

    first = experiment.models[0].config
    params = {**flatten_config({"data": first.data, "split": first.split}),
              "models": [spec.label for spec in experiment.models], "views": list(experiment.views)}
    tags = {**run_tags(first), "command": "run", "experiment": experiment.name}
    tags.pop("model")  # the experiment holds several
    trackers: dict[str, MLflowCallback] = {}
    with parent_run(uri, experiment=args.mlflow_experiment, run_name=experiment.name, params=params, tags=tags) as parent_id:

        def callbacks_for(spec: ModelSpec) -> list[MLflowCallback]:
            trackers[spec.label] = MLflowCallback(spec.config, uri=uri, experiment=args.mlflow_experiment, run_name=spec.label,
                                                  parent_run_id=parent_id, tags={"command": "run", "label": spec.label,
                                                                                 "experiment": experiment.name})
            return [trackers[spec.label]]

        def on_model_end(spec: ModelSpec, result: RunResult, outcome: ModelOutcome) -> None:
            tracker = trackers[spec.label]
            for view, summary in outcome.views.items():
                tracker.log_metrics({f"test/view/{view}/{k}": v for k, v in summary.items()})
            tracker.log_result(result)

        with ending_on_error(trackers.values()):
            payload = run_experiment(experiment, out, progress=not args.no_progress, callbacks_for=callbacks_for,
                                     on_model_end=on_model_end, resume=args.resume, tuning=tuning)
        files = [out / name for name in ("results.md", "results.csv", "results.json", "REPORT.md") if (out / name).is_file()]
        log_to_run(uri, parent_id, files=[*files, *sorted(out.glob("*.png"))],
                   tags={k: str(payload[k]) for k in ("dataset", "protocol", "split_hash") if k in payload}
                   | {"synthetic": str(bool(payload.get("synthetic"))).lower()})
    print(f"MLflow parent run {parent_id} in experiment {args.mlflow_experiment!r} at {uri}")


def _demo(args: argparse.Namespace) -> int:
    from sibrar.data.sources import fetch
    from sibrar.encoders import encode_text
    from sibrar.experiment import load_experiment, run_experiment

    t0 = time.perf_counter()
    load_experiment(DEMO_CONFIG, args.overrides)  # a bad --set fails here, before the fetch and the encoding
    print("[1/3] fetching MovieLens-100K (the sha256-pinned recbole wheel on PyPI) ...")
    folder = fetch("ml-100k", args.root)
    print(f"      {folder}")
    print("[2/3] text modality: MiniLM embedding of 'title (year). Genres: ...' (sibrar encode text) ...")
    encode_text(folder, template="{movie_title} ({release_year}). Genres: {genres}.", join={"movie_title": " "},
                entity="item", modality="text", progress=not args.no_progress)
    overrides = [*args.overrides, f"base.data.dataset={folder}"]
    experiment = load_experiment(DEMO_CONFIG, overrides)
    print(f"[3/3] training {len(experiment.models)} models on the cold-item split ...")
    with logged_to(Path(args.out) / "run.log", args.command_line):
        run_experiment(experiment, Path(args.out), progress=not args.no_progress)
    print()
    print((Path(args.out) / "results.md").read_text(encoding="utf-8"))
    print(f"report folder: {args.out}   (total {time.perf_counter() - t0:.0f} s)")
    return 0


def _report(args: argparse.Namespace) -> int:
    from sibrar.report.page import write_report

    path = write_report(Path(args.results_dir))
    print(path.read_text(encoding="utf-8"))
    print(f"written {path}")
    return 0
