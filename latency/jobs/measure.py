"""The measuring core: which blocks a request needs, which the table lacks, measure them, store each.

This is where the two packages meet: `profilers` measures and never stores, `lut_db` stores and
never measures. Every result is committed the moment its block is final, so a run killed at any
point resumes with only the missing blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from latency.vocab.arch import Arch
from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.family import blocks_of, expand_models, resolve_arch
from latency.vocab.timing import TIMES_US
from lut_db import E2ERecord, LutStore, MeasurementRecord, arch_hash
from lut_db.records import from_columns
from profilers.backends import backend_class
from profilers.devices import Device, backend_of, check_dtype, resolve_device
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
        return {**asdict(self), "seconds": round(self.seconds, 2)}


def collect_specs(
    models: Iterable[str] = (), archs: Iterable[str | Path] = (), batch: int = 1, dtype: str = "fp32"
) -> list[BlockSpec]:
    """The unique blocks of the models and architecture files asked for, in first-seen order.

    `models` may contain "all" for every available family member.
    """
    unique: dict[str, BlockSpec] = {}
    for source in [*expand_models(list(models)), *archs]:
        for spec in blocks_of(resolve_arch(source), batch=batch, dtype=dtype):
            unique.setdefault(spec.key, spec)
    return list(unique.values())


def block_row(spec: BlockSpec) -> dict[str, Any]:
    return {**spec.to_dict(), "key": spec.key, "flops": spec.flops, "params": spec.params}


def result_numbers(result: Result) -> dict[str, Any]:
    """A result's statistics as the table's columns (those a block row and an end-to-end run share)."""
    stats = result.stats
    assert stats is not None
    return {
        **{name: getattr(stats, name) for name in TIMES_US},
        "n": stats.n,
        "trials": len(result.trial_medians_us),
        "canary_ratio": result.canary_ratio,
        "canary_us": result.canary_us,
        "stable": result.stable,
    }


def result_trials(result: Result) -> dict[str, Any]:
    """What a row's environment records of its trials."""
    return {
        "trial_medians_us": [round(m, 3) for m in result.trial_medians_us],
        "canary_medians_us": [round(m, 3) for m in result.canary_medians_us],
        **{k: round(v, 4) for k, v in result.details.items()},
    }


def _stats_fields(
    result: Result, protocol: Protocol, protocol_extra: dict[str, Any], environment: dict[str, Any]
) -> dict[str, Any]:
    """The columns a block measurement and an end-to-end run share."""
    return {
        **result_numbers(result),
        "protocol": {
            **protocol.to_dict(),
            **protocol_extra,
            **result.lowering,
            "remeasured": result.remeasured,
            "warmup_runs": result.warmup_runs,
        },
        "environment": {**environment, **result_trials(result)},
        "measured_at": datetime.now(timezone.utc),
    }


@dataclass(frozen=True)
class MeasureSession:
    """A device and backend checked and registered in the table, ready to measure."""

    device: Device
    conditions: Conditions  # the device's own name, the backend resolved
    version: str
    protocol: Protocol

    @property
    def backend(self) -> str:
        assert self.conditions.backend is not None
        return self.conditions.backend

    def summary(self, requested: int) -> ProfileSummary:
        return ProfileSummary(self.device.name, self.backend, self.version, self.conditions.threads, requested)


def open_session(
    store: LutStore,
    conditions: Conditions,
    protocol: Protocol | str,
    device_options: dict[str, Any] | None = None,
) -> MeasureSession:
    device = resolve_device(conditions.device, **(device_options or {}))
    backend = backend_of(conditions)
    device.check_backend(backend)
    check_dtype(backend, conditions.dtype)
    device.check_threads(conditions.threads)
    fingerprint, identity = device.fingerprint(), device.identity()  # reaches the device (a phone: adb) first
    implementation = backend_class(device.implementation(backend)[0])
    implementation.check_available()
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    store.get_or_create_device(device.name, device.kind, fingerprint, identity)
    conditions = replace(conditions, device=device.name, backend=backend)
    return MeasureSession(device, conditions, implementation.installed_version(), protocol)


def measure_targets(
    session: MeasureSession,
    targets: Sequence[Target],
    summary: ProfileSummary,
    progress: ProgressSink | None,
    store_result: Callable[[Result, dict[str, Any]], None],
    deadline: float | None = None,
    deploy_env: DeployEnv | None = None,
    in_context: bool = False,
) -> None:
    """Run the protocol over `targets`, handing each final result to `store_result` at once.

    With `deploy_env` (whole networks taken as truth, on a device whose networks run in a host
    process), the networks run in fresh processes set up as that deployment runs them (each in its
    own unless the protocol shares them). On this host the canary is timed in a tuned worker of its own,
    for blocks and networks alike.
    `in_context`: the networks are timed block by block (`Result.parts`)."""
    sink = progress or ProgressSink()
    sink.add_total(len(targets) * session.protocol.trials)
    device, protocol = session.device, session.protocol

    def consume(results: Iterator[Result], info: dict[str, Any]) -> None:
        extra = {**info.get("protocol", {}), "threads": session.conditions.threads}
        if deploy_env is not None:
            extra["deploy_env"] = deploy_env.name
        for result in results:
            if not result.ok:
                summary.failed[label(result.target)] = result.error or "unknown error"
                continue
            environment = {**device.environment(), **info.get("environment", {})}
            store_result(result, _stats_fields(result, protocol, extra, environment))
            summary.measured += 1
            if not result.stable:
                summary.unstable.append(label(result.target))

    pool_args = (session.backend, session.conditions.threads, protocol.launches)
    preloaded = protocol.preloaded_workers
    try:
        if not device.host_process:  # a phone: its one runner times the canary beside the blocks, in every path
            with device.workers(*pool_args, preloaded=preloaded) as pool:
                scheduler = Scheduler(pool.workers, protocol, sink, in_context=in_context)
                consume(scheduler.run(targets, deadline), pool.workers[0].info)
            return
        # On this host the canary has a worker of its own in every path (blocks, networks), timed the same way.
        with device.workers(session.backend, session.conditions.threads, 1, preloaded=preloaded) as canaries:
            canary, history = canaries.workers[0], []
            if deploy_env is None:
                with device.workers(*pool_args, preloaded=preloaded) as pool:
                    scheduler = Scheduler(pool.workers, protocol, sink, canary, in_context)
                    consume(scheduler.run(targets, deadline), pool.workers[0].info)
                return
            batches = [[t] for t in targets] if protocol.network_per_process else [list(targets)]
            for batch in batches:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                with device.workers(*pool_args, deploy_env, preloaded) as pool:
                    scheduler = Scheduler(pool.workers, protocol, sink, canary, in_context, history)
                    consume(scheduler.run(batch, deadline), pool.workers[0].info)
    except KeyboardInterrupt:
        summary.interrupted = True


