"""Modality gap: known-answer distance statistics, single-modality embeddings of a trained SiBraR, `sibrar gap`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from sibrar.cli import main
from sibrar.config import DataConfig, EvalConfig, RunConfig, SplitConfig, TrainConfig
from sibrar.errors import ConfigError
from sibrar.eval.gap import (
    modality_embeddings,
    modality_gap,
    pair_distances,
    pca_2d,
    projection_sample,
    random_partners,
)
from sibrar.models.baselines.pop import PopConfig
from sibrar.models.modules import BranchConfig
from sibrar.models.multibranch import BranchTowerConfig, MultiBranchConfig
from sibrar.models.sibrar import SiBraRConfig, TowerConfig
from sibrar.train.run import LoadedRun, load_run, train_run

BRANCH = BranchConfig(hidden=(8,), norm="layer")
MODALITIES = ("interactions", "genres", "text")


@pytest.fixture(scope="module")
def runs(synthetic_shared_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """runs/{SiBraR,Multi-branch,Pop}: tiny trainings on the synthetic cold-item split."""
    folder = tmp_path_factory.mktemp("gap") / "runs"
    base = {"data": DataConfig(dataset=str(synthetic_shared_dir), k_core=0), "split": SplitConfig(protocol="cold_item", seed=2),
            "train": TrainConfig(epochs=2, batch_size=64, n_negatives=3), "eval": EvalConfig(ks=(10,))}
    models = {
        "SiBraR": SiBraRConfig(dim=8, item=TowerConfig(modalities=MODALITIES, common_dim=8, branch=BRANCH)),
        "Multi-branch": MultiBranchConfig(dim=8, item=BranchTowerConfig(modalities=MODALITIES, common_dim=8, branch=BRANCH,
                                                                        shared=False)),
        "Pop": PopConfig(),
    }
    for label, model in models.items():
        train_run(RunConfig(model=model, **base), folder / label, progress=False)
    return folder


@pytest.fixture(scope="module")
def sibrar_run(runs: Path) -> LoadedRun:
    return load_run(runs / "SiBraR")


def test_known_answer_own_and_random_distances() -> None:
    za = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    zb = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # same directions as za, other lengths
    stats = pair_distances(za, zb, np.array([[1], [0]]))  # with two items, the other item is forced
    assert stats["cos_own"] == pytest.approx(0.0, abs=1e-7)
    assert stats["cos_random"] == pytest.approx(1.0)  # orthogonal
    assert stats["l2_own"] == pytest.approx(1.0)  # |1-2| for both items
    assert stats["l2_random"] == pytest.approx((math.sqrt(2) + math.sqrt(8)) / 2)  # [1,0]-[0,1]; [0,2]-[2,0]
    assert stats["cos_ratio"] == pytest.approx(0.0, abs=1e-7)
    assert stats["l2_ratio"] == pytest.approx(1.0 / (1.5 * math.sqrt(2)))
    assert stats["centroid_gap"] == pytest.approx(0.0, abs=1e-7)  # both modalities have the same unit means
    assert stats["n_items"] == 2


def test_known_answer_separate_modality_regions_give_a_centroid_gap() -> None:
    za = torch.tensor([[1.0, 0.0]] * 3)
    zb = torch.tensor([[0.0, 3.0]] * 3)
    stats = pair_distances(za, zb, random_partners(3, rng=np.random.default_rng(0), draws=4))
    assert stats["cos_own"] == pytest.approx(1.0) and stats["cos_random"] == pytest.approx(1.0)
    assert stats["l2_own"] == pytest.approx(math.sqrt(10)) and stats["cos_ratio"] == pytest.approx(1.0)
    assert stats["centroid_gap"] == pytest.approx(math.sqrt(2))


def test_random_partners_are_other_items_and_seeded(rng: np.random.Generator) -> None:
    partners = random_partners(50, rng=rng, draws=7)
    assert partners.shape == (50, 7)
    assert not (partners == np.arange(50)[:, None]).any() and partners.min() >= 0 and partners.max() < 50
    assert np.array_equal(random_partners(50, rng=np.random.default_rng(3)), random_partners(50, rng=np.random.default_rng(3)))
    with pytest.raises(ConfigError, match="at least 2"):
        random_partners(1, rng=rng)


def test_pca_of_points_on_a_line_has_no_second_component(rng: np.random.Generator) -> None:
    t = rng.normal(size=40)
    x = np.outer(t, [1.0, 2.0, -2.0]) + 5.0  # a line in 3-D
    out = pca_2d(x)
    assert out.shape == (40, 2)
    assert np.allclose(out[:, 1], 0.0, atol=1e-9)
    assert np.allclose(np.abs(out[:, 0]), np.abs(t - t.mean()) * 3.0)


def test_trained_sibrar_own_item_distances_are_finite_per_pair(sibrar_run: LoadedRun) -> None:
    inputs = sibrar_run.prepared.inputs
    embeddings = modality_embeddings(sibrar_run.model, inputs)
    assert list(embeddings) == list(MODALITIES)
    for m, (items, emb) in embeddings.items():
        assert np.array_equal(items, np.flatnonzero(inputs.item[m].available.numpy()))
        assert emb.shape == (len(items), 8) and torch.isfinite(emb).all()
    rows = modality_gap(embeddings, seed=1)
    assert [r["pair"] for r in rows] == ["interactions–genres", "interactions–text", "genres–text"]
    for r in rows:
        both = inputs.item[r["a"]].available & inputs.item[r["b"]].available
        assert r["n_items"] == int(both.sum())
        assert all(math.isfinite(float(r[k])) for k in ("cos_own", "cos_random", "l2_own", "l2_random", "centroid_gap"))
    assert modality_gap(embeddings, seed=1) == rows  # seeded


def test_projection_sample_links_one_items_modalities(sibrar_run: LoadedRun) -> None:
    embeddings = modality_embeddings(sibrar_run.model, sibrar_run.prepared.inputs, ["genres", "text"])
    points, links = projection_sample(embeddings, sibrar_run.prepared.inputs.n_items, points=20, rng=np.random.default_rng(0))
    assert set(points) == {"genres", "text"} and all(p.shape[1] == 2 for p in points.values())
    assert links.ndim == 3 and links.shape[1:] == (2, 2) and 0 < len(links) <= 20


def test_unknown_modality_and_models_without_branches_are_rejected(runs: Path, sibrar_run: LoadedRun) -> None:
    with pytest.raises(ConfigError, match="'plot' is not in the 'sibrar' item tower"):
        modality_embeddings(sibrar_run.model, sibrar_run.prepared.inputs, ["plot"])
    pop = load_run(runs / "Pop")
    with pytest.raises(ConfigError, match="sibrar or multibranch"):
        modality_embeddings(pop.model, pop.prepared.inputs)


def test_cli_compares_single_and_multi_branch(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "gap"
    assert main(["gap", str(runs / "SiBraR"), str(runs / "Multi-branch"), "--out", str(out), "--points", "20"]) == 0
    frame = pl.read_csv(out / "gap.csv")
    assert frame.height == 2 * 3 and set(frame["model"]) == {"SiBraR", "Multi-branch"}
    payload = json.loads((out / "gap.json").read_text())
    assert payload["models"]["Multi-branch"]["model"] == "multibranch"
    assert "| SiBraR | genres–text |" in (out / "gap.md").read_text()
    assert (out / "gap_projection.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("target, message", [
    ("Pop", "sibrar or multibranch"),
    ("missing", "not a finished run folder"),
    (".", "it is a results folder"),
])
def test_cli_bad_run_folders_get_a_one_line_error(runs: Path, tmp_path: Path, target: str, message: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    (results / "runs").mkdir(parents=True)
    (results / "results.json").write_text("{}")
    path = {"Pop": runs / "Pop", "missing": tmp_path / "nothing", ".": results}[target]
    assert main(["gap", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
