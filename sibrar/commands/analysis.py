"""`sibrar robustness RESULTS_DIR`, `sibrar gap RUN_DIR...`, `sibrar grid RESULTS_DIR...` and
`sibrar seeds RESULTS_DIR...`: analyses of trained runs and their results folders, no retraining."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sibrar._io import read_json
from sibrar.errors import ConfigError
from sibrar.paths import slug

DEFAULT_FRACTIONS_TEXT = "0,0.1,0.3,0.5,0.7,0.9,1"
TABLE_METRICS = ("ndcg@10", "recall@10", "precision@10", "map@10", "coverage@10")


def register(sub: argparse._SubParsersAction) -> None:
    rob = sub.add_parser("robustness", help="test metrics vs share of test items missing a modality, for every model "
                                            "of a `sibrar run` results folder (nested seeded masks, no retraining)")
    rob.add_argument("results_dir", help="results folder written by `sibrar run` (results.json + runs/<label>/)")
    rob.add_argument("--modality", action="append", default=[], metavar="NAME",
                     help="item modality to remove (repeatable or comma-separated; default: every modality some "
                          "model reads and the test items have)")
    rob.add_argument("--fractions", default=DEFAULT_FRACTIONS_TEXT,
                     help=f"shares of test items missing the modality, in [0, 1] (default {DEFAULT_FRACTIONS_TEXT}; 0 is always added)")
    rob.add_argument("--models", help="comma-separated model labels (default: all of the results folder)")
    rob.add_argument("--metric", default="ndcg@10", help="metric of the plots and tables (default ndcg@10)")
    rob.add_argument("--seed", type=int, default=0, help="seed of the missing masks (default 0)")
    rob.add_argument("--repeats", type=int, default=1,
                     help="independent nested mask sets (seeds SEED, SEED+1, ...): mean and standard deviation (default 1)")
    rob.add_argument("--out", help="folder for robustness.{csv,json,md} and robustness_<modality>.png (default RESULTS_DIR)")
    rob.add_argument("--device", default="cpu")
    rob.set_defaults(func=_robustness)

    gap = sub.add_parser("gap", help="modality gap of trained SiBraR / multibranch runs: same-item vs other-item "
                                     "distances of single-modality embeddings, and a 2-D projection")
    gap.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (e.g. RESULTS_DIR/runs/SiBraR)")
    gap.add_argument("--modality", action="append", default=[], metavar="NAME",
                     help="item modalities to compare (repeatable or comma-separated; default: all of each tower)")
    gap.add_argument("--seed", type=int, default=0, help="seed of the random pairs and the plotted sample (default 0)")
    gap.add_argument("--points", type=int, default=600, help="items drawn per panel of the projection plot (default 600)")
    gap.add_argument("--links", type=int, default=12, help="sampled items whose modality points are joined by a line (default 12)")
    gap.add_argument("--out", help="folder for gap.{csv,json,md} and gap_projection.png "
                                   "(default: the results folder holding the first run, else the run folder)")
    gap.add_argument("--device", default="cpu")
    gap.set_defaults(func=_gap)

    grid = sub.add_parser("grid", help="merge several `sibrar run` results folders into the paper's table: "
                                       "models x (dataset, scenario) per metric, with their significance marks")
    grid.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR",
                      help="results folders of `sibrar run` (columns in this order)")
    grid.add_argument("--out", required=True, help="folder for grid.{md,csv,json}")
    grid.add_argument("--metrics", help="comma-separated test metrics (default precision@10,recall@10,ndcg@10,map@10,coverage@10)")
    grid.add_argument("--title", default="Results grid", help="heading of grid.md")
    grid.set_defaults(func=_grid)

    seeds = sub.add_parser("seeds", help="mean ± standard deviation over repeats of one experiment "
                                         "(results folders of `sibrar run ... --set base.train.seed=N`)")
    seeds.add_argument("results_dirs", nargs="+", metavar="RESULTS_DIR", help="two or more results folders of one experiment")
    seeds.add_argument("--out", required=True, help="folder for seeds.{md,csv,json}")
    seeds.add_argument("--metrics", help="comma-separated test metrics (default precision@10,recall@10,ndcg@10,map@10,coverage@10)")
    seeds.add_argument("--title", default="Spread over seeds", help="heading of seeds.md")
    seeds.add_argument("--pair", action="append", default=[], metavar="A,B",
                       help="head-to-head paired tests of model A against model B on every metric and on the loss "
                            "under each missing-modality view, e.g. --pair SiBraR,Multi-branch (repeatable)")
    seeds.set_defaults(func=_seeds)


# ------------------------------------------------------------------------------------------- robustness


def _robustness(args: argparse.Namespace) -> int:
    import polars as pl

    from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
    from sibrar.eval.robustness import (
        REFERENCE_FRACTION,
        check_fractions,
        points_to_rows,
        robustness_curve,
        robustness_markdown,
        view_modalities,
    )
    from sibrar.report.plots import plot_robustness
    from sibrar.train.run import load_run

    t0 = time.perf_counter()
    results_dir = Path(args.results_dir)
    runs, test_metrics = results_runs(results_dir)
    fractions = check_fractions(parse_fractions(args.fractions))
    if args.repeats < 1:
        raise ConfigError(f"--repeats {args.repeats}; expected an integer >= 1")
    if test_metrics and args.metric not in test_metrics:
        raise ConfigError(f"--metric {args.metric!r}: not in the runs' test metrics; available: {', '.join(test_metrics)}")
    if args.models:
        wanted = [m.strip() for m in args.models.split(",") if m.strip()]
        unknown = [m for m in wanted if m not in runs]
        if unknown:
            raise ConfigError(f"--models: {unknown[0]!r} is not a model of {results_dir}; models: {', '.join(runs)}")
        runs = {m: runs[m] for m in wanted}
    loaded = {}
    for label, run_dir in runs.items():
        print(f"loading {label} ({run_dir}) ...", flush=True)
        loaded[label] = load_run(run_dir, device=args.device)
    first = next(iter(loaded.values()))
    prep = first.prepared
    hashes = {label: run.prepared.split.hash for label, run in loaded.items()}
    if len(set(hashes.values())) > 1:
        raise ConfigError(f"{results_dir}: the runs use different splits ({hashes}); compare runs of one experiment")
    used = {label: view_modalities(run.model) for label, run in loaded.items()}
    modalities = _split_names(args.modality) or _default_modalities(used, prep, first.config.eval)
    for m in modalities:
        if m not in prep.inputs.item:
            raise ConfigError(f"--modality {m!r}: not an item modality of {prep.dataset.name}; "
                              f"available: {', '.join(prep.inputs.item.names)}")
        if not any(names and m in names for names in used.values()):
            described = "; ".join(f"{label}: {', '.join(names) if names else '(ignores modalities)'}"
                                  for label, names in used.items())
            raise ConfigError(f"--modality {m!r}: no model of {results_dir} reads it ({described})")
    if not modalities:
        raise ConfigError(f"{results_dir}: no model reads a modality the test items have; nothing to remove")
    points = []
    for label, run in loaded.items():
        for m in modalities:
            t = time.perf_counter()
            curve = robustness_curve(run.model, run.prepared.inputs, run.prepared.split, run.config.eval, m, fractions,
                                     label=label, seed=args.seed, repeats=args.repeats)
            points += curve
            values = "  ".join(f"{p.fraction:g}:{p.summary.get(args.metric, math.nan):.4f}" for p in curve)
            print(f"  {label:<14} -{m:<8} {args.metric} {values}  ({time.perf_counter() - t:.1f} s)", flush=True)
    metrics = [k for k in (args.metric, *TABLE_METRICS) if k in points[0].summary]
    metrics = list(dict.fromkeys(metrics))
    rows = points_to_rows(points, metrics)
    out = Path(args.out) if args.out else results_dir
    out.mkdir(parents=True, exist_ok=True)
    synthetic = " [SYNTHETIC]" if prep.dataset.synthetic else ""
    title = f"Missing-modality robustness: {prep.dataset.name}{synthetic} {prep.split.protocol}, test"
    with atomic_write(out / "robustness.csv") as tmp:
        pl.DataFrame(rows).write_csv(tmp)
    markdown = robustness_markdown(rows, args.metric, title=title)
    write_text_atomic(out / "robustness.md", markdown)
    pngs = []
    for m in modalities:
        path = out / f"robustness_{m}.png"
        plot_robustness(rows, m, args.metric, path, title=f"{prep.dataset.name}{synthetic} {prep.split.protocol}: −{m}",
                        reference=REFERENCE_FRACTION if REFERENCE_FRACTION in fractions else None)
        pngs.append(path.name)
    seconds = time.perf_counter() - t0
    write_json_atomic(out / "robustness.json", {
        "results_dir": str(results_dir), "dataset": prep.dataset.name, "synthetic": prep.dataset.synthetic,
        "protocol": prep.split.protocol, "split_hash": prep.split.hash, "candidates": first.config.eval.candidates,
        "metric": args.metric, "fractions": list(fractions), "modalities": list(modalities), "seed": args.seed,
        "repeats": args.repeats,
        "nested_masks": True, "models": {label: {"run_dir": str(run.run_dir), "model": run.config.model.name,
                                                  "view_modalities": list(used[label] or ())} for label, run in loaded.items()},
        "rows": rows, "plots": pngs, "seconds": round(seconds, 1),
    })
    print()
    print(markdown)
    print(f"written {out}/robustness.{{csv,json,md}} and {', '.join(pngs)}  ({seconds:.0f} s)")
    return 0


def results_runs(results_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """(label -> run folder, in the experiment's order; the test metric names) of a `sibrar run` results folder."""
    payload = results_dir / "results.json"
    if not payload.is_file() or not (results_dir / "runs").is_dir():
        hint = ""
        if (results_dir / "config.yaml").is_file() and (results_dir / "model.pt").is_file():
            hint = f"; {results_dir} is one run folder, pass the results folder two levels up"
        raise ConfigError(f"{results_dir}: not a results folder of `sibrar run` (expected results.json and runs/<label>/){hint}")
    try:
        models = read_json(payload, "results file", ConfigError)["models"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{payload}: not a `sibrar run` results.json (no 'models' mapping)") from exc
    runs = {}
    for label, info in models.items():
        local = results_dir / "runs" / slug(label)  # the folder may have moved since it was written
        runs[label] = local if local.is_dir() else Path(str(info.get("run_dir", local)))
    order = _csv_order(results_dir / "results.csv")  # results.json is written with sorted keys
    runs = {label: runs[label] for label in sorted(runs, key=lambda m: order.index(m) if m in order else len(order))}
    first = next(iter(models.values()), {})
    return runs, list(first.get("test", {})) if isinstance(first, dict) else []


def _csv_order(path: Path) -> list[str]:
    """Model labels in the experiment's order (the rows of results.csv), or [] without the file."""
    import polars as pl

    if not path.is_file():
        return []
    try:
        return pl.read_csv(path, columns=["model"])["model"].cast(pl.Utf8).to_list()
    except (pl.exceptions.PolarsError, OSError):
        return []


def parse_fractions(text: str) -> list[float]:
    values = []
    for part in str(text).split(","):
        if not part.strip():
            continue
        try:
            values.append(float(part))
        except ValueError:
            raise ConfigError(f"--fractions: {part.strip()!r} is not a number; expected e.g. 0,0.1,0.3,0.5,0.7,0.9,1") from None
    if not values:
        raise ConfigError("--fractions is empty; expected e.g. 0,0.1,0.3,0.5,0.7,0.9,1")
    return values


def _split_names(values: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(n.strip() for v in values for n in v.split(",") if n.strip()))


def _default_modalities(used: dict[str, tuple[str, ...] | None], prep: Any, eval_config: Any) -> list[str]:
    """Every item modality some model reads that at least one test item has (not cold items' interactions)."""
    from sibrar.eval.robustness import modality_pool

    names = dict.fromkeys(m for modalities in used.values() if modalities for m in modalities)
    return [m for m in names if m in prep.inputs.item and len(modality_pool(prep.inputs, prep.split, m, eval_config)) > 0]


# ------------------------------------------------------------------------------------------------ gap


def _gap(args: argparse.Namespace) -> int:
    import numpy as np
    import polars as pl

    from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
    from sibrar.eval.gap import (
        branch_modalities,
        gap_markdown,
        modality_embeddings,
        modality_gap,
        projection_sample,
    )
    from sibrar.report.plots import plot_projection
    from sibrar.train.run import load_run

    t0 = time.perf_counter()
    run_dirs = [Path(p) for p in args.run_dirs]
    if args.points < 2 or args.links < 0:
        raise ConfigError(f"--points {args.points} / --links {args.links}: expected --points >= 2 and --links >= 0")
    for run_dir in run_dirs:  # check every folder before loading anything
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "model.pt").is_file():
            hint = ""
            if (run_dir / "results.json").is_file() and (run_dir / "runs").is_dir():
                hint = f"; it is a results folder, pass runs inside it: {', '.join(sorted(p.name for p in (run_dir / 'runs').iterdir()))}"
            raise ConfigError(f"{run_dir}: not a finished run folder (needs config.yaml and model.pt){hint}")
    labels = [p.resolve().name for p in run_dirs]
    if len(set(labels)) != len(labels):
        labels = [str(p) for p in run_dirs]
    wanted = _split_names(args.modality) or None
    rows_by_model: dict[str, list[dict[str, object]]] = {}
    projected: dict[str, dict[str, np.ndarray]] = {}
    links: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    for label, run_dir in zip(labels, run_dirs):
        print(f"loading {label} ({run_dir}) ...", flush=True)
        run = load_run(run_dir, device=args.device)
        try:
            branch_modalities(run.model)
        except ConfigError as exc:
            raise ConfigError(f"{run_dir}: {exc}") from None
        inputs = run.prepared.inputs
        embeddings = modality_embeddings(run.model, inputs, wanted)
        rows_by_model[label] = modality_gap(embeddings, seed=args.seed)
        projected[label], links[label] = projection_sample(embeddings, inputs.n_items, points=args.points,
                                                           rng=np.random.default_rng(args.seed), links=args.links)
        meta[label] = {"run_dir": str(run_dir), "model": run.config.model.name, "dataset": run.prepared.dataset.name,
                       "synthetic": run.prepared.dataset.synthetic, "protocol": run.prepared.split.protocol,
                       "modalities": {m: len(items) for m, (items, _) in embeddings.items()}}
        for r in rows_by_model[label]:
            print(f"  {label:<14} {r['pair']:<22} cos own {r['cos_own']:.3f} random {r['cos_random']:.3f}  "
                  f"L2 own {r['l2_own']:.3f} random {r['l2_random']:.3f}  centroid gap {r['centroid_gap']:.3f}", flush=True)
    first = meta[labels[0]]
    synthetic = " [SYNTHETIC]" if any(m["synthetic"] for m in meta.values()) else ""
    title = f"Modality gap: {first['dataset']}{synthetic} {first['protocol']}, item embeddings per modality"
    out = Path(args.out) if args.out else _default_gap_out(run_dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    flat = [{"model": label, **r} for label, rows in rows_by_model.items() for r in rows]
    with atomic_write(out / "gap.csv") as tmp:
        pl.DataFrame(flat).write_csv(tmp)
    markdown = gap_markdown(rows_by_model, title=title)
    write_text_atomic(out / "gap.md", markdown)
    plot_projection(projected, out / "gap_projection.png", links=links,
                    title=f"{first['dataset']}{synthetic} {first['protocol']}: item embeddings by modality "
                          "(PCA per model; grey lines join one item's modalities)")
    seconds = time.perf_counter() - t0
    write_json_atomic(out / "gap.json", {"models": meta, "rows": flat, "seed": args.seed, "random_draws_per_item": 5,
                                         "projection": "PCA (numpy SVD) per model", "seconds": round(seconds, 1)})
    print()
    print(markdown)
    print(f"written {out}/gap.{{csv,json,md}} and gap_projection.png  ({seconds:.0f} s)")
    return 0


def _default_gap_out(run_dir: Path) -> Path:
    resolved = run_dir.resolve()
    return resolved.parent.parent if resolved.parent.name == "runs" else resolved


# ----------------------------------------------------------------------------------------------- grid


def _grid(args: argparse.Namespace) -> int:
    from sibrar.report.grid import build_grid, load_results_folder, parse_metrics, write_grid

    metrics = parse_metrics(args.metrics)
    folders = [load_results_folder(p) for p in args.results_dirs]  # every folder checked before writing
    grid = build_grid(folders, metrics)
    markdown = write_grid(Path(args.out), grid, title=args.title)
    print(markdown)
    print(f"written {args.out}/grid.{{md,csv,json}}  ({len(grid.models)} models x {len(grid.columns)} columns x "
          f"{len(grid.metrics)} metrics)")
    return 0


def _parse_pair(text: str) -> tuple[str, str]:
    a, sep, b = text.partition(",")
    if not sep or not a.strip() or not b.strip() or "," in b:
        raise ConfigError(f"--pair {text!r}: expected two model labels separated by one comma, e.g. SiBraR,Multi-branch")
    return a.strip(), b.strip()


def _seeds(args: argparse.Namespace) -> int:
    from sibrar.report.grid import load_results_folder, parse_metrics
    from sibrar.report.seeds import summarise_seeds, write_seeds

    folders = [load_results_folder(p) for p in args.results_dirs]
    summary = summarise_seeds(folders, parse_metrics(args.metrics), [_parse_pair(p) for p in args.pair])
    print(write_seeds(Path(args.out), summary, title=args.title))
    print(f"written {args.out}/seeds.{{md,csv,json}}  ({len(summary.models)} models x {len(folders)} runs)")
    return 0
