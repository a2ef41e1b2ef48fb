"""Offline evaluation: leave-one-out split, full and sampled ranking metrics, baselines."""

from outerloop.inner_loop.model.evaluate import (
    EvalCases,
    evaluate,
    evaluate_protocols,
    evaluate_recommender,
    leave_one_out,
    popularity_scorer,
    random_scorer,
)

__all__ = [
    "EvalCases",
    "evaluate",
    "evaluate_protocols",
    "evaluate_recommender",
    "leave_one_out",
    "popularity_scorer",
    "random_scorer",
]