def profile_blocks(
    specs: Sequence[BlockSpec],
    store: LutStore,
    conditions: Conditions,
    protocol: Protocol | str = "standard",
    force: bool = False,
    progress: ProgressSink | None = None,
    deadline: float | None = None,
    device_options: dict[str, Any] | None = None,
) -> ProfileSummary:
    """Measure the blocks the table lacks under `conditions` (whose batch and dtype the blocks share)
    and store each as soon as it is final (no group of blocks starts after `deadline`, a
    time.monotonic() value). `device_options`: `serial` and `runner` for a phone."""
    started = time.monotonic()
    odd = [s.key for s in specs if (s.batch, s.dtype) != (conditions.batch, conditions.dtype)]
    if odd:
        raise ValueError(f"blocks of another batch or dtype than {conditions}: {odd[:3]}")
    session = open_session(store, conditions, protocol, device_options)
    summary = session.summary(requested=len(specs))
    todo = list(specs)
    if not force:
        present = store.measured_keys(session.conditions, backend_version=session.version)
        todo = [s for s in specs if s.key not in present]
    summary.already_present = len(specs) - len(todo)
    if todo:
        store.upsert_blocks(block_row(s) for s in todo)

        def store_result(result: Result, fields: dict[str, Any]) -> None:
            key = {"block_key": result.target.key, **session.conditions.columns(), "backend_version": session.version}
            store.put_measurement(from_columns(MeasurementRecord, {**key, **fields}))

        measure_targets(session, todo, summary, progress, store_result, deadline)
    summary.seconds = time.monotonic() - started
    return summary


def latest_run(runs: Iterable[E2ERecord], arch: Arch) -> E2ERecord | None:
    """The newest of `runs` of this architecture, matched by its content (not its name)."""
    digest = arch_hash(arch.to_json())
    return max((r for r in runs if r.arch_hash == digest), key=lambda r: r.provenance.measured_at, default=None)


def profile_archs(
    archs: Sequence[Arch],
    store: LutStore,
    conditions: Conditions,
    tag: str = "calibration",
    protocol: Protocol | str = "standard",
    force: bool = False,
    progress: ProgressSink | None = None,
    device_options: dict[str, Any] | None = None,
    deploy_env: DeployEnv = DEFAULT,
) -> ProfileSummary:
    """Measure whole networks end to end as `deploy_env` runs them (the protocol's trials, each in
    fresh processes of the network's own, a canary per trial) and store each run under `tag`;
    networks that already have a run with this tag are skipped unless `force`."""
    started = time.monotonic()
    session = open_session(store, conditions, protocol, device_options)
    check_deploy_env(session.device, deploy_env)
    summary = session.summary(requested=len(archs))
    targets = [ArchTarget(a, conditions.batch, conditions.dtype) for a in archs]
    if not force:
        runs = store.e2e_runs(session.conditions, tag=tag, deploy_env=deploy_env.name)
        present = {r.arch_hash for r in runs if r.backend_version == session.version}
        targets = [t for t in targets if arch_hash(t.arch_json) not in present]
    summary.already_present = len(archs) - len(targets)

    def store_result(result: Result, fields: dict[str, Any]) -> None:
        target = result.target
        run = {"arch_name": target.name, "arch_json": target.arch_json, **session.conditions.columns()}
        run |= {"backend_version": session.version, "tag": tag, "deploy_env": deploy_env.name}
        store.put_e2e_run(from_columns(E2ERecord, {**run, **fields}))

    if targets:
        measure_targets(session, targets, summary, progress, store_result, deploy_env=deploy_env)
    summary.seconds = time.monotonic() - started
    return summary


def check_deploy_env(device: Device, deploy_env: DeployEnv) -> None:
    """A phone runs networks as its runtime does there: only this host's processes take an environment."""
    if not device.host_process and deploy_env != DEFAULT:
        raise ProfilerError(
            f"--deploy-env {deploy_env.name} applies to networks run on this host; '{device.name}' runs them "
            "with its runtime's defaults, so use --deploy-env default.",
            exit_code=2,
        )


# Opens a progress display for a phase of a job, by its description (the CLI's progress bar).
Progress = Callable[[str], AbstractContextManager[ProgressSink]]
