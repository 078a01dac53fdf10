"""Fit the correction from block sums to measured end-to-end runs (scikit-learn), with its
cross-validated error, and turn stored runs into training data."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from latency.arch import Arch
from latency.correction import FEATURES, MODELS, Correction, block_features
from latency.errors import LutError
from latency.estimate import Estimator
from latency.models import get_arch, list_models
from latency.profile import ProfileSummary, profile_archs, profile_blocks
from latency.space import get_space
from lut_db import E2ERecord, FitRecord, LutStore
from profilers.protocol import ProgressSink, Protocol

DEFAULT_SPACE = "fbnetv2_f4"

MIN_RUNS = 5


class CalibrationError(LutError):
    pass


@dataclass(frozen=True)
class Sample:
    """One architecture: its summed block features and its measured end-to-end time."""

    name: str
    features: np.ndarray  # summed over blocks, ordered as FEATURES
    measured_ms: float


def _run_over_table(run: E2ERecord, table_canary_us: float | None) -> float:
    """How much slower the machine ran during `run` than when the table was measured: the machine
    drifts as a whole, and the canary timed in the run's own trials says by how much (1: no canary)."""
    return run.canary_us / table_canary_us if table_canary_us and run.canary_us else 1.0


def at_table_speed(run: E2ERecord, table_canary_us: float | None) -> float:
    """A run's time (ms) at the speed the table was measured at."""
    return run.median_us / 1e3 / _run_over_table(run, table_canary_us)


def at_run_speed(estimate_ms: float, run: E2ERecord, table_canary_us: float | None) -> float:
    """An estimate (stated at the table's speed) at the machine's speed during `run`."""
    return estimate_ms * _run_over_table(run, table_canary_us)


def samples_from_runs(runs: list[E2ERecord], estimator: Estimator) -> list[Sample]:
    """Training rows: every run whose blocks are all in the table (others are skipped), its time
    brought to the table's speed."""
    samples = []
    for run in runs:
        arch = Arch.from_dict(json.loads(run.arch_json))
        specs = arch.specs(batch=run.batch, dtype=run.dtype)
        entries = [estimator.entry(s) for s in specs]
        if any(e is None for e in entries):
            continue
        features = np.sum([block_features(s, e.median_us / 1e3) for s, e in zip(specs, entries, strict=True)], axis=0)
        samples.append(Sample(run.arch_name, features, at_table_speed(run, estimator.table_canary_us)))
    return samples


def _design(samples: list[Sample], model: str) -> np.ndarray:
    columns = [FEATURES.index(f) for f in MODELS[model]]
    return np.stack([s.features[columns] for s in samples])


def _fit(x: np.ndarray, y: np.ndarray, model: str) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LinearRegression

    # Weights 1/y^2: least squares on relative errors, the metric that matters (RMSPE).
    regression = LinearRegression(fit_intercept=model != "scale")
    regression.fit(x, y, sample_weight=1.0 / y**2)
    return regression.coef_, float(regression.intercept_) if model != "scale" else 0.0


def _cross_validated(samples: list[Sample], model: str) -> np.ndarray:
    """Leave-one-out predictions: each architecture predicted by a fit that never saw it."""
    x, y = _design(samples, model), np.array([s.measured_ms for s in samples])
    predictions = np.empty(len(samples))
    for i in range(len(samples)):
        keep = np.arange(len(samples)) != i
        coef, intercept = _fit(x[keep], y[keep], model)
        predictions[i] = x[i] @ coef + intercept
    return predictions


