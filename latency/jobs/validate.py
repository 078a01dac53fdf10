"""Prove the estimate: measure end-to-end runs that calibration did not use, compare, report.

The machine drifts as a whole (here: the canary's time moved 291 -> 340 us over one 40-minute
session). Each run carries the canary block's time from its own trials, so each estimate is
stated at the machine's speed of that run (scaled by the run's canary over the table's) before it
is compared: the accuracy then measures the estimator, not the weather. The plain comparison is
reported beside it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.estimate.estimator import Estimator
from latency.estimate.fitting import at_run_speed, error_metrics
from latency.jobs.calibrate import measure_runs
from latency.jobs.in_context import timed_inside
from latency.jobs.profile import ProfileSummary
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import list_models
from lut_db import LutStore, arch_hash
from profilers.protocol import ProgressSink, Protocol


@dataclass
class ValidationReport:
    device: str
    backend: str
    calibrated: bool
    metrics: dict[str, Any]  # each estimate at its run's speed (canary-scaled) against the run
    plain_metrics: dict[str, Any]  # the estimate at the table's speed against the run
    rows: list[dict[str, Any]]
    blocks: ProfileSummary | None = None
    e2e: ProfileSummary | None = None
    deploy_env: str = "default"

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.metrics,
            "device": self.device,
            "backend": self.backend,
            "deploy_env": self.deploy_env,
            "calibrated": self.calibrated,
            "plain": self.plain_metrics,
            "rows": self.rows,
        }


def compare(archs: Sequence[Arch], estimator: Estimator, store: LutStore, tag: str = "validation") -> ValidationReport:
    """Estimates of `archs` against their stored runs with `tag`."""
    conditions, deploy_env = estimator.conditions, estimator.deploy_env
    runs = {r.arch_hash: r for r in store.e2e_runs(conditions, tag=tag, deploy_env=deploy_env)}
    calibration = {r.arch_hash for r in store.e2e_runs(conditions, tag="calibration", deploy_env=deploy_env)}
    family = set(list_models())
    table = store.measurement_map(conditions)
    rows = []
    for arch in archs:
        digest = arch_hash(json.dumps(arch.to_dict()))
        run = runs.get(digest)
        if run is None:
            continue
        estimate = estimator.estimate(arch)
        rows.append(
            {
                "name": arch.name,
                "family": arch.name in family,
                "in_calibration": digest in calibration,
                # blocks whose row was timed inside this very network (latency.jobs.in_context): its estimate
                # then holds its own time, and says less about networks the table never ran
                "blocks_timed_inside_it": timed_inside(arch, table, conditions),
                "estimated_ms": estimate.latency_ms,
                "measured_ms": run.median_us / 1e3,
                "sum_ms": estimate.sum_ms,
                # The estimate at the machine's speed during this run (its canary vs the table's).
                "estimated_then_ms": at_run_speed(estimate.latency_ms, run, estimator.table_canary_us),
            }
        )
    if not rows:
        raise LutError(
            "No architecture has a validation run on this device and conditions: `lut validate` measures them."
        )
    for row in rows:
        row["error"] = row["estimated_then_ms"] / row["measured_ms"] - 1
    metrics = _metrics(rows, "estimated_then_ms")
    held_out = [r for r in rows if not r["in_calibration"] and not r["blocks_timed_inside_it"]]
    if len(held_out) < len(rows) and held_out:
        # architectures neither calibration nor the table's blocks in context ever ran
        metrics["held_out"] = _metrics(held_out, "estimated_then_ms")
    plain = _metrics(rows, "estimated_ms")
    return ValidationReport(
        conditions.device,
        conditions.backend or "",
        estimator.calibrated,
        metrics,
        plain,
        rows,
        deploy_env=estimator.deploy_env,
    )


def _metrics(rows: list[dict[str, Any]], estimate: str) -> dict[str, Any]:
    return error_metrics(np.array([r[estimate] for r in rows]), np.array([r["measured_ms"] for r in rows]))


def validate(
    store: LutStore,
    archs: Sequence[Arch],
    conditions: Conditions,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    tag: str = "validation",
    deploy_env: DeployEnv = DEFAULT,
    device_options: dict[str, Any] | None = None,
) -> ValidationReport:
    """Measure what is missing (blocks, then end-to-end runs under `tag`, as `deploy_env` runs them:
    the same path as `lut time`) and compare."""
    blocks, e2e = measure_runs(archs, store, conditions, protocol, progress, tag, deploy_env, device_options)
    estimator = Estimator(conditions.with_backend(e2e.backend), store=store, deploy_env=deploy_env.name)
    report = compare(archs, estimator, store, tag)
    report.blocks, report.e2e = blocks, e2e
    return report
