"""Significance of the best model: paired t-tests against every other model, Bonferroni-corrected."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from sibrar.errors import ConfigError

__all__ = ["PairedTest", "SignificanceResult", "best_model_significance", "paired_t_test"]


@dataclass(frozen=True)
class PairedTest:
    """Two-sided paired t-test of model a against model b on the users where both are defined."""

    t_stat: float  # positive when a's values are larger on average; NaN when undefined
    p_value: float  # NaN when fewer than 2 pairs or every difference is equal
    mean_diff: float  # mean of (a - b) over the pairs
    n_pairs: int


@dataclass(frozen=True)
class SignificanceResult:
    """Outcome for one metric: the best-mean model and whether it beats all others."""

    best: str  # model with the best mean (first in input order on exact ties)
    winner: str | None  # ``best`` when significantly better than every other model, else None
    alpha: float  # the family-wise level asked for
    corrected_alpha: float  # alpha / (n_models - 1), the per-test threshold
    means: dict[str, float]  # NaN-omitting mean per model
    tests: dict[str, PairedTest]  # best vs each other model, keyed by the other model

    @property
    def p_values(self) -> dict[str, float]:
        return {name: test.p_value for name, test in self.tests.items()}


def paired_t_test(a: np.ndarray, b: np.ndarray) -> PairedTest:
    """``scipy.stats.ttest_rel`` on the users where both values are finite (NaNs dropped pairwise)."""
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    n_pairs = int(a.size)
    mean_diff = float((a - b).mean()) if n_pairs else math.nan
    if n_pairs < 2:
        return PairedTest(math.nan, math.nan, mean_diff, n_pairs)
    import scipy.stats  # here, not at the top: it takes ~1 s and `import sibrar` (the CLI) reaches this module

    with np.errstate(divide="ignore", invalid="ignore"):
        result = scipy.stats.ttest_rel(a, b)
    return PairedTest(float(result.statistic), float(result.pvalue), mean_diff, n_pairs)


def best_model_significance(
    values: Mapping[str, np.ndarray | torch.Tensor],
    *,
    alpha: float = 0.05,
    higher_is_better: bool = True,
) -> SignificanceResult:
    """Test the best-mean model against every other one on per-user values of one metric.

    The reference code's protocol: take the model with the best mean, run a paired
    two-sided t-test against each other model, and call it significantly better than all ("dagger"
    in the tables) when every p-value is below ``alpha / (n_models - 1)`` (Bonferroni) and every
    paired mean difference favours it.

    Args:
        values: model name -> (U,) per-user values, row u the same user for every model; NaN (users
            without relevant items) is left out pairwise.
        alpha: family-wise significance level.
        higher_is_better: False for metrics where lower is better (e.g. arp, gini).
    """
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"best_model_significance: alpha must lie in (0, 1), got {alpha!r}")
    if not values:
        raise ConfigError("best_model_significance: values is empty; give {model: per-user values}")
    arrays = {name: _per_user(name, v) for name, v in values.items()}
    lengths = {name: a.size for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise ConfigError(
            f"best_model_significance: per-user arrays differ in length {lengths}; the test pairs "
            "users, so every model needs one value per user in the same order"
        )
    means = {name: float(np.nanmean(a)) if (~np.isnan(a)).any() else math.nan for name, a in arrays.items()}
    sign = 1.0 if higher_is_better else -1.0
    ranked = [name for name in means if not math.isnan(means[name])]
    if not ranked:
        raise ConfigError("best_model_significance: every model's values are all NaN; nothing to compare")
    best = max(ranked, key=lambda name: sign * means[name])  # max keeps the first on exact ties
    others = [name for name in arrays if name != best]
    corrected = alpha / max(len(others), 1)
    tests = {name: paired_t_test(arrays[best], arrays[name]) for name in others}
    beats_all = bool(others) and all(
        t.p_value < corrected and sign * t.mean_diff > 0 for t in tests.values()
    )
    return SignificanceResult(
        best=best,
        winner=best if beats_all else None,
        alpha=alpha,
        corrected_alpha=corrected,
        means=means,
        tests=tests,
    )


def _per_user(name: str, values: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ConfigError(
            f"best_model_significance: values for model {name!r} must be 1-d per-user values, got "
            f"shape {array.shape}"
        )
    return array
