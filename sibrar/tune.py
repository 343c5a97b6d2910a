"""Optuna hyperparameter search over one run config, judged on a VALIDATION metric only.

A search file holds the run config to start from (`base` data/split/train/eval + one `model`
section) and a `search` section: the objective metric, the sampler and pruner (seeded, never
Optuna's defaults) and the space, keyed by dotted config paths::

    search:
      metric: ndcg@10                  # on validation; early stopping monitors it too
      sampler: {name: tpe, seed: 42, n_startup_trials: 6}
      pruner: {name: median, n_startup_trials: 4, n_warmup_steps: 1}
      space:
        train.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
        model.item.branch.hidden: {type: categorical, choices: [[128], [256, 256]]}
        model.item.modalities: {type: subset, items: [genres, year, text], always: [interactions]}
        model.item.temperature: {type: float, low: 0.01, high: 0.5, log: true,
                                 when: {model.item.contrastive_weight: {gt: 0}}}

Trial 0 of a new study is the unmodified config, so the study always contains the default to beat.
Studies live in a storage: a journal file under the output folder by default (safe for several
processes on one machine), or any SQLAlchemy URL (PostgreSQL for workers on several machines, which
join with `load_if_exists`). Every worker stops once the study holds `trials` trials; trials left
RUNNING by a dead process are marked failed when the study is opened again, so a study resumes.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from sibrar._io import write_json_atomic, write_text_atomic
from sibrar.config import RunConfig, apply_overrides, dump_yaml, load_yaml, parse_run_config, to_dict
from sibrar.errors import ConfigError
from sibrar.train.trainer import Callback

ParamType = Literal["float", "int", "categorical", "subset"]
PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "items", "always", "min_size", "max_size", "when"}
CONDITIONS = {"in": lambda v, arg: v in arg, "not_in": lambda v, arg: v not in arg,
              "gt": lambda v, arg: v is not None and v > arg, "lt": lambda v, arg: v is not None and v < arg}


@dataclass(frozen=True)
class Param:
    """One searched config value. `when` lists (path, operator, argument) that must all hold."""

    path: str
    type: ParamType
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()  # categorical values (any YAML value), or subset choices as lists
    when: tuple[tuple[str, str, Any], ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "float":
            return trial.suggest_float(self.path, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.path, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        # Optuna stores categorical choices as primitives: keep each as its JSON text
        return json.loads(trial.suggest_categorical(self.path, [json.dumps(c) for c in self.choices]))

    def contains(self, value: Any) -> bool:
        if self.type in ("float", "int"):
            return isinstance(value, (int, float)) and self.low <= value <= self.high  # type: ignore[operator]
        if self.type == "subset":
            return isinstance(value, list) and any(sorted(value) == sorted(c) for c in self.choices)
        return any(json.dumps(value) == json.dumps(c) for c in self.choices)

    def encode(self, value: Any) -> Any:
        """A config value as Optuna stores it for this parameter (for enqueueing the default)."""
        if self.type in ("float", "int"):
            return value
        if self.type == "subset":  # the stored choice may list the same members in another order
            value = next(c for c in self.choices if sorted(c) == sorted(value))
        return json.dumps(value)

    def active(self, values: Mapping[str, Any]) -> bool:
        return all(CONDITIONS[op](values.get(path), arg) for path, op, arg in self.when)


@dataclass(frozen=True)
class Search:
    name: str
    base: dict[str, Any]  # a raw run config: data, split, train, eval, model
    params: tuple[Param, ...]
    metric: str = "ndcg@10"
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe", "seed": 42})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "median"})
    source: str = ""
    raw: dict[str, Any] = field(default_factory=dict)  # the file as parsed (after overrides), for workers

    @property
    def direction(self) -> str:
        from sibrar.experiment import lower_is_better

        return "minimize" if lower_is_better(self.metric) else "maximize"

    def config(self, values: Mapping[str, Any]) -> RunConfig:
        """The run config of a trial: the base with each searched value set at its path."""
        raw = apply_overrides(self.base, [f"{path}={json.dumps(value)}" for path, value in values.items()])
        return parse_run_config(raw, f"{self.source}: trial config")

    def defaults(self) -> dict[str, Any]:
        """Each parameter's value in the unmodified config (None when the path is unset there)."""
        resolved = to_dict(self.config({}))
        return {p.path: _lookup(resolved, p.path) for p in self.params}


