"""Filling the table for a whole search space within a time budget.

The grid (every block position x input width x mid x output width x resolution) is too large to
measure. Measure its corners first (the extremes of every axis at every position), then, round
after round, the shapes the block predictor is least sure of (as nn-Meter samples kernels), and
let the predictor fill the rest: each such entry is stored as `predicted`, with its expected error.

Where the runtime runs a network block by block on this host (torch), the shapes are timed in context:
a few architectures of the space that together hold them (`Space.points_holding`) run as the deployment
runs them, timed block by block (latency.jobs.in_context), so the table the search reads is made of
blocks timed the way they run; the predictor learns from those rows only, and its rows say so. Elsewhere
(ONNX Runtime, ExecuTorch, CUDA, phones: a network is one program) each shape is timed alone.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from latency.estimate.predictor import BlockPredictor, predict_blocks, training_set
from latency.jobs.in_context import in_context_rows, profile_in_context, times_in_context
from latency.jobs.measure import block_row, profile_blocks
from latency.vocab.blocks import CONTEXT_NETWORK, BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.space import Space
from latency.vocab.timing import TimingStats
from lut_db import FitRecord, LutStore, MeasurementRecord
from lut_db.records import Provenance
from profilers.devices import backend_of
from profilers.protocol import PROTOCOLS, ProgressSink, Protocol

ROUND_SIZE = 36  # shapes measured between two refits of the predictor


@dataclass
class SpaceProfileSummary:
    space: str
    device: str
    backend: str
    grid: int
    measured_before: int = 0
    measured_now: int = 0
    predicted: int = 0
    rounds: int = 0
    seconds: float = 0.0
    predictor: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False
    in_context: bool = False  # shapes timed inside networks of the space (else alone)
    networks: int = 0  # networks run to time them in context

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def corner_specs(space: Space, batch: int = 1, dtype: str = "fp32") -> list[BlockSpec]:
    """Every position's shapes at the extremes of each of its axes."""
    unique: dict[str, BlockSpec] = {}
    for position in space.positions:
        table = space.position_specs(position, batch, dtype)
        axes = [sorted({0, n - 1}) for n in table.shape]
        for index in itertools.product(*axes):
            spec = table[index]
            unique.setdefault(spec.key, spec)
    return list(unique.values())


def _measured(store: LutStore, conditions: Conditions, deploy_env: DeployEnv | None) -> dict[str, Any]:
    """The measured rows a fill builds on: timed inside networks run in `deploy_env`, or (None) any."""
    if deploy_env is None:
        return store.measurement_map(conditions, source="measured")
    return in_context_rows(store, conditions, None, deploy_env)


def fit_predictor(specs: list[BlockSpec], latencies_us: list[float], seed: int = 0) -> BlockPredictor:
    return BlockPredictor(bags=8, seed=seed).fit(specs, latencies_us)


def profile_space(
    space: Space,
    store: LutStore,
    conditions: Conditions,
    budget_min: float = 20.0,
    protocol: Protocol | str = "standard",
    progress: ProgressSink | None = None,
    seed: int = 0,
    device_options: dict[str, Any] | None = None,
    deploy_env: DeployEnv = DEFAULT,
    in_context: bool | None = None,
) -> SpaceProfileSummary:
    """Measure the corners of `space` (always, in full: the predictor needs them), then the most
    uncertain shapes until `budget_min` minutes have passed since the start, then predict every
    shape still unmeasured and store those rows as `predicted`. `in_context` (default: where the backend
    allows it on this host) times the shapes inside networks of the space run as `deploy_env` runs them.
    `device_options`: a phone's `serial`, `runner`."""
    started = time.monotonic()
    deadline = started + budget_min * 60
    backend = backend_of(conditions)
    conditions = conditions.with_backend(backend)
    if in_context is None:
        in_context = not device_options and times_in_context(conditions)
    batch, dtype = conditions.batch, conditions.dtype
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    grid = space.all_specs(batch, dtype)
    by_key = {s.key: s for s in grid}
    env = deploy_env if in_context else None
    summary = SpaceProfileSummary(space.name, conditions.device, backend, len(grid), in_context=in_context)
    summary.measured_before = len(by_key.keys() & _measured(store, conditions, env).keys())
    reachable = set(space.realizations(batch, dtype)) if in_context else set(by_key)

    def measure(specs: list[BlockSpec], until: float | None) -> bool:
        if in_context:
            points = space.points_holding({s.key for s in specs}, batch, dtype, seed + summary.rounds)
            networks = [space.arch(point) for point in points]
            summary.networks += len(networks)
            result = profile_in_context(
                networks, store, conditions, protocol, deploy_env, progress=progress, deadline=until
            )
        else:
            result = profile_blocks(
                specs, store, conditions, protocol, progress=progress, deadline=until, device_options=device_options
            )
        # shapes of the grid measured since the start (a network in context re-times shapes measured before)
        summary.measured_now = len(by_key.keys() & _measured(store, conditions, env).keys()) - summary.measured_before
        summary.interrupted = result.interrupted
        return not result.interrupted

    # The corners take no deadline: a slow machine or a small budget must still leave the predictor
    # the extremes of every axis, or it would extrapolate from nothing.
    if not measure(corner_specs(space, batch, dtype), None):
        return _finish(summary, started)
    while time.monotonic() < deadline:
        rows = _measured(store, conditions, env)
        todo = [s for k, s in by_key.items() if k not in rows and k in reachable]
        if not todo:
            break
        predictor = _fit_on_rows(rows, seed + summary.rounds)
        _, spread = predictor.predict(todo)
        # Measure where the bag disagrees most; per round, what fits in the time left.
        per_block_s = max(1.0, _seconds_per_block(protocol))
        room = int((deadline - time.monotonic()) / per_block_s)
        if room < 1:
            break
        chosen = [todo[i] for i in np.argsort(-spread)[: min(ROUND_SIZE, room)]]
        summary.rounds += 1
        if not measure(chosen, deadline):
            return _finish(summary, started)
    _predict_rest(space, store, summary, conditions, by_key, seed, env)
    return _finish(summary, started)


