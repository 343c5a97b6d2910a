"""Comparison results: one model's outcome in an experiment and the significance test between models.

Written by `sibrar.experiment` (which trains) and only read by `sibrar.report` (which renders), so
the report never imports the experiment runner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sibrar.errors import ConfigError
from sibrar.eval.stats import best_model_significance

LOWER_IS_BETTER = ("arp", "gini")  # popularity-bias metrics: smaller is better
DEFAULT_TABLE = ("precision@10", "recall@10", "ndcg@10", "map@10", "coverage@10")


def lower_is_better(metric: str) -> bool:
    """True for metrics such as 'arp@10' where a smaller value is the better one."""
    return metric.partition("@")[0] in LOWER_IS_BETTER


@dataclass
class ModelOutcome:
    """One model of an experiment: test/validation summaries, per-user test values and history.

    `tuning` is set when the model's settings came from a study: budget, best trial, tuned values.
    """

    label: str
    model_name: str
    run_dir: Path
    test: dict[str, float]
    valid: dict[str, float]
    per_user: dict[str, np.ndarray]
    users: np.ndarray
    history: list[dict[str, float]]
    views: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    best_epoch: int = -1
    tuning: dict[str, Any] | None = None


def significance(outcomes: Sequence[ModelOutcome], metric: str) -> str | None:
    """The label of the model significantly better than all others on `metric` (paired t-test, Bonferroni)."""
    if len(outcomes) < 2 or metric not in outcomes[0].per_user:
        return None
    users = outcomes[0].users
    if any(not np.array_equal(o.users, users) for o in outcomes):
        raise ConfigError("models were evaluated on different users; significance needs the same test users")
    return best_model_significance({o.label: o.per_user[metric] for o in outcomes},
                                   higher_is_better=not lower_is_better(metric)).winner
