"""MLflow tracking from outside the training loop: a Trainer callback, parent runs for studies, URI checks.

Runs are addressed by id through `mlflow.MlflowClient`, never through MLflow's global "active run",
so trials in threads or processes can log side by side. MLflow is imported lazily (it takes seconds).

A tracking problem before training (unreachable server, bad URI) is a `ConfigError`. Once a run has
started, a failing MLflow call never stops training: the first failure prints one warning on stderr
and the callback stops logging for that run; the local run folder stays the complete record.
"""

from __future__ import annotations

import json
import numbers
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from sibrar.config import RunConfig, to_dict
from sibrar.errors import ConfigError
from sibrar.train.trainer import Callback, Trainer, TrainResult

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from sibrar.train.run import Prepared, RunResult

LOCAL_URI = "sqlite:///mlflow.db"  # `--mlflow` without a URI; MLflow 3 refuses a ./mlruns file store by default
DEFAULT_EXPERIMENT = "sibrar"
CHECK_TIMEOUT_S = 3.0
# MLflow retries a failed HTTP request 7 times with exponential backoff (minutes); a tracking server
# that went away must cost training seconds, not minutes. Set these variables yourself to override.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
SKIPPED_ARTIFACTS = (".pt",)  # checkpoints and the state dict: the model is logged in the PyTorch flavour instead
_DB_PORTS = {"postgresql": 5432, "postgres": 5432, "mysql": 3306, "mssql": 1433}
_FLUENT_LOCK = threading.Lock()  # guards MLflow's global tracking URI while a model is logged


# ------------------------------------------------------------------------------------ the URI


def resolve_tracking_uri(explicit: str | None = None, *, enabled: bool = False) -> str | None:
    """The tracking URI to log to: `explicit` > $MLFLOW_TRACKING_URI > LOCAL_URI if `enabled` > None (off)."""
    if explicit:
        return explicit
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return LOCAL_URI if enabled else None


