"""A small SiBraR run config on the synthetic dataset, written for CLI tests."""

from __future__ import annotations

from pathlib import Path

import yaml


def small_run_config(folder: Path, dataset: Path, *, epochs: int = 5, **sections: dict) -> Path:
    """`folder/run.yaml`: SiBraR (d=8) on `dataset`, cold-item split; `sections` update the defaults per section."""
    data = {
        "data": {"dataset": str(dataset), "k_core": 0},
        "split": {"protocol": "cold_item", "seed": 2},
        "model": {"name": "sibrar", "dim": 8,
                  "item": {"modalities": ["interactions", "genres", "text"], "common_dim": 8, "branch": {"hidden": [8]}}},
        "train": {"epochs": epochs, "batch_size": 64, "n_negatives": 3},
        "eval": {"ks": [10]},
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path
