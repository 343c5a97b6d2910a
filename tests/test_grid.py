"""`sibrar grid`: several real `sibrar run` folders merged into one table; values, † marks, absent models, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml
from test_experiment import experiment_file

from sibrar.cli import main
from sibrar.report.grid import build_grid, load_results_folder

METRICS = ("precision@10", "ndcg@10", "coverage@10")
TINY_SIBRAR = {"label": "SiBraR", "model": {"name": "sibrar", "dim": 8, "item": {
    "modalities": ["interactions", "genres"], "common_dim": 8, "branch": {"hidden": [8]}}}}


@pytest.fixture(scope="module")
def folders(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two results folders on the synthetic fixture: cold item (Rand, Pop, SiBraR) and warm (Pop, Rand, MF)."""
    made = []
    for name, protocol, models in [
        ("cold", "cold_item", [{"label": "Rand", "model": {"name": "rand"}}, {"label": "Pop", "model": {"name": "pop"}},
                               TINY_SIBRAR]),
        ("warm", "random", [{"label": "Pop", "model": {"name": "pop"}}, {"label": "Rand", "model": {"name": "rand"}},
                            {"label": "MF", "model": {"name": "mf", "dim": 8}}]),
    ]:
        folder = tmp_path_factory.mktemp(name)
        path = experiment_file(folder, synthetic_shared_dir, models, name=f"tiny-{name}", views=[])
        data = yaml.safe_load(path.read_text())
        data["base"]["split"]["protocol"] = protocol
        data["base"]["train"]["epochs"] = 1
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        assert main(["run", str(path), "--out", str(folder / "out"), "--no-progress"]) == 0
        made.append(folder / "out")
    return made[0], made[1]


@pytest.fixture(scope="module")
def grid_out(folders: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("grid") / "grid"
    assert main(["grid", *map(str, folders), "--out", str(out), "--metrics", ",".join(METRICS)]) == 0
    return out


def test_grid_values_equal_each_folders_results_csv(folders: tuple[Path, Path], grid_out: Path) -> None:
    grid = pl.read_csv(grid_out / "grid.csv")
    assert list(grid.columns[:6]) == ["model", "dataset", "protocol", "metric", "value", "significant"]
    for folder, protocol in zip(folders, ("cold_item", "random")):
        results = pl.read_csv(folder / "results.csv")
        part = grid.filter(pl.col("protocol") == protocol)
        assert part.height == results.height * len(METRICS)
        for row in results.iter_rows(named=True):
            for metric in METRICS:
                value = part.filter((pl.col("model") == row["model"]) & (pl.col("metric") == metric))["value"].item()
                assert value == pytest.approx(row[metric], rel=1e-12, abs=1e-15)
    payload = json.loads((grid_out / "grid.json").read_text())
    assert payload["models"] == ["Rand", "Pop", "SiBraR", "MF"]  # union in first-seen order
    assert [c["protocol"] for c in payload["columns"]] == ["cold_item", "random"]
    assert all(c["synthetic"] for c in payload["columns"]) and "[SYNTHETIC]" in (grid_out / "grid.md").read_text()
    assert not [p for p in grid_out.iterdir() if p.name.startswith(".")]  # atomic writes leave no temp files


def test_absent_models_show_a_dash_and_have_no_csv_row(grid_out: Path) -> None:
    markdown = (grid_out / "grid.md").read_text()
    ndcg = markdown.split("## ndcg@10")[1].split("##")[0]
    sibrar_row = next(line for line in ndcg.splitlines() if line.startswith("| SiBraR |"))
    mf_row = next(line for line in ndcg.splitlines() if line.startswith("| MF |"))
    assert sibrar_row.rstrip(" |").endswith("–") and mf_row.split("|")[2].strip() == "–"
    grid = pl.read_csv(grid_out / "grid.csv")
    assert grid.filter((pl.col("model") == "SiBraR") & (pl.col("protocol") == "random")).height == 0


def test_significance_marks_carry_over_from_each_folder(folders: tuple[Path, Path], tmp_path: Path) -> None:
    # the real folders' marks (often none on 40 users) ...
    merged = build_grid([load_results_folder(f) for f in folders], METRICS)
    for j, folder in enumerate(folders):
        winners = json.loads((folder / "results.json").read_text())["significant_winner"]
        for (model, col, metric), cell in merged.cells.items():
            if col == j:
                assert cell.significant == (winners.get(metric) == model)
    # ... and a folder whose results.json names a winner: † on exactly that cell, in every output
    marked = tmp_path / "marked"
    shutil.copytree(folders[0], marked, ignore=shutil.ignore_patterns("runs"))
    payload = json.loads((marked / "results.json").read_text())
    payload["significant_winner"]["ndcg@10"] = "Pop"
    (marked / "results.json").write_text(json.dumps(payload))
    assert main(["grid", str(marked), str(folders[1]), "--out", str(tmp_path / "g"), "--metrics", "ndcg@10"]) == 0
    markdown = (tmp_path / "g" / "grid.md").read_text()
    pop_row = next(line for line in markdown.splitlines() if line.startswith("| Pop |"))
    assert pop_row.split("|")[2].strip().strip("*").endswith("†") and markdown.count("†") == 2  # legend + Pop
    grid = pl.read_csv(tmp_path / "g" / "grid.csv")
    assert grid.filter(pl.col("significant"))[["model", "protocol"]].rows() == [("Pop", "cold_item")]


def test_best_value_per_column_is_bold(grid_out: Path) -> None:
    grid = pl.read_csv(grid_out / "grid.csv")
    markdown = (grid_out / "grid.md").read_text()
    for (protocol, metric), part in grid.group_by(["protocol", "metric"]):
        best = part.filter(pl.col("value") == part["value"].max())
        assert best["best"].all() and part.filter(pl.col("best")).height == best.height
    assert markdown.count("**") >= 2 * len(METRICS) * 2


@pytest.mark.parametrize(("args", "message"), [
    (["{missing}"], "not a results folder of `sibrar run` (no results.json)"),
    (["{cold}", "--metrics", "ndgc@10"], "unknown metric 'ndgc@10'; did you mean 'ndcg@10'?"),
    (["{cold}", "--metrics", ","], "--metrics ',' is empty"),
    (["{cold}", "{cold}"], "given twice"),
])
def test_bad_input_gets_a_one_line_error(folders: tuple[Path, Path], tmp_path: Path, args: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv = [a.format(missing=tmp_path / "nothing", cold=folders[0]) for a in args]
    assert main(["grid", *argv, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()


def test_a_run_folder_instead_of_a_results_folder_is_named(folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
                                                           tmp_path: Path) -> None:
    assert main(["grid", str(folders[0] / "runs" / "Pop"), "--out", str(tmp_path / "out")]) == 2
    assert "one run folder" in capsys.readouterr().err
