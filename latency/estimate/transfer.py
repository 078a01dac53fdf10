"""Transfer calibration: a new device's correction from another device's table and a few of its own runs.

The target's network time is modelled exactly as calibration variants a device's own (correction.py): an
intercept plus a sum over blocks of a linear function of each block's features, here with the block's
time taken from the *source* device's table. So the result is a `Correction`, and the estimate,
`estimate_many` and LatencyCost stay one and the same function of the blocks.

With about ten runs a free linear fit chases noise. Each candidate (TRANSFER_VARIANTS) is pulled toward a
prior, the target proportional to the first feature (the source's time; multiply-adds for "flops"): features
are rescaled so that each coefficient is the share of a typical network's time it moves, and a ridge
penalty, chosen by leave-one-out error, keeps those shares near the prior's. The default is the equal-weight
average of the two plainest fits, the target proportional to the source's time ("scale") and the target
linear in the blocks' work ("flops"): neither the source's kernels nor the work alone says how another
runtime's kernels run, and with few runs an average of two predictors is steadier than either picked by
noisy errors (on this host's runs the pick lost to a fit on multiply-adds, the average did not; README).
A candidate replaces the average only where its leave-one-out errors are lower by a margin the runs' noise
cannot make (MIN_T standard errors, paired over runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from latency.estimate.correction import CONTEXTS, FEATURES, VARIANTS, Correction
from latency.estimate.fitting import (
    CalibrationError,
    Sample,
    design,
    held_out_metrics,
    in_sample_ratio,
    leave_one_out,
)

# Strengths of the pull toward the prior, in units of squared relative error per run: 1e-4 lets the data
# decide, 10 keeps the prior.
PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
# "flops" (the network's multiply-adds and a per-block cost, no source time) is there so that a transfer
# is never worse than a fit on work alone where the source's kernels mislead.
TRANSFER_VARIANTS = ("scale", "per_block", "flops", "work", "traffic")
COMBINED = "combined"  # the average of the "scale" and "flops" fits (correction.VARIANTS)
# A candidate's mean absolute leave-one-out error must be below the average's by this many standard errors
# of the paired difference: on this host's noisy runs no pick reached 2 (the largest, 1.7, lost on held-out
# networks), while a source that predicts the target clearly reaches it with five runs.
MIN_T = 2.0
MIN_TRANSFER_RUNS = 3


@dataclass(frozen=True)
class _Candidate:
    variant: str
    penalty: float
    theta: np.ndarray  # coefficients of the variant's features, then the intercept
    loo_ms: np.ndarray  # leave-one-out predictions of the runs

    def correction(self, metrics: dict[str, float], table_canary_us: float | None) -> Correction:
        coef = tuple(float(c) for c in self.theta[:-1])
        # it maps the source's rows, wherever they were timed, onto the target
        return Correction(self.variant, coef, float(self.theta[-1]), metrics, table_canary_us, contexts=CONTEXTS)


def _design(samples: list[Sample], variant: str) -> np.ndarray:
    """The variant's features and a constant (the intercept), one row per architecture."""
    return np.column_stack([design(samples, variant), np.ones(len(samples))])


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


def _candidate(samples: list[Sample], variant: str, y: np.ndarray) -> _Candidate:
    """The variant at the strongest penalty whose leave-one-out RMSPE is within 1% of the best (ten runs
    cannot tell finer differences apart); penalties whose fits put a held-out run at zero time or below (no
    variant of time; a few noisy runs of small networks can make one) only if all do."""
    x = _design(samples, variant)
    fits = [(penalty, leave_one_out(x, y, partial(_fit, penalty=penalty))) for penalty in PENALTIES]
    fits = [f for f in fits if np.all(f[1] > 0)] or fits
    best = min(_rmspe(loo, y) for _, loo in fits)
    penalty, loo = next(f for f in reversed(fits) if _rmspe(f[1], y) <= best + 0.01)
    return _Candidate(variant, penalty, _fit(x, y, penalty), loo)


def _rmspe(predictions: np.ndarray, y: np.ndarray) -> float:
    return float(np.sqrt(np.mean(((predictions - y) / y) ** 2)))


def _combined(scale: _Candidate, flops: _Candidate) -> _Candidate:
    """The equal-weight average of the two fits, as one linear variant over the combined variant's features."""
    weights = (scale.correction({}, None).weights + flops.correction({}, None).weights) / 2
    coef = np.array([weights[FEATURES.index(f)] for f in VARIANTS[COMBINED]])
    intercept = (scale.theta[-1] + flops.theta[-1]) / 2
    return _Candidate(COMBINED, flops.penalty, np.append(coef, intercept), (scale.loo_ms + flops.loo_ms) / 2)


def _clearly_better(candidate: _Candidate, default: _Candidate, y: np.ndarray) -> bool:
    """Whether the candidate's absolute relative leave-one-out errors are below the default's by more than
    MIN_T standard errors of their paired difference."""
    difference = np.abs(candidate.loo_ms / y - 1) - np.abs(default.loo_ms / y - 1)
    standard_error = float(np.std(difference, ddof=1)) / np.sqrt(len(y))
    return float(np.mean(difference)) < -MIN_T * standard_error


def fit_transfer(samples: list[Sample], table_canary_us: float | None = None) -> Correction:
    """The target's correction over the source's block times, from the target's runs (`samples`: features
    from the source's table, the target's times as measured); its metrics are leave-one-out errors."""
    if len(samples) < MIN_TRANSFER_RUNS:
        raise CalibrationError(
            f"A transfer needs at least {MIN_TRANSFER_RUNS} end-to-end runs on the target whose blocks are all "
            f"in the source's table; found {len(samples)}."
        )
    y = np.array([s.measured_ms for s in samples])
    candidates = {variant: _candidate(samples, variant, y) for variant in TRANSFER_VARIANTS}
    choice = _combined(candidates["scale"], candidates["flops"])
    better = [c for c in candidates.values() if np.all(c.loo_ms > 0) and _clearly_better(c, choice, y)]
    if better:
        choice = min(better, key=lambda c: _rmspe(c.loo_ms, y))
    metrics = {
        **held_out_metrics(choice.loo_ms, y),
        "penalty": choice.penalty,
        "prior_ratio": prior_ratio(_design(samples, "scale"), y),
        "in_sample_median_ratio": in_sample_ratio(_design(samples, choice.variant) @ choice.theta, y),
    }
    return choice.correction(metrics, table_canary_us)
