"""`sibrar robustness`: nested missing masks, fraction 0 = plain evaluation, fraction 1 = the subset view, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml

from sibrar.cli import main
from sibrar.config import EvalConfig
from sibrar.errors import ConfigError
from sibrar.eval.evaluator import evaluate, subset_view
from sibrar.eval.robustness import (
    check_fractions,
    nested_missing_masks,
    nested_missing_views,
    points_to_rows,
    robustness_curve,
    robustness_markdown,
    view_modalities,
)
from sibrar.models.base import FULL_VIEW
from sibrar.train.run import LoadedRun, load_run

FRACTIONS = (0.0, 0.3, 0.7, 1.0)
TINY_BRANCH = {"hidden": [8], "norm": "layer"}  # LayerNorm: per-modality branches see few rows per batch
ITEM = {"modalities": ["interactions", "genres", "text"], "common_dim": 8, "branch": TINY_BRANCH}


@pytest.fixture(scope="module")
def results(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `sibrar run` results folder: Pop, SiBraR and its multi-branch ablation on a synthetic cold-item split."""
    folder = tmp_path_factory.mktemp("robustness")
    experiment = {
        "name": "tiny-robustness",
        "base": {"data": {"dataset": str(synthetic_shared_dir), "k_core": 0},
                 "split": {"protocol": "cold_item", "seed": 2},
                 "train": {"epochs": 2, "batch_size": 64, "n_negatives": 3},
                 "eval": {"ks": [5, 10], "candidates": "all"}},  # all 30 items: enough for fractions to differ
        "models": [
            {"label": "Pop", "model": {"name": "pop"}},
            {"label": "SiBraR", "model": {"name": "sibrar", "dim": 8, "item": ITEM}},
            {"label": "Multi-branch", "model": {"name": "multibranch", "dim": 8, "item": {**ITEM, "shared": False}}},
        ],
    }
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment), encoding="utf-8")
    assert main(["run", str(path), "--out", str(folder / "out"), "--no-progress"]) == 0
    return folder / "out"


@pytest.fixture(scope="module")
def sibrar_run(results: Path) -> LoadedRun:
    return load_run(results / "runs" / "SiBraR")


def test_masks_are_nested_seeded_and_only_cover_the_pool() -> None:
    pool = np.array([3, 5, 8, 9, 12, 13, 20, 21, 25, 29])
    masks = nested_missing_masks(30, pool, (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), seed=7)
    assert masks.shape == (7, 30) and masks.dtype == torch.bool
    assert masks.sum(dim=1).tolist() == [0, 1, 3, 5, 7, 9, 10]
    assert bool((masks[:-1] <= masks[1:]).all()), "a larger fraction must remove a superset"
    outside = np.setdiff1d(np.arange(30), pool)
    assert not masks[:, outside].any() and masks[-1, pool].all()
    assert torch.equal(masks, nested_missing_masks(30, pool, (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), seed=7))
    assert not torch.equal(masks, nested_missing_masks(30, pool, (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0), seed=8))
    views = nested_missing_views(30, "text", (0.3, 0.7), pool=pool, seed=7)
    assert [v.name for v in views] == ["item:-text@0.3", "item:-text@0.7"]
    assert torch.equal(views[0].item.missing["text"], masks[2]) and torch.equal(views[1].item.missing["text"], masks[4])


def test_fraction_zero_equals_the_plain_evaluation_and_the_saved_metrics(sibrar_run: LoadedRun) -> None:
    run = sibrar_run
    inputs, split = run.prepared.inputs, run.prepared.split
    curve = robustness_curve(run.model, inputs, split, run.config.eval, "text", FRACTIONS, label="SiBraR")
    plain = evaluate(run.model, inputs, split, "test", run.config.eval, view=FULL_VIEW).summary
    assert curve[0].fraction == 0.0 and curve[0].n_missing == 0
    assert curve[0].summary == plain  # exactly: the empty mask changes nothing
    assert curve[0].summary["ndcg@10"] == pytest.approx(run.metrics["test"]["ndcg@10"], rel=1e-6)
    assert [p.n_missing for p in curve] == [round(f * curve[0].n_pool) for f in FRACTIONS]
    assert len({p.summary["ndcg@10"] for p in curve}) > 1, "removing text should change the ranking"


def test_fraction_one_equals_the_subset_view_without_the_modality(sibrar_run: LoadedRun) -> None:
    run = sibrar_run
    inputs, split = run.prepared.inputs, run.prepared.split
    full = robustness_curve(run.model, inputs, split, run.config.eval, "text", (0.0, 1.0))[-1]
    rest = tuple(m for m in view_modalities(run.model) or () if m != "text")
    subset = evaluate(run.model, inputs, split, "test", run.config.eval, view=subset_view(rest))
    assert full.fraction == 1.0 and full.n_missing == full.n_pool
    assert full.summary == pytest.approx(subset.summary, abs=1e-9, nan_ok=True)
    with_mask = run.model.all_item_embeddings(
        nested_missing_views(inputs.n_items, "text", (1.0,), pool=np.arange(inputs.n_items), seed=0)[0])
    assert torch.allclose(with_mask, run.model.all_item_embeddings(subset_view(rest)), atol=1e-6)