def check_tracking_uri(uri: str, *, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Fail fast, before any training, when `uri` cannot be a working MLflow store.

    http(s): GET /health within `timeout` s; sqlite: the database's folder exists and is writable;
    postgresql/mysql/mssql: a TCP connection to the host; file stores: refused unless
    MLFLOW_ALLOW_FILE_STORE=true (as MLflow 3 does). Other schemes are left to MLflow.
    """
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    base = scheme.partition("+")[0]  # postgresql+psycopg2 -> postgresql
    if scheme in ("http", "https"):
        _check_http(uri, timeout)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif base in _DB_PORTS:
        host, port = parsed.hostname or "localhost", parsed.port or _DB_PORTS[base]
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as exc:
            raise ConfigError(_unreachable(uri, f"no connection to {host}:{port} within {timeout:g} s ({exc})")) from exc
    elif scheme in ("", "file") or len(scheme) == 1:  # a path, file:///…, or a Windows drive letter
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() not in ("1", "true", "yes"):
            raise ConfigError(f"MLflow tracking URI {uri!r} is a file store, which MLflow 3 refuses; use a database "
                              f"such as {LOCAL_URI} (what --mlflow gives) or a tracking server URL "
                              f"(or set MLFLOW_ALLOW_FILE_STORE=true)")
    else:
        try:
            from mlflow.tracking._tracking_service.utils import _get_store

            _get_store(uri)
        except Exception as exc:
            raise ConfigError(f"MLflow tracking URI {uri!r} is not usable: {_one_line(exc)}; expected http(s)://HOST:PORT, "
                              f"sqlite:///FILE.db or a database URL") from exc


def _check_http(uri: str, timeout: float) -> None:
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:
        if exc.code >= 500:
            raise ConfigError(_unreachable(uri, f"{url} answered HTTP {exc.code}")) from exc
        return  # reachable (a proxy or auth in front); MLflow reports the details when the run starts
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConfigError(_unreachable(uri, f"no answer from {url} within {timeout:g} s ({reason})")) from exc


def _check_sqlite(uri: str) -> None:
    path = uri.partition(":///")[2]
    if not path or path == ":memory:":
        return
    folder = Path(path).parent
    if not folder.is_dir():
        raise ConfigError(f"MLflow tracking URI {uri!r}: folder {str(folder)!r} does not exist; create it or "
                          f"point the URI at an existing folder (e.g. {LOCAL_URI})")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"MLflow tracking URI {uri!r}: folder {str(folder)!r} is not writable")


def _unreachable(uri: str, reason: str) -> str:
    return (f"MLflow tracking URI {uri!r} is unreachable: {reason}. Start the server, fix --tracking-uri or "
            f"$MLFLOW_TRACKING_URI, or use --mlflow alone for a local {LOCAL_URI} store")


# ------------------------------------------------------------------------------------ names and values


def metric_key(name: str) -> str:
    """The MLflow name of a sibrar key: `valid/ndcg@10` -> `valid/ndcg_at_10`.

    MLflow allows only letters, digits and `_ - . / space` in metric and param names.
    """
    return re.sub(r"[^\w./\- ]", "_", name.replace("@", "_at_").replace("+", "_plus_"))


def flatten_config(config: Any) -> dict[str, str]:
    """A config as MLflow params: dotted keys (`train.lr`, `model.item.common_dim`), YAML-readable values."""
    out: dict[str, str] = {}

    def walk(value: Any, where: str) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(sub, f"{where}.{key}" if where else str(key))
        else:
            out[metric_key(where)] = _param_value(value)

    walk(to_dict(config), "")
    return out


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:6000]  # MLflow's limit for a param value


def run_tags(config: RunConfig | None = None, *, prepared: Prepared | None = None) -> dict[str, str]:
    """Tags that find a run again: model, dataset, synthetic, protocol, split hash, git commit."""
    from sibrar.train.run import git_commit

    tags: dict[str, str] = {}
    if config is not None:
        tags["model"] = str(config.model.name)
        tags["dataset"] = Path(config.data.dataset).name
        tags["protocol"] = config.split.protocol
    if prepared is not None:
        tags.update(dataset=prepared.dataset.name, synthetic=str(prepared.dataset.synthetic).lower(),
                    protocol=prepared.split.protocol, split_hash=prepared.split.hash)
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit  # shown by the MLflow UI
    return tags


def _warn(message: str) -> None:
    sys.stderr.write(f"sibrar: warning: {message}\n")
    sys.stderr.flush()


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _now_ms() -> int:
    return int(time.time() * 1000)


# ------------------------------------------------------------------------------------ MLflow plumbing


def _client(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    if urlparse(uri).scheme.lower() in ("http", "https"):
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment `name`, created when missing (another worker may create it at the same time)."""
    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return str(client.create_experiment(name, artifact_location=_local_artifact_root(uri)))
        except Exception:
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise ConfigError(f"MLflow experiment {name!r} at {uri!r} is deleted; restore it (mlflow experiments restore) "
                          f"or pick another name with --mlflow-experiment")
    return str(found.experiment_id)


def _local_artifact_root(uri: str) -> str | None:
    """Artifacts of a sqlite store go beside the database file (not into whatever folder is current)."""
    if urlparse(uri).scheme.lower() != "sqlite":
        return None
    path = uri.partition(":///")[2]
    if not path or path == ":memory:":
        return None
    return (Path(path).resolve().parent / "mlartifacts").as_uri()


def _log_batch(client: MlflowClient, run_id: str, *, metrics: Iterable[Any] = (), params: Mapping[str, str] | None = None,
               tags: Mapping[str, str] | None = None) -> None:
    from mlflow.entities import Param, RunTag

    metric_list = list(metrics)
    param_list = [Param(k, v) for k, v in (params or {}).items()]
    tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(0, len(metric_list), 1000):  # MLflow's batch limits: 1000 metrics, 100 params/tags
        client.log_batch(run_id, metrics=metric_list[i:i + 1000])
    for i in range(0, len(param_list), 100):
        client.log_batch(run_id, params=param_list[i:i + 100])
    for i in range(0, len(tag_list), 100):
        client.log_batch(run_id, tags=tag_list[i:i + 100])


def _metrics(values: Mapping[str, Any], step: int, prefix: str = "") -> list[Any]:
    from mlflow.entities import Metric

    now = _now_ms()
    return [Metric(metric_key(prefix + k), float(v), now, step) for k, v in values.items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool)]  # numpy scalars included