# ------------------------------------------------------------------------------------ parsing


def load_search(path: str | Path, overrides: Sequence[str] = ()) -> Search:
    path = Path(path)
    return parse_search(apply_overrides(load_yaml(path), overrides), str(path), default_name=path.stem)


def parse_search(raw: Mapping[str, Any], where: str = "search", default_name: str = "study") -> Search:
    """Validate a search file completely, before any trial runs."""
    unknown = set(raw) - {"name", "base", "model", "search"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; valid keys: name, base, model, search")
    if not isinstance(raw.get("model"), Mapping):
        raise ConfigError(f"{where}: field 'model' must be the model section to tune (e.g. {{name: sibrar, ...}})")
    search = raw.get("search")
    if not isinstance(search, Mapping) or not isinstance(search.get("space"), Mapping) or not search["space"]:
        raise ConfigError(f"{where}: field 'search.space' must map config paths to parameter specs")
    extra = set(search) - {"metric", "sampler", "pruner", "space"}
    if extra:
        raise ConfigError(f"{where}: unknown key search.{sorted(extra)[0]}; valid keys: metric, sampler, pruner, space")
    base = {**dict(raw.get("base") or {}), "model": dict(raw["model"])}
    metric = str(search.get("metric", "ndcg@10"))
    base = apply_overrides(base, [f"train.monitor={metric}"])  # early stopping and pruning follow the objective
    default = parse_run_config(base, f"{where}: base + model")
    _check_metric(metric, default, where)
    resolved = to_dict(default)
    params = tuple(_parse_param(str(k), v, resolved, f"{where}: search.space.{k}") for k, v in search["space"].items())
    seen: set[str] = set()
    for p in params:
        for path, _, _ in p.when:
            if path not in seen and _lookup(resolved, path, missing=KeyError) is KeyError:
                raise ConfigError(f"{where}: search.space.{p.path}.when: {path!r} is neither an earlier parameter nor a config value")
        seen.add(p.path)
    out = Search(str(raw.get("name") or default_name), base, params, metric,
                 _component(search.get("sampler"), SAMPLERS, {"name": "tpe", "seed": 42}, f"{where}: search.sampler"),
                 _component(search.get("pruner"), PRUNERS, {"name": "median"}, f"{where}: search.pruner"), where,
                 {"name": str(raw.get("name") or default_name), **{k: v for k, v in raw.items() if k != "name"}})
    for p in params:  # every edge of the space must give a valid config
        for value in _probe_values(p):
            try:
                out.config({p.path: value})
            except ConfigError as exc:
                raise ConfigError(f"{where}: search.space.{p.path} = {value!r} gives an invalid config: {exc}") from exc
    return out


def _check_metric(metric: str, config: RunConfig, where: str) -> None:
    from sibrar.eval.metrics import METRICS

    name, _, k = metric.partition("@")
    METRICS.get(name)
    if not k.isdigit() or int(k) not in config.eval.ks:
        raise ConfigError(f"{where}: search.metric {metric!r}: expected METRIC@K with K in eval.ks {list(config.eval.ks)}")


def _parse_param(path: str, spec: Any, resolved: Mapping[str, Any], where: str) -> Param:
    if _lookup(resolved, path, missing=KeyError) is KeyError:
        raise ConfigError(f"{where}: unknown parameter {path!r}: no such value in the resolved config "
                          f"(sections: {', '.join(resolved)}); check the spelling against `sibrar train --help` configs")
    if not isinstance(spec, Mapping) or spec.get("type") not in ("float", "int", "categorical", "subset"):
        raise ConfigError(f"{where}: expected a mapping with type float|int|categorical|subset, got {spec!r}")
    bad = set(spec) - PARAM_KEYS
    if bad:
        raise ConfigError(f"{where}: unknown key {sorted(bad)[0]!r}; valid keys: {', '.join(sorted(PARAM_KEYS))}")
    kind = spec["type"]
    when = _parse_when(spec.get("when"), where)
    if kind in ("float", "int"):
        low, high = spec.get("low"), spec.get("high")
        if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
            raise ConfigError(f"{where}: empty or invalid range low={low!r} high={high!r}; expected numbers with low < high")
        log = bool(spec.get("log", False))
        if log and low <= 0:
            raise ConfigError(f"{where}: log=true needs low > 0, got low={low!r}")
        if kind == "int" and (int(low) != low or int(high) != high):
            raise ConfigError(f"{where}: int parameter needs integer bounds, got {low!r}..{high!r}")
        return Param(path, kind, float(low), float(high), log, spec.get("step"), when=when)
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{where}: 'choices' must be a non-empty list")
        return Param(path, kind, choices=tuple(choices), when=when)
    items, always = spec.get("items"), spec.get("always") or []
    if not isinstance(items, list) or not items or not isinstance(always, list):
        raise ConfigError(f"{where}: a subset needs 'items' (non-empty list) and optional 'always' (list)")
    lo, hi = int(spec.get("min_size", 1)), int(spec.get("max_size", len(items)))
    choices = tuple([*always, *combo] for r in range(lo, hi + 1) for combo in itertools.combinations(items, r))
    if not choices:
        raise ConfigError(f"{where}: no subset of {items} has a size in [{lo}, {hi}]")
    return Param(path, "subset", choices=choices, when=when)


def _parse_when(when: Any, where: str) -> tuple[tuple[str, str, Any], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping):
        raise ConfigError(f"{where}.when: expected {{path: [values]}} or {{path: {{gt|lt|in|not_in: value}}}}")
    out = []
    for path, cond in when.items():
        if isinstance(cond, Mapping):
            for op, arg in cond.items():
                if op not in CONDITIONS:
                    raise ConfigError(f"{where}.when.{path}: unknown operator {op!r}; expected one of {', '.join(CONDITIONS)}")
                out.append((str(path), str(op), arg))
        else:
            out.append((str(path), "in", list(cond) if isinstance(cond, list) else [cond]))
    return tuple(out)


def _probe_values(p: Param) -> list[Any]:
    if p.type == "float":
        return [p.low, p.high]
    if p.type == "int":
        return [int(p.low), int(p.high)]  # type: ignore[arg-type]
    return list(p.choices)


def _lookup(tree: Mapping[str, Any], path: str, missing: Any = None) -> Any:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return missing
        node = node[part]
    return node


# ------------------------------------------------------------------------------------ Optuna pieces

SAMPLERS = {"tpe": ("TPESampler", True), "random": ("RandomSampler", True), "gp": ("GPSampler", True),
            "cmaes": ("CmaEsSampler", True), "qmc": ("QMCSampler", True)}
PRUNERS = {"median": ("MedianPruner", False), "percentile": ("PercentilePruner", False),
           "hyperband": ("HyperbandPruner", False), "successive_halving": ("SuccessiveHalvingPruner", False),
           "none": ("NopPruner", False)}


def _component(spec: Any, table: Mapping[str, tuple[str, bool]], default: dict[str, Any], where: str) -> dict[str, Any]:
    spec = dict(default if spec is None else spec) if isinstance(spec, Mapping) or spec is None else None
    if spec is None or spec.get("name") not in table:
        raise ConfigError(f"{where}: expected {{name: {'|'.join(table)}, ...options}}")
    cls_name, seeded = table[spec["name"]]
    if seeded:
        spec.setdefault("seed", 42)
    import inspect

    import optuna

    cls = getattr(optuna.samplers if seeded else optuna.pruners, cls_name)
    allowed = set(inspect.signature(cls).parameters)
    bad = set(spec) - {"name"} - allowed
    if bad:
        raise ConfigError(f"{where}: {cls_name} has no option {sorted(bad)[0]!r}; options: {', '.join(sorted(allowed))}")
    return spec


def _build(spec: Mapping[str, Any], table: Mapping[str, tuple[str, bool]], seed_offset: int = 0) -> Any:
    import optuna

    cls_name, seeded = table[spec["name"]]
    options = {k: v for k, v in spec.items() if k != "name"}
    if seeded:  # parallel workers must not propose identical points
        options["seed"] = int(options["seed"]) + seed_offset
    return getattr(optuna.samplers if seeded else optuna.pruners, cls_name)(**options)


def open_storage(storage: str | None, out: Path) -> Any:
    """A journal file under `out` (default), a journal file path, or an SQLAlchemy URL, checked now."""
    import optuna

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
            raise ConfigError(f"--storage {_redact(storage)}: cannot open the study storage: {first}") from exc
    raise AssertionError("unreachable")


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    creds, at, host = rest.rpartition("@")
    return f"{scheme}{sep}{creds.partition(':')[0]}:***@{host}" if at and ":" in creds else url


def open_study(search: Search, storage: Any, study_name: str, *, seed_offset: int | None = None) -> Any:
    """Create or join a study; fail trials whose process on this host has died (resume).

    The sampler's seed is `search.sampler.seed + seed_offset`: offset 0 (reproducible) on a local
    journal, one derived from host and process id on a database that other machines may join.
    """
    import optuna

    if seed_offset is None:  # processes joining one database study from anywhere must not propose the same points
        seed_offset = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 100_000 \
            if isinstance(storage, optuna.storages.RDBStorage) else 0
    study = optuna.create_study(storage=storage, study_name=study_name, direction=search.direction,
                                sampler=_build(search.sampler, SAMPLERS, seed_offset),
                                pruner=_build(search.pruner, PRUNERS), load_if_exists=True)
    stored = study.user_attrs.get("search")
    fingerprint = dump_yaml({"base": search.base, "space": [p.__dict__ for p in search.params]})
    if stored is None:
        study.set_user_attr("search", fingerprint)
    elif stored != fingerprint:
        raise ConfigError(f"study {study_name!r} exists with a different search file; use another --study name")
    _fail_orphans(study)
    return study


def _fail_orphans(study: Any) -> None:
    import optuna

    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker", "")
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            study._storage.set_trial_user_attr(trial._trial_id, "error", "worker process died (study resumed)")
            study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)


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
        import optuna

        if self.key in logs:
            self.trial.report(float(logs[self.key]), step=epoch + 1)  # step 0 = the untrained model
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: {self.key} {logs[self.key]:.4f} below the pruner's threshold")


