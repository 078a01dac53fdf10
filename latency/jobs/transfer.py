"""The transfer job: a new device's table from another device's table and a few end-to-end runs on it.

`lut calibrate --device T --from S --runs N`: N whole networks run on T (the family first, then sampled
architectures; the protocol, canary and trials of every run), the transfer fit (latency.estimate.transfer)
maps S's block times onto T's, and T's table is written as rows of source `transferred`, one per block S
knows, at T's speed, each with the fit's expected error, plus a calibration holding the fit's intercept
and its held-out metrics. T then estimates, ranks, validates and drives LatencyCost as any device does;
no block is profiled on T.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np

from latency.estimate.correction import Correction, block_features
from latency.estimate.estimator import Estimator
from latency.estimate.fitting import CalibrationError, samples_from_runs
from latency.estimate.transfer import fit_transfer
from latency.jobs.calibrate import DEFAULT_SPACE, run_archs
from latency.jobs.cover import fill_missing
from latency.jobs.measure import ProfileSummary, block_row, profile_archs
from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import list_models
from latency.vocab.timing import TimingStats
from lut_db import E2ERecord, FitRecord, LutStore, MeasurementRecord
from lut_db.records import Provenance
from profilers.backends import backend_class
from profilers.devices import check_device_name, is_local
from profilers.protocol import ProgressSink, Protocol

TRANSFER_TAG = "transfer"
# A fitted block contribution can come out at or below zero for the smallest blocks (a negative per-block
# term); a table row must be positive, so such a block keeps this floor and the fit's metrics count them.
FLOOR_US = 0.01


@dataclass
class TransferReport:
    """What `lut calibrate --from` did: the fit, its sources, what it wrote, the runs it took."""

    correction: Correction
    target: Conditions
    sources: tuple[str, ...]
    runs: int
    rows: int
    e2e: ProfileSummary | None
    deploy_env: str = "default"

    def summary(self) -> str:
        """One sentence for the terminal."""
        metrics = self.correction.metrics
        return (
            f"transferred {', '.join(self.sources)} to {describe(self.target)} for deployment '{self.deploy_env}' "
            f"on {self.runs} end-to-end runs: {self.rows} blocks in its table; cross-validated RMSPE "
            f"{metrics['cv_rmspe']:.1%}, within 10% {metrics['cv_within_10pct']:.0%}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "deploy_env": self.deploy_env,
            "transferred_from": list(self.sources),
            "runs": self.runs,
            "rows_written": self.rows,
            "model": self.correction.variant,
            "coef": list(self.correction.coef),
            "intercept": self.correction.intercept,
            "table_canary_us": self.correction.table_canary_us,
            "metrics": self.correction.metrics,
            "e2e_profiled": self.e2e.to_dict() if self.e2e else None,
        }


def describe(conditions: Conditions) -> str:
    """`device/backend, N thread(s)`: how a source is named in reports and stored fits."""
    return f"{conditions.device}/{conditions.backend}, {conditions.threads} thread(s)"


def runs_canary_us(runs: Sequence[E2ERecord]) -> float | None:
    """The target's speed, as a table's: the median canary of its runs (None if none had one)."""
    canaries = [r.provenance.canary_us for r in runs if r.provenance.canary_us]
    return float(np.median(canaries)) if canaries else None


def transfer_archs(
    runs: int, seed: int = 0, space: str = DEFAULT_SPACE, models: Sequence[str] = ("all",)
) -> list[Arch]:
    """The networks a transfer runs on its target: the family members asked for first, then architectures
    sampled from `space`, `runs` in all."""
    return run_archs(models, runs, seed, space)[:runs]


def check_sources(store: LutStore, target: Conditions, sources: Sequence[Conditions]) -> None:
    """Each source names a backend lut knows, is not the target itself, and has measured rows in the table:
    checked before any network runs on the target (a run of minutes would otherwise end in "found 0")."""
    for source in sources:
        check_device_name(source.device)
        backend_class(source.backend or "")  # an unknown backend, in one sentence
        if source == target:
            raise LutError(
                f"--from {source.device} is the target itself ({describe(source)}): a transfer builds a table "
                "from another one; `lut calibrate` without --from corrects a table from its own runs.",
                exit_code=2,
            )
        if not store.measured_keys(source):
            raise LutError(
                f"The table has no measured rows for the source {describe(source)} ({store.url}): "
                f"profile it first (lut profile --device {source.device} --backend {source.backend} --threads "
                f"{source.threads}), or name another source.",
                exit_code=2,
            )


def cover_sources(
    store: LutStore,
    sources: Sequence[Conditions],
    archs: Sequence[Arch],
    measure: bool = True,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
) -> int:
    """Make each source's table hold the blocks of the networks a transfer will run, before one runs on the
    target: a source on this host measures what it lacks (unless `measure` is False, when the networks are
    named with the command that fills them); a source elsewhere predicts it from its own rows when the
    transfer fits. Returns the blocks measured."""
    measured = 0
    for source in sources:
        estimator = Estimator(source, store=store, use_calibration=False)
        lacking = [a for a in archs if estimator.missing(a)]
        if not lacking or not is_local(source.device):
            continue
        if not measure:
            names = ", ".join(a.name for a in lacking[:4]) + (
                f" and {len(lacking) - 4} more" if len(lacking) > 4 else ""
            )
            family = [a.name for a in lacking if a.name in list_models()]
            profile = (
                f"`lut profile --device {source.device} --backend {source.backend} --threads {source.threads} "
                f"--models {','.join(family)}`, or "
                if len(family) == len(lacking)
                else ""
            )
            raise LutError(
                f"The source {describe(source)} lacks blocks of {len(lacking)} of the {len(archs)} networks the "
                f"transfer runs ({names}): measure them first with {profile}this command without --no-profile "
                "(it measures them before running anything on the target).",
                exit_code=2,
            )
        before = estimator.entries
        fill_missing(estimator, lacking, measure=True, protocol=protocol, progress=progress)
        measured += estimator.entries - before
        still = [a.name for a in lacking if estimator.missing(a)]
        if still:
            raise LutError(f"Some blocks of {', '.join(still[:4])} could not be measured on {describe(source)}.")
    return measured


def transfer(
    store: LutStore,
    target: Conditions,
    sources: Sequence[Conditions],
    archs: Sequence[Arch],
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    deploy_env: DeployEnv = DEFAULT,
    device_options: dict[str, Any] | None = None,
    measure_sources: bool = True,
) -> TransferReport:
    """Cover the sources (cover_sources), run `archs` end to end on `target` (as `deploy_env` runs them;
    `device_options`: a phone's `serial` and `runner`), then fit and store the transfer (transfer_from_runs)."""
    check_sources(store, target, sources)
    cover_sources(store, sources, archs, measure_sources, protocol, progress)
    e2e = profile_archs(
        archs,
        store,
        target,
        TRANSFER_TAG,
        protocol,
        progress=progress,
        device_options=device_options,
        deploy_env=deploy_env,
    )
    if e2e.interrupted:
        raise KeyboardInterrupt
    report = transfer_from_runs(store, target.with_backend(e2e.backend), sources, deploy_env)
    report.e2e = e2e
    return report


def transfer_from_runs(
    store: LutStore, target: Conditions, sources: Sequence[Conditions], deploy_env: DeployEnv = DEFAULT
) -> TransferReport:
    """Fit the target's transfer on its stored runs (tag `transfer`) from each source's table, keep the
    source with the lowest held-out error, and write the target's transferred rows and calibration."""
    runs = store.e2e_runs(target, tag=TRANSFER_TAG, deploy_env=deploy_env.name)
    if not runs:
        raise CalibrationError(
            f"No transfer runs on {target.device} for deployment '{deploy_env.name}': run `lut calibrate --device "
            f"{target.device} --from SOURCE --runs N` to measure them."
        )
    target_canary_us = runs_canary_us(runs)
    archs = [r.arch for r in runs]
    fits = []
    for source in sources:
        estimator = Estimator(source, store=store, use_calibration=False)
        fill_missing(estimator, archs, measure=False)  # S's own predictor fills what S lacks
        samples = samples_from_runs(runs, estimator)
        try:
            fits.append((fit_transfer(samples, target_canary_us), estimator, len(samples)))
        except CalibrationError as exc:
            if len(sources) == 1:
                raise CalibrationError(f"{exc} (source {describe(estimator.conditions)})") from None
    if not fits:
        raise CalibrationError(f"No source covers enough of the {len(runs)} transfer runs on {target.device}.")
    correction, estimator, n_runs = min(fits, key=lambda fit: fit[0].metrics["cv_rmspe"])
    version, source = runs[0].backend_version, describe(estimator.conditions)
    rows = _transferred_rows(estimator, correction, target, version, n_runs, source)
    store.upsert_blocks(block_row(BlockSpec.from_key(r.block_key)) for r in rows)  # predicted ones are new
    store.put_measurements(rows)
    intercept_only = Correction("scale", (1.0,), correction.intercept, correction.metrics, target_canary_us)
    store.put_fit(
        FitRecord(
            conditions=target,
            backend_version=version,
            purpose="calibration",
            params={**intercept_only.to_params(), "transferred_from": source, "transfer": correction.to_params()},
            metrics={**correction.metrics, "floored_blocks": sum(r.stats.median_us == FLOOR_US for r in rows)},
            n_samples=n_runs,
            fitted_at=datetime.now(timezone.utc),
            deploy_env=deploy_env.name,
        )
    )
    return TransferReport(correction, target, (source,), n_runs, len(rows), None, deploy_env.name)


def _transferred_rows(
    source: Estimator, correction: Correction, target: Conditions, version: str, n_runs: int, described: str
) -> list[MeasurementRecord]:
    """One row per block the source knows: its contribution under the fit, at the target's speed."""
    error = max(float(correction.metrics.get("cv_rmspe") or 0.0), 1e-3)
    low = min(float(correction.metrics.get("residual_q05", 0.0)), 0.0)
    high = max(float(correction.metrics.get("residual_q95", 0.0)), 0.0)
    now = datetime.now(timezone.utc)
    rows = []
    for key, entry in source.entry_map().items():
        spec = BlockSpec.from_key(key)
        median_us = max(
            float(correction.block_ms(block_features(spec, entry.median_us / 1e3, entry.context))) * 1e3, FLOOR_US
        )
        canary = correction.table_canary_us
        rows.append(
            MeasurementRecord(
                block_key=key,
                conditions=target,
                backend_version=version,
                stats=TimingStats(
                    median_us=median_us,
                    p10_us=median_us * (1 + low),
                    p90_us=median_us * (1 + high),
                    iqr_us=median_us * (high - low) / 2,
                    mean_us=median_us,
                    std_us=median_us * error,
                    min_us=median_us * (1 + low),
                    n=n_runs,
                    trials=0,
                ),
                provenance=Provenance(
                    canary_ratio=median_us / canary if canary else None,
                    canary_us=canary,
                    protocol={"transferred_from": described, "model": correction.variant, "runs": n_runs},
                    environment={},
                    measured_at=now,
                    stable=True,  # a fitted value, not a spread of trials
                ),
                source="transferred",
                expected_error=error,
            )
        )
    return rows
