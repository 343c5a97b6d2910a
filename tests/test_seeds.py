"""`sibrar seeds`: real `sibrar run` folders of one experiment trained with different seeds, summarised."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.stats
from test_experiment import experiment_file

from sibrar.cli import main

METRICS = ("precision@10", "ndcg@10", "coverage@10")
VIEW = "item:-genres@0.6"
MODELS = [{"label": "Pop", "model": {"name": "pop"}},
          {"label": "SiBraR", "model": {"name": "sibrar", "dim": 8, "item": {
              "modalities": ["interactions", "genres"], "common_dim": 8, "branch": {"hidden": [8]}}}}]


@pytest.fixture(scope="module")
def runs(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same tiny cold-item experiment trained with seeds 1, 2 and 1 again, plus one with other models."""
    folder = tmp_path_factory.mktemp("seeds")
    path = experiment_file(folder, synthetic_shared_dir, MODELS, name="tiny-seeds", views=[VIEW])
    made = {}
    for name, seed in (("s1", 1), ("s2", 2), ("s1-again", 1)):
        assert main(["run", str(path), "--out", str(folder / name), "--set", f"base.train.seed={seed}", "--no-progress"]) == 0
        made[name] = folder / name
    other = experiment_file(tmp_path_factory.mktemp("other"), synthetic_shared_dir, MODELS[:1], name="tiny-seeds", views=[])
    assert main(["run", str(other), "--out", str(folder / "pop-only"), "--no-progress"]) == 0
    made["pop-only"] = folder / "pop-only"
    return made


def _test_values(folder: Path, metric: str) -> dict[str, float]:
    return {m: info["test"][metric] for m, info in json.loads((folder / "results.json").read_text())["models"].items()}


def test_summary_is_mean_and_sample_std_of_each_folders_results(runs: dict[str, Path], tmp_path: Path) -> None:
    folders = [runs["s1"], runs["s2"]]
    assert main(["seeds", *map(str, folders), "--out", str(tmp_path / "out"), "--metrics", ",".join(METRICS)]) == 0
    payload = json.loads((tmp_path / "out" / "seeds.json").read_text())
    for metric in METRICS:
        per_folder = [_test_values(f, metric) for f in folders]
        for model in ("Pop", "SiBraR"):
            values = np.array([v[model] for v in per_folder])
            got = payload["models"][model][metric]
            assert got["values"] == pytest.approx(values.tolist())
            assert got["mean"] == pytest.approx(values.mean()) and got["std"] == pytest.approx(values.std(ddof=1))
    # retraining moves SiBraR, not the untrained Pop: the spread is the seed's effect
    assert payload["models"]["Pop"]["ndcg@10"]["std"] == 0.0
    assert payload["models"]["SiBraR"]["ndcg@10"]["std"] > 0.0
    csv = pl.read_csv(tmp_path / "out" / "seeds.csv")
    assert csv.height == 2 * len(METRICS) * len(folders)
    markdown = (tmp_path / "out" / "seeds.md").read_text()
    mean, std = payload["models"]["SiBraR"]["ndcg@10"]["mean"], payload["models"]["SiBraR"]["ndcg@10"]["std"]
    assert f"{mean:.4f} ± {std:.4f}" in markdown and "2 runs on the same split" in markdown


def test_the_same_seed_gives_the_same_numbers_and_wins_are_counted(runs: dict[str, Path], tmp_path: Path) -> None:
    assert _test_values(runs["s1"], "ndcg@10") == _test_values(runs["s1-again"], "ndcg@10")
    assert main(["seeds", str(runs["s1"]), str(runs["s1-again"]), "--out", str(tmp_path / "out"), "--metrics", "ndcg@10"]) == 0
    got = json.loads((tmp_path / "out" / "seeds.json").read_text())["models"]
    assert got["SiBraR"]["ndcg@10"]["std"] == 0.0
    values = _test_values(runs["s1"], "ndcg@10")
    winner = max(values, key=values.__getitem__)
    assert got[winner]["ndcg@10"]["wins"] == 2 and got[min(values, key=values.__getitem__)]["ndcg@10"]["wins"] == 0


def _per_user(run: Path, name: str = "per_user.parquet") -> pl.DataFrame:
    return pl.read_parquet(run / name).sort(["view", "user_idx"] if name != "per_user.parquet" else "user_idx")


