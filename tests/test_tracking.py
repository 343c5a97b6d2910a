"""MLflow tracking: what a real `mlflow server` and a local sqlite store record, nested runs, bad URIs, a dying server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from sibrar.cli import main
from sibrar.config import RunConfig, parse_run_config
from sibrar.errors import ConfigError
from sibrar.tracking import (
    HTTP_DEFAULTS,
    LOCAL_URI,
    MLflowCallback,
    check_tracking_uri,
    flatten_config,
    metric_key,
    parent_run,
    resolve_tracking_uri,
)
from sibrar.train.run import git_commit, prepare, train_run
from sibrar.train.trainer import Callback

RUN_FILES = ("config.yaml", "manifest.json", "split.json", "history.csv", "metrics.json", "per_user.parquet", "model.pt")
DEAD_URI = "http://127.0.0.1:1"  # port 1 on loopback: nothing listens, the connection is refused at once
WARNING = "sibrar: warning: MLflow tracking stopped"
SERVER_START_S = 180  # `mlflow server` imports a lot; a busy 2-core machine needs its time


def tiny_config(dataset: Path, epochs: int = 2) -> RunConfig:
    return parse_run_config({
        "data": {"dataset": str(dataset), "k_core": 0},
        "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 8,
                  "item": {"modalities": ["interactions", "genres", "text"], "common_dim": 8, "branch": {"hidden": [8]}}},
        "train": {"epochs": epochs, "batch_size": 64, "lr": 0.001, "n_negatives": 3, "patience": 10},
        "eval": {"ks": [10]},
    })


@pytest.fixture(autouse=True)
def _isolated_mlflow_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No tracking URI from the machine; sibrar's HTTP retry defaults set here, so they are undone after each test."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in HTTP_DEFAULTS.items():
        monkeypatch.setenv(name, value)


@pytest.fixture(scope="module")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow sqlite database whose tables exist: MLflow's migrations take ~15 s, a copy takes none."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


def client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(uri)


def one_run(uri: str, experiment: str, **tags: str) -> Any:
    c = client(uri)
    filter_string = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = c.search_runs([c.get_experiment_by_name(experiment).experiment_id], filter_string=filter_string)
    assert len(runs) == 1, [r.data.tags for r in runs]
    return runs[0]


def logged_models(uri: str, run: Any) -> list[Any]:
    return client(uri).search_logged_models([run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'")


# ------------------------------------------------------------------------------------ no store needed


def test_resolve_tracking_uri_prefers_the_flag_then_the_environment_then_the_local_store(monkeypatch):
    assert resolve_tracking_uri() is None and resolve_tracking_uri(enabled=True) == LOCAL_URI == "sqlite:///mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert resolve_tracking_uri() == "http://tracking:5000" == resolve_tracking_uri(enabled=True)
    assert resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"


def test_config_params_and_metric_names_are_valid_mlflow_names(synthetic_shared_dir):
    from mlflow.utils.validation import validate_param_and_metric_name

    params = flatten_config(tiny_config(synthetic_shared_dir))
    assert params["train.lr"] == "0.001" and params["model.item.common_dim"] == "8" and params["eval.ks"] == "[10]"
    assert params["split.protocol"] == "cold_item" and params["train.grad_clip"] == "null"
    assert yaml.safe_load(params["model.item.modalities"]) == ["interactions", "genres", "text"]  # --set-able values
    assert metric_key("valid/ndcg@10") == "valid/ndcg_at_10"
    assert metric_key("test/view/item:-text@0.5/recall@20") == "test/view/item_-text_at_0.5/recall_at_20"
    for name in [*params, metric_key("test/view/item:genres+text/ndcg@10")]:
        assert validate_param_and_metric_name(name), name


def test_unreachable_server_is_a_config_error_before_training(synthetic_shared_dir, tmp_path, capsys):
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=re.escape(repr(DEAD_URI)) + ".*unreachable"):
        check_tracking_uri(DEAD_URI)
    assert time.perf_counter() - t0 < 10
    cfg = tmp_path / "run.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"dataset": str(synthetic_shared_dir), "k_core": 0}}), encoding="utf-8")
    run_dir = tmp_path / "run"
    capsys.readouterr()
    assert main(["train", str(cfg), "--out", str(run_dir), "--no-progress", "--tracking-uri", DEAD_URI]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sibrar: error: ") and DEAD_URI in err and len(err.splitlines()) == 1, err
    assert not run_dir.exists()  # nothing was written, nothing was trained


def test_local_stores_that_cannot_work_are_config_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/missing/mlflow.db")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(ConfigError, match="file store.*sqlite:///mlflow.db"):
        check_tracking_uri(str(tmp_path / "mlruns"))
    check_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")  # a new database in an existing folder is fine


# ------------------------------------------------------------------------------------ sqlite store, through the CLI


@dataclass
class CliStore:
    uri: str
    run_dir: Path
    results: Path


@pytest.fixture(scope="module")
def cli_store(synthetic_shared_dir: Path, template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CliStore]:
    """`sibrar train --mlflow`, `sibrar evaluate --mlflow` and `sibrar run --mlflow` into ./mlflow.db (no server)."""
    folder = tmp_path_factory.mktemp("cli-mlflow")
    shutil.copy(template_db, folder / "mlflow.db")
    cfg = folder / "run.yaml"
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset": str(synthetic_shared_dir), "k_core": 0}, "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 8, "item": {"modalities": ["interactions", "genres", "text"], "common_dim": 8,
                                                        "branch": {"hidden": [8]}}},
        "train": {"epochs": 2, "batch_size": 64, "lr": 0.001, "n_negatives": 3, "patience": 10}, "eval": {"ks": [10]}}), encoding="utf-8")
    experiment = folder / "exp.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "tiny", "base": {"data": {"dataset": str(synthetic_shared_dir), "k_core": 0},
                                 "split": {"protocol": "cold_item", "seed": 2}, "eval": {"ks": [10]}},
        "models": [{"label": "Pop", "model": {"name": "pop"}}, {"label": "Rand", "model": {"name": "rand"}}],
        "views": ["item:genres"]}), encoding="utf-8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)  # --mlflow means sqlite:///mlflow.db in the current folder
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert main(["train", str(cfg), "--out", "run", "--no-progress", "--mlflow"]) == 0
        assert main(["evaluate", "run", "--mlflow", "--view", "item:genres"]) == 0
        assert main(["run", str(experiment), "--out", "results", "--no-progress", "--mlflow"]) == 0
    yield CliStore(f"sqlite:///{folder / 'mlflow.db'}", folder / "run", folder / "results")


def test_train_logs_config_epochs_final_metrics_tags_files_and_model_to_sqlite(cli_store):
    run = one_run(cli_store.uri, "sibrar", command="train")
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["train.epochs"] == "2"
    history = client(cli_store.uri).get_metric_history(run.info.run_id, "valid/ndcg_at_10")
    assert sorted(m.step for m in history) == [0, 1, 2]  # step 0 = the untrained model, then one per epoch
    metrics = json.loads((cli_store.run_dir / "metrics.json").read_text())
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(metrics["test"]["ndcg@10"])
    manifest = json.loads((cli_store.run_dir / "manifest.json").read_text())
    assert run.data.tags["split_hash"] == manifest["split_hash"] and run.data.tags["protocol"] == "cold_item"
    artifacts = {a.path for a in client(cli_store.uri).list_artifacts(run.info.run_id)}
    assert {"metrics.json", "config.yaml", "history.csv", "split.json", "manifest.json"} <= artifacts
    assert not any(a.endswith(".pt") for a in artifacts)  # checkpoints stay local; the model is the PyTorch flavour
    models = {m.name: m for m in logged_models(cli_store.uri, run)}
    assert sorted(models) == ["model", "recommender"]  # the PyTorch flavour and the pyfunc recommender
    assert models["model"].status.name == "READY" and models["recommender"].status.name == "READY"
    assert (cli_store.run_dir.parent / "mlartifacts").is_dir()  # artifacts beside the database, not in the cwd's mlruns


def test_evaluate_logs_each_view_as_a_run_with_the_training_run_tags(cli_store):
    run = one_run(cli_store.uri, "sibrar", command="evaluate")
    written = json.loads((cli_store.run_dir / "evaluate-test.json").read_text())
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(written["all"]["ndcg@10"])
    assert run.data.metrics["test/view/item_genres/ndcg_at_10"] == pytest.approx(written["item:genres"]["ndcg@10"])
    assert run.data.tags["dataset"] == "synthetic-small" and run.data.tags["part"] == "test"
    assert run.data.tags["split_hash"] == one_run(cli_store.uri, "sibrar", command="train").data.tags["split_hash"]
    assert {a.path for a in client(cli_store.uri).list_artifacts(run.info.run_id)} == {"evaluate-test.json"}


def test_run_nests_each_model_under_one_experiment_run_with_the_report_files(cli_store):
    parent = one_run(cli_store.uri, "sibrar", command="run", **{"mlflow.runName": "tiny"})
    assert parent.info.status == "FINISHED" and json.loads(parent.data.params["models"]) == ["Pop", "Rand"]
    artifacts = {a.path for a in client(cli_store.uri).list_artifacts(parent.info.run_id)}
    assert {"results.md", "results.csv", "results.json", "metrics.png", "training_curves.png"} <= artifacts
    results = json.loads((cli_store.results / "results.json").read_text())
    for label in ("Pop", "Rand"):
        child = one_run(cli_store.uri, "sibrar", **{"mlflow.parentRunId": parent.info.run_id, "label": label})
        assert child.info.status == "FINISHED"
        assert child.data.metrics["test/ndcg_at_10"] == pytest.approx(results["models"][label]["test"]["ndcg@10"])
        assert "test/view/item_genres/ndcg_at_10" in child.data.metrics


# ------------------------------------------------------------------------------------ a real MLflow server


class Server:
    """`mlflow server` on a free loopback port with its own sqlite store and artifact folder."""

    def __init__(self, folder: Path, template: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(template, folder / "mlflow.db")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.uri = f"http://127.0.0.1:{port}"
        self.log = folder / "server.log"
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"  # no job-runner process: a faster start
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                 "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
                 "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)  # its own group: stop() ends its workers too
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy after {SERVER_START_S} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, to the process group this test started (the server and its uvicorn worker)."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return  # the whole group is gone
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                continue
            time.sleep(0.5)  # let the worker finish its own shutdown; the SIGKILL round catches a straggler

    @property
    def running(self) -> bool:
        return self.proc.poll() is None


@pytest.fixture(scope="module")
def _servers(template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for srv in started:
        srv.stop()


@pytest.fixture
def server(_servers: list[Server], template_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """A running server, shared by the tests of this module (a start costs 20-40 s); restarted if a test stopped it."""
    if not _servers or not _servers[-1].running:
        _servers.append(Server(tmp_path_factory.mktemp("mlflow-server"), template_db))
    return _servers[-1]


@pytest.mark.services
def test_server_records_params_epoch_metrics_final_metrics_tags_artifacts_and_model(server, synthetic_shared_dir, tmp_path,
                                                                                     monkeypatch):
    config = tiny_config(synthetic_shared_dir, epochs=2)
    tracker = MLflowCallback(config, uri=server.uri, experiment="sibrar-test", run_name="tiny", tags={"purpose": "test"})
    tracker.start()
    result = train_run(config, tmp_path / "run", callbacks=[tracker], progress=False)
    tracker.log_result(result)

    c = client(server.uri)
    run = c.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny"
    assert run.data.params["train.lr"] == "0.001" and run.data.params["model.name"] == "sibrar"
    history = c.get_metric_history(tracker.run_id, "valid/ndcg_at_10")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
        [row["valid/ndcg@10"] for row in result.train.history])
    assert len(c.get_metric_history(tracker.run_id, "train/loss")) == 2  # epochs 0 and 1; the untrained model has no loss
    assert run.data.metrics["test/ndcg_at_10"] == pytest.approx(result.test.summary["ndcg@10"])
    assert run.data.metrics["best_valid/ndcg_at_10"] == pytest.approx(result.valid.summary["ndcg@10"])
    tags = run.data.tags
    assert tags["dataset"] == "synthetic-small" and tags["synthetic"] == "true" and tags["protocol"] == "cold_item"
    assert tags["model"] == "sibrar" and tags["split_hash"] == result.prepared.split.hash and tags["purpose"] == "test"
    assert tags.get("git_commit") == git_commit()
    artifacts = {a.path for a in c.list_artifacts(tracker.run_id)}
    assert {"metrics.json", "history.csv", "config.yaml", "split.json", "manifest.json"} <= artifacts

    (model,) = [m for m in logged_models(server.uri, run) if m.name == "model"]
    assert model.status.name == "READY"
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)  # models:/ URIs resolve through the global tracking URI
    loaded = mlflow.pytorch.load_model(f"models:/{model.model_id}")
    expected = result.model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


class RaiseAt(Callback):
    def __init__(self, epoch: int, exc: BaseException) -> None:
        self.epoch, self.exc = epoch, exc

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.epoch:
            raise self.exc


@pytest.mark.services
def test_trials_nest_under_a_parent_run_and_end_with_their_status(server, synthetic_shared_dir):
    config = tiny_config(synthetic_shared_dir, epochs=1)
    cache: dict[Any, Any] = {}
    with parent_run(server.uri, experiment="sibrar-nested", run_name="study", params={"search.metric": "ndcg@10"},
                    tags={"sibrar.role": "study"}) as parent_id:
        done = MLflowCallback(config, uri=server.uri, experiment="sibrar-nested", run_name="trial-0", parent_run_id=parent_id)
        done.log_result(train_run(config, None, callbacks=[done], progress=False, prepared=prepare(config, cache)),
                        log_model=False)
        pruned = MLflowCallback(config, uri=server.uri, experiment="sibrar-nested", run_name="trial-1", parent_run_id=parent_id)
        with pytest.raises(KeyError):  # stands in for optuna.TrialPruned raised by a pruning callback
            train_run(config, None, callbacks=[pruned, RaiseAt(-1, KeyError("pruned"))], progress=False,
                      prepared=prepare(config, cache))
        pruned.end("KILLED")
    with pytest.raises(RuntimeError), parent_run(server.uri, experiment="sibrar-nested", run_name="broken") as broken_id:
        raise RuntimeError("the study failed")

    c = client(server.uri)
    parent = c.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.params["search.metric"] == "ndcg@10"
    assert c.get_run(broken_id).info.status == "FAILED"
    children = c.search_runs([parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'")
    assert {r.info.run_name: r.info.status for r in children} == {"trial-0": "FINISHED", "trial-1": "KILLED"}
    assert all(r.info.experiment_id == parent.info.experiment_id for r in children)


class StopServerAt(Callback):
    def __init__(self, server: Server, epoch: int) -> None:
        self.server, self.epoch = server, epoch

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if epoch == self.epoch:
            self.server.stop()


@pytest.mark.services
def test_server_dying_mid_run_warns_once_and_training_completes_the_run_folder(server, synthetic_shared_dir, tmp_path,
                                                                              capsys):
    config = tiny_config(synthetic_shared_dir, epochs=3)
    tracker = MLflowCallback(config, uri=server.uri, experiment="sibrar-dying")
    tracker.start()
    capsys.readouterr()
    result = train_run(config, tmp_path / "run", callbacks=[tracker, StopServerAt(server, 0)], progress=False)
    tracker.log_result(result)  # nothing more is tried, nothing raises
    assert not server.running
    assert [row["epoch"] for row in result.train.history] == [-1, 0, 1, 2]
    for name in RUN_FILES:
        assert (tmp_path / "run" / name).is_file(), name
    err = capsys.readouterr().err
    assert err.count(WARNING) == 1 and tracker.run_id in err, err
