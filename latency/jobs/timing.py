"""The `lut time` job: time a network end to end as the user's own process runs it, beside the estimate.

This is how a user checks lut: the run goes through the same path as calibration's and validation's
(`profile_archs` in the deployment's environment: fresh processes with the runtime's defaults and
the threads asked for, warm-up, many calls, the protocol's trials), and the estimate is compared with it
as it is, and, beside that, restated at the machine's speed during the run (the canary of its trials).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from latency.estimate.estimator import Estimator, MissingBlocksError
from latency.estimate.fitting import at_run_speed
from latency.jobs.cover import fill_missing
from latency.jobs.in_context import timed_inside
from latency.jobs.measure import ProfileSummary, latest_run, profile_archs
from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from lut_db import LutStore
from profilers.protocol import ProgressSink, Protocol

TAG = "time"


@dataclass(frozen=True)
class TimingReport:
    """A network's end-to-end time in the deployment's process, and lut's estimate of it."""

    name: str
    device: str
    backend: str
    threads: int
    batch: int
    dtype: str
    deploy_env: str
    measured_ms: float  # the median of the trials' medians
    iqr_ms: float
    p10_ms: float
    p90_ms: float
    calls: int
    trials: int
    stable: bool
    estimated_ms: float | None  # at the table's speed (what `lut estimate` prints); None without a table
    estimated_then_ms: float | None  # at the machine's speed during this run
    calibrated: bool
    estimate_note: str | None  # why there is no estimate
    blocks_timed_inside_it: int = 0  # the estimate's blocks timed inside this network: it then holds its own time

    @property
    def difference(self) -> float | None:
        """measured / estimate - 1: what a user sees."""
        return None if self.estimated_ms is None else self.measured_ms / self.estimated_ms - 1

    @property
    def difference_at_run_speed(self) -> float | None:
        """measured / the estimate restated at the run's speed - 1 (a view beside the plain one)."""
        return None if self.estimated_then_ms is None else self.measured_ms / self.estimated_then_ms - 1

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "difference": self.difference, "difference_at_run_speed": self.difference_at_run_speed}


def time_network(
    store: LutStore,
    arch: Arch,
    conditions: Conditions,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    deploy_env: DeployEnv = DEFAULT,
    measure_missing: bool = True,
) -> TimingReport:
    """Time `arch` end to end as `deploy_env` runs it (stored under tag `time`) and estimate it; missing
    blocks are measured first on this host unless `measure_missing` is False (then no estimate)."""
    estimator = Estimator(conditions, store=store, deploy_env=deploy_env)
    conditions = estimator.conditions
    fill_missing(estimator, [arch], measure=measure_missing, protocol=protocol, progress=progress)
    summary = profile_archs(
        [arch], store, conditions, TAG, protocol, force=True, progress=progress, deploy_env=deploy_env
    )
    _raise_on_failure(summary, arch)
    run = latest_run(store.e2e_runs(conditions, tag=TAG, deploy_env=deploy_env.name), arch)
    assert run is not None  # profile_archs stored it just now
    keys = {s.key for s in arch.specs(batch=conditions.batch, dtype=conditions.dtype)}  # its rows, not the table
    estimated_ms = estimated_then_ms = None
    note = None
    try:
        estimated_ms = estimator.estimate(arch).latency_ms
        estimated_then_ms = at_run_speed(estimated_ms, run, estimator.table_canary_us)
    except MissingBlocksError as exc:
        note = f"{len(exc.keys)} blocks are not in the table"
    return TimingReport(
        name=arch.name,
        **conditions.columns(),
        deploy_env=deploy_env.name,
        measured_ms=run.stats.median_us / 1e3,
        iqr_ms=run.stats.iqr_us / 1e3,
        p10_ms=run.stats.p10_us / 1e3,
        p90_ms=run.stats.p90_us / 1e3,
        calls=run.stats.n,
        trials=run.stats.trials,
        stable=run.provenance.stable,
        estimated_ms=estimated_ms,
        estimated_then_ms=estimated_then_ms,
        calibrated=estimator.calibrated,
        estimate_note=note,
        blocks_timed_inside_it=timed_inside(arch, store.measurement_map(conditions, keys), conditions),
    )


def _raise_on_failure(summary: ProfileSummary, arch: Arch) -> None:
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.failed:
        raise LutError(f"{arch.name} could not be timed on {summary.device}: {next(iter(summary.failed.values()))}.")
