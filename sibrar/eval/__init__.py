"""Evaluation: exact full-ranking top-k, ranking metrics and significance tests."""

from sibrar.eval.metrics import DEFAULT_METRICS, METRICS, MetricReport, MetricSpec, compute_metrics
from sibrar.eval.ranking import topk_items
from sibrar.eval.stats import PairedTest, SignificanceResult, best_model_significance, paired_t_test

__all__ = [
    "DEFAULT_METRICS",
    "METRICS",
    "MetricReport",
    "MetricSpec",
    "PairedTest",
    "SignificanceResult",
    "best_model_significance",
    "compute_metrics",
    "paired_t_test",
    "topk_items",
]
