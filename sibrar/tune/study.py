"""A study: its storage (journal file or database), resume (orphaned trials failed), heartbeats,
the worker loop that trains each trial on validation, and local worker processes.

Trial 0 of a new study is the unmodified config, so the study always contains the default to beat.
Studies live in a storage: a journal file under the output folder by default (safe for several
processes on one machine), or any SQLAlchemy URL (PostgreSQL for workers on several machines, which
join with `load_if_exists`). Every worker stops once the study holds `trials` trials; trials left
RUNNING by a dead process are marked failed when the study is opened again, so a study resumes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from sibrar._io import write_json_atomic, write_text_atomic
from sibrar.config import RunConfig, dump_yaml
from sibrar.errors import ConfigError
from sibrar.tracking import MLflowCallback, find_or_create_run
from sibrar.train.run import prepare, train_run
from sibrar.train.trainer import Callback
from sibrar.tune.components import PRUNERS, SAMPLERS, build_component
from sibrar.tune.space import Search


def open_storage(storage: str | None, out: Path) -> Any:
    """A journal file under `out` (default), a journal file path, or an SQLAlchemy URL, checked now."""
    if storage is None or "://" not in storage:
        path = Path(storage) if storage else out / "study.journal"
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    engine: dict[str, Any] = {"pool_pre_ping": True}
    if storage.startswith("postgresql"):
        engine["connect_args"] = {"connect_timeout": 10}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)  # a dead worker's trial runs again once
                return optuna.storages.RDBStorage(storage, engine_kwargs=engine, heartbeat_interval=30, grace_period=120,
                                                  heartbeat_stale_trial_callback=retry)
        except Exception as exc:  # sqlalchemy raises many kinds; all mean "cannot use this storage"
            text = str(exc).strip()
            if attempt < 4 and ("already exists" in text or "UniqueViolation" in text):  # workers creating tables at once
                time.sleep(1 + attempt)
                continue
            first = text.splitlines()[0] if text else type(exc).__name__
            raise ConfigError(f"--storage {redact_url(storage)}: cannot open the study storage: {first}") from exc
    raise AssertionError("unreachable")


def redact_url(url: str) -> str:
    """A storage URL with its password replaced by ***, for messages."""
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}" if at and ":" in creds else url


def open_study(search: Search, storage: Any, study_name: str, *, seed_offset: int | None = None) -> Any:
    """Create or join a study; fail trials whose process on this host has died (resume).

    The sampler's seed is `search.sampler.seed + seed_offset`: offset 0 (reproducible) on a local
    journal, one derived from host and process id on a database that other machines may join.
    """
    if seed_offset is None:  # processes joining one database study from anywhere must not propose the same points
        seed_offset = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000 \
            if isinstance(storage, optuna.storages.RDBStorage) else 0
    study = optuna.create_study(storage=storage, study_name=study_name, direction=search.direction,
                                sampler=build_component(search.sampler, SAMPLERS, seed_offset),
                                pruner=build_component(search.pruner, PRUNERS), load_if_exists=True)
    stored = study.user_attrs.get("search")
    fingerprint = dump_yaml({"base": search.base, "space": [p.__dict__ for p in search.params]})
    if stored is None:
        study.set_user_attr("search", fingerprint)
    elif stored != fingerprint:
        raise ConfigError(f"study {study_name!r} exists with a different search ({_first_difference(stored, fingerprint)}): "
                          "the config, the search space or the package's config fields changed since it started; "
                          "its trials cannot be continued with this one. Start a new study (another --study name, "
                          "or another --out for `sibrar run`)")
    _fail_orphans(study)
    return study


def _first_difference(stored: str, current: str) -> str:
    """The first setting that differs between two search fingerprints, by its dotted path, for messages."""
    old, new = _flatten(yaml.safe_load(stored)), _flatten(yaml.safe_load(current))
    for key in sorted(old.keys() | new.keys()):
        if old.get(key, _ABSENT) != new.get(key, _ABSENT):
            return f"first difference: {key} was {old.get(key, _ABSENT)!r}, now {new.get(key, _ABSENT)!r}"
    return "the same settings, written differently"


_ABSENT = "(absent)"


def _flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """{'base': {'train': {'lr': 1}}} -> {'base.train.lr': 1}; a space entry is keyed by its parameter's path."""
    if isinstance(node, Mapping):
        items = node.items()
    elif isinstance(node, list) and all(isinstance(x, Mapping) and "path" in x for x in node):
        items = ((x["path"], x) for x in node)
    else:
        return {prefix: node}
    out: dict[str, Any] = {}
    for key, value in items:
        out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


