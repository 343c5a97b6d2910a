"""`sibrar run`: several models on one split -> results.{md,csv,json} + plots, significance marks, bad files."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml

from sibrar.cli import main
from sibrar.experiment import ModelOutcome, significance


def experiment_file(folder: Path, dataset: Path, models: list[dict] | None = None, **extra: object) -> Path:
    data = {
        "name": "tiny",
        "base": {
            "data": {"dataset": str(dataset), "k_core": 0},
            "split": {"protocol": "cold_item", "seed": 2},
            "train": {"epochs": 2, "batch_size": 64, "n_negatives": 3},
            "eval": {"ks": [5, 10]},
        },
        "models": models if models is not None else [
            {"label": "Rand", "model": {"name": "rand"}},
            {"label": "Pop", "model": {"name": "pop"}},
            {"label": "SiBraR", "model": {"name": "sibrar", "dim": 8, "item": {
                "modalities": ["interactions", "genres", "text"], "common_dim": 8, "branch": {"hidden": [8]}}}},
        ],
        "views": ["item:-text@0.5", "item:genres"],
        **extra,
    }
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def results(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exp")
    out = folder / "out"
    assert main(["run", str(experiment_file(folder, synthetic_shared_dir)), "--out", str(out), "--no-progress"]) == 0
    return out


def test_run_writes_three_consistent_result_files_and_plots(results: Path) -> None:
    csv = pl.read_csv(results / "results.csv")
    payload = json.loads((results / "results.json").read_text())
    markdown = (results / "results.md").read_text()
    assert csv["model"].to_list() == ["Rand", "Pop", "SiBraR"]
    assert {"ndcg@10", "recall@5", "precision@10"} <= set(csv.columns)
    for row in csv.iter_rows(named=True):
        test = payload["models"][row["model"]]["test"]
        assert row["ndcg@10"] == pytest.approx(test["ndcg@10"])
        assert f"{test['ndcg@10']:.4f}" in markdown
        run_metrics = json.loads((Path(payload["models"][row["model"]]["run_dir"]) / "metrics.json").read_text())
        assert run_metrics["test"]["ndcg@10"] == pytest.approx(row["ndcg@10"])
    for png in ("training_curves.png", "metrics.png"):
        assert (results / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_modality_views_are_reported_per_model(results: Path) -> None:
    payload = json.loads((results / "results.json").read_text())
    views = payload["models"]["SiBraR"]["views"]
    assert set(views) == {"item:-text@0.5", "item:genres"}
    assert views["item:genres"]["ndcg@10"] != payload["models"]["SiBraR"]["test"]["ndcg@10"]
    assert "Missing modalities" in (results / "results.md").read_text()


def test_report_command_writes_one_page_with_tables_and_plots(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(results)]) == 0
    page = (results / "REPORT.md").read_text()
    assert "| SiBraR |" in page and "![metrics](metrics.png)" in page


def _outcome(label: str, values: np.ndarray) -> ModelOutcome:
    return ModelOutcome(label, label, Path("."), {"ndcg@10": float(values.mean())}, {}, {"ndcg@10": values},
                        np.arange(len(values)), [])


def test_significance_marks_only_a_model_better_than_all_others() -> None:
    rng = np.random.default_rng(0)
    base = rng.random(300)
    strong = _outcome("strong", base + 0.2 + rng.normal(0, 0.05, 300))
    weak_a, weak_b = _outcome("a", base), _outcome("b", base + rng.normal(0, 0.01, 300))
    assert significance([strong, weak_a, weak_b], "ndcg@10") == "strong"
    assert significance([weak_a, weak_b], "ndcg@10") is None


@pytest.mark.parametrize(("edit", "message"), [
    ({"models": []}, "models"),
    ({"models": [{"label": "x", "model": {"name": "sibrr"}}]}, "did you mean 'sibrar'"),
    ({"table_metrics": ["ndgc@10"]}, "ndgc"),
    ({"base": {"split": {"protocol": "cold_items"}}}, "split.protocol"),
    ({"modelz": []}, "modelz"),
])
def test_bad_experiment_files_get_a_one_line_error(tmp_path: Path, synthetic_shared_dir: Path, edit: dict, message: str,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = experiment_file(tmp_path, synthetic_shared_dir)
    data = yaml.safe_load(path.read_text())
    for key, value in edit.items():
        if key == "base":
            data["base"]["split"].update(value["split"])
        else:
            data[key] = value
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sibrar: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_resume_reuses_finished_runs_continues_interrupted_ones_and_retrains_changed_ones(
        tmp_path: Path, synthetic_shared_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    models = [{"label": "Pop", "model": {"name": "pop"}}, {"label": "MF", "model": {"name": "mf", "dim": 8}}]
    path = experiment_file(tmp_path, synthetic_shared_dir, models=models, views=[])
    out, mf = tmp_path / "out", tmp_path / "out" / "runs" / "MF"
    run = ["run", str(path), "--out", str(out), "--no-progress", "--resume"]
    assert main(run) == 0  # nothing to resume yet: everything trains
    first = json.loads((out / "results.json").read_text())["models"]
    trained_at = (mf / "model.pt").stat().st_mtime_ns
    capsys.readouterr()

    assert main(run) == 0  # both finished with the same config: read back, not retrained
    assert capsys.readouterr().out.count("reused the finished run") == 2
    assert (mf / "model.pt").stat().st_mtime_ns == trained_at
    again = json.loads((out / "results.json").read_text())["models"]
    assert {m: again[m]["test"] for m in again} == {m: first[m]["test"] for m in first}
    assert again["MF"]["best_epoch"] == first["MF"]["best_epoch"]

    (mf / "metrics.json").unlink()  # interrupted after its last epoch: continues from checkpoint_last.pt
    assert main(run) == 0
    assert capsys.readouterr().out.count("reused the finished run") == 1
    assert json.loads((mf / "metrics.json").read_text())["test"] == pytest.approx(first["MF"]["test"])

    models[1]["model"]["dim"] = 4  # a changed model is trained again, the unchanged one still reused
    path = experiment_file(tmp_path, synthetic_shared_dir, models=models, views=[])
    assert main(run) == 0
    assert capsys.readouterr().out.count("reused the finished run") == 1
    assert "dim: 4" in (mf / "config.yaml").read_text()
    assert (mf / "model.pt").stat().st_mtime_ns != trained_at
    # run.log keeps every invocation: one section each, headed by the command, with what it printed
    log = (out / "run.log").read_text()
    sections = log.split("$ sibrar ")[1:]
    assert len(sections) == 4 and all(sec.startswith(shlex.join(run)) for sec in sections)
    assert [sec.count("reused the finished run") for sec in sections] == [0, 2, 1, 1]
    assert all(f"report folder: {out}" in sec for sec in sections) and "stopped" not in log


def test_a_run_that_fails_after_starting_says_so_at_the_end_of_its_log(tmp_path: Path, synthetic_shared_dir: Path) -> None:
    path = experiment_file(tmp_path, synthetic_shared_dir, views=["item:-nosuch@0.5"])
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--no-progress"]) == 2
    lines = (tmp_path / "out" / "run.log").read_text().splitlines()
    assert lines[0].startswith(f"$ sibrar run {path} --out ") and "users" in lines[1]  # the dataset line came first
    assert lines[-1].startswith("# stopped: ConfigError: ") and "nosuch" in lines[-1]