def error_metrics(estimated: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """The field's accuracy metrics for estimates against measurements."""
    from scipy.stats import kendalltau, spearmanr

    relative = (estimated - measured) / measured
    metrics = {
        "n": len(measured),
        "within_10pct": float(np.mean(np.abs(relative) <= 0.10)),
        "rmspe": float(np.sqrt(np.mean(relative**2))),
        "mape": float(np.mean(np.abs(relative))),
    }
    if len(measured) >= 3:
        metrics["kendall_tau"] = float(kendalltau(estimated, measured).statistic)
        metrics["spearman_rho"] = float(spearmanr(estimated, measured).statistic)
    return metrics


def fit_correction(samples: list[Sample], table_canary_us: float | None = None) -> Correction:
    """Choose the model with the lowest leave-one-out RMSPE, refit it on all runs."""
    if len(samples) < MIN_RUNS:
        raise CalibrationError(
            f"Calibration needs at least {MIN_RUNS} end-to-end runs whose blocks are all in the table; "
            f"found {len(samples)}."
        )
    measured = np.array([s.measured_ms for s in samples])
    best: tuple[float, str, np.ndarray] | None = None
    candidates = {}
    for model in MODELS:
        if len(samples) <= len(MODELS[model]) + 2:
            continue
        predictions = _cross_validated(samples, model)
        rmspe = float(np.sqrt(np.mean(((predictions - measured) / measured) ** 2)))
        candidates[model] = rmspe
        if best is None or rmspe < best[0]:
            best = (rmspe, model, predictions)
    assert best is not None
    _, model, predictions = best
    coef, intercept = _fit(_design(samples, model), measured, model)
    relative = (predictions - measured) / measured
    metrics = {
        **{f"cv_{k}": v for k, v in error_metrics(predictions, measured).items()},
        # Interval of the estimate: where the measured time fell around held-out predictions.
        "residual_q05": float(np.quantile(-relative / (1 + relative), 0.05)),
        "residual_q95": float(np.quantile(-relative / (1 + relative), 0.95)),
        **{f"cv_rmspe_{name}": value for name, value in candidates.items()},
    }
    return Correction(
        model=model,
        coef=tuple(float(c) for c in coef),
        intercept=intercept,
        table_canary_us=table_canary_us,
        metrics=metrics,
    )


# ---- the calibrate job ----------------------------------------------------------------------------


def sampled_archs(n: int, seed: int, space_name: str = DEFAULT_SPACE) -> list[Arch]:
    return get_space(space_name).sampled_archs(n, seed)


def family_archs(models: Sequence[str]) -> list[Arch]:
    names: list[str] = []
    for model in models:
        names.extend(list_models(available_only=True) if model == "all" else [model])
    return [get_arch(name) for name in dict.fromkeys(names)]


@dataclass
class CalibrationReport:
    correction: Correction
    runs: int
    blocks: ProfileSummary | None
    e2e: ProfileSummary

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.correction.model,
            "coef": list(self.correction.coef),
            "features": list(MODELS[self.correction.model]),
            "intercept": self.correction.intercept,
            "table_canary_us": self.correction.table_canary_us,
            "runs": self.runs,
            "metrics": self.correction.metrics,
            "blocks_profiled": self.blocks.to_dict() if self.blocks else None,
            "e2e_profiled": self.e2e.to_dict(),
        }


def ensure_blocks(
    archs: Sequence[Arch],
    store: LutStore,
    device: str,
    backend: str,
    threads: int,
    batch: int,
    dtype: str,
    protocol: Protocol | str,
    progress: ProgressSink | None,
) -> ProfileSummary:
    specs = list({s.key: s for a in archs for s in a.specs(batch=batch, dtype=dtype)}.values())
    return profile_blocks(specs, store, device, backend, threads, protocol, progress=progress)


def calibrate(
    store: LutStore,
    archs: Sequence[Arch],
    device: str = "cpu",
    backend: str = "torch",
    threads: int = 1,
    batch: int = 1,
    dtype: str = "fp32",
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    tag: str = "calibration",
) -> CalibrationReport:
    """Measure the blocks and the end-to-end runs of `archs`, fit the correction on every run with
    `tag` for these conditions, and store the fit with its cross-validated error."""
    blocks = ensure_blocks(archs, store, device, backend, threads, batch, dtype, protocol, progress)
    if blocks.interrupted:
        raise KeyboardInterrupt
    e2e = profile_archs(archs, store, device, backend, threads, batch, dtype, tag, protocol, progress=progress)
    if e2e.interrupted:
        raise KeyboardInterrupt
    estimator = Estimator(
        device, backend=backend, threads=threads, batch=batch, dtype=dtype, store=store, use_calibration=False
    )
    runs = store.e2e_runs(device, backend, tag=tag, threads=threads, batch=batch, dtype=dtype)
    samples = samples_from_runs(runs, estimator)
    correction = fit_correction(samples, estimator.table_canary_us)
    store.put_fit(
        FitRecord(
            device=device,
            backend=backend,
            backend_version=e2e.backend_version,
            threads=threads,
            dtype=dtype,
            batch=batch,
            purpose="calibration",
            params=correction.to_params(),
            metrics=correction.metrics,
            n_samples=len(samples),
            fitted_at=datetime.now(UTC),
        )
    )
    return CalibrationReport(correction, len(samples), blocks, e2e)