INTERRUPTED = "interrupted"  # trial user attr: cut short by its process ending, not by its config
RETRY_OF = "retry_of"  # trial user attr: the number of the interrupted trial whose parameters it runs again
DEFAULT = "default"  # trial user attr: enqueued to run the file's own config


def default_trials(trials: Sequence[Any]) -> set[int]:
    """Numbers of the trials that ran the file's own config: the enqueued default and the retries of it
    after an interruption (a retry carries only `retry_of`, so the chain is followed)."""
    numbers: set[int] = set()
    for t in sorted(trials, key=lambda t: t.number):
        if t.user_attrs.get(DEFAULT) or t.user_attrs.get(RETRY_OF) in numbers:
            numbers.add(t.number)
    return numbers


def budget_used(study: Any) -> int:
    """The trials that count against a study's budget: those started, but not those cut short by an
    interruption (queued ones, e.g. an interrupted trial's retry, count once they start)."""
    return sum(t.state != optuna.trial.TrialState.WAITING and not t.user_attrs.get(INTERRUPTED)
               for t in study.get_trials(deepcopy=False))


def _fail_orphans(study: Any) -> None:
    """Mark trials whose process died as interrupted failures, and queue their parameters again.

    An interruption (Ctrl-C, SIGTERM, a killed process, the end of a session) is not the config's fault: the
    trial does not count against the budget, and its parameters are tried again first, so an interrupted
    and resumed study evaluates the configs it would have evaluated.
    """
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker", "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "error", "worker process died (study resumed)")
            study._storage.set_trial_user_attr(trial._trial_id, INTERRUPTED, True)
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    for trial in trials:
        if trial.user_attrs.get(INTERRUPTED) and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={RETRY_OF: trial.number}, skip_if_exists=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class PruningCallback(Callback):
    """Feeds the validation metric of every epoch to the trial; raises TrialPruned to stop training."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial, self.key = trial, f"valid/{metric}"

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.key in logs:
            self.trial.report(float(logs[self.key]), step=epoch + 1)  # step 0 = the untrained model
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {self.key} {logs[self.key]:.4f} below the pruner's threshold")


@dataclass(frozen=True)
class Tracking:
    uri: str | None = None
    experiment: str = "sibrar"
    parent_run_id: str | None = None


def run_worker(search: Search, study: Any, trials: int, out: Path, *, tracking: Tracking = Tracking(),
               log: Callable[[str], None] = print) -> int:
    """Run trials until the study holds `trials` that count (all workers, all states but interrupted trials);
    returns how many this worker ran.

    Runs through `Study.optimize`, so a database storage's heartbeat marks the trials of a worker that
    died on any machine as failed (and re-queues their parameters once).
    """
    cache: dict[Any, Any] = {}
    worker = f"{socket.gethostname()}:{os.getpid()}"
    ran = 0

    def objective(trial: Any) -> float:
        nonlocal ran
        ran += 1
        trial.set_user_attr("worker", worker)
        values = suggest(search, trial)
        t0 = time.perf_counter()
        callback = None
        try:
            config = search.config(values)
            callbacks: list[Callback] = []
            if tracking.uri:  # first, so the epoch that gets a trial pruned is logged too
                callback = MLflowCallback(config, uri=tracking.uri, experiment=tracking.experiment,
                                          run_name=f"{study.study_name}-trial-{trial.number}", parent_run_id=tracking.parent_run_id,
                                          tags={"optuna.study": study.study_name, "optuna.trial": str(trial.number)})
                callbacks.append(callback)
            callbacks.append(PruningCallback(trial, search.metric))
            result = train_run(config, None, callbacks=callbacks, progress=False, prepared=prepare(config, cache), test=False)
        except optuna.TrialPruned as exc:
            if callback:
                callback.end("KILLED")
            log(f"trial {trial.number}: pruned ({exc}) {_short(values)}")
            raise
        except Exception as exc:  # recorded with its error; the study goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            if callback:
                callback.end("FAILED")
            log(f"trial {trial.number}: FAILED {type(exc).__name__}: {exc}")
            raise
        except BaseException:  # Ctrl-C or SIGTERM: not the config's fault, so not charged to the budget
            trial.set_user_attr(INTERRUPTED, True)
            trial.set_user_attr("error", "interrupted")
            raise
        value = float(result.valid.summary[search.metric])
        _write_trial(out, trial.number, config, result.train.history, result.valid.summary)
        if callback:
            callback.log_metrics({f"best_valid/{k}": v for k, v in result.valid.summary.items()})
            callback.end("FINISHED")
        log(f"trial {trial.number}: valid {search.metric} {value:.4f} ({time.perf_counter() - t0:.0f} s) {_short(values)}")
        return value

    def stop_at_budget(study: Any, trial: Any) -> None:
        if budget_used(study) >= trials:
            study.stop()

    if budget_used(study) < trials:
        study.optimize(objective, catch=(Exception,), gc_after_trial=False, callbacks=[stop_at_budget])
    return ran


def suggest(search: Search, trial: Any) -> dict[str, Any]:
    """The values of the parameters whose `when` conditions hold, judged on the values decided so far."""
    known = search.defaults()
    values = {}
    for p in search.params:
        if p.active(known):
            known[p.path] = values[p.path] = p.suggest(trial)
    return values


def _short(values: Mapping[str, Any]) -> str:
    return " ".join(f"{k.rpartition('.')[2]}={v:.3g}" if isinstance(v, float) else f"{k.rpartition('.')[2]}={v}"
                    for k, v in values.items())


def _write_trial(out: Path, number: int, config: RunConfig, history: list[dict[str, float]], valid: Mapping[str, float]) -> None:
    folder = out / "trials" / f"{number:04d}"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "config.yaml", dump_yaml(config))
    write_json_atomic(folder / "valid.json", dict(valid))
    write_json_atomic(folder / "history.json", history)


def enqueue_default(search: Search, study: Any, log: Callable[[str], None] = print) -> None:
    """Trial 0 of a new study runs the unmodified config (when every default lies in the space)."""
    if study.get_trials(deepcopy=False):
        return
    defaults = search.defaults()
    fixed, outside = {}, []
    for p in search.params:
        if not p.active(defaults):
            continue
        value = defaults[p.path]
        if p.contains(value):
            fixed[p.path] = p.encode(value)
        else:
            outside.append(f"{p.path}={value!r}")
    if outside:
        log(f"note: the default config is outside the search space ({', '.join(outside)}); it is not trial 0")
        return
    study.enqueue_trial(fixed, user_attrs={DEFAULT: True})


def study_parent_run(uri: str, experiment: str, study_name: str, search: Search) -> str:
    """The MLflow run every trial of a study nests under; workers on other machines find it by its tags."""
    return find_or_create_run(uri, experiment=experiment, run_name=f"study-{study_name}",
                              tags={"optuna.study": study_name, "sibrar.role": "study", "sibrar.metric": f"valid/{search.metric}"})


def spawn_workers(search: Search, trials: int, out: Path, storage: str, study_name: str, workers: int,
                  tracking: Tracking) -> None:
    """`workers` processes of `sibrar tune --worker`, each with its share of the CPU threads."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    search_file = out / "search.yaml"
    write_text_atomic(search_file, dump_yaml(search.raw))
    procs: list[subprocess.Popen[bytes]] = []
    previous = signal.signal(signal.SIGTERM, _interrupt)  # a terminated parent takes its workers along
    try:
        for i in range(workers):
            cmd = [sys.executable, "-m", "sibrar.cli", "tune", str(search_file), "--trials", str(trials), "--storage", storage,
                   "--study", study_name, "--out", str(out), "--worker", str(i + 1)]
            if tracking.uri:
                cmd += ["--tracking-uri", tracking.uri, "--mlflow-experiment", tracking.experiment]
                if tracking.parent_run_id:
                    cmd += ["--parent-run-id", tracking.parent_run_id]
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "SIBRAR_THREADS": str(threads)}
            procs.append(subprocess.Popen(cmd, env=env))
        codes = [p.wait() for p in procs]
    finally:
        signal.signal(signal.SIGTERM, previous)
        for p in procs:
            if p.poll() is None:
                p.terminate()
    if any(codes):
        raise ConfigError(f"tuning workers exited with codes {codes}; see their output above")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
