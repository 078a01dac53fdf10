"""The profile job: which blocks a request needs, which the table lacks, measure them, store each.

This is where the two packages meet: `profilers` measures and never stores, `lut_db` stores and
never measures. Every result is committed the moment its block is final, so a run killed at any
point resumes with only the missing blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from latency.arch import Arch
from latency.blocks import BlockSpec
from latency.estimate import Estimator
from latency.models import blocks_of, list_models, resolve_arch
from lut_db import E2ERecord, LutStore, MeasurementRecord, arch_hash
from profilers.backends import backend_class
from profilers.devices import Device, is_local, resolve_device
from profilers.errors import ProfilerError
from profilers.protocol import PROTOCOLS, ProgressSink, Protocol, Result, Scheduler
from profilers.targets import ArchTarget, Target, label


@dataclass
class ProfileSummary:
    device: str
    backend: str
    backend_version: str
    threads: int
    requested: int = 0
    already_present: int = 0
    measured: int = 0
    unstable: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "threads": self.threads,
            "requested": self.requested,
            "already_present": self.already_present,
            "measured": self.measured,
            "unstable": self.unstable,
            "failed": self.failed,
            "seconds": round(self.seconds, 2),
            "interrupted": self.interrupted,
        }


def collect_specs(
    models: Iterable[str] = (), archs: Iterable[str | Path] = (), batch: int = 1, dtype: str = "fp32"
) -> list[BlockSpec]:
    """The unique blocks of the models and architecture files asked for, in first-seen order.

    `models` may contain "all" for every available family member.
    """
    names: list[str] = []
    for model in models:
        names.extend(list_models(available_only=True) if model == "all" else [model])
    unique: dict[str, BlockSpec] = {}
    for source in [*names, *archs]:
        for spec in blocks_of(resolve_arch(source), batch=batch, dtype=dtype):
            unique.setdefault(spec.key, spec)
    return list(unique.values())


def block_row(spec: BlockSpec) -> dict[str, Any]:
    return {**spec.to_dict(), "key": spec.key, "flops": spec.flops, "params": spec.params}


def _stats_fields(
    result: Result, protocol: Protocol, protocol_extra: dict[str, Any], environment: dict[str, Any]
) -> dict[str, Any]:
    """The columns a block measurement and an end-to-end run share."""
    stats = result.stats
    assert stats is not None
    return {
        "median_us": stats.median_us,
        "p10_us": stats.p10_us,
        "p90_us": stats.p90_us,
        "iqr_us": stats.iqr_us,
        "mean_us": stats.mean_us,
        "std_us": stats.std_us,
        "min_us": stats.min_us,
        "n": stats.n,
        "trials": len(result.trial_medians_us),
        "canary_ratio": result.canary_ratio,
        "canary_us": result.canary_us,
        "protocol": {
            **protocol.to_dict(),
            **protocol_extra,
            "remeasured": result.remeasured,
            "warmup_runs": result.warmup_runs,
        },
        "environment": {
            **environment,
            "trial_medians_us": [round(m, 3) for m in result.trial_medians_us],
            "canary_medians_us": [round(m, 3) for m in result.canary_medians_us],
            **{k: round(v, 4) for k, v in result.details.items()},
        },
        "measured_at": datetime.now(UTC),
        "stable": result.stable,
    }


@dataclass(frozen=True)
class _Session:
    """A device and backend checked and registered in the table, ready to measure."""

    device: Device
    backend: str
    version: str
    threads: int
    protocol: Protocol


def _open_session(
    store: LutStore,
    device_name: str,
    backend: str | None,
    threads: int,
    protocol: Protocol | str,
    device_options: dict[str, Any] | None = None,
) -> _Session:
    device = resolve_device(device_name, **(device_options or {}))
    backend = backend or device.default_backend
    device.check_backend(backend)
    fingerprint, identity = device.fingerprint(), device.identity()  # reaches the device (a phone: adb) first
    implementation = backend_class(device.implementation(backend)[0])
    implementation.check_available()
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    store.get_or_create_device(device.name, device.kind, fingerprint, identity)
    return _Session(device, backend, implementation.installed_version(), threads, protocol)


def _measure(
    session: _Session,
    targets: Sequence[Target],
    summary: ProfileSummary,
    progress: ProgressSink | None,
    store_result: Callable[[Result, dict[str, Any]], None],
    deadline: float | None = None,
) -> None:
    """Run the protocol over `targets`, handing each final result to `store_result` at once."""
    sink = progress or ProgressSink()
    sink.add_total(len(targets) * session.protocol.trials)
    try:
        with session.device.workers(session.backend, session.threads, session.protocol.launches) as pool:
            worker = pool.workers[0]
            extra = {**worker.info.get("protocol", {}), "threads": session.threads}
            for result in Scheduler(pool.workers, session.protocol, sink).run(targets, deadline):
                if not result.ok:
                    summary.failed[label(result.target)] = result.error or "unknown error"
                    continue
                environment = {**session.device.environment(), **worker.info.get("environment", {})}
                store_result(result, _stats_fields(result, session.protocol, extra, environment))
                summary.measured += 1
                if not result.stable:
                    summary.unstable.append(label(result.target))
    except KeyboardInterrupt:
        summary.interrupted = True


def profile_blocks(
    specs: Sequence[BlockSpec],
    store: LutStore,
    device_name: str = "cpu",
    backend: str | None = None,
    threads: int = 1,
    protocol: Protocol | str = "standard",
    force: bool = False,
    progress: ProgressSink | None = None,
    deadline: float | None = None,
    device_options: dict[str, Any] | None = None,
) -> ProfileSummary:
    """Measure the blocks the table lacks on a device and store each as soon as it is final
    (no group of blocks starts after `deadline`, a time.monotonic() value). `device_options`:
    `serial` and `runner` for a phone."""
    started = time.monotonic()
    session = _open_session(store, device_name, backend, threads, protocol, device_options)
    summary = ProfileSummary(session.device.name, session.backend, session.version, threads, requested=len(specs))
    todo = list(specs)
    if not force:
        present: set[str] = set()
        for batch, dtype in {(s.batch, s.dtype) for s in specs}:
            present |= store.measured_keys(
                session.device.name, session.backend, threads, batch=batch, dtype=dtype, backend_version=session.version
            )
        todo = [s for s in specs if s.key not in present]
    summary.already_present = len(specs) - len(todo)
    if todo:
        store.upsert_blocks(block_row(s) for s in todo)

        def store_result(result: Result, fields: dict[str, Any]) -> None:
            spec = result.target
            store.put_measurement(
                MeasurementRecord(
                    block_key=spec.key,
                    device=session.device.name,
                    backend=session.backend,
                    backend_version=session.version,
                    threads=threads,
                    dtype=spec.dtype,
                    batch=spec.batch,
                    **fields,
                )
            )

        _measure(session, todo, summary, progress, store_result, deadline)
    summary.seconds = time.monotonic() - started
    return summary


def profile_archs(
    archs: Sequence[Arch],
    store: LutStore,
    device_name: str = "cpu",
    backend: str | None = None,
    threads: int = 1,
    batch: int = 1,
    dtype: str = "fp32",
    tag: str = "calibration",
    protocol: Protocol | str = "standard",
    force: bool = False,
    progress: ProgressSink | None = None,
    device_options: dict[str, Any] | None = None,
) -> ProfileSummary:
    """Measure whole networks end to end (same protocol, canary included) and store each run under
    `tag`; networks that already have a run with this tag are skipped unless `force`."""
    started = time.monotonic()
    session = _open_session(store, device_name, backend, threads, protocol, device_options)
    summary = ProfileSummary(session.device.name, session.backend, session.version, threads, requested=len(archs))
    targets = [ArchTarget(a, batch, dtype) for a in archs]
    if not force:
        runs = store.e2e_runs(session.device.name, session.backend, tag=tag, threads=threads, batch=batch, dtype=dtype)
        present = {r.arch_hash for r in runs if r.backend_version == session.version}
        targets = [t for t in targets if arch_hash(t.arch_json) not in present]
    summary.already_present = len(archs) - len(targets)

    def store_result(result: Result, fields: dict[str, Any]) -> None:
        target = result.target
        store.put_e2e_run(
            E2ERecord(
                arch_name=target.name,
                arch_json=target.arch_json,
                device=session.device.name,
                backend=session.backend,
                backend_version=session.version,
                threads=threads,
                dtype=dtype,
                batch=batch,
                tag=tag,
                **fields,
            )
        )

    if targets:
        _measure(session, targets, summary, progress, store_result)
    summary.seconds = time.monotonic() - started
    return summary


def fill_missing(
    estimator: Estimator,
    archs: Sequence[Arch],
    measure: bool = True,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
) -> None:
    """Make the estimator's table cover `archs`: on a local device (this host, its GPUs) measure
    the missing blocks, unless `measure` is False; on another device (a phone) predict them from
    the blocks measured on it, marked `predicted`. What stays missing is left for `estimate`."""
    missing = list({s.key: s for a in archs for s in estimator.missing(a)}.values())
    if not missing:
        return
    if not is_local(estimator.device):
        predict_missing(estimator, missing)
        return
    if not measure:
        return
    summary = profile_blocks(
        missing, estimator.store, estimator.device, estimator.backend, estimator.threads, protocol, progress=progress
    )
    if summary.interrupted:
        raise KeyboardInterrupt
    if summary.failed:
        key, error = next(iter(summary.failed.items()))
        raise ProfilerError(
            f"{len(summary.failed)} blocks could not be measured on {estimator.device}: {key}: {error}."
        )
    estimator.reload()


def predict_missing(estimator: Estimator, missing: Sequence[BlockSpec], minimum: int = 20) -> int:
    """Predict blocks from the device's measured ones (none when it has fewer than `minimum`)."""
    from latency.predictor import predict_blocks, training_set

    rows = estimator.store.measurement_map(
        device=estimator.device,
        backend=estimator.backend,
        threads=estimator.threads,
        batch=estimator.batch,
        dtype=estimator.dtype,
        source="measured",
    )
    if len(rows) < minimum:
        return 0
    specs, latencies_us, _ = training_set(rows)
    predictions = predict_blocks(specs, latencies_us, missing)
    estimator.add_predictions(list(missing), predictions.latency_us, predictions.expected_error)
    return len(missing)
