"""Blocks timed in context: whole networks run as the deployment runs them, timed block by block.

An isolated block is timed alone, again and again: its weights and buffers stay in cache between calls
and its heap is whatever the protocol makes it (warm, or trimmed before each call), so the plain sum of
isolated blocks is what those conditions make it, below or above a user's process as the machine's
fault cost decides (docs/design.md). Inside a network, each block starts where the one before left the
caches and the heap, in the deployment's own process: its time there is what it costs in that network,
and a network's blocks sum to its time by construction.
A block seen in several networks gets the median of its times there (a row records the networks).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from latency.jobs.measure import (
    ProfileSummary,
    block_row,
    check_deploy_env,
    measure_targets,
    open_session,
    result_numbers,
    result_trials,
)
from latency.vocab.arch import Arch
from latency.vocab.blocks import CONTEXT_NETWORK
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.timing import TIMES_US
from lut_db import LutStore, MeasurementRecord
from lut_db.records import columns, from_columns
from profilers.backends import backend_class
from profilers.devices import backend_of, resolve_device
from profilers.errors import ProfilerError
from profilers.protocol import ProgressSink, Protocol, Result
from profilers.targets import ArchTarget


def times_in_context(conditions: Conditions) -> bool:
    """Whether blocks can be timed inside networks under `conditions`: networks run in a process on this
    host whose backend runs them block by block (torch eager; not ONNX Runtime, ExecuTorch, CUDA, phones)."""
    device, backend = resolve_device(conditions.device), backend_of(conditions)
    device.check_backend(backend)
    return device.host_process and backend_class(device.implementation(backend)[0]).times_in_context


def timed_inside(arch: Arch, rows: Mapping[str, MeasurementRecord], conditions: Conditions) -> int:
    """How many of `arch`'s blocks have a row (of `rows`, by key) timed inside `arch` itself, among other
    networks or alone: its estimate then holds its own time, and says less of networks never run."""
    specs = arch.specs(batch=conditions.batch, dtype=conditions.dtype)
    return sum(
        arch.name in rows[s.key].provenance.environment.get("appearance_networks", ()) for s in specs if s.key in rows
    )


def in_context_rows(
    store: LutStore,
    conditions: Conditions,
    backend_version: str | None,
    deploy_env: DeployEnv,
    keys: Iterable[str] | None = None,
) -> dict[str, MeasurementRecord]:
    """The rows (of `keys`; None: all) timed inside networks run in `deploy_env`, under these conditions (and
    `backend_version`; None: the newest row of each key)."""
    rows = store.measurement_map(conditions, keys, backend_version, source="measured")
    return {
        key: row
        for key, row in rows.items()
        if row.provenance.protocol.get("context") == CONTEXT_NETWORK
        and row.provenance.protocol.get("deploy_env") == deploy_env.name
    }


def in_context_keys(store: LutStore, conditions: Conditions, backend_version: str, deploy_env: DeployEnv) -> set[str]:
    """Block keys whose row was timed inside networks run in `deploy_env`, under these conditions."""
    return set(in_context_rows(store, conditions, backend_version, deploy_env))


def profile_in_context(
    archs: Sequence[Arch],
    store: LutStore,
    conditions: Conditions,
    protocol: Protocol | str = "standard",
    deploy_env: DeployEnv = DEFAULT,
    force: bool = False,
    progress: ProgressSink | None = None,
    deadline: float | None = None,
) -> ProfileSummary:
    """Time `archs` block by block in `deploy_env`'s processes (the protocol's trials and canary, as a
    network taken as truth) and store each of their blocks; a block seen in several networks gets the
    median of its times there, those of earlier runs included (unless `force`). Networks whose blocks all
    have such a row already are skipped unless `force`. Every block's row is stored as soon as a network
    holding it is final."""
    started = time.monotonic()
    if not times_in_context(conditions):  # refused before reaching a device (a phone: adb)
        device = resolve_device(conditions.device)
        raise ProfilerError(
            f"{conditions.backend or device.default_backend} on '{device.name}' runs a network as one program: "
            "its blocks cannot be timed inside it; profile them one by one (lut profile --isolated).",
            exit_code=2,
        )
    session = open_session(store, conditions, protocol)
    check_deploy_env(session.device, deploy_env)
    specs = {a: a.specs(conditions.batch, conditions.dtype) for a in archs}
    keys = {s.key for blocks in specs.values() for s in blocks}
    summary = session.summary(requested=len(keys))
    # rows timed inside networks before: present, and their appearances count with this run's
    earlier = {} if force else in_context_rows(store, session.conditions, session.version, deploy_env, keys)
    present = set(earlier)
    summary.already_present = len(present & keys)
    todo = [a for a in archs if any(s.key not in present for s in specs[a])]
    if not todo:
        summary.seconds = time.monotonic() - started
        return summary
    store.upsert_blocks(block_row(s) for a in todo for s in specs[a])
    # key -> (median, row fields) per appearance, starting from the networks of earlier runs
    seen: dict[str, list[tuple[float, dict[str, Any]]]] = {k: _stored_appearances(r) for k, r in earlier.items()}
    stored: dict[str, bool] = {}  # key -> stable

    def store_network(result: Result, fields: dict[str, Any]) -> None:
        assert isinstance(result.target, ArchTarget)
        network = result.target.name
        share = _share(result)
        for position, part in enumerate(result.parts):
            key = part.target.key
            appearance = _part_fields(part, fields, network, position, share)
            seen.setdefault(key, []).append((appearance["median_us"], appearance))
        rows = []
        for key in {part.target.key for part in result.parts}:
            row = _median_appearance(seen[key])
            stored[key] = row["stable"]
            own = {"block_key": key, **session.conditions.columns(), "backend_version": session.version}
            rows.append(from_columns(MeasurementRecord, {**own, **row}))
        store.put_measurements(rows)

    networks = session.summary(requested=len(todo))
    measure_targets(
        session,
        [ArchTarget(a, conditions.batch, conditions.dtype) for a in todo],
        networks,
        progress,
        store_network,
        deadline,
        deploy_env,
        in_context=True,
    )
    summary.measured = len(stored)
    summary.unstable = sorted(k for k, stable in stored.items() if not stable)
    summary.failed = networks.failed
    summary.interrupted = networks.interrupted
    summary.seconds = time.monotonic() - started
    return summary


def _share(network: Result) -> float:
    """What scales the blocks' medians to sum to the network's median.

    A median of sums is not the sum of the medians: a slow call's extra time falls in one block or
    another, and each block's median leaves it out (the blocks' medians sum a little short of the
    network's median, the more so the noisier the machine: docs/design.md). Scaling the blocks by this
    ratio keeps their proportions and makes a network's estimate its own median, the number a user's loop
    reports."""
    assert network.stats is not None
    total_us = sum(part.stats.median_us for part in network.parts if part.stats is not None)
    return network.stats.median_us / total_us if total_us > 0 else 1.0


def _part_fields(
    part: Result, network_fields: dict[str, Any], network: str, position: int, share: float
) -> dict[str, Any]:
    """A block's row as timed inside one network: its own numbers scaled by the network's `share`, the
    network's protocol and environment."""
    protocol = {k: v for k, v in network_fields["protocol"].items() if k != "warmup_runs"}
    numbers = result_numbers(part)
    return {
        **network_fields,
        **numbers,
        **{column: numbers[column] * share for column in TIMES_US},
        "canary_ratio": None if part.canary_ratio is None else part.canary_ratio * share,
        "protocol": {**protocol, "context": CONTEXT_NETWORK},
        "environment": {
            **network_fields["environment"],
            **result_trials(part),  # the block's own trials in place of the network's
            "network": network,
            "position": position,
            "network_median_us": round(network_fields["median_us"], 3),
            "share": round(share, 4),
        },
    }


