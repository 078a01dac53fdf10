"""Prove the estimate: measure end-to-end runs that calibration did not use, compare, report.

What a user sees comes first: each estimate against the run as measured (the headline metrics, the
JSON's top level). Beside it, each estimate restated at the machine's speed during its run (the run's
canary over the table's): a view that undoes the machine's drift, and with it any error that moves with
the canary, so it is never the only number (a canary timed two ways once hid a 15% error here). And the
noise floor the runs themselves show: each network ran in several fresh processes, and how far those
processes agree is as close as any estimate can be judged on this machine that day.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latency.estimate.estimator import Estimator
from latency.estimate.fitting import at_run_speed, error_metrics, repeatability
from latency.jobs.calibrate import measure_runs
from latency.jobs.in_context import timed_inside
from latency.jobs.measure import ProfileSummary
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import list_models
from lut_db import E2ERecord, LutStore, arch_hash
from profilers.protocol import ProgressSink, Protocol


@dataclass
class ValidationReport:
    device: str
    backend: str
    calibrated: bool
    metrics: dict[str, Any]  # each estimate against its run as measured (what a user sees)
    at_run_speed: dict[str, Any]  # each estimate restated at its run's speed (canary-scaled) against it
    repeatability: dict[str, Any]  # how far each network's fresh processes agreed (fitting.repeatability)
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
            "at_run_speed": self.at_run_speed,
            "repeatability": self.repeatability,
            "rows": self.rows,
        }


def process_medians_ms(run: E2ERecord) -> list[float]:
    """The run's medians per fresh process (its trials, where the protocol gave each its own process)."""
    separate = run.provenance.protocol.get("launches", 1) >= run.stats.trials and run.provenance.protocol.get(
        "network_per_process", True
    )
    medians = run.provenance.environment.get("trial_medians_us", [])
    return [m / 1e3 for m in medians] if separate and len(medians) > 1 else []


def compare(archs: Sequence[Arch], estimator: Estimator, store: LutStore, tag: str = "validation") -> ValidationReport:
    """Estimates of `archs` against their stored runs with `tag`."""
    conditions, deploy_env = estimator.conditions, estimator.deploy_env.name
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
        then_ms = at_run_speed(estimate.latency_ms, run, estimator.table_canary_us)
        measured_ms = run.stats.median_us / 1e3
        rows.append(
            {
                "name": arch.name,
                "family": arch.name in family,
                "in_calibration": digest in calibration,
                # blocks whose row was timed inside this very network (latency.jobs.in_context): its estimate
                # then holds its own time, and says less about networks the table never ran
                "blocks_timed_inside_it": timed_inside(arch, table, conditions),
                "estimated_ms": estimate.latency_ms,
                "measured_ms": measured_ms,
                "error": estimate.latency_ms / measured_ms - 1,
                "interval_ms": list(estimate.interval_ms),
                "sum_ms": estimate.sum_ms,
                "process_medians_ms": process_medians_ms(run),
                # the estimate at the machine's speed during this run (its canary vs the table's)
                "estimated_then_ms": then_ms,
                "error_at_run_speed": then_ms / measured_ms - 1,
            }
        )
    if not rows:
        raise LutError(
            "No architecture has a validation run on this device and conditions: `lut validate` measures them."
        )
    metrics, then = _metrics(rows, "estimated_ms"), _metrics(rows, "estimated_then_ms")
    held_out = [r for r in rows if not r["in_calibration"] and not r["blocks_timed_inside_it"]]
    if len(held_out) < len(rows) and held_out:
        # architectures neither calibration nor the table's blocks in context ever ran
        metrics["held_out"] = _metrics(held_out, "estimated_ms")
        then["held_out"] = _metrics(held_out, "estimated_then_ms")
    return ValidationReport(
        conditions.device,
        conditions.backend or "",
        estimator.calibrated,
        metrics,
        then,
        repeatability([r["process_medians_ms"] for r in rows]),
        rows,
        deploy_env=deploy_env,
    )


def _metrics(rows: list[dict[str, Any]], estimate: str) -> dict[str, Any]:
    estimated, measured = np.array([r[estimate] for r in rows]), np.array([r["measured_ms"] for r in rows])
    inside = [low <= r["measured_ms"] <= high for r in rows for low, high in [r["interval_ms"]]]
    return {
        **error_metrics(estimated, measured),
        # the share of runs inside their estimate's interval (meaningful for the plain estimate only)
        **({"interval_coverage": float(np.mean(inside))} if estimate == "estimated_ms" else {}),
    }


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
    estimator = Estimator(conditions.with_backend(e2e.backend), store=store, deploy_env=deploy_env)
    report = compare(archs, estimator, store, tag)
    report.blocks, report.e2e = blocks, e2e
    return report
