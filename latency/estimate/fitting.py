"""Fitting the correction from block sums to end-to-end runs (scikit-learn), with its cross-validated
error; stored runs as training data, as measured.

Runs are not rescaled by a canary ratio: a canary timed one way for the table and another way for the runs
biased every run and every estimate (docs/design.md). The canary detects a run taken while the machine
moved, and the protocol takes it again (profilers.protocol); a fit then reproduces its own runs
(`in_sample_median_ratio`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latency.estimate.correction import (
    CALIBRATION_VARIANTS,
    CONTEXTS,
    FEATURES,
    VARIANTS,
    Correction,
    block_features,
)
from latency.estimate.estimator import Estimator
from latency.vocab.blocks import CONTEXT_ALONE, CONTEXT_NETWORK
from latency.vocab.errors import LutError
from lut_db import E2ERecord

MIN_RUNS = 5
MIN_SHARE_SPREAD = 0.1
MIN_RUNS_PER_CONTEXT = 3  # per_kind: runs mostly timed alone, and mostly inside networks, at least this many each


class CalibrationError(LutError):
    pass


@dataclass(frozen=True)
class Sample:
    """One architecture: its summed block features and its measured end-to-end time."""

    name: str
    features: np.ndarray  # summed over blocks, ordered as FEATURES
    measured_ms: float


def at_run_speed(estimate_ms: float, run: E2ERecord, table_canary_us: float | None) -> float:
    """An estimate restated at the machine's speed during `run` (its canary over the table's; 1 without
    one): a view beside the plain comparison, never instead of it, and never fed back into a fit."""
    ratio = run.provenance.canary_us / table_canary_us if table_canary_us and run.provenance.canary_us else 1.0
    return estimate_ms * ratio


def samples_from_runs(runs: list[E2ERecord], estimator: Estimator) -> list[Sample]:
    """Training rows: every run whose blocks are all in the estimator's table (others are skipped), its
    features from that table, its time as measured."""
    samples = []
    for run in runs:
        specs = run.arch.specs(batch=run.conditions.batch, dtype=run.conditions.dtype)
        entries = [estimator.entry(s) for s in specs]
        if any(e is None for e in entries):
            continue
        features = np.sum(
            [block_features(s, e.median_us / 1e3, e.context) for s, e in zip(specs, entries, strict=True)], axis=0
        )
        samples.append(Sample(run.arch_name, features, run.stats.median_us / 1e3))
    return samples


def in_sample_ratio(predicted_ms: np.ndarray, measured_ms: np.ndarray) -> float:
    """The median of a fit's estimates over the very runs it was fitted on: a fit that does not reproduce
    its own runs (1 within a few percent) has learned something other than their times."""
    return float(np.median(predicted_ms / measured_ms))


def design(samples: list[Sample], variant: str) -> np.ndarray:
    """The variant's features, one row per architecture."""
    columns = [FEATURES.index(f) for f in VARIANTS[variant]]
    return np.stack([s.features[columns] for s in samples])


def determined(samples: list[Sample], variant: str) -> bool:
    """Whether the runs can fit `variant`: more of them than its coefficients and two, and for per_kind,
    MIN_RUNS_PER_CONTEXT of each kind whose share of block time timed alone differs by at least
    MIN_SHARE_SPREAD (else the two scales cannot be told apart, or one rests on a run or two)."""
    if len(samples) <= len(VARIANTS[variant]) + 2:
        return False
    if variant != "per_kind":
        return True
    features = np.stack([s.features for s in samples])
    alone_share = features[:, FEATURES.index("alone_ms")] / features[:, FEATURES.index("latency_ms")]
    kinds = run_contexts(samples)
    enough = all(kinds.count(context) >= MIN_RUNS_PER_CONTEXT for context in CONTEXTS)
    return enough and float(np.ptp(alone_share)) >= MIN_SHARE_SPREAD


def _fit(x: np.ndarray, y: np.ndarray, variant: str) -> tuple[np.ndarray, float]:
    """Least squares on relative errors (weights 1/y^2, the metric that matters: RMSPE), with the intercept
    at 0 or above: a network's fixed cost cannot be negative, and a negative one, fitted on a few noisy
    runs, put the estimate of a network smaller than the runs below zero (as the transfer's, transfer.py)."""
    from sklearn.linear_model import LinearRegression

    weights = 1.0 / y**2
    if variant != "scale":
        regression = LinearRegression().fit(x, y, sample_weight=weights)
        if regression.intercept_ >= 0:
            return regression.coef_, float(regression.intercept_)
    return LinearRegression(fit_intercept=False).fit(x, y, sample_weight=weights).coef_, 0.0


