"""`sibrar run EXPERIMENT --tune N`: one equal-budget study per tunable model on validation, then one test each."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import yaml

from _planted import write_planted
from sibrar.cli import main
from sibrar.config import load_yaml
from sibrar.errors import ConfigError
from sibrar.eval import evaluator
from sibrar.experiment import load_experiment, parse_experiment, run_experiment
from sibrar.registry import MODELS
from sibrar.tune import open_storage, parse_tune_settings, plan_studies, tune_experiment

SIBRAR_SPACE = {"model.dim": None,  # small widths so the test trains in seconds
                "model.item.common_dim": {"type": "categorical", "choices": [8, 16]},
                "model.item.branch.hidden": {"type": "categorical", "choices": [[8], [16]]}}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_planted(tmp_path_factory.mktemp("planted"), np.random.default_rng(3))


def experiment_raw(dataset: Path, trials: int | None = 3) -> dict[str, Any]:
    return {
        "name": "fair",
        "base": {"data": {"dataset": str(dataset), "k_core": 0}, "split": {"protocol": "cold_item", "seed": 1},
                 "train": {"epochs": 2, "batch_size": 64, "n_negatives": 5}, "eval": {"ks": [5, 10]}},
        **({"tune": {"trials": trials, "sampler": {"name": "tpe", "seed": 7}, "pruner": {"name": "median"}}} if trials else {}),
        "models": [
            {"label": "Pop", "model": {"name": "pop"}},
            {"label": "MF", "model": {"name": "mf", "dim": 32}},
            {"label": "SiBraR", "model": {"name": "sibrar", "dim": 8, "item": {
                "modalities": ["interactions", "genres"], "common_dim": 8, "branch": {"hidden": [8]}}}, "space": SIBRAR_SPACE},
        ],
    }


def write(folder: Path, raw: dict[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def journal_trials(folder: Path, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=open_storage(None, folder)).get_trials(deepcopy=False)


@pytest.fixture(scope="module")
def tuned(planted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tuned")
    path = write(folder, experiment_raw(planted, trials=None))
    assert main(["run", str(path), "--tune", "3", "--set", "tune.sampler={name: tpe, seed: 7}",
                 "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out"


def test_every_tunable_model_gets_its_own_study_with_the_same_budget(tuned: Path) -> None:
    assert sorted(p.name for p in (tuned / "studies").iterdir()) == ["MF", "SiBraR"]  # Pop has nothing to tune
    for label in ("MF", "SiBraR"):
        trials = journal_trials(tuned / "studies" / label, f"fair-{label}")
        assert len(trials) == 3
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    payload = json.loads((tuned / "results.json").read_text())
    assert payload["tuning"]["trials"] == 3 and payload["tuning"]["sampler"] == {"name": "tpe", "seed": 7}
    assert payload["models"]["Pop"]["tuning"] == {"tuned": False, "reason": "no search space for pop"}
    for label in ("MF", "SiBraR"):
        tuning = payload["models"][label]["tuning"]
        assert tuning["trials"] == 3 and sum(tuning["counts"].values()) == 3


def test_the_best_trial_config_is_trained_once_and_reported(tuned: Path) -> None:
    payload = json.loads((tuned / "results.json").read_text())
    markdown = (tuned / "results.md").read_text()
    assert "| Pop (untuned) |" in markdown and "## Tuning (equal budget, validation only)" in markdown
    assert "**3 trials**" in markdown
    for label in ("MF", "SiBraR"):
        model = payload["models"][label]
        config = load_yaml(Path(model["run_dir"]) / "config.yaml")
        best = yaml.safe_load((tuned / "studies" / label / "best.yaml").read_text())
        assert config == best  # the run folder trained exactly the study's best config
        for path, value in model["tuning"]["params"].items():
            node: Any = config
            for part in path.split("."):
                node = node[part]
            assert node == pytest.approx(value)
        # CPU training is deterministic: retraining the best trial's config gives its validation value
        assert model["valid"]["ndcg@10"] == pytest.approx(model["tuning"]["valid"], abs=1e-9)
        assert f"{model['tuning']['valid']:.4f}" in markdown and f"{model['test']['ndcg@10']:.4f}" in markdown


def test_no_test_split_is_evaluated_while_tuning(planted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parts: list[str] = []
    real = evaluator.evaluate

    def spy(model: Any, inputs: Any, split: Any, part: str, *args: Any, **kwargs: Any) -> Any:
        parts.append(part)
        return real(model, inputs, split, part, *args, **kwargs)

    for module in list(sys.modules.values()):  # wherever the evaluator is imported by name
        if getattr(module, "__name__", "").startswith("sibrar.") and getattr(module, "evaluate", None) is real:
            monkeypatch.setattr(module, "evaluate", spy)
    experiment = parse_experiment(experiment_raw(planted, trials=2), "exp.yaml")
    settings = parse_tune_settings(experiment.tune, "exp.yaml")
    tuned_experiment, tuning = tune_experiment(experiment, tmp_path, settings, log=lambda m: None)
    assert parts and set(parts) == {"valid"}  # two studies ran, and only validation was ranked
    parts.clear()
    run_experiment(tuned_experiment, tmp_path, progress=False, log=lambda m: None, tuning=tuning)
    assert "test" in parts  # the spy sees test evaluation once the tuned models are tested


def test_an_interrupted_study_resumes_and_an_old_one_is_not_silently_reused(planted: Path, tmp_path: Path) -> None:
    experiment = parse_experiment({**experiment_raw(planted), "models": experiment_raw(planted)["models"][1:2]}, "exp.yaml")
    quiet = {"log": lambda m: None}
    tune_experiment(experiment, tmp_path, parse_tune_settings(experiment.tune, "exp.yaml", trials=2), **quiet)
    first = journal_trials(tmp_path / "studies" / "MF", "fair-MF")
    with pytest.raises(ConfigError, match="already holds 2 trials; pass --resume"):
        tune_experiment(experiment, tmp_path, parse_tune_settings(experiment.tune, "exp.yaml", trials=3), **quiet)
    _, tuning = tune_experiment(experiment, tmp_path, parse_tune_settings(experiment.tune, "exp.yaml", trials=3),
                                resume=True, **quiet)
    trials = journal_trials(tmp_path / "studies" / "MF", "fair-MF")
    assert len(trials) == 3 and [t.params for t in trials[:2]] == [t.params for t in first]  # one new trial only
    assert sum(tuning["models"]["MF"]["counts"].values()) == 3


def test_every_model_family_ships_a_default_space_that_fits_its_default_config(planted: Path) -> None:
    models = [{"label": name, "model": {"name": name}} for name in MODELS.names()]
    experiment = parse_experiment({**experiment_raw(planted), "models": models}, "exp.yaml")
    plans = {p.spec.label: p for p in plan_studies(experiment, parse_tune_settings({"trials": 1}, "exp.yaml"))}
    assert {name for name, p in plans.items() if p.search is None} == {"pop", "rand"}
    for name in ("sibrar", "multibranch", "clcrec"):
        assert {"train.lr", "model.item.temperature", "model.item.contrastive_weight"} <= {q.path for q in plans[name].search.params}
    assert "model.item.shared" not in {q.path for q in plans["multibranch"].search.params}
    for plan in plans.values():  # the budget is the file's, never a model's own
        if plan.search is not None:
            assert plan.search.metric == "ndcg@10" and plan.search.sampler == {"name": "tpe", "seed": 42}


def test_a_file_space_overrides_drops_and_untunes(planted: Path) -> None:
    raw = experiment_raw(planted)
    raw["models"][1]["space"] = {"model.dim": {"type": "categorical", "choices": [16, 32]}, "train.n_negatives": None}
    raw["models"][2]["tune"] = False
    plans = plan_studies(parse_experiment(raw, "exp.yaml"), parse_tune_settings(raw["tune"], "exp.yaml"))
    mf = {q.path: q for q in plans[1].search.params}
    assert mf["model.dim"].choices == (16, 32) and "train.n_negatives" not in mf and "train.lr" in mf
    assert plans[2].search is None and plans[2].untuned == "tune: false in the experiment file"


@pytest.mark.parametrize(("change", "message"), [
    ({"tune": {"trials": 0}}, "tune.trials is 0; expected a positive integer"),
    ({"tune": {"trials": 2, "budget": 3}}, "unknown key tune.budget"),
    ({"tune": {"trials": 2, "sampler": {"name": "tpe", "sede": 1}}}, "has no option 'sede'"),
    ({"tune": {"trials": 2, "metric": "ndcg@50"}}, "'ndcg@50' is not computed on validation"),
])
def test_a_bad_tune_section_fails_before_any_training(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                                      change: dict, message: str) -> None:
    path = write(tmp_path, {**experiment_raw(planted), **change})
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out" / "runs").exists()


def test_a_bad_model_space_names_the_model(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = experiment_raw(planted)
    raw["models"][1]["space"] = {"model.dims": {"type": "int", "low": 8, "high": 64}}
    assert main(["run", str(write(tmp_path, raw)), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "models[1] (MF)" in err and "model.dims" in err
    assert not (tmp_path / "out" / "studies").exists()


def test_no_tune_trains_the_file_configs_as_written(planted: Path, tmp_path: Path) -> None:
    raw = experiment_raw(planted)
    raw["models"] = raw["models"][:2]
    assert main(["run", str(write(tmp_path, raw)), "--no-tune", "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert not (tmp_path / "out" / "studies").exists()
    assert "Tuning" not in (tmp_path / "out" / "results.md").read_text()
    experiment = load_experiment(tmp_path / "exp.yaml")
    assert dataclasses.asdict(experiment.models[1].config.model)["dim"] == 32


def test_worker_processes_share_one_study_per_model(planted: Path, tmp_path: Path) -> None:
    raw = experiment_raw(planted)
    raw["models"] = raw["models"][:2]  # Pop (untuned) and MF
    out = tmp_path / "out"
    assert main(["run", str(write(tmp_path, raw)), "--tune", "2", "--workers", "2", "--out", str(out), "--no-progress"]) == 0
    trials = journal_trials(out / "studies" / "MF", "fair-MF")
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    workers = {t.user_attrs["worker"] for t in trials}
    assert all(not w.endswith(f":{os.getpid()}") for w in workers)  # run by the spawned processes, not this one
    assert json.loads((out / "results.json").read_text())["tuning"]["workers"] == 2


def test_tuned_settings_are_reused_for_other_seeds_without_new_studies(tuned: Path, planted: Path, tmp_path: Path) -> None:
    path = write(tmp_path, experiment_raw(planted, trials=None))
    out = tmp_path / "seed5"
    assert main(["run", str(path), "--tuned-from", str(tuned), "--set", "base.train.seed=5", "--out", str(out),
                 "--no-progress"]) == 0
    assert not (out / "studies").exists()
    first, again = (json.loads((d / "results.json").read_text()) for d in (tuned, out))
    for label in ("MF", "SiBraR"):
        a = load_yaml(Path(first["models"][label]["run_dir"]) / "config.yaml")
        b = load_yaml(Path(again["models"][label]["run_dir"]) / "config.yaml")
        assert b["train"].pop("seed") == 5 and a["train"].pop("seed") == 42  # TrainConfig's default seed
        assert a == b  # the same tuned settings, another seed
        assert again["models"][label]["tuning"] == first["models"][label]["tuning"]
    assert f"taken from `{tuned}`" in (out / "results.md").read_text()
    assert main(["seeds", str(tuned), str(out), "--out", str(tmp_path / "seeds")]) == 0


def test_tuned_from_a_run_without_tuning_is_refused(planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    raw = experiment_raw(planted, trials=None)
    raw["models"] = raw["models"][:1]
    path = write(tmp_path, raw)
    assert main(["run", str(path), "--out", str(tmp_path / "plain"), "--no-progress"]) == 0
    assert main(["run", str(path), "--tuned-from", str(tmp_path / "plain"), "--out", str(tmp_path / "x")]) == 2
    assert "comes from a run without tuning" in capsys.readouterr().err


def test_with_mlflow_each_study_is_a_run_with_its_trials_nested(planted: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    raw = experiment_raw(planted)
    raw["models"] = raw["models"][:2]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(write(tmp_path, raw)), "--tune", "2", "--out", str(tmp_path / "out"), "--no-progress",
                 "--tracking-uri", uri, "--mlflow-experiment", "fair"]) == 0
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("fair").experiment_id])
    studies = [r for r in runs if r.data.tags.get("sibrar.role") == "study"]
    assert [r.data.tags["optuna.study"] for r in studies] == ["fair-MF"] and studies[0].info.status == "FINISHED"
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == studies[0].info.run_id]
    assert sorted(r.data.tags["optuna.trial"] for r in trials) == ["0", "1"]
    assert not any("test/ndcg_at_10" in r.data.metrics for r in [*studies, *trials])  # tuning logs validation only
    assert any(r.data.tags.get("label") == "MF" and "test/ndcg_at_10" in r.data.metrics for r in runs)  # the final run


def test_the_report_page_carries_the_tuning_table(tuned: Path) -> None:
    assert main(["report", str(tuned)]) == 0
    page = (tuned / "REPORT.md").read_text()
    assert "## Tuning (equal budget, validation only)" in page and "| Pop | untuned (no search space for pop)" in page
    payload = json.loads((tuned / "results.json").read_text())
    assert f"{payload['models']['SiBraR']['tuning']['valid']:.4f}" in page