def test_a_model_that_ignores_modalities_gives_a_flat_curve(results: Path) -> None:
    run = load_run(results / "runs" / "Pop")
    assert view_modalities(run.model) is None
    curve = robustness_curve(run.model, run.prepared.inputs, run.prepared.split, run.config.eval, "text", FRACTIONS)
    assert not any(p.uses_modality for p in curve)
    assert len({p.summary["ndcg@10"] for p in curve}) == 1


def test_relative_change_and_markdown_name_the_reference_drop(sibrar_run: LoadedRun) -> None:
    run = sibrar_run
    curve = robustness_curve(run.model, run.prepared.inputs, run.prepared.split, run.config.eval, "text", FRACTIONS,
                             label="SiBraR")
    rows = points_to_rows(curve, ["ndcg@10"])
    base = rows[0]["ndcg@10"]
    assert rows[0]["rel_ndcg@10"] == 0.0
    assert rows[2]["rel_ndcg@10"] == pytest.approx((rows[2]["ndcg@10"] - base) / base)
    text = robustness_markdown(rows, "ndcg@10", title="t")
    assert "present for 30%" in text and "| 91.9 | 65.9 | -28.3% |" in text and "| 94.6 | 84.8 | -10.4% |" in text


def test_repeated_masks_report_mean_and_spread(sibrar_run: LoadedRun) -> None:
    run = sibrar_run
    inputs, split = run.prepared.inputs, run.prepared.split
    args = (run.model, inputs, split, run.config.eval, "text", FRACTIONS)
    curve = robustness_curve(*args, repeats=3)
    singles = [robustness_curve(*args, seed=s) for s in range(3)]
    assert [p.repeats for p in curve] == [1, 3, 3, 1]  # removing none or all items needs one evaluation
    assert curve[0].summary == singles[0][0].summary and curve[0].spread["ndcg@10"] == 0.0
    values = [c[2].summary["ndcg@10"] for c in singles]
    assert curve[2].summary["ndcg@10"] == pytest.approx(np.mean(values))
    assert curve[2].spread["ndcg@10"] == pytest.approx(np.std(values))
    assert points_to_rows(curve, ["ndcg@10"])[2]["sd_ndcg@10"] == pytest.approx(np.std(values))


@pytest.mark.parametrize("bad", [[-0.1], [1.5], [float("nan")]])
def test_fractions_outside_unit_interval_are_rejected(bad: list[float]) -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        check_fractions(bad)
    assert check_fractions([0.7, 0.3, 0.3]) == (0.0, 0.3, 0.7)


def test_cold_items_have_no_interactions_to_remove(sibrar_run: LoadedRun) -> None:
    run = sibrar_run
    config = EvalConfig(ks=(10,), candidates="split")  # the cold test items only
    with pytest.raises(ConfigError, match="no test item has modality 'interactions'"):
        robustness_curve(run.model, run.prepared.inputs, run.prepared.split, config, "interactions", (0.5,))


def test_cli_writes_tables_json_and_one_plot_per_modality(results: Path, tmp_path: Path) -> None:
    out = tmp_path / "rob"
    assert main(["robustness", str(results), "--modality", "text,genres", "--fractions", "0.5,1", "--out", str(out),
                 "--repeats", "2"]) == 0
    frame = pl.read_csv(out / "robustness.csv")
    assert frame.height == 3 * 2 * 3  # models x modalities x fractions (0 added)
    assert list(dict.fromkeys(frame["model"])) == ["Pop", "SiBraR", "Multi-branch"]  # the experiment's order
    assert frame.filter(pl.col("fraction_missing") == 0.5)["repeats"].to_list() == [1, 1, 2, 2, 2, 2]  # Pop: flat
    payload = json.loads((out / "robustness.json").read_text())
    assert payload["fractions"] == [0.0, 0.5, 1.0] and payload["nested_masks"] is True
    assert "−text" in (out / "robustness.md").read_text()
    for m in ("text", "genres"):
        assert (out / f"robustness_{m}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("argv, message", [
    (["--fractions", "0,1.2"], "[0, 1]"),
    (["--fractions", "0,half"], "'half' is not a number"),
    (["--modality", "plot"], "'plot': not an item modality"),
    (["--modality", "year"], "no model of"),
    (["--models", "SiBraR,DropoutNet"], "'DropoutNet' is not a model"),
    (["--metric", "ndcg@3"], "--metric 'ndcg@3'"),
    (["--repeats", "0"], "--repeats 0"),
])
def test_bad_arguments_get_a_one_line_error(results: Path, tmp_path: Path, argv: list[str], message: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["robustness", str(results), "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o").exists()


def test_a_folder_that_is_not_a_results_folder_is_named(results: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["robustness", str(tmp_path)]) == 2
    assert "not a results folder" in capsys.readouterr().err
    assert main(["robustness", str(results / "runs" / "SiBraR")]) == 2
    assert "one run folder, pass the results folder" in capsys.readouterr().err