_ROW_KEY = ("block_key", "device", "backend", "threads", "batch", "dtype", "backend_version")
_OWN = ("position", "network_median_us", "share", "trial_medians_us", "canary_medians_us")


def _stored_appearances(row: MeasurementRecord) -> list[tuple[float, dict[str, Any]]]:
    """A stored row's appearances, as this run's are: its own, and each other one as its numbers scaled to
    that appearance's median (the row keeps only the median appearance's full numbers)."""
    fields = {name: value for name, value in columns(row).items() if name not in _ROW_KEY}
    environment = {
        k: v for k, v in row.provenance.environment.items() if k not in ("appearances_us", "appearance_networks")
    }
    own = own_name = row.provenance.environment.get("network")
    appearances = []
    for median_us, network in zip(
        row.provenance.environment.get("appearances_us", [row.stats.median_us]),
        row.provenance.environment.get("appearance_networks", [own]),
        strict=True,
    ):
        if network == own:
            appearances.append((row.stats.median_us, {**fields, "environment": environment}))
            own = None  # a network seen in two runs has one full copy
            continue
        scale = median_us / row.stats.median_us
        scaled = {column: fields[column] * scale for column in TIMES_US}
        ratio = None if row.provenance.canary_ratio is None else row.provenance.canary_ratio * scale
        # the numbers of this appearance are the row's scaled; what only the row's own network had is left out
        other = {k: v for k, v in environment.items() if k not in _OWN} | {"network": network, "scaled_from": own_name}
        appearances.append((median_us, {**fields, **scaled, "canary_ratio": ratio, "environment": other}))
    return appearances


def _median_appearance(appearances: list[tuple[float, dict[str, Any]]]) -> dict[str, Any]:
    """The row of the appearance whose time is the median of all (the lower middle of an even count),
    recording every appearance's time."""
    ordered = sorted(appearances, key=lambda a: a[0])
    _, row = ordered[(len(ordered) - 1) // 2]
    networks = [a[1]["environment"]["network"] for a in ordered]
    return {
        **row,
        "environment": {
            **row["environment"],
            "appearances_us": [round(a[0], 3) for a in ordered],
            "appearance_networks": networks,
        },
    }
