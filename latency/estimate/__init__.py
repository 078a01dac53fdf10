"""Estimation from the table: the estimator, the sum-to-end-to-end correction, the block predictor."""

from latency.estimate.estimator import Estimate, Estimator, MissingBlocksError

__all__ = ["Estimate", "Estimator", "MissingBlocksError"]
