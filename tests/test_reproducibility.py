"""The same config gives the same numbers: `train.threads` fixes the CPU thread count whatever the process uses."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sibrar.config import load_run_config
from sibrar.train.run import train_run

from _runs import small_run_config


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "model.pt", weights_only=True)["model"]


def test_pinned_threads_give_identical_runs_whatever_the_process_thread_count(synthetic_shared_dir, tmp_path):
    config = load_run_config(small_run_config(tmp_path, synthetic_shared_dir, epochs=2, train={"threads": 2}))
    before = torch.get_num_threads()
    runs = []
    try:
        for process_threads in (1, 3):
            torch.set_num_threads(process_threads)
            out = tmp_path / f"run{process_threads}"
            result = train_run(config, out, progress=False)
            assert torch.get_num_threads() == process_threads  # the process setting is restored afterwards
            assert json.loads((out / "manifest.json").read_text())["threads"] == 2
            runs.append((out, result.test.summary))
    finally:
        torch.set_num_threads(before)
    (first, first_metrics), (second, second_metrics) = runs
    assert first_metrics == second_metrics
    a, b = _weights(first), _weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