# ------------------------------------------------------------------------------------ running


@dataclass(frozen=True)
class Tracking:
    uri: str | None = None
    experiment: str = "sibrar"
    parent_run_id: str | None = None


def run_worker(search: Search, study: Any, trials: int, out: Path, *, tracking: Tracking = Tracking(),
               log: Callable[[str], None] = print) -> int:
    """Run trials until the study holds `trials` (all workers, all states); returns how many this worker ran.

    Runs through `Study.optimize`, so a database storage's heartbeat marks the trials of a worker that
    died on any machine as failed (and re-queues their parameters once).
    """
    import optuna

    from sibrar.train.run import prepare, train_run

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
                from sibrar.tracking import MLflowCallback

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
        value = float(result.valid.summary[search.metric])
        _write_trial(out, trial.number, config, result.train.history, result.valid.summary)
        if callback:
            callback.log_metrics({f"best_valid/{k}": v for k, v in result.valid.summary.items()})
            callback.end("FINISHED")
        log(f"trial {trial.number}: valid {search.metric} {value:.4f} ({time.perf_counter() - t0:.0f} s) {_short(values)}")
        return value

    if len(study.get_trials(deepcopy=False)) < trials:
        study.optimize(objective, catch=(Exception,), gc_after_trial=False,
                       callbacks=[optuna.study.MaxTrialsCallback(trials, states=None)])
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
    study.enqueue_trial(fixed, user_attrs={"default": True})


