"""The `sibrar tune` runner: run or join a study, then write best.yaml, trials.csv, summary.json and
the history plot, and train and test the best config once."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import polars as pl

from sibrar._io import atomic_write, write_json_atomic, write_text_atomic
from sibrar.config import RunConfig, dump_yaml
from sibrar.errors import ConfigError
from sibrar.report.figures import pyplot, save_figure
from sibrar.tracking import MLflowCallback, end_run, log_to_run
from sibrar.train.run import train_run
from sibrar.tune.space import Search
from sibrar.tune.study import INTERRUPTED, Tracking, default_trials, enqueue_default, open_storage, open_study, redact_url, run_worker, spawn_workers


@dataclass
class TuneResult:
    """A finished study: its best trial on validation, the config it gives, and the trial counts."""

    study_name: str
    best_value: float
    best_trial: int
    default_value: float | None
    best_config: RunConfig
    test: dict[str, float] | None
    counts: dict[str, int]
    out: Path
    best_params: dict[str, Any] = field(default_factory=dict)  # the searched values of the best trial


def tune(search: Search, trials: int, out: str | Path, *, storage: str | None = None, study_name: str | None = None,
         workers: int = 1, tracking: Tracking = Tracking(), final: bool = True, test: bool = True,
         resume: bool = True, seed_offset: int | None = None, log: Callable[[str], None] = print) -> TuneResult | None:
    """Run (or resume, or join) a study with `workers` local processes, then test the best config once.

    `test=False` stops after best.yaml and the tables (an experiment tests the tuned config itself);
    `resume=False` refuses a study that already holds trials; `seed_offset` as in `open_study`.
    """
    if trials < 0 or workers < 1:
        raise ConfigError(f"--trials must be >= 0 and --workers >= 1, got {trials} and {workers}")
    out = Path(out)
    study_name = study_name or search.name
    store = open_storage(storage, out)
    study = open_study(search, store, study_name, seed_offset=seed_offset)
    held = len(study.get_trials(deepcopy=False))
    if held and not resume:
        raise ConfigError(f"study {study_name!r} ({redact_url(storage) if storage else out / 'study.journal'}) already holds {held} trials; "
                          "pass --resume to continue it, or write to another --out")
    enqueue_default(search, study, log)
    if workers == 1:
        run_worker(search, study, trials, out, tracking=tracking, log=log)
    else:
        spawn_workers(search, trials, out, storage or str(out / "study.journal"), study_name, workers, tracking)
    if not final:
        return None
    return finalize(search, open_study(search, store, study_name, seed_offset=seed_offset), out, tracking=tracking,
                    test=test, log=log)


def finalize(search: Search, study: Any, out: Path, *, tracking: Tracking = Tracking(), test: bool = True,
             log: Callable[[str], None] = print) -> TuneResult:
    """best.yaml (ready to run), trials.csv, plots, summary.json; the best config trained once and tested."""
    states = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s and not t.user_attrs.get(INTERRUPTED) for t in all_trials)
              for s in (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)}
    counts["interrupted"] = sum(bool(t.user_attrs.get(INTERRUPTED)) for t in all_trials)  # not charged to the budget
    complete = [t for t in all_trials if t.state == states.COMPLETE]
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet ({counts}); run more trials")
    best = study.best_trial
    values = _trial_values(search, best)
    best_config = search.config(values)
    write_text_atomic(out / "best.yaml", f"# best of study {study.study_name!r}: trial {best.number}, valid {search.metric} "
                      f"{best.value:.4f}\n# run it: sibrar train {out / 'best.yaml'}\n" + dump_yaml(best_config))
    defaults = default_trials(all_trials)
    _write_trials_table(all_trials, defaults, out)
    default = next((t.value for t in complete if t.number in defaults), None)
    test_summary = None
    if test:
        callbacks = []
        if tracking.uri:
            callbacks.append(MLflowCallback(best_config, uri=tracking.uri, experiment=tracking.experiment,
                                            run_name=f"{study.study_name}-best", parent_run_id=tracking.parent_run_id,
                                            tags={"optuna.study": study.study_name, "optuna.best_trial": str(best.number)}))
        result = train_run(best_config, out / "best_run", callbacks=callbacks, progress=False)
        if callbacks:
            callbacks[0].log_result(result)
        test_summary = result.test.summary
    summary = {"study": study.study_name, "metric": f"valid/{search.metric}", "direction": search.direction,
               "best_trial": best.number, "best_value": best.value, "default_value": default, "best_params": values,
               "counts": counts, "test_of_best": test_summary}
    write_json_atomic(out / "summary.json", summary)
    if tracking.uri and tracking.parent_run_id:
        _log_study(tracking, summary, out)
    _plot(study, out, search.metric)
    interrupted = f", {counts['interrupted']} interrupted and run again" if counts["interrupted"] else ""
    log(f"study {study.study_name!r}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed{interrupted}; "
        f"best trial {best.number} valid {search.metric} {best.value:.4f}"
        + (f" (default {default:.4f})" if default is not None else ""))
    if test_summary:
        log(f"test of the best config: {search.metric} {test_summary.get(search.metric, float('nan')):.4f}  -> {out / 'best_run'}")
    return TuneResult(study.study_name, best.value, best.number, default, best_config, test_summary, counts, out, values)


def _log_study(tracking: Tracking, summary: Mapping[str, Any], out: Path) -> None:
    """Best value and the study's files on the parent run, which then ends."""
    assert tracking.uri and tracking.parent_run_id
    metrics = {"best_value": summary["best_value"], **{f"test_of_best/{k}": v for k, v in (summary.get("test_of_best") or {}).items()}}
    files = [out / name for name in ("best.yaml", "trials.csv", "summary.json", "history.png") if (out / name).is_file()]
    log_to_run(tracking.uri, tracking.parent_run_id, metrics=metrics, tags={"best_trial": str(summary["best_trial"])}, files=files)
    end_run(tracking.uri, tracking.parent_run_id)


def _trial_values(search: Search, trial: Any) -> dict[str, Any]:
    by_path = {p.path: p for p in search.params}
    return {k: v if by_path[k].type in ("float", "int") else json.loads(v) for k, v in trial.params.items()}


def _write_trials_table(trials: Sequence[Any], defaults: set[int], out: Path) -> None:
    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             "seconds": t.duration.total_seconds() if t.duration else None,
             "default": t.number in defaults, "error": t.user_attrs.get("error"),
             **{k: _readable(v) for k, v in t.params.items()}} for t in trials]
    with atomic_write(out / "trials.csv") as tmp:
        pl.DataFrame(rows, infer_schema_length=None).write_csv(tmp)


def _readable(value: Any) -> str:
    """A parameter as a table cell: numbers as they are, stored JSON choices decoded (`batch`, `[128]`)."""
    if not isinstance(value, str):
        return str(value)
    decoded = json.loads(value)
    return decoded if isinstance(decoded, str) else json.dumps(decoded)


def _plot(study: Any, out: Path, metric: str) -> None:
    """Optimisation history (every trial's value and the running best) as a PNG."""
    plt = pyplot()

    done = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    xs = [t.number for t in done]
    ys = [t.value for t in done]
    best = list(itertools.accumulate(ys, max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min))
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.scatter(xs, ys, s=14, label="trial")
    ax.step(xs, best, where="post", color="C1", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"valid {metric}")
    ax.set_title(f"{study.study_name}: optimisation history")
    ax.legend(loc="lower right")
    save_figure(fig, out / "history.png")