@contextmanager
def _global_tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking URI at `uri` for a fluent-only call, then restore it exactly."""
    import mlflow
    from mlflow.tracking._tracking_service import utils

    with _FLUENT_LOCK:
        before, env_before = utils._tracking_uri, os.environ.get("MLFLOW_TRACKING_URI")
        mlflow.set_tracking_uri(uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(before)  # type: ignore[arg-type]  # None is accepted: back to the default
            if env_before is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = env_before


def _requirements() -> list[str]:
    import torch

    from sibrar.train.run import _version

    return [f"torch=={torch.__version__.split('+')[0]}", f"sibrar=={_version()}"]


# ------------------------------------------------------------------------------------ the callback


class MLflowCallback(Callback):
    """Logs one training run to MLflow: params, per-epoch metrics, final metrics, artifacts, the model.

    Steps: the untrained model (trainer epoch -1) is step 0 and epoch e is step e + 1, i.e. the step
    counts finished training epochs. Metric names follow `metric_key` (`valid/ndcg@10` is logged as
    `valid/ndcg_at_10`); final metrics are `test/...`, `test/<group>/...` and `best_valid/...` (the
    restored best epoch). Use: pass it to `train_run(callbacks=[cb])`, then `cb.log_result(result)`
    on success or `cb.end("FAILED" | "KILLED")` otherwise. Call `start()` before training to turn a
    tracking problem into a ConfigError up front; otherwise `on_train_begin` starts the run.
    """

    def __init__(self, config: RunConfig, *, uri: str, experiment: str = DEFAULT_EXPERIMENT, run_name: str | None = None,
                 parent_run_id: str | None = None, tags: Mapping[str, str] | None = None) -> None:
        self.config, self.uri, self.experiment = config, uri, experiment
        self.run_name, self.parent_run_id = run_name, parent_run_id
        self.tags = dict(tags or {})
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._disabled = False  # set by the first failed MLflow call: the run logs nothing more
        self._ended = False
        self._logged_epochs: set[int] = set()

    # -------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Create the run (tags, the flattened config as params) and return its id; ConfigError if MLflow refuses."""
        if self.run_id is not None:
            return self.run_id
        try:
            self._client = _client(self.uri)
            self.experiment_id = _experiment_id(self._client, self.experiment, self.uri)
            tags = {**run_tags(self.config), **self.tags}
            if self.parent_run_id:
                tags["mlflow.parentRunId"] = self.parent_run_id
            run = self._client.create_run(self.experiment_id, tags=tags, run_name=self.run_name)
            self.run_id = run.info.run_id
            _log_batch(self._client, self.run_id, params=flatten_config(self.config))
        except ConfigError:
            raise
        except Exception as exc:
            if self.run_id is not None:  # created, but its params were refused: do not leave it RUNNING
                self.end("FAILED")
            raise ConfigError(f"MLflow tracking URI {self.uri!r}: cannot start a run in experiment "
                              f"{self.experiment!r}: {_one_line(exc)}") from exc
        return self.run_id

    def end(self, status: str = "FINISHED") -> None:
        """End the run with `status` (FINISHED, FAILED, KILLED); later calls do nothing."""
        if status not in RUN_STATUSES:
            raise ConfigError(f"MLflow run status {status!r}; expected one of {', '.join(RUN_STATUSES)}")
        if self.run_id is None or self._ended:
            return
        self._ended = True
        if not self._disabled:
            self._guard("ending the run", lambda: self._live_client().set_terminated(self.run_id, status))
            return
        try:  # logging stopped after a failure: still try once, silently, not to leave the run RUNNING
            self._live_client().set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001, S110 (already warned once for this run)
            pass

    # -------------------------------------------------------------- Trainer hooks

    def on_train_begin(self, trainer: Trainer) -> None:
        if self.run_id is None and not self._guard("starting the run", self.start):
            return
        tags = {"protocol": trainer.split.protocol, "split_hash": trainer.split.hash}
        manifest = trainer.run_dir / "manifest.json" if trainer.run_dir is not None else None
        if manifest is not None and manifest.is_file():
            saved = json.loads(manifest.read_text(encoding="utf-8"))
            tags.update(dataset=str(saved.get("dataset")), synthetic=str(bool(saved.get("synthetic"))).lower(),
                        run_dir=str(trainer.run_dir.resolve()))  # type: ignore[union-attr]
        self.set_tags(tags)

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._logged_epochs.add(epoch)
        self.log_metrics({k: v for k, v in logs.items() if k != "epoch"}, step=epoch + 1)

    def on_train_end(self, result: TrainResult) -> None:
        # a resumed run reports only its new epochs live: log the earlier ones from the history
        missing = [logs for logs in result.history if int(logs.get("epoch", -1)) not in self._logged_epochs]
        for logs in missing:
            self.on_epoch_end(int(logs["epoch"]), logs)
        self.log_metrics({"best_epoch": result.best_epoch, "stopped_early": float(result.stopped_early)})

    # -------------------------------------------------------------- results

    def log_result(self, result: RunResult, *, log_model: bool = True) -> None:
        """Final metrics, tags from the prepared data, the run folder's files and the model; then end the run."""
        if self.run_id is None and not self._guard("starting the run", self.start):
            return
        self.set_tags(run_tags(self.config, prepared=result.prepared))
        metrics = {f"best_valid/{k}": v for k, v in result.valid.summary.items()}
        if result.test is not None:  # None for tuning trials, which never look at test data
            metrics.update({f"test/{k}": v for k, v in result.test.summary.items()})
            for group, summary in result.test.groups.items():
                metrics.update({f"test/{group}/{k}": v for k, v in summary.items()})
        self.log_metrics(metrics)
        if result.run_dir is not None:
            files = [p for p in sorted(result.run_dir.rglob("*")) if p.is_file() and p.suffix not in SKIPPED_ARTIFACTS]
            self.log_artifacts(files, root=result.run_dir)
        if log_model:
            self._guard("logging the model", lambda: self._log_model(result.model))
            self._guard("logging the recommender model", lambda: self._log_recommender(result))
        self.end("FINISHED")

    def log_metrics(self, metrics: Mapping[str, Any], *, step: int = 0) -> None:
        """Numeric values under their `metric_key` names (others are skipped)."""
        if self.run_id is not None and metrics:
            self._guard("logging metrics", lambda: _log_batch(self._live_client(), self.run_id, metrics=_metrics(metrics, step)))  # type: ignore[arg-type]

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.run_id is not None and tags:
            self._guard("setting tags", lambda: _log_batch(self._live_client(), self.run_id, tags=tags))  # type: ignore[arg-type]

    def log_artifacts(self, paths: Iterable[Path], *, root: Path | None = None) -> None:
        """Upload files; with `root`, each keeps its folder relative to `root` (e.g. plots/curve.png)."""
        def upload() -> None:
            client = self._live_client()
            for path in paths:
                folder = path.parent.relative_to(root).as_posix() if root is not None else "."
                client.log_artifact(self.run_id, str(path), None if folder == "." else folder)

        if self.run_id is not None:
            self._guard("uploading artifacts", upload)

    def _log_model(self, model: Any) -> None:
        """The model in MLflow's PyTorch flavour, as an MLflow 3 LoggedModel named "model" of this run.

        `mlflow.pytorch.log_model` reads the global tracking URI and, without `model_id`, puts the model
        in the globally active experiment; so the LoggedModel is created here in the run's experiment
        and the global URI is pointed at ours only for the call (under a lock).
        """
        import mlflow.pytorch

        client = self._live_client()
        logged = client.create_logged_model(self.experiment_id, name="model", source_run_id=self.run_id,  # type: ignore[arg-type]
                                            tags={"model": str(self.config.model.name)})
        with _global_tracking_uri(self.uri):
            mlflow.pytorch.log_model(model, name="model", model_id=logged.model_id, run_id=self.run_id,
                                     pip_requirements=_requirements(), serialization_format="pickle")

    def _log_recommender(self, result: RunResult) -> None:
        """The run as an MLflow pyfunc LoggedModel named "recommender": predict(user ids) → top-k.

        Logged next to the PyTorch flavour; its arrays travel with it, so `mlflow models serve`
        answers without the dataset (see sibrar.serve.pyfunc).
        """
        import tempfile

        import mlflow.pyfunc

        from sibrar.serve.pyfunc import ARTIFACT, RecommenderModel, export_arrays

        client = self._live_client()
        logged = client.create_logged_model(self.experiment_id, name="recommender", source_run_id=self.run_id,  # type: ignore[arg-type]
                                            tags={"model": str(self.config.model.name)})
        with tempfile.TemporaryDirectory() as tmp, _global_tracking_uri(self.uri):
            arrays = export_arrays(result.model, result.prepared, Path(tmp) / "recommender.npz")
            mlflow.pyfunc.log_model(name="recommender", python_model=RecommenderModel(), artifacts={ARTIFACT: str(arrays)},
                                    model_id=logged.model_id, pip_requirements=[*_requirements(), "pandas", "numpy"])

    # -------------------------------------------------------------- failure handling

    def _live_client(self) -> MlflowClient:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def _guard(self, what: str, call: Callable[[], Any]) -> bool:
        """Run an MLflow call; on the first failure warn once and stop logging. True if it ran and succeeded."""
        if self._disabled:
            return False
        try:
            call()
            return True
        except Exception as exc:  # noqa: BLE001 (any MLflow failure: warn, never stop training)
            self._disabled = True
            run = f"run {self.run_id}" if self.run_id else f"a run in experiment {self.experiment!r}"
            _warn(f"MLflow tracking stopped for {run} at {self.uri} ({what} failed: {_one_line(exc)}); "
                  f"training goes on and the local run folder is complete")
            return False