def study_parent_run(uri: str, experiment: str, study_name: str, search: Search) -> str:
    """The MLflow run every trial of a study nests under; workers on other machines find it by its tags."""
    from sibrar.tracking import find_or_create_run

    return find_or_create_run(uri, experiment=experiment, run_name=f"study-{study_name}",
                              tags={"optuna.study": study_name, "sibrar.role": "study", "sibrar.metric": f"valid/{search.metric}"})


# ------------------------------------------------------------------------------------ the command


@dataclass
class TuneResult:
    study_name: str
    best_value: float
    best_trial: int
    default_value: float | None
    best_config: RunConfig
    test: dict[str, float] | None
    counts: dict[str, int]
    out: Path


def tune(search: Search, trials: int, out: str | Path, *, storage: str | None = None, study_name: str | None = None,
         workers: int = 1, tracking: Tracking = Tracking(), final: bool = True,
         log: Callable[[str], None] = print) -> TuneResult | None:
    """Run (or resume, or join) a study with `workers` local processes, then test the best config once."""
    if trials < 0 or workers < 1:
        raise ConfigError(f"--trials must be >= 0 and --workers >= 1, got {trials} and {workers}")
    out = Path(out)
    study_name = study_name or search.name
    store = open_storage(storage, out)
    study = open_study(search, store, study_name)
    enqueue_default(search, study, log)
    if workers == 1:
        run_worker(search, study, trials, out, tracking=tracking, log=log)
    else:
        _spawn_workers(search, trials, out, storage or str(out / "study.journal"), study_name, workers, tracking)
    return finalize(search, open_study(search, store, study_name), out, tracking=tracking, log=log) if final else None


