"""`sibrar train / evaluate / models` in-process: the run folder, views, and one-line errors with exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from _runs import small_run_config as config_file
from sibrar.cli import main
from sibrar.config import load_run_config

RUN_FILES = ("config.yaml", "manifest.json", "split.json", "history.csv", "metrics.json", "per_user.parquet", "model.pt")


@pytest.fixture(scope="module")
def trained(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cli")
    cfg = config_file(folder, synthetic_shared_dir)
    run_dir = folder / "run"
    assert main(["train", str(cfg), "--out", str(run_dir), "--no-progress", "--set", "train.epochs=1"]) == 0
    return cfg, run_dir


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sibrar: error: "), err
    return lines[0]


def test_train_writes_the_run_folder(trained):
    cfg, run_dir = trained
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    saved = load_run_config(run_dir / "config.yaml")
    assert saved == load_run_config(cfg, ["train.epochs=1"])  # the resolved config, override included
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["model"] == "sibrar" and manifest["protocol"] == "cold_item" and manifest["synthetic"]
    assert manifest["split_hash"] == json.loads((run_dir / "split.json").read_text())["split_hash"]
    history = pl.read_csv(run_dir / "history.csv")
    assert history["epoch"].to_list() == [-1, 0]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["test"]["ndcg@10"] <= 1.0 and "ndcg@10" in metrics["valid"]
    per_user = pl.read_parquet(run_dir / "per_user.parquet")
    assert per_user.height == metrics["n_test_users"] and {"user_idx", "ndcg@10"} <= set(per_user.columns)
    assert per_user["ndcg@10"].mean() == pytest.approx(metrics["test"]["ndcg@10"])
    state = torch.load(run_dir / "model.pt", weights_only=True)  # the state dict plus the run id of the folder
    assert state["run_id"] == manifest["run_id"] == metrics["run_id"]
    assert any(key.startswith("item_tower.") for key in state["model"])


def test_evaluate_with_a_missing_modality_view(trained, capsys):
    _, run_dir = trained
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--view", "item:-genres@0.5", "--view", "item:genres+text"]) == 0
    out = capsys.readouterr().out
    assert "item:-genres@0.5" in out and "item:genres+text" in out
    written = json.loads((run_dir / "evaluate-test.json").read_text())
    assert set(written) == {"run_id", "all", "item:-genres@0.5", "item:genres+text"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert written["all"]["ndcg@10"] == pytest.approx(metrics["test"]["ndcg@10"])  # the saved model, reloaded
    assert written["item:-genres@0.5"] != written["all"]


def test_resume_can_extend_a_finished_run(trained, tmp_path, capsys):
    cfg, run_dir = trained
    copy = tmp_path / "run"
    copy.mkdir()
    for path in run_dir.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    assert main(["train", "--resume", str(copy), "--no-progress", "--set", "train.epochs=2"]) == 0
    assert pl.read_csv(copy / "history.csv")["epoch"].to_list() == [-1, 0, 1]
    assert main(["train", "--resume", str(copy), "--no-progress", "--set", "train.lr=0.5"]) == 2
    assert "train.lr" in one_line_error(capsys)


def test_models_lists_the_registry(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "sibrar" in out and "cold items" in out


@pytest.mark.parametrize(("argv", "expected"), [
    (["train", "{missing}", "--no-progress"], "cannot read config"),
    (["train", "{bad_key}", "--no-progress"], "'train.lrr'"),
    (["train", "{cfg}", "--no-progress", "--set", "train.monitor=ndcg@3"], "train.monitor"),
    (["train", "{cfg}", "--no-progress", "--set", "model.item.modalities=[interactions, plot]"], "'plot'"),
    (["train", "{cfg}", "--no-progress", "--set", "model.name=sibrr"], "did you mean 'sibrar'"),
    (["evaluate", "{run}", "--view", "genres"], "--view"),
    (["evaluate", "{run}", "--view", "item:-plot@0.5"], "'plot'"),
    (["evaluate", "{run}", "--view", "item:-genres@lots"], "fraction"),
    (["evaluate", "{tmp}"], "not a finished run folder"),
])
def test_bad_input_exits_2_with_one_line(argv, expected, trained, tmp_path, capsys, synthetic_shared_dir):
    cfg, run_dir = trained
    bad_key = config_file(tmp_path, synthetic_shared_dir, train={"lrr": 0.1})
    names = {"missing": tmp_path / "nope.yaml", "bad_key": bad_key, "cfg": cfg, "run": run_dir, "tmp": tmp_path}
    out_dir = tmp_path / "out"
    argv = [a.format(**names) for a in argv]
    if argv[0] == "train":
        argv += ["--out", str(out_dir)]
    capsys.readouterr()
    assert main(argv) == 2
    assert expected in one_line_error(capsys)
    if "monitor" in expected or "sibrr" in " ".join(argv) or "lrr" in expected:
        assert not out_dir.exists()  # refused before any run folder was made