# ------------------------------------------------------------------------------------ parent runs


@contextmanager
def parent_run(uri: str, *, experiment: str, run_name: str, params: Mapping[str, Any] = {},
               tags: Mapping[str, str] = {}) -> Iterator[str]:
    """A run that groups others (a tuning study, an experiment's models); yields its id.

    Pass the id as `MLflowCallback(parent_run_id=...)` to nest a run under it. Ends FINISHED, or FAILED
    (KILLED on Ctrl-C) when the block raises. ConfigError if it cannot be created.
    """
    client = _client(uri)
    try:
        experiment_id = _experiment_id(client, experiment, uri)
        run = client.create_run(experiment_id, tags={**run_tags(), **{k: str(v) for k, v in tags.items()}}, run_name=run_name)
        run_id = run.info.run_id
        if params:
            _log_batch(client, run_id, params={metric_key(k): _param_value(v) for k, v in params.items()})
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"MLflow tracking URI {uri!r}: cannot start a run in experiment {experiment!r}: "
                          f"{_one_line(exc)}") from exc
    status = "FAILED"
    try:
        yield run_id
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        try:
            client.set_terminated(run_id, status)
        except Exception as exc:  # noqa: BLE001 (ending is best effort)
            _warn(f"MLflow: could not end parent run {run_id} at {uri} ({_one_line(exc)})")


