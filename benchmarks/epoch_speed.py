"""Seconds per training epoch of every model of an experiment, with the settings it was tuned to.

Run by hand (never part of the test suite), alone on the machine:

    python benchmarks/epoch_speed.py                                   # fair-ml1m-warm.yaml, its tuned settings
    python benchmarks/epoch_speed.py experiments/fair-ml1m-cold-user.yaml \\
        --tuned-from experiments/results/fair-ml1m-cold-user
    python benchmarks/epoch_speed.py experiments/fair-ml100k-cold-item.yaml --only DeepMF --rows 20000

Why: the equal-budget comparisons leave a model out when an epoch costs too much on 2 CPU cores;
this prints what an epoch costs. Each model trains on `--rows` training interactions drawn at random
(a seeded subset, in the trainer's own batches, negatives and loss: `Trainer._epoch`), timed on the
wall clock after one untimed warm-up batch, under the trainer's own algorithm settings
(`Trainer.algorithms`, as `Trainer.fit` trains); seconds per epoch = that time x (training rows / rows).
One validation pass (what the trainer runs after every epoch) is timed on its own. `--add LABEL=NAME`
adds a model with its registered default config (e.g. DeepMF, to an experiment that lacks it).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from provenance import commit, machine  # benchmarks/provenance.py
from sibrar.config import parse_run_config, to_dict
from sibrar.eval.evaluator import evaluate
from sibrar.experiment import ModelSpec, load_experiment
from sibrar.models.base import create_model
from sibrar.train.run import prepare, torch_threads
from sibrar.train.trainer import Trainer
from sibrar.tune.compare import reuse_tuning

REPO = Path(__file__).resolve().parents[1]


def time_model(spec: ModelSpec, cache: dict, rows: int) -> dict[str, float] | None:
    """Wall seconds of `rows` training rows (extrapolated to an epoch) and of one validation pass;
    None for a model without parameters."""
    config = spec.config
    prep = prepare(config, cache)
    with torch_threads(config.train.threads):
        torch.manual_seed(config.train.seed)
        model = create_model(config.model, prep.inputs)
        trainer = Trainer(model, prep.inputs, prep.split, config.train, config.eval, progress=False)
        if trainer.optimizer is None:
            return None
        n_train = len(trainer.users)
        pick = torch.randperm(n_train, generator=torch.Generator().manual_seed(0))
        users, items = trainer.users[pick], trainer.pos_items[pick]
        warm, used = min(config.train.batch_size, n_train), min(rows, n_train)
        with trainer.algorithms():  # as Trainer.fit trains
            trainer.users, trainer.pos_items = users[:warm], items[:warm]
            trainer._epoch(0)  # warm-up: allocator, kernels, lazy modules
            trainer.users, trainer.pos_items = users[:used], items[:used]
            start = time.perf_counter()
            trainer._epoch(1)
            train_s = time.perf_counter() - start
            model.eval()
            start = time.perf_counter()
            evaluate(model, prep.inputs, prep.split, "valid", config.eval)
            valid_s = time.perf_counter() - start
    return {"rows": used, "train_rows": n_train, "epoch_s": train_s * n_train / used, "valid_s": valid_s}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default=str(REPO / "experiments/fair-ml1m-warm.yaml"))
    parser.add_argument("--tuned-from", help="results folder whose tuned settings to use "
                        "(default: experiments/results/<experiment name> when it has them)")
    parser.add_argument("--add", action="append", default=[], metavar="LABEL=MODEL",
                        help="another model with its registered default config, on the experiment's base")
    parser.add_argument("--only", action="append", default=[], metavar="LABEL", help="time only these models")
    parser.add_argument("--rows", type=int, default=40_000, help="training rows timed per model (default 40,000)")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error(f"--rows is {args.rows}; expected a positive number of training rows")

    experiment = load_experiment(args.experiment)
    tuned_from = args.tuned_from or REPO / "experiments/results" / experiment.name
    tuned = args.tuned_from is not None or (Path(tuned_from) / "results.json").exists()
    if tuned:
        experiment, _ = reuse_tuning(experiment, tuned_from)
    specs = list(experiment.models)
    base = to_dict(specs[0].config)
    for entry in args.add:
        label, sep, name = entry.partition("=")
        if not sep or not label or not name:
            parser.error(f"--add {entry!r}: expected LABEL=MODEL, e.g. DeepMF=deepmf")
        if label in {s.label for s in specs}:
            parser.error(f"--add {entry!r}: the experiment already has a model labelled {label!r}")
        raw = {**base, "model": {"name": name}}
        specs.append(ModelSpec(label, parse_run_config(raw, f"--add {entry}")))
    unknown = set(args.only) - {s.label for s in specs}
    if unknown:
        parser.error(f"--only {sorted(unknown)}: not a model label; labels: {', '.join(s.label for s in specs)}")
    specs = [s for s in specs if not args.only or s.label in args.only]

    print("sibrar epoch-speed benchmark")
    print(f"command : {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date    : {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}")
    print(f"machine : {machine()}")
    print(f"load avg: {os.getloadavg()[0]:.2f} at start (other processes share the CPUs when > 0)")
    print(f"commit  : {commit()}")
    print(f"configs : {experiment.source}" + (f", tuned settings of {tuned_from}" if tuned else ", as written (untuned)"))
    print()
    print("| model | batch | rows timed | s / epoch (train) | s / validation |")
    print("|---|---:|---:|---:|---:|")
    cache: dict = {}
    for spec in specs:
        t = time_model(spec, cache, args.rows)
        if t is None:
            continue  # no parameters (Rand, Pop): nothing to train
        print(f"| {spec.label} | {spec.config.train.batch_size} | {t['rows']:,} of {t['train_rows']:,} "
              f"| {t['epoch_s']:.1f} | {t['valid_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
