"""`sibrar train`, `sibrar evaluate` and `sibrar models`."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sibrar.tracking import MLflowCallback
    from sibrar.train.run import LoadedRun


def register(sub: argparse._SubParsersAction) -> None:
    train = sub.add_parser("train", help="train one model from a YAML config")
    train.add_argument("config", nargs="?", help="YAML run config (data, split, model, train, eval); default: built-in defaults")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.lr=1e-3 (repeatable)")
    train.add_argument("--out", help="run folder (default runs/<model>-<dataset>-<protocol>-<time>)")
    train.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its last checkpoint")
    train.add_argument("--force", action="store_true",
                       help="replace the run already in --out (by default a folder holding a run is refused)")
    train.add_argument("--device", help="cpu, cuda, cuda:1 … (overrides train.device)")
    train.add_argument("--no-progress", action="store_true")
    add_tracking_arguments(train)
    train.set_defaults(func=_train)

    ev = sub.add_parser("evaluate", help="evaluate a trained run on valid/test, optionally under a missing-modality view")
    ev.add_argument("run_dir")
    ev.add_argument("--part", default="test", choices=["valid", "test"])
    ev.add_argument("--protocol", default=None, choices=["split", "all"], help="candidate items (default: the run's)")
    ev.add_argument("--view", action="append", default=[], metavar="SPEC",
                    help="item:genres+text (use only these item modalities), item:-text@0.7 (70%% of items lack text), "
                         "user:... likewise; repeatable, each evaluated separately")
    ev.add_argument("--device", default="cpu")
    add_tracking_arguments(ev)
    ev.set_defaults(func=_evaluate)

    models = sub.add_parser("models", help="list the registered models")
    models.set_defaults(func=_models)


def add_tracking_arguments(parser: argparse.ArgumentParser) -> None:
    """--tracking-uri / --mlflow / --no-mlflow / --mlflow-experiment (MLflow logging; see sibrar.tracking)."""
    group = parser.add_argument_group("MLflow tracking (on whenever a tracking URI is set)")
    group.add_argument("--tracking-uri", metavar="URI", help="MLflow tracking URI, e.g. http://127.0.0.1:5000 "
                       "(default: $MLFLOW_TRACKING_URI)")
    switch = group.add_mutually_exclusive_group()
    switch.add_argument("--mlflow", action="store_true",
                        help="log to MLflow; without a URI, to the local store sqlite:///mlflow.db")
    switch.add_argument("--no-mlflow", action="store_true", help="do not log, even when $MLFLOW_TRACKING_URI is set")
    group.add_argument("--mlflow-experiment", default="sibrar", metavar="NAME", help="MLflow experiment (default sibrar)")


def tracking_uri(args: argparse.Namespace) -> str | None:
    """The URI to log to (None: off), checked to be reachable: a ConfigError here comes before any work."""
    if args.no_mlflow:
        return None
    from sibrar.tracking import check_tracking_uri, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri, enabled=args.mlflow)
    if uri is not None:
        check_tracking_uri(uri)
    return uri


def _train(args: argparse.Namespace) -> int:
    from sibrar.config import load_run_config
    from sibrar.train.run import summary_line, train_run

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.resume:
        run_dir = Path(args.resume)
        config = load_run_config(run_dir / "config.yaml", overrides)
    else:
        config = load_run_config(args.config, overrides)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path(args.out) if args.out else Path("runs") / f"{config.model.name}-{Path(config.data.dataset).name}-{config.split.protocol}-{stamp}"
    if int(os.environ.get("RANK", "0")) == 0 and run_dir.is_dir():  # early, friendly refusal (re-checked under the lock)
        from sibrar.train.folder import claim_allowed, folder_lock

        with folder_lock(run_dir):  # a folder another process is writing is refused as such
            claim_allowed(run_dir, resume=bool(args.resume), overwrite=args.force)
    uri = tracking_uri(args)  # every torchrun rank checks it, so a bad URI stops them all
    tracker = None
    if uri is not None and int(os.environ.get("RANK", "0")) == 0:  # one MLflow run: rank 0 runs the callbacks
        from sibrar.tracking import MLflowCallback

        tracker = MLflowCallback(config, uri=uri, experiment=args.mlflow_experiment, run_name=run_dir.name,
                                 tags={"command": "train", **({"resumed": "true"} if args.resume else {})})
        tracker.start()  # a store that refuses the run fails here, before any data is read
    with ending_on_error([tracker]):
        result = train_run(config, run_dir, callbacks=[tracker] if tracker else [], resume=bool(args.resume),
                           progress=not args.no_progress, overwrite=args.force)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 alone reports
        return 0
    print(f"best epoch {result.train.best_epoch}; test {summary_line(result)}")
    print(f"run folder: {run_dir}")
    if tracker is not None:
        tracker.log_result(result)
        print(f"MLflow run {tracker.run_id} in experiment {args.mlflow_experiment!r} at {uri}")
    return 0


@contextmanager
def ending_on_error(trackers: Iterable[MLflowCallback | None]) -> Iterator[None]:
    """End the MLflow runs FAILED when the block raises (KILLED on Ctrl-C). `trackers` is read at that moment."""
    try:
        yield
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for tracker in list(trackers):
            if tracker is not None:
                tracker.end(status)
        raise


def _evaluate(args: argparse.Namespace) -> int:
    import dataclasses

    from sibrar.eval.evaluator import evaluate, parse_view
    from sibrar.models.base import FULL_VIEW
    from sibrar.train.run import load_run, torch_threads

    uri = tracking_uri(args)
    run = load_run(args.run_dir, device=args.device)
    eval_cfg = run.config.eval if args.protocol is None else dataclasses.replace(run.config.eval, candidates=args.protocol)
    prep = run.prepared
    known = {side: list(prep.inputs.features(side).modalities) for side in ("user", "item")}
    views = [FULL_VIEW] + [parse_view(v, prep.inputs.n_users, prep.inputs.n_items, modalities=known) for v in args.view]
    base = None
    rows = []
    for view in views:
        with torch_threads(run.config.train.threads):  # as in training: scores depend on the thread count
            result = evaluate(run.model, prep.inputs, prep.split, args.part, eval_cfg, view=view)
        base = base or result.summary
        rows.append((view.name, result.summary))
    keys = [k for k in ("ndcg@10", "recall@10", "precision@10", "map@10", "coverage@10") if k in base]  # type: ignore[operator]
    print(f"{'view':28s} " + " ".join(f"{k:>13s}" for k in keys) + "   Δndcg@10")
    for name, summary in rows:
        drop = (summary["ndcg@10"] - base["ndcg@10"]) / base["ndcg@10"] if base and base.get("ndcg@10") else float("nan")  # type: ignore[index]
        print(f"{name:28s} " + " ".join(f"{summary[k]:13.4f}" for k in keys) + f"   {drop:+.1%}")
    out = Path(args.run_dir) / f"evaluate-{args.part}.json"
    from sibrar._io import write_json_atomic

    write_json_atomic(out, {"run_id": run.run_id, **{name: summary for name, summary in rows}})
    print(f"written {out}")
    if uri is not None:
        _log_evaluation(args, uri, run, eval_cfg.candidates, rows, out)
    return 0


def _log_evaluation(args: argparse.Namespace, uri: str, run: LoadedRun, candidates: str,
                    rows: list[tuple[str, dict[str, float]]], written: Path) -> None:
    """One MLflow run per `sibrar evaluate`: the run's config and tags, each view's metrics, the JSON file."""
    from sibrar.tracking import MLflowCallback, run_tags

    tags = {**run_tags(run.config, prepared=run.prepared), "command": "evaluate", "part": args.part,
            "candidates": candidates, "run_dir": str(Path(args.run_dir).resolve())}
    tracker = MLflowCallback(run.config, uri=uri, experiment=args.mlflow_experiment,
                             run_name=f"evaluate-{Path(args.run_dir).resolve().name}-{args.part}", tags=tags)
    tracker.start()
    with ending_on_error([tracker]):
        for name, summary in rows:  # the full view as test/ndcg@10, the others as test/view/<view>/ndcg@10
            prefix = f"{args.part}/" if name == "all" else f"{args.part}/view/{name}/"
            tracker.log_metrics({prefix + k: v for k, v in summary.items()})
        tracker.log_artifacts([written])
    tracker.end("FINISHED")
    print(f"MLflow run {tracker.run_id} in experiment {args.mlflow_experiment!r} at {uri}")


def _models(args: argparse.Namespace) -> int:
    from sibrar.registry import MODELS  # filled by `import sibrar` (which imports sibrar.models)

    for name in MODELS.names():
        entry = MODELS.get(name)
        doc = (entry.cls.__doc__ or "").strip().splitlines()[0] if entry.cls.__doc__ else ""
        flags = ", ".join(f for f, on in (("cold items", entry.cls.supports_cold_items), ("cold users", entry.cls.supports_cold_users)) if on)
        print(f"{name:16s} {doc}" + (f"  [{flags}]" if flags else ""))
    return 0
