"""The calibrate job: measure end-to-end runs as the deployment runs them (and the blocks they need),
fit the correction (latency.estimate.fitting), store it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from latency.estimate.correction import VARIANTS, Correction
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import fit_correction, samples_from_runs
from latency.jobs.measure import ProfileSummary, profile_archs, profile_blocks
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.family import family_archs
from latency.vocab.space import get_space
from lut_db import FitRecord, LutStore
from profilers.protocol import ProgressSink, Protocol

DEFAULT_SPACE = "fbnetv2_f4"


def run_archs(models: Sequence[str], random: int, seed: int = 0, space: str = DEFAULT_SPACE) -> list[Arch]:
    """The architectures calibration and validation run: family members, then `random` sampled from a space."""
    return family_archs(models) + get_space(space).sampled_archs(random, seed)


@dataclass
class CalibrationReport:
    correction: Correction
    runs: int
    blocks: ProfileSummary | None
    e2e: ProfileSummary
    conditions: Conditions
    deploy_env: str = "default"

    def summary(self) -> str:
        """One sentence for the terminal."""
        metrics, c = self.correction.metrics, self.conditions
        return (
            f"calibrated {c.device}/{c.backend} for deployment '{self.deploy_env}' on {self.runs} end-to-end runs: "
            f"{self.correction.variant} correction; cross-validated RMSPE {metrics['cv_rmspe']:.1%}, MAPE "
            f"{metrics['cv_mape']:.1%}, within 10% {metrics['cv_within_10pct']:.0%}; on its own runs the estimate is "
            f"{metrics['in_sample_median_ratio']:.3f} of the measured time (median)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "deploy_env": self.deploy_env,
            "model": self.correction.variant,
            "coef": list(self.correction.coef),
            "features": list(VARIANTS[self.correction.variant]),
            "contexts": list(self.correction.contexts),
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
    conditions: Conditions,
    protocol: Protocol | str,
    progress: ProgressSink | None,
    device_options: dict[str, Any] | None = None,
) -> ProfileSummary:
    """Measure, alone, the blocks of `archs` that have no row of the device's own (measured or predicted).

    A predicted row is part of the table a calibration corrects (a space fill's rows, what the search and
    every estimate read): measuring it alone here would turn the calibration's networks into another kind
    of table than the networks it is meant for (a space filled in context gets blocks timed alone)."""
    specs = {s.key: s for a in archs for s in a.specs(batch=conditions.batch, dtype=conditions.dtype)}
    held = {r.block_key for r in store.measurements(conditions, specs) if r.source in ("measured", "predicted")}
    summary = profile_blocks(
        [s for k, s in specs.items() if k not in held],
        store,
        conditions,
        protocol,
        progress=progress,
        device_options=device_options,
    )
    summary.requested, summary.already_present = len(specs), summary.already_present + len(held)
    return summary


def measure_runs(
    archs: Sequence[Arch],
    store: LutStore,
    conditions: Conditions,
    protocol: Protocol | str,
    progress: ProgressSink | None,
    tag: str,
    deploy_env: DeployEnv,
    device_options: dict[str, Any] | None = None,
) -> tuple[ProfileSummary, ProfileSummary]:
    """What calibration and validation both start with: the blocks `archs` lack, then their end-to-end
    runs under `tag` as `deploy_env` runs them (the same path as `lut time`). `device_options`: a phone's
    `serial` and `runner`."""
    blocks = ensure_blocks(archs, store, conditions, protocol, progress, device_options)
    if blocks.interrupted:
        raise KeyboardInterrupt
    e2e = profile_archs(
        archs, store, conditions, tag, protocol, progress=progress, device_options=device_options, deploy_env=deploy_env
    )
    if e2e.interrupted:
        raise KeyboardInterrupt
    return blocks, e2e


def calibrate(
    store: LutStore,
    archs: Sequence[Arch],
    conditions: Conditions,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    tag: str = "calibration",
    deploy_env: DeployEnv = DEFAULT,
    device_options: dict[str, Any] | None = None,
) -> CalibrationReport:
    """Measure the blocks and the end-to-end runs of `archs` (as `deploy_env` runs them), fit the
    correction on every run with `tag` for these conditions and deployment, and store the fit with
    its cross-validated error."""
    blocks, e2e = measure_runs(archs, store, conditions, protocol, progress, tag, deploy_env, device_options)
    conditions = conditions.with_backend(e2e.backend)
    estimator = Estimator(conditions, store=store, use_calibration=False)
    runs = store.e2e_runs(conditions, tag=tag, deploy_env=deploy_env.name)
    correction = fit_correction(samples_from_runs(runs, estimator), estimator.table_canary_us)
    used = int(correction.metrics["cv_n"])  # the runs of the kind fitted, where they were of two (fit_correction)
    store.put_fit(
        FitRecord(
            conditions=conditions,
            backend_version=e2e.backend_version,
            purpose="calibration",
            params=correction.to_params(),
            metrics=correction.metrics,
            n_samples=used,
            fitted_at=datetime.now(timezone.utc),
            deploy_env=deploy_env.name,
        )
    )
    return CalibrationReport(correction, used, blocks, e2e, conditions, deploy_env.name)
