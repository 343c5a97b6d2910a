"""Paired t-test and Bonferroni significance against hand-computed t statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sibrar.errors import ConfigError
from sibrar.eval.stats import best_model_significance, paired_t_test


def _hand_t(a: np.ndarray, b: np.ndarray) -> float:
    d = a - b
    return d.mean() / (d.std(ddof=1) / math.sqrt(d.size))


def _two_sided_p_df2(t: float) -> float:
    """Student t with 2 degrees of freedom has CDF 1/2 + t / (2 sqrt(2 + t^2))."""
    return 1.0 - abs(t) / math.sqrt(2.0 + t * t)


def test_paired_t_test_matches_hand_computation():
    a = np.array([0.9, 0.8, 0.7])
    b = np.array([0.5, 0.6, 0.2])
    test = paired_t_test(a, b)
    t = _hand_t(a, b)  # d = [0.4, 0.2, 0.5]
    assert test.t_stat == pytest.approx(t)
    assert test.p_value == pytest.approx(_two_sided_p_df2(t))
    assert test.mean_diff == pytest.approx(1.1 / 3) and test.n_pairs == 3


def test_nans_are_dropped_pairwise():
    a = np.array([0.9, np.nan, 0.8, 0.7, 0.1])
    b = np.array([0.5, 0.3, 0.6, 0.2, np.nan])
    test = paired_t_test(a, b)
    kept = [0, 2, 3]
    assert test.n_pairs == 3
    assert test.t_stat == pytest.approx(_hand_t(a[kept], b[kept]))


def test_best_model_wins_when_every_corrected_test_is_significant():
    best = np.array([1.0, 1.0, 1.0])
    values = {"mf": best - [0.5, 0.51, 0.49], "sibrar": best, "pop": best - [0.9, 0.92, 0.88]}
    result = best_model_significance(values)
    assert result.best == "sibrar" and result.winner == "sibrar"
    assert result.corrected_alpha == pytest.approx(0.025)
    t_mf = _hand_t(values["sibrar"], values["mf"])
    assert result.tests["mf"].t_stat == pytest.approx(t_mf)
    assert result.p_values["mf"] == pytest.approx(_two_sided_p_df2(t_mf))
    assert set(result.tests) == {"mf", "pop"}


def test_bonferroni_correction_can_remove_significance():
    # best - other = [1, 1.36, 0.64]: t = sqrt(3) / 0.36 = 4.81, p = 0.041 with 2 dof
    best = np.array([1.0, 1.36, 0.64])
    other = np.zeros(3)
    p = _two_sided_p_df2(_hand_t(best, other))
    assert 0.025 < p < 0.05
    two = best_model_significance({"a": best, "b": other})
    assert two.winner == "a" and two.p_values["b"] == pytest.approx(p)
    clearly_worse = best - [5.0, 5.01, 4.99]
    three = best_model_significance({"a": best, "b": other, "c": clearly_worse})
    assert three.best == "a" and three.winner is None  # p(b) = 0.041 > 0.05 / 2


def test_no_winner_when_difference_is_not_significant():
    values = {"a": np.array([0.9, 0.8, 0.7]), "b": np.array([0.8, 0.5, 0.65])}
    result = best_model_significance(values)
    assert result.best == "a" and result.winner is None
    assert result.p_values["b"] == pytest.approx(_two_sided_p_df2(_hand_t(values["a"], values["b"])))


def test_lower_is_better_picks_the_smallest_mean():
    values = {"a": np.array([5.0, 6.0, 7.0]), "b": np.array([1.0, 1.1, 0.9])}
    result = best_model_significance(values, higher_is_better=False)
    assert result.best == "b" and result.winner == "b"
    assert result.means == pytest.approx({"a": 6.0, "b": 1.0})


def test_single_model_or_identical_values_have_no_winner():
    only = best_model_significance({"a": np.array([0.1, 0.2])})
    assert only.best == "a" and only.winner is None and only.tests == {}
    same = best_model_significance({"a": np.array([0.1, 0.2]), "b": np.array([0.1, 0.2])})
    assert same.best == "a" and same.winner is None and math.isnan(same.p_values["b"])


@pytest.mark.parametrize(
    ("values", "kwargs", "match"),
    [
        ({}, {}, "values is empty"),
        ({"a": np.ones(3), "b": np.ones(4)}, {}, "differ in length"),
        ({"a": np.ones((3, 2))}, {}, "must be 1-d"),
        ({"a": np.ones(3)}, {"alpha": 1.5}, r"alpha must lie in \(0, 1\)"),
        ({"a": np.full(3, np.nan)}, {}, "all NaN"),
    ],
)
def test_bad_arguments_raise_config_error(values, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        best_model_significance(values, **kwargs)