def leave_one_out(x: np.ndarray, y: np.ndarray, fit: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Each run predicted by a fit that never saw it: `fit(x, y)` gives coefficients over x's columns."""
    predictions = np.empty(len(y))
    for held_out in range(len(y)):
        rest = np.arange(len(y)) != held_out
        predictions[held_out] = x[held_out] @ fit(x[rest], y[rest])
    return predictions


def _cross_validated(samples: list[Sample], variant: str) -> np.ndarray:
    """Leave-one-out predictions of the variant's fit (its features and a constant for the intercept)."""
    x = np.column_stack([design(samples, variant), np.ones(len(samples))])
    y = np.array([s.measured_ms for s in samples])
    return leave_one_out(x, y, lambda x_rest, y_rest: np.append(*_fit(x_rest[:, :-1], y_rest, variant)))


def error_metrics(estimated: np.ndarray, measured: np.ndarray) -> dict[str, float | None]:
    """The field's accuracy metrics for estimates against measurements; every key always present, the rank
    correlations None below 3 runs (undefined)."""
    from scipy.stats import kendalltau, spearmanr

    relative = (estimated - measured) / measured
    metrics = {
        "n": len(measured),
        "within_10pct": float(np.mean(np.abs(relative) <= 0.10)),
        "rmspe": float(np.sqrt(np.mean(relative**2))),
        "mape": float(np.mean(np.abs(relative))),
        "median_error": float(np.median(relative)),  # signed: below 0, the estimates are fast
        "kendall_tau": None,
        "spearman_rho": None,
    }
    if len(measured) >= 3:
        metrics["kendall_tau"] = float(kendalltau(estimated, measured).statistic)
        metrics["spearman_rho"] = float(spearmanr(estimated, measured).statistic)
    return metrics


def repeatability(process_medians_ms: list[list[float]]) -> dict[str, float | None]:
    """How far runs of one network in fresh processes agree (per network, its processes' medians): the noise
    floor no estimate can beat. `pair_gap_median`: the median gap between two processes' medians of one
    network, relative to their mean; `pairs_within_10pct`: the share of such pairs within 10% of each other;
    `floor_rmspe`: the RMSPE of a perfect estimate against a single process's median."""
    gaps = [
        abs(a - b) / ((a + b) / 2)
        for medians in process_medians_ms
        for i, a in enumerate(medians)
        for b in medians[i + 1 :]
    ]
    repeated = [medians for medians in process_medians_ms if len(medians) > 1]
    relative = [m / float(np.median(medians)) - 1 for medians in repeated for m in medians]
    return {
        "networks": len(repeated),
        "pair_gap_median": float(np.median(gaps)) if gaps else None,
        "pairs_within_10pct": float(np.mean(np.array(gaps) <= 0.10)) if gaps else None,
        "floor_rmspe": float(np.sqrt(np.mean(np.square(relative)))) if relative else None,
    }


def held_out_metrics(predictions: np.ndarray, measured: np.ndarray) -> dict[str, float | None]:
    """A fit's metrics from its leave-one-out predictions: the field's metrics (cv_*) and the interval of
    the estimate (where the measured time fell around held-out predictions, relative)."""
    # measured / predicted - 1, a prediction at zero or below counting as a thousandth of the run (the
    # interval is then as wide as such a fit deserves, and stays above zero)
    measured_over = measured / np.maximum(predictions, measured * 1e-3) - 1
    return {
        **{f"cv_{k}": v for k, v in error_metrics(predictions, measured).items()},
        "residual_q05": float(np.quantile(measured_over, 0.05)),
        "residual_q95": float(np.quantile(measured_over, 0.95)),
    }


def run_contexts(samples: list[Sample]) -> list[str]:
    """Where most of each run's block time was timed: alone, or inside networks."""
    return [
        CONTEXT_ALONE
        if s.features[FEATURES.index("alone_ms")] >= s.features[FEATURES.index("latency_ms")] / 2
        else CONTEXT_NETWORK
        for s in samples
    ]


def fit_correction(samples: list[Sample], table_canary_us: float | None = None) -> Correction:
    """Choose the variant with the lowest leave-one-out RMSPE, refit it on all runs.

    Runs whose blocks were timed alone and runs whose blocks were timed inside networks get a scale for
    each (per_kind) where there are enough of each; otherwise the fit is made on the runs of the more
    common kind only and corrects only blocks timed that way (a single scale fitted on both would carry one
    kind's correction onto the other; per_kind on one run of a kind extrapolates wildly)."""
    kinds = run_contexts(samples)
    per_kind = len(set(kinds)) > 1 and determined(samples, "per_kind")
    majority = max(CONTEXTS, key=kinds.count)  # a tie: alone, the older kind
    if not per_kind:
        samples = [s for s, kind in zip(samples, kinds, strict=True) if kind == majority]
    if len(samples) < MIN_RUNS:
        raise CalibrationError(
            f"Calibration needs at least {MIN_RUNS} end-to-end runs whose blocks are all in the table (or "
            f"{MIN_RUNS_PER_CONTEXT} whose blocks were mostly timed alone and {MIN_RUNS_PER_CONTEXT} inside "
            f"networks); found {len(samples)}."
        )
    variants = ("per_kind",) if per_kind else CALIBRATION_VARIANTS
    measured = np.array([s.measured_ms for s in samples])
    best: tuple[float, str, np.ndarray] | None = None
    candidates = {}
    for variant in variants:
        if not determined(samples, variant):
            continue
        predictions = _cross_validated(samples, variant)
        rmspe = float(np.sqrt(np.mean(((predictions - measured) / measured) ** 2)))
        candidates[variant] = rmspe
        if np.any(predictions <= 0):  # no variant of time (as fit_transfer): kept only if nothing else fits
            rmspe = np.inf
        if best is None or rmspe < best[0]:
            best = (rmspe, variant, predictions)
    assert best is not None
    _, variant, predictions = best
    x = design(samples, variant)
    coef, intercept = _fit(x, measured, variant)
    metrics = {
        **held_out_metrics(predictions, measured),
        **{f"cv_rmspe_{name}": value for name, value in candidates.items()},
        "in_sample_median_ratio": in_sample_ratio(x @ coef + intercept, measured),
    }
    return Correction(
        variant=variant,
        coef=tuple(float(c) for c in coef),
        intercept=intercept,
        table_canary_us=table_canary_us,
        metrics=metrics,
        contexts=CONTEXTS if per_kind else (majority,),  # per_kind: three runs of each kind or more
    )
