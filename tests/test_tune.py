"""`sibrar tune`: search files validated up front, real Optuna studies (journal file and PostgreSQL with
two worker processes), the default config as trial 0, pruning, failed trials, resuming, best config tested."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest
import yaml

from sibrar.cli import main
from sibrar.config import load_run_config
from sibrar.errors import ConfigError
from sibrar.tune import enqueue_default, load_search, open_storage, open_study, parse_search
from sibrar.tune.study import suggest

# MF learns this seeded synthetic data within one epoch at lr 0.05 and not at all at lr 1e-9, so a
# trial with the tiny learning rate is reliably below the median of the good ones: it gets pruned.
SPACE = {"train.lr": {"type": "categorical", "choices": [0.05, 1.0e-9]},
         "model.dim": {"type": "int", "low": 8, "high": 16, "step": 8}}


@pytest.fixture(scope="module")
def signal_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sibrar.data.sources.synthetic import generate_synthetic_onion

    folder = tmp_path_factory.mktemp("onion") / "synthetic-onion"
    return generate_synthetic_onion(folder, n_users=200, n_items=300, density=0.05, seed=3)


def search_file(folder: Path, dataset: Path, space: dict[str, Any] | None = None, **search: Any) -> Path:
    data = {
        "name": "tiny-mf",
        "base": {"data": {"dataset": str(dataset), "k_core": 0}, "split": {"protocol": "random", "seed": 1},
                 "train": {"epochs": 3, "batch_size": 512, "n_negatives": 2, "patience": 3, "lr": 0.05},
                 "eval": {"ks": [10]}},
        "model": {"name": "mf", "dim": 16},
        "search": {"metric": "ndcg@10", "sampler": {"name": "random", "seed": 5},
                   "pruner": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 1},
                   "space": space if space is not None else SPACE, **search},
    }
    path = folder / "search.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("space", "message"), [
    ({"train.lrr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "unknown parameter 'train.lrr'"),
    ({"model.item.lr": {"type": "float", "low": 1e-4, "high": 1e-2}}, "unknown parameter 'model.item.lr'"),
    ({"train.lr": {"type": "float", "low": 1e-2, "high": 1e-2}}, "empty or invalid range"),
    ({"train.lr": {"type": "float", "low": 0.0, "high": 1e-2, "log": True}}, "log=true needs low > 0"),
    ({"train.lr": {"type": "uniform", "low": 0.1, "high": 1}}, "type float|int|categorical|subset"),
    ({"model.dim": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"model.dim": {"type": "int", "low": 8, "high": 16, "stepp": 2}}, "unknown key 'stepp'"),
    ({"train.batch_size": {"type": "categorical", "choices": [512, 0]}}, "train.batch_size = 0 gives an invalid config"),
    ({"model.dim": {"type": "int", "low": 8, "high": 16, "when": {"train.nope": [1]}}}, "'train.nope' is neither"),
    ({}, "search.space"),
])
def test_bad_search_spaces_fail_before_any_trial(tmp_path: Path, synthetic_shared_dir: Path, space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("|", r"\|").replace("(", r"\(")):
        load_search(search_file(tmp_path, synthetic_shared_dir, space))


def test_bad_metric_sampler_and_pruner_options_are_named(tmp_path: Path, synthetic_shared_dir: Path) -> None:
    with pytest.raises(ConfigError, match="ndcg@20"):
        load_search(search_file(tmp_path, synthetic_shared_dir, metric="ndcg@20"))
    with pytest.raises(ConfigError, match="TPESampler has no option 'n_startup'"):
        load_search(search_file(tmp_path, synthetic_shared_dir, sampler={"name": "tpe", "n_startup": 3}))
    with pytest.raises(ConfigError, match="search.pruner"):
        load_search(search_file(tmp_path, synthetic_shared_dir, pruner={"name": "asha"}))


def test_unreachable_storage_is_an_error_before_any_trial(tmp_path: Path, synthetic_shared_dir: Path) -> None:
    path = search_file(tmp_path, synthetic_shared_dir)
    code = main(["tune", str(path), "--trials", "2", "--out", str(tmp_path / "out"),
                 "--storage", "postgresql+psycopg2://me:secret@127.0.0.1:1/optuna"])
    assert code == 2
    assert not (tmp_path / "out" / "trials").exists()
    with pytest.raises(ConfigError, match=r"me:\*\*\*@127.0.0.1:1") as info:
        open_storage("postgresql+psycopg2://me:secret@127.0.0.1:1/optuna", tmp_path)
    assert "secret" not in str(info.value)


def test_subsets_and_conditional_parameters(tmp_path: Path, synthetic_shared_dir: Path) -> None:
    space = {
        "model.item.modalities": {"type": "subset", "items": ["genres", "text"], "always": ["interactions"]},
        "model.item.sampling": {"type": "categorical", "choices": ["single", "pairwise"]},
        "model.item.temperature": {"type": "float", "low": 0.05, "high": 0.5, "when": {"model.item.sampling": ["pairwise"]}},
    }
    raw = yaml.safe_load(search_file(tmp_path, synthetic_shared_dir, space).read_text())
    raw["model"] = {"name": "sibrar", "dim": 8, "item": {"modalities": ["interactions", "genres"], "common_dim": 8}}
    search = parse_search(raw)
    subset = search.params[0]
    assert sorted(map(tuple, subset.choices)) == [("interactions", "genres"), ("interactions", "genres", "text"),
                                                  ("interactions", "text")]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    from sibrar.tune import suggest

    seen = set()
    for _ in range(12):
        trial = study.ask()
        params = list(suggest(search, trial))
        sampling = json.loads(trial.params["model.item.sampling"])
        assert ("model.item.temperature" in params) == (sampling == "pairwise")
        seen.add(sampling)
        study.tell(trial, 0.0)
    assert seen == {"single", "pairwise"}


# ------------------------------------------------------------------------------------ a real study


@pytest.fixture(scope="module")
def local_study(signal_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tune")
    out = folder / "out"
    assert main(["tune", str(search_file(folder, signal_dir)), "--trials", "5", "--out", str(out)]) == 0
    return out


def test_study_runs_default_first_prunes_and_tests_only_the_best(local_study: Path) -> None:
    trials = pl.read_csv(local_study / "trials.csv")
    assert trials.height == 5
    first = trials.row(0, named=True)
    assert first["default"] and first["train.lr"] == 0.05 and first["model.dim"] == 16  # the unmodified config
    assert "PRUNED" in trials["state"].to_list()  # lr 1e-9 falls below the median after one epoch
    complete = trials.filter(pl.col("state") == "COMPLETE")
    summary = json.loads((local_study / "summary.json").read_text())
    assert summary["best_value"] == pytest.approx(complete["value"].max())
    assert summary["best_value"] >= summary["default_value"]
    assert summary["counts"]["complete"] + summary["counts"]["pruned"] == 5
    # trials never evaluate on test; the best config is trained once more and tested
    for folder in (local_study / "trials").iterdir():
        assert set(json.loads((folder / "valid.json").read_text())) >= {"ndcg@10"}
        assert not (folder / "metrics.json").exists()
    metrics = json.loads((local_study / "best_run" / "metrics.json").read_text())
    assert metrics["valid"]["ndcg@10"] == pytest.approx(summary["best_value"], abs=1e-9)  # same seed, same model
    assert summary["test_of_best"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"])
    assert (local_study / "history.png").stat().st_size > 1000


def test_best_yaml_is_a_ready_to_run_config(local_study: Path) -> None:
    config = load_run_config(local_study / "best.yaml")
    summary = json.loads((local_study / "summary.json").read_text())
    assert config.train.lr == summary["best_params"]["train.lr"]
    assert config.model.dim == summary["best_params"]["model.dim"]


def test_failed_trials_are_recorded_and_the_study_goes_on(tmp_path: Path, signal_dir: Path) -> None:
    # genres exist, "lyrics" does not: parses as a config, fails when the model is built on this data
    space = {"model.item.modalities": {"type": "categorical", "choices": [["interactions", "genres"], ["interactions", "lyrics"]]}}
    raw = yaml.safe_load(search_file(tmp_path, signal_dir, space).read_text())
    raw["model"] = {"name": "sibrar", "dim": 8, "item": {"modalities": ["interactions", "genres"], "common_dim": 8}}
    raw["base"]["train"]["epochs"] = 1
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["tune", str(path), "--trials", "4", "--out", str(out), "--no-final"]) == 0
    trials = pl.read_csv(out / "trials.csv") if (out / "trials.csv").exists() else None
    study = open_study(load_search(path), open_storage(None, out), "tiny-mf")
    states = [t.state for t in study.trials]
    assert len(states) == 4 and optuna.trial.TrialState.FAIL in states and optuna.trial.TrialState.COMPLETE in states
    failed = [t for t in study.trials if t.state == optuna.trial.TrialState.FAIL]
    assert all("lyrics" in t.user_attrs["error"] for t in failed)
    assert trials is None  # --no-final writes no summary files


def test_interrupted_study_resumes(tmp_path: Path, signal_dir: Path) -> None:
    path = search_file(tmp_path, signal_dir)
    out = tmp_path / "out"
    search = load_search(path)
    study = open_study(search, open_storage(None, out), "tiny-mf")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()  # a trial whose worker died mid-training
    orphan_params = suggest(search, orphan)
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    assert main(["tune", str(path), "--trials", "3", "--out", str(out), "--no-final"]) == 0
    study = open_study(search, open_storage(None, out), "tiny-mf")
    trials = study.get_trials()
    assert trials[0].state == optuna.trial.TrialState.FAIL and "died" in trials[0].user_attrs["error"]
    # the interruption is not charged to the budget: three trials that ran, the first with the orphan's parameters
    assert len(trials) == 4 and all(t.state != optuna.trial.TrialState.FAIL for t in trials[1:])
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert trials[0].params and len(trials[0].params) == len(orphan_params)
    assert all(t.state != optuna.trial.TrialState.RUNNING for t in trials)
    # the same command with a larger budget continues the study instead of starting over (and retries nothing twice)
    assert main(["tune", str(path), "--trials", "4", "--out", str(out), "--no-final"]) == 0
    assert [t.number for t in open_study(search, open_storage(None, out), "tiny-mf").trials] == [0, 1, 2, 3, 4]
    # an interruption of the budget's last trial: its queued retry still runs (a queued trial is not yet spent)
    last = open_study(search, open_storage(None, out), "tiny-mf").ask()
    suggest(search, last)
    last.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    assert main(["tune", str(path), "--trials", "5", "--out", str(out), "--no-final"]) == 0
    trials = open_study(search, open_storage(None, out), "tiny-mf").get_trials()
    assert len(trials) == 7 and trials[6].user_attrs["retry_of"] == 5 and trials[6].state == optuna.trial.TrialState.COMPLETE


def test_an_interrupted_default_trial_still_gives_the_default_value(tmp_path: Path, signal_dir: Path) -> None:
    # trial 0 runs the file's own config; when it is interrupted, its retry's value is "valid, file's config"
    path = search_file(tmp_path, signal_dir)
    out = tmp_path / "out"
    search = load_search(path)
    study = open_study(search, open_storage(None, out), "tiny-mf")
    enqueue_default(search, study, log=lambda _: None)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = study.ask()
    assert orphan.user_attrs["default"] and suggest(search, orphan)["train.lr"] == 0.05
    orphan.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    assert main(["tune", str(path), "--trials", "2", "--out", str(out)]) == 0
    trials = open_study(search, open_storage(None, out), "tiny-mf").get_trials()
    assert trials[1].user_attrs["retry_of"] == 0 and "default" not in trials[1].user_attrs
    assert trials[1].state == optuna.trial.TrialState.COMPLETE
    summary = json.loads((out / "summary.json").read_text())
    assert summary["default_value"] == pytest.approx(trials[1].value)
    table = pl.read_csv(out / "trials.csv")
    assert table.filter(pl.col("default"))["number"].to_list() == [0, 1]


def test_a_changed_search_file_does_not_join_an_old_study(tmp_path: Path, signal_dir: Path) -> None:
    out = tmp_path / "out"
    open_study(load_search(search_file(tmp_path, signal_dir)), open_storage(None, out), "s")
    changed = load_search(search_file(tmp_path, signal_dir, {"train.lr": {"type": "float", "low": 1e-3, "high": 1e-1}}))
    with pytest.raises(ConfigError, match="different search") as error:
        open_study(changed, open_storage(None, out), "s")
    assert "first difference: space.model.dim" in str(error.value)  # the new file searches lr only


# ------------------------------------------------------------------------------------ PostgreSQL


def _pg_bin() -> Path:
    """The PostgreSQL server binaries; installs the Debian package when absent (root only)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.fail("PostgreSQL is not installed and cannot be installed here (needs root and apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "postgresql"], check=True, env=env, timeout=900)
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on loopback, started here and removed afterwards."""
    bin_dir = _pg_bin()
    home = Path(tempfile.mkdtemp(prefix="sibrar-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root: run the server as the package's postgres user
        shutil.chown(home, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = home / "data", _free_port()
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "sibrar", "--auth=trust", "-E", "UTF8"],
                   check=True, capture_output=True, timeout=120)
    subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-w", "-t", "60",
                    "-o", f"-h 127.0.0.1 -p {port} -k {home}", "start"], check=True, capture_output=True, timeout=120)
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "sibrar", "optuna"],
                       check=True, capture_output=True, timeout=60)
        yield f"postgresql+psycopg2://sibrar@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*as_user, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.services
def test_two_workers_share_one_postgres_study(tmp_path: Path, signal_dir: Path, postgres_url: str) -> None:
    path = search_file(tmp_path, signal_dir)
    out = tmp_path / "out"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "sibrar.cli", "tune", str(path), "--trials", "6", "--workers", "2",
                           "--storage", postgres_url, "--study", "shared", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    study = optuna.load_study(study_name="shared", storage=postgres_url)
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers)) and numbers == list(range(len(numbers)))  # none lost or duplicated
    assert 6 <= len(trials) <= 7  # two workers may both start the last trial
    assert all(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, workers  # both processes took trials from the shared study
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert "[worker 1]" in done.stdout and "[worker 2]" in done.stdout
    assert json.loads((out / "summary.json").read_text())["counts"]["complete"] >= 1, time.perf_counter() - t0
    # a second machine would join the same study by name: here, a third process adds two trials
    again = subprocess.run([sys.executable, "-m", "sibrar.cli", "tune", str(path), "--trials", str(len(trials) + 2),
                            "--storage", postgres_url, "--study", "shared", "--out", str(tmp_path / "out2"), "--no-final"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(optuna.load_study(study_name="shared", storage=postgres_url).trials) == len(trials) + 2


def test_every_trial_is_an_mlflow_run_nested_under_the_study(tmp_path: Path, signal_dir: Path) -> None:
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "out"
    assert main(["tune", str(search_file(tmp_path, signal_dir)), "--trials", "4", "--out", str(out),
                 "--tracking-uri", uri, "--mlflow-experiment", "tuning"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("tuning").experiment_id])
    parent = [r for r in runs if r.data.tags.get("sibrar.role") == "study"]
    assert len(parent) == 1 and parent[0].info.status == "FINISHED"
    summary = json.loads((out / "summary.json").read_text())
    assert parent[0].data.metrics["best_value"] == pytest.approx(summary["best_value"])
    children = {r.data.tags.get("optuna.trial"): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id}
    assert {"0", "1", "2", "3"} <= set(children)  # every trial, plus the final test run of the best config
    states = pl.read_csv(out / "trials.csv")["state"].to_list()
    for number, state in enumerate(states):
        run = children[str(number)]
        assert run.info.status == {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}[state]
        history = client.get_metric_history(run.info.run_id, "valid/ndcg_at_10")
        assert [m.step for m in history][:2] == [0, 1]  # the untrained model, then epoch 0
        assert run.data.params["train.lr"] in ("0.05", "1e-09", "1.0e-09")