def test_paired_tests_use_each_users_value_averaged_over_the_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    folders = [runs["s1"], runs["s2"]]
    assert main(["seeds", *map(str, folders), "--out", str(tmp_path / "out"), "--metrics", ",".join(METRICS),
                 "--pair", "SiBraR,Pop"]) == 0
    payload = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert payload["no_paired_tests"] == "" and "coverage@10" not in payload["paired"]  # not a per-user metric
    averaged = {m: (_per_user(folders[0] / "runs" / m)["ndcg@10"].to_numpy()
                    + _per_user(folders[1] / "runs" / m)["ndcg@10"].to_numpy()) / 2 for m in ("Pop", "SiBraR")}
    both = ~(np.isnan(averaged["Pop"]) | np.isnan(averaged["SiBraR"]))
    expected = scipy.stats.ttest_rel(averaged["SiBraR"][both], averaged["Pop"][both])
    pair = payload["pairs"][0]
    assert (pair["a"], pair["b"]) == ("SiBraR", "Pop")
    assert pair["metrics"]["ndcg@10"]["p_value"] == pytest.approx(expected.pvalue)
    assert pair["metrics"]["ndcg@10"]["mean_diff"] == pytest.approx((averaged["SiBraR"] - averaged["Pop"])[both].mean())
    best = payload["paired"]["ndcg@10"]["best"]
    other = "Pop" if best == "SiBraR" else "SiBraR"
    assert payload["paired"]["ndcg@10"]["tests"][other]["p_value"] == pytest.approx(expected.pvalue)
    # under the view the pair compares each user's change: Pop does not read genres, so its change is 0
    change = np.mean([_per_user(f / "runs" / "SiBraR", "per_user_views.parquet")["ndcg@10"].to_numpy()
                      - _per_user(f / "runs" / "SiBraR")["ndcg@10"].to_numpy() for f in folders], axis=0)
    finite = ~np.isnan(change)
    assert change[finite].std() > 0  # the view moved SiBraR's users, so the test below is not vacuous
    expected_view = scipy.stats.ttest_1samp(change[finite], 0.0)
    assert pair["views"][VIEW]["p_value"] == pytest.approx(expected_view.pvalue)
    relative = payload["views"]["relative_change"]
    assert relative["Pop"][VIEW] == [0.0, 0.0]
    for j, folder in enumerate(folders):
        info = json.loads((folder / "results.json").read_text())["models"]["SiBraR"]
        assert relative["SiBraR"][VIEW][j] == pytest.approx(info["views"][VIEW]["ndcg@10"] / info["test"]["ndcg@10"] - 1)
    markdown = (tmp_path / "out" / "seeds.md").read_text()
    assert "## SiBraR against Pop" in markdown and f"ndcg@10 change under {VIEW}" in markdown


def test_without_the_run_folders_there_are_no_paired_tests_and_the_report_says_why(runs: dict[str, Path], tmp_path: Path) -> None:
    copies = []
    for name in ("s1", "s2"):
        copies.append(tmp_path / name)
        shutil.copytree(runs[name], copies[-1], ignore=shutil.ignore_patterns("runs"))
    assert main(["seeds", *map(str, copies), "--out", str(tmp_path / "out"), "--pair", "SiBraR,Pop"]) == 0
    payload = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert payload["paired"] == {} and payload["pairs"] == [] and "per_user.parquet is missing" in payload["no_paired_tests"]
    markdown = (tmp_path / "out" / "seeds.md").read_text()
    assert "Not computed:" in markdown and "†" not in markdown
    assert payload["views"]["relative_change"]["SiBraR"][VIEW]  # the views' summaries come from results.json


@pytest.mark.parametrize(("names", "message"), [
    (["s1"], "1 results folder(s) given; a spread over seeds needs at least 2"),
    (["s1", "s1"], "given twice"),
    (["s1", "pop-only"], "models differ from"),
    (["s1", "renamed"], "experiment is 'renamed' but"),
    (["s1", "s2", "--pair", "SiBraR,MF"], "no model 'MF'"),
    (["s1", "s2", "--pair", "SiBraR"], "expected two model labels"),
])
def test_bad_input_gets_a_one_line_error(runs: dict[str, Path], tmp_path: Path, names: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    renamed = tmp_path / "renamed"
    shutil.copytree(runs["s2"], renamed, ignore=shutil.ignore_patterns("runs"))
    payload = json.loads((renamed / "results.json").read_text())
    (renamed / "results.json").write_text(json.dumps({**payload, "experiment": "renamed"}))
    paths = [str(renamed if n == "renamed" else runs[n]) if n in runs or n == "renamed" else n for n in names]
    assert main(["seeds", *paths, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out").exists()
