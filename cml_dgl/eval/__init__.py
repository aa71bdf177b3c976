"""Evaluation: rank metrics with explicit tie rules, sampled and full ranking protocols."""

from cml_dgl.eval.evaluate import (
    as_scorer,
    evaluate,
    evaluate_full,
    evaluate_sampled,
    full_rank_bounds,
    sampled_rank_bounds,
    training_mask,
)
from cml_dgl.eval.metrics import TIE_RULES, metrics_from_bounds, per_user_metrics, positive_rank_bounds

__all__ = [
    "TIE_RULES",
    "as_scorer",
    "evaluate",
    "evaluate_full",
    "evaluate_sampled",
    "full_rank_bounds",
    "metrics_from_bounds",
    "per_user_metrics",
    "positive_rank_bounds",
    "sampled_rank_bounds",
    "training_mask",
]