def _spawn_workers(search: Search, trials: int, out: Path, storage: str, study_name: str, workers: int,
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


def finalize(search: Search, study: Any, out: Path, *, tracking: Tracking = Tracking(), test: bool = True,
             log: Callable[[str], None] = print) -> TuneResult:
    """best.yaml (ready to run), trials.csv, plots, summary.json; the best config trained once and tested."""
    import optuna

    states = optuna.trial.TrialState
    all_trials = study.get_trials(deepcopy=False)
    counts = {s.name.lower(): sum(t.state == s for t in all_trials) for s in (states.COMPLETE, states.PRUNED, states.FAIL, states.RUNNING)}
    complete = [t for t in all_trials if t.state == states.COMPLETE]
    if not complete:
        raise ConfigError(f"study {study.study_name!r} has no completed trial yet ({counts}); run more trials")
    best = study.best_trial
    values = _trial_values(search, best)
    best_config = search.config(values)
    write_text_atomic(out / "best.yaml", f"# best of study {study.study_name!r}: trial {best.number}, valid {search.metric} "
                      f"{best.value:.4f}\n# run it: sibrar train {out / 'best.yaml'}\n" + dump_yaml(best_config))
    _write_trials_table(study, out)
    default = next((t.value for t in complete if t.user_attrs.get("default")), None)
    test_summary = None
    if test:
        from sibrar.train.run import train_run

        callbacks = []
        if tracking.uri:
            from sibrar.tracking import MLflowCallback

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
    log(f"study {study.study_name!r}: {counts['complete']} complete, {counts['pruned']} pruned, {counts['fail']} failed; "
        f"best trial {best.number} valid {search.metric} {best.value:.4f}"
        + (f" (default {default:.4f})" if default is not None else ""))
    if test_summary:
        log(f"test of the best config: {search.metric} {test_summary.get(search.metric, float('nan')):.4f}  -> {out / 'best_run'}")
    return TuneResult(study.study_name, best.value, best.number, default, best_config, test_summary, counts, out)


def _log_study(tracking: Tracking, summary: Mapping[str, Any], out: Path) -> None:
    """Best value and the study's files on the parent run, which then ends."""
    from sibrar.tracking import end_run, log_to_run

    assert tracking.uri and tracking.parent_run_id
    metrics = {"best_value": summary["best_value"], **{f"test_of_best/{k}": v for k, v in (summary.get("test_of_best") or {}).items()}}
    files = [out / name for name in ("best.yaml", "trials.csv", "summary.json", "history.png") if (out / name).is_file()]
    log_to_run(tracking.uri, tracking.parent_run_id, metrics=metrics, tags={"best_trial": str(summary["best_trial"])}, files=files)
    end_run(tracking.uri, tracking.parent_run_id)


def _trial_values(search: Search, trial: Any) -> dict[str, Any]:
    by_path = {p.path: p for p in search.params}
    return {k: v if by_path[k].type in ("float", "int") else json.loads(v) for k, v in trial.params.items()}


def _write_trials_table(study: Any, out: Path) -> None:
    import polars as pl

    rows = [{"number": t.number, "state": t.state.name, "value": t.value,
             "seconds": t.duration.total_seconds() if t.duration else None,
             "default": bool(t.user_attrs.get("default")), "error": t.user_attrs.get("error"),
             **{k: _readable(v) for k, v in t.params.items()}} for t in study.get_trials(deepcopy=False)]
    from sibrar._io import atomic_write

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
    import optuna

    from sibrar.report.figures import pyplot, save_figure

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
