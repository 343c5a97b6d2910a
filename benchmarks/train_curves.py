"""Validation nDCG@10 against wall time for the reference training step and the fast default.

Run by hand (never part of the test suite):

    python benchmarks/train_curves.py sibrar/configs/demo_ml100k.yaml --model SiBraR \\
        --png experiments/results/train-curves-ml100k.png --json experiments/results/train-curves-ml100k.json

Each variant trains the experiment's model from the same seed with `train.*` overrides (`old` is the
reference step: every slot encoded, 10 negatives per positive, BPR; `new` is TrainConfig's default step,
whatever step the file pins; other train settings come from the file or `--variant`).
Time counts training and the per-epoch validation (the untrained model's "epoch -1" is t=0), in
process CPU seconds unless `--clock wall`: the machine these were measured on is shared.
Time-to-quality: the first second at which validation nDCG@10 reaches a fraction of the best
value the `old` variant reaches in any epoch. The variants run one after another: on a shared
machine the load may differ between them (the load average is printed next to each).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from provenance import commit, machine  # benchmarks/provenance.py


from sibrar.config import TrainConfig
from sibrar.experiment import load_experiment
from sibrar.train.run import prepare
from sibrar.train.trainer import Callback, Trainer
from sibrar.models.base import create_model

OLD = ("negatives=per_row", "dedup=none", "objective=bpr", "precision=fp32")
STEP_FIELDS = ("negatives", "n_shared_negatives", "objective", "dedup", "contrastive_group", "precision")
NEW = tuple(f"{f}={getattr(TrainConfig(), f)}" for f in STEP_FIELDS)  # TrainConfig's default step, whatever the file pins


class Curve(Callback):
    """(seconds since the trainer started, validation value) after every epoch.

    Seconds are this process's CPU seconds (all its threads) by default: on a machine shared with
    other jobs, wall time measures the neighbours as much as the code; `--clock wall` for wall time.
    """

    def __init__(self, monitor: str, clock: str) -> None:
        self.clock = time.process_time if clock == "cpu" else time.perf_counter
        self.monitor, self.points, self.t0 = f"valid/{monitor}", [], self.clock()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.points.append((epoch, self.clock() - self.t0, logs[self.monitor]))
        print(f"    epoch {epoch}: {self.points[-1][1]:.1f} s, {logs[self.monitor]:.4f}", flush=True)


def parse_value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None, "null": None}.get(text.lower(), text)


def train_variant(spec: Any, overrides: tuple[str, ...], cache: dict[Any, Any], clock: str) -> list[tuple[int, float, float]]:
    train = dataclasses.replace(spec.config.train, **{k: parse_value(v) for k, v in (o.split("=", 1) for o in overrides)})
    config = dataclasses.replace(spec.config, train=train)
    prep = prepare(config, cache)
    import torch

    torch.manual_seed(config.train.seed)
    model = create_model(config.model, prep.inputs)
    curve = Curve(config.train.monitor, clock)
    Trainer(model, prep.inputs, prep.split, config.train, config.eval, callbacks=[curve], progress=False).fit()
    return curve.points


def time_to(points: list[tuple[int, float, float]], level: float) -> float | None:
    return next((t for _, t, v in points if v >= level), None)


def mean_curve(curves: list[list[tuple[int, float, float]]]) -> list[tuple[int, float, float]]:
    """(epoch, mean seconds, mean value) over the epochs that every curve reached."""
    n = min(len(c) for c in curves)
    return [(curves[0][i][0], sum(c[i][1] for c in curves) / len(curves), sum(c[i][2] for c in curves) / len(curves))
            for i in range(n)]


def time_to_quality(curves: dict[str, Any]) -> dict[str, Any]:
    """Per group of curves (one run or one merged file, "name (file)"): each curve's seconds to 95 % /
    99 % of the best value of the group's reference curve (the one whose name starts with "old"), and
    that time as a fraction of the seconds the reference took to reach its own best."""
    groups: dict[str, dict[str, Any]] = {}
    for name, c in curves.items():
        c["points"] = [tuple(p) for p in c["points"]]
        variant, _, group = name.partition(" ")
        groups.setdefault(group, {})[variant] = c
    if len(groups) > 1:  # several seeds: also the mean curve (per epoch index, over the epochs every seed ran)
        variants = set.intersection(*(set(m) for m in groups.values()))
        groups["(mean over seeds)"] = {v: {"points": mean_curve([groups[g][v]["points"] for g in list(groups)])}
                                       for v in variants}
    summary: dict[str, Any] = {}
    for group, members in groups.items():
        ref = next((v for k, v in members.items() if k.startswith("old")), None)
        if ref is None:
            continue
        ref_best = max(v for _, _, v in ref["points"])
        ref_time = next(t for _, t, v in ref["points"] if v == ref_best)
        for variant, c in members.items():
            t95, t99 = time_to(c["points"], 0.95 * ref_best), time_to(c["points"], 0.99 * ref_best)
            row = {"best": max(v for _, _, v in c["points"]), "reference_best": ref_best, "reference_time": ref_time,
                   "time_to_95": t95, "time_to_99": t99, "fraction_99": None if t99 is None else t99 / ref_time}
            summary[f"{variant} {group}".strip()] = row
            fmt = lambda t: "not reached" if t is None else f"{t:.0f} s ({t / ref_time:.2f}x)"  # noqa: E731
            print(f"{variant:>10} {group}: best {row['best']:.4f}; to 95 % / 99 % of the reference's best {ref_best:.4f}: "
                  f"{fmt(t95)} / {fmt(t99)} (the reference reaches its best at {ref_time:.0f} s)")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--model", default="SiBraR", help="label of the experiment's model (default SiBraR)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="experiment overrides")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:k=v,k=v",
                        help="extra variants (train.* overrides), next to old and new")
    parser.add_argument("--only", default=None, help="comma-separated variant names to run (default all)")
    parser.add_argument("--merge", nargs="+", default=None, metavar="JSON",
                        help="train nothing: combine the curves of earlier --json files (variants run in parallel)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="process CPU seconds (default) or wall")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--png")
    parser.add_argument("--json")
    args = parser.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    experiment = load_experiment(args.experiment, args.overrides)
    spec = next((m for m in experiment.models if m.label == args.model), None)
    if spec is None:
        parser.error(f"--model {args.model!r}: not in {args.experiment}; labels: {', '.join(m.label for m in experiment.models)}")
    variants: dict[str, tuple[str, ...]] = {"old": OLD, "new": NEW}
    for text in args.variant:
        name, _, rest = text.partition(":")
        variants[name] = tuple(x for x in rest.split(",") if x)
    if args.only:
        variants = {k: v for k, v in variants.items() if k in args.only.split(",")}
    print(f"# train_curves: {args.experiment} / {args.model}; commit {commit()}; {machine()}", flush=True)
    cache: dict[Any, Any] = {}
    curves: dict[str, Any] = {}
    if args.merge:
        for path in args.merge:  # labelled by file name when several files hold the same variant (seeds)
            for name, curve in json.loads(Path(path).read_text())["curves"].items():
                curves[name if len(args.merge) == 1 else f"{name} ({Path(path).stem})"] = curve
        variants = {}
    for name, overrides in variants.items():
        load = os.getloadavg()[0]
        points = train_variant(spec, overrides, cache, args.clock)
        curves[name] = {"overrides": list(overrides), "points": points, "load_before": load}
        best = max(v for _, _, v in points)
        print(f"{name:>10}: best valid nDCG@10 {best:.4f} after {points[-1][1]:.0f} s ({len(points) - 1} epochs); "
              f"load {load:.2f}; " + " ".join(f"{t:.0f}s:{v:.4f}" for _, t, v in points), flush=True)
    summary = time_to_quality(curves)
    if args.json:
        payload = {"command": " ".join(sys.argv), "clock": args.clock, "commit": commit(), "machine": machine(), "curves": curves,
                   "summary": summary}
        Path(args.json).write_text(json.dumps(payload, indent=1))
    if args.png:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        colours: dict[str, str] = {}
        for name, c in curves.items():
            colour = colours.setdefault(name.split(" ")[0], f"C{len(colours)}")
            ax.plot([t for _, t, _ in c["points"]], [v for _, _, v in c["points"]], marker="o", label=name, color=colour,
                    alpha=0.85)
        ax.set_xlabel(f"{'CPU' if args.clock == 'cpu' else 'wall'} seconds (training + per-epoch validation)")
        ax.set_ylabel("validation nDCG@10")
        ax.set_title(f"{experiment.name}: {args.model}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.png, dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(main())
