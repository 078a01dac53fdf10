"""Transfer calibration: a new device's correction from another device's table and a few of its own runs.

The target's network time is modelled exactly as calibration models a device's own (correction.py): an
intercept plus a sum over blocks of a linear function of each block's features, here with the block's
time taken from the *source* device's table. So the result is a `Correction`, and the estimate,
`estimate_many` and LatencyCost stay one and the same function of the blocks.

With about ten runs a free linear fit chases noise. The fit is pulled toward a prior: the target
proportional to the source (one ratio, the median of measured over source-estimated time). Features are
rescaled so that each coefficient is the share of a typical network's time it moves, and a ridge
penalty keeps those shares near the prior's; the feature set (TRANSFER_MODELS, some with the blocks'
multiply-adds) and the penalty's strength are chosen by leave-one-out error, as calibration chooses its
model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latency.estimate.correction import CONTEXTS, Correction
from latency.estimate.fitting import CalibrationError, Sample, design, held_out_metrics

# Strengths of the pull toward the prior, in units of squared relative error per run: 1e-4 lets the data
# decide, 10 keeps the prior.
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# Simplest first. "flops" (the network's multiply-adds and a per-block cost, no source time) is there so
# that a transfer is never worse than a fit on work alone where the source's kernels mislead.
TRANSFER_MODELS = ("scale", "per_block", "flops", "work", "traffic")
MIN_TRANSFER_RUNS = 3


@dataclass(frozen=True)
class _Choice:
    model: str
    penalty: float


def _design(samples: list[Sample], model: str) -> np.ndarray:
    """The model's features and a constant (the intercept), one row per architecture."""
    return np.column_stack([design(samples, model), np.ones(len(samples))])


def prior_ratio(x: np.ndarray, y: np.ndarray) -> float:
    """The prior: the target's time over the first column (the source's time; multiply-adds for "flops"),
    the median over runs."""
    return float(np.median(y / x[:, 0]))


def _fit(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """`_ridge` with the intercept (the last column) at least 0: a network's fixed cost cannot be negative,
    and a negative one, fitted on a few noisy runs, put the estimates of small networks below zero."""
    theta = _ridge(x, y, penalty)
    return theta if theta[-1] >= 0 else np.append(_ridge(x[:, :-1], y, penalty), 0.0)


def _ridge(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    """Weighted ridge toward the prior (first column, the source's time, times the median ratio; every
    other coefficient 0), on relative errors (weights 1/y^2)."""
    prior = np.zeros(x.shape[1])
    prior[0] = prior_ratio(x, y)
    # Each column scaled to the size of a typical network's time: a coefficient is then the share of it.
    scale = np.abs(x).mean(axis=0) / np.abs(y).mean()
    scale[scale == 0] = 1.0
    weights = 1.0 / y**2
    gram = x.T @ (x * weights[:, None]) + penalty * np.diag(scale**2)
    rhs = x.T @ (y * weights) + penalty * scale**2 * prior
    return np.linalg.solve(gram, rhs)


def _loo_predictions(x: np.ndarray, y: np.ndarray, penalty: float) -> np.ndarray:
    from sklearn.model_selection import LeaveOneOut

    predictions = np.empty(len(y))
    for train, test in LeaveOneOut().split(x):
        predictions[test] = x[test] @ _fit(x[train], y[train], penalty)
    return predictions


def fit_transfer(samples: list[Sample], table_canary_us: float | None = None) -> Correction:
    """The target's correction over the source's block times, from the target's runs (`samples`: features
    from the source's table, the target's times at one speed); its metrics are leave-one-out errors."""
    if len(samples) < MIN_TRANSFER_RUNS:
        raise CalibrationError(
            f"A transfer needs at least {MIN_TRANSFER_RUNS} end-to-end runs on the target whose blocks are all "
            f"in the source's table; found {len(samples)}."
        )
    y = np.array([s.measured_ms for s in samples])
    scores: dict[_Choice, tuple[float, np.ndarray]] = {}
    for model in TRANSFER_MODELS:
        x = _design(samples, model)
        for penalty in PENALTIES:
            predictions = _loo_predictions(x, y, penalty)
            scores[_Choice(model, penalty)] = (float(np.sqrt(np.mean(((predictions - y) / y) ** 2))), predictions)
    # A fit that puts a held-out run at zero time or below is no model of time (a few noisy runs of small
    # networks can make one): left out while any other remains.
    positive = {c: v for c, v in scores.items() if np.all(v[1] > 0)}
    scores = positive or scores
    # The simplest model and the strongest pull among those within 1% RMSPE of the best: ten runs cannot
    # tell finer differences apart.
    best_rmspe = min(score for score, _ in scores.values())
    order = [_Choice(m, p) for m in TRANSFER_MODELS for p in reversed(PENALTIES) if _Choice(m, p) in scores]
    choice = next(c for c in order if scores[c][0] <= best_rmspe + 0.01)
    x = _design(samples, choice.model)
    theta = _fit(x, y, choice.penalty)
    metrics = {**held_out_metrics(scores[choice][1], y), "penalty": choice.penalty, "prior_ratio": prior_ratio(x, y)}
    return Correction(
        model=choice.model,
        coef=tuple(float(c) for c in theta[:-1]),
        intercept=float(theta[-1]),
        metrics=metrics,
        table_canary_us=table_canary_us,
        contexts=CONTEXTS,  # it maps the source's rows, wherever they were timed, onto the target
    )