def find_or_create_run(uri: str, *, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    """The id of the run carrying all of `tags` (e.g. a tuning study's parent, shared by its workers), else a new one."""
    client = _client(uri)
    try:
        experiment_id = _experiment_id(client, experiment, uri)
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        found = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if found:
            return str(found[0].info.run_id)
        return str(client.create_run(experiment_id, tags={**run_tags(), **tags}, run_name=run_name).info.run_id)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"MLflow tracking URI {uri!r}: cannot find or start run {run_name!r}: {_one_line(exc)}") from exc


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ended (best effort: a warning when the server is gone)."""
    try:
        _client(uri).set_terminated(run_id, status)
    except Exception as exc:  # noqa: BLE001
        _warn(f"MLflow: could not end run {run_id} at {uri} ({_one_line(exc)})")


def log_to_run(uri: str, run_id: str, *, metrics: Mapping[str, Any] | None = None, tags: Mapping[str, str] | None = None,
               files: Iterable[Path] = ()) -> bool:
    """Add metrics, tags and files to an existing run (e.g. a parent run); warn and return False on failure."""
    try:
        client = _client(uri)
        _log_batch(client, run_id, metrics=_metrics(metrics or {}, 0), tags=tags)
        for path in files:
            client.log_artifact(run_id, str(path))
        return True
    except Exception as exc:  # noqa: BLE001 (the local files are the record)
        _warn(f"MLflow: logging to run {run_id} at {uri} failed ({_one_line(exc)}); the local files are complete")
        return False