def _seconds_per_block(protocol: Protocol) -> float:
    """What the protocol spends on a block, warm-ups and timing (re-measurements aside)."""
    return protocol.warmup_s + protocol.min_time_s + 0.15


def _fit_on_rows(rows: dict[str, Any], seed: int) -> BlockPredictor:
    specs, latencies_us, _ = training_set(rows)
    return fit_predictor(specs, list(latencies_us), seed)


def _predict_rest(
    space: Space,
    store: LutStore,
    summary: SpaceProfileSummary,
    conditions: Conditions,
    by_key: dict[str, BlockSpec],
    seed: int,
    deploy_env: DeployEnv | None,
) -> None:
    """Predict the shapes not measured from those measured (in context: from blocks timed in context only,
    and the predicted rows say they stand for such blocks)."""
    rows = _measured(store, conditions, deploy_env)
    specs, latencies_us, canary_ref = training_set(rows)
    todo = [s for k, s in by_key.items() if k not in rows]
    predictions = predict_blocks(specs, latencies_us, todo, seed)
    summary.predictor = predictions.cv
    # The version the measured rows were taken with: predictions join their slice of the table.
    versions = [r.backend_version for r in rows.values()]
    version = max(set(versions), key=versions.count)
    store.put_fit(
        FitRecord(
            conditions=conditions,
            backend_version=version,
            purpose=f"block_predictor:{space.name}",
            params={"model": "additive+boosted", "bags": 8},
            metrics=summary.predictor,
            n_samples=len(specs),
            fitted_at=datetime.now(timezone.utc),
        )
    )
    if not todo:
        return
    store.upsert_blocks(block_row(s) for s in todo)
    for spec, value, error in zip(todo, predictions.latency_us, predictions.expected_error, strict=True):
        value, error = float(value), float(error)
        store.put_measurement(
            MeasurementRecord(
                block_key=spec.key,
                conditions=conditions,
                backend_version=version,
                stats=TimingStats(
                    median_us=value,
                    # a band of one expected error either way, in ratio (stays positive for any error)
                    p10_us=value / (1 + error),
                    p90_us=value * (1 + error),
                    iqr_us=0.0,
                    mean_us=value,
                    std_us=value * error,
                    min_us=value / (1 + error),
                    n=0,
                    trials=0,
                ),
                provenance=Provenance(
                    canary_ratio=value / canary_ref if canary_ref else None,
                    canary_us=canary_ref,
                    protocol={
                        "predicted_by": f"block_predictor:{space.name}",
                        "trained_on": len(specs),
                        **({"context": CONTEXT_NETWORK, "deploy_env": deploy_env.name} if deploy_env else {}),
                    },
                    environment={},
                    measured_at=datetime.now(timezone.utc),
                    stable=False,
                ),
                source="predicted",
                expected_error=error,
            )
        )
    summary.predicted = len(todo)


def _finish(summary: SpaceProfileSummary, started: float) -> SpaceProfileSummary:
    summary.seconds = time.monotonic() - started
    return summary
