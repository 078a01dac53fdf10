"""End-to-end latency from the lookup table: the sum of block times, corrected by the calibration.

No torch import on this path: `lut estimate` answers from the table in well under a second.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latency.estimate.canary import table_canary_us, unit_speeds
from latency.estimate.correction import FEATURES, IDENTITY, Correction, block_features
from latency.vocab.arch import Arch
from latency.vocab.blocks import CONTEXT_ALONE, BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.deploy_env import DEFAULT, DeployEnv
from latency.vocab.errors import LutError
from latency.vocab.family import list_models, resolve_arch
from latency.vocab.space import Space
from lut_db import LutStore
from profilers.devices import with_backend


class MissingBlocksError(LutError):
    """Blocks the table has no entry for (and that may not be predicted or measured now)."""

    def __init__(self, message: str, keys: list[str]) -> None:
        super().__init__(message)
        self.keys = keys


@dataclass(frozen=True)
class BlockEstimate:
    key: str
    kind: str
    latency_ms: float  # the block's own median (measured) or predicted time
    source: str  # "measured" or "predicted"
    expected_error: float | None = None
    outside_delegate: dict[str, int] = field(default_factory=dict)  # its program's ops the delegate did not take

    def to_dict(self) -> dict[str, Any]:
        out = {"key": self.key, "kind": self.kind, "latency_ms": self.latency_ms, "source": self.source}
        if self.expected_error is not None:
            out["expected_error"] = self.expected_error
        if self.outside_delegate:
            out["outside_delegate"] = self.outside_delegate
        return out


@dataclass(frozen=True)
class Estimate:
    model: str
    device: str
    backend: str
    threads: int
    batch: int
    dtype: str
    latency_ms: float
    sum_ms: float
    interval_ms: tuple[float, float]
    calibrated: bool
    blocks: tuple[BlockEstimate, ...]
    table_canary_us: float | None = None  # the canary's median in the table (to compare with today's)
    calibration: dict[str, Any] = field(default_factory=dict)
    deploy_env: str = "default"  # the deployment the calibrated estimate predicts (latency.vocab.deploy_env)
    other_calibrations: tuple[str, ...] = ()  # deployments calibrated for these conditions, when not this one
    warm_heap_blocks: int = 0  # blocks measured before the cold-heap protocol (they sum low)
    alone_blocks: int = 0  # blocks timed alone where the table also holds blocks timed inside networks
    uncorrected_blocks: int = 0  # blocks timed where none of the calibration's were: counted at their plain time

    @property
    def outside_delegate_blocks(self) -> int:
        """Blocks whose programs run some ops outside the delegate (on the runtime's portable kernels)."""
        return sum(bool(b.outside_delegate) for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "blocks": [b.to_dict() for b in self.blocks],
            "outside_delegate_blocks": self.outside_delegate_blocks,
        }


@dataclass(frozen=True)
class Entry:
    """What the table says about one block."""

    median_us: float
    source: str
    p10_us: float
    p90_us: float
    expected_error: float | None
    context: str = CONTEXT_ALONE  # where it was timed: alone (or predicted), or inside networks
    outside_delegate: dict[str, int] = field(default_factory=dict)  # ops its program ran outside the delegate


class Estimator:
    """Estimates under one set of conditions (device, backend, threads, batch, dtype), from one table.

    `conditions`: a device's name (its default conditions) or a `Conditions`; a backend of None is the
    device's default (profilers.devices.backend_of).
    `use_calibration=False` ignores a stored calibration (the raw sum; what calibration fits on).
    `deploy_env` names the deployment the estimate predicts: the calibration fitted on end-to-end runs
    in that environment is used, never one fitted on another's.
    """

    def __init__(
        self,
        conditions: Conditions | str = "cpu",
        db: str | None = None,
        store: LutStore | None = None,
        use_calibration: bool = True,
        deploy_env: DeployEnv | str = DEFAULT,
    ) -> None:
        self.store = store or LutStore(db)
        conditions = Conditions.of(conditions)
        # a name where a user passes one (LatencyCost, scripts); the deployment itself from here on
        self.deploy_env = DeployEnv.parse(deploy_env) if isinstance(deploy_env, str) else deploy_env
        self.use_calibration = use_calibration
        self.conditions = with_backend(conditions)
        self.reload()

    def reload(self) -> None:
        """Re-read the table (after profiling or calibrating)."""
        rows = self.store.measurement_map(self.conditions)
        fit = self.store.get_fit(self.conditions, "calibration", deploy_env=self.deploy_env.name)
        use = fit is not None and self.use_calibration
        self.correction = Correction.from_params(fit.params, fit.metrics) if use else None
        # A table made by a transfer (latency.jobs.transfer) says where it came from in every estimate.
        self.transfer: dict[str, Any] = (
            {"transferred_from": fit.params["transferred_from"], "transfer_runs": fit.n_samples}
            if use and "transferred_from" in fit.params
            else {}
        )
        self.other_calibrations: tuple[str, ...] = ()
        if fit is None and self.use_calibration:
            other = self.store.get_fit(self.conditions, "calibration", deploy_env=None)
            self.other_calibrations = (other.deploy_env,) if other is not None else ()
        self.table_canary_us = table_canary_us(rows.values())
        speeds = unit_speeds(rows.values(), self.table_canary_us)
        self._entries = {}
        for key, rec in rows.items():
            speed = speeds.get(rec.provenance.environment.get("serial"), 1.0) if rec.source == "measured" else 1.0
            self._entries[key] = Entry(
                rec.stats.median_us * speed,
                rec.source,
                rec.stats.p10_us * speed,
                rec.stats.p90_us * speed,
                rec.expected_error,
                context=rec.provenance.protocol.get("context", CONTEXT_ALONE),
                outside_delegate=rec.provenance.protocol.get("outside_delegate", {}),
            )
        # Rows measured before blocks returned the heap between calls (protocol.cold_heap) miss the page
        # faults a plain process pays; they are used, and every estimate says how many it holds.
        self.warm_heap_keys = {
            key for key, rec in rows.items() if rec.source == "measured" and "cold_heap" not in rec.provenance.protocol
        }
        # Blocks timed alone sum higher than blocks timed inside networks: where the table holds both, every
        # estimate says how many of its blocks were timed alone (a per_kind calibration weighs each kind).
        contexts = {entry.context for entry in self._entries.values()}
        mixed = len(contexts) > 1
        self.alone_keys = {k for k, e in self._entries.items() if e.context == CONTEXT_ALONE} if mixed else set()

    def add_predictions(
        self,
        specs: Sequence[BlockSpec],
        latencies_us: Sequence[float],
        expected_errors: Sequence[float],
        context: str = CONTEXT_ALONE,
    ) -> None:
        """Entries for blocks the table lacks, predicted (not stored), each with its expected error; `context`:
        the kind of rows the predictions were learnt from, which they stand for."""
        for spec, value, error in zip(specs, latencies_us, expected_errors, strict=True):
            self._entries[spec.key] = Entry(
                float(value), "predicted", float(value) / (1 + error), float(value) * (1 + error), float(error), context
            )

    @property
    def calibrated(self) -> bool:
        return self.correction is not None

    @property
    def entries(self) -> int:
        return len(self._entries)

    def entry(self, spec: BlockSpec) -> Entry | None:
        return self._entries.get(spec.key)

    def entry_map(self) -> dict[str, Entry]:
        """Every block the estimator knows (the table's rows and the predictions added), by key."""
        return dict(self._entries)

    def missing(self, arch: str | Path | Arch | dict[str, Any]) -> list[BlockSpec]:
        specs = resolve_arch(arch).specs(batch=self.conditions.batch, dtype=self.conditions.dtype)
        unique = {s.key: s for s in specs if s.key not in self._entries}
        return list(unique.values())

    def _require(self, arch: Arch, specs: Sequence[BlockSpec]) -> list[Entry]:
        absent = sorted({s.key for s in specs if s.key not in self._entries})
        if absent:
            c = self.conditions
            shown = ", ".join(absent[:3]) + (f", and {len(absent) - 3} more" if len(absent) > 3 else "")
            raise MissingBlocksError(
                f"{len(absent)} blocks of {arch.name} are not in the table for {c.device}/{c.backend} "
                f"(threads {c.threads}, batch {c.batch}, {c.dtype}): {shown}; measure them with "
                f"`lut profile --device {c.device} --backend {c.backend} --threads {c.threads} "
                f"--batch {c.batch} --dtype {c.dtype} {_target_option(arch)}`.",
                absent,
            )
        return [self._entries[s.key] for s in specs]

    def estimate(self, arch: str | Path | Arch | dict[str, Any]) -> Estimate:
        arch = resolve_arch(arch)
        specs = arch.specs(batch=self.conditions.batch, dtype=self.conditions.dtype)
        entries = self._require(arch, specs)
        correction = self.correction or IDENTITY
        features = np.stack(
            [block_features(s, e.median_us / 1e3, e.context) for s, e in zip(specs, entries, strict=True)]
        )
        latency_ms = float(correction.block_ms(features).sum() + correction.intercept)
        sum_ms = sum(e.median_us for e in entries) / 1e3
        blocks = tuple(
            BlockEstimate(s.key, s.kind, e.median_us / 1e3, e.source, e.expected_error, e.outside_delegate)
            for s, e in zip(specs, entries, strict=True)
        )
        if self.correction is None:  # the spread of the blocks' own times
            interval = (sum(e.p10_us for e in entries) / 1e3, sum(e.p90_us for e in entries) / 1e3)
            calibration: dict[str, Any] = {}
        else:  # where held-out runs fell around their estimates, widened for predicted blocks (a transferred
            # row's error is the transfer's own, which the held-out residuals already hold)
            predicted = max((e.expected_error or 0.0 for e in entries if e.source == "predicted"), default=0.0)
            low = correction.metrics.get("residual_q05", 0.0) - predicted
            high = correction.metrics.get("residual_q95", 0.0) + predicted
            interval = (latency_ms * (1 + low), latency_ms * (1 + high))
            calibration = {
                "model": correction.variant,
                "contexts": list(correction.contexts),
                **correction.metrics,
                **self.transfer,
            }
        return Estimate(
            arch.name,
            self.conditions.device,
            self.conditions.backend,
            self.conditions.threads,
            self.conditions.batch,
            self.conditions.dtype,
            latency_ms,
            sum_ms,
            interval,
            self.correction is not None,
            blocks,
            self.table_canary_us,
            calibration,
            self.deploy_env.name,
            self.other_calibrations,
            sum(s.key in self.warm_heap_keys for s in specs),
            sum(s.key in self.alone_keys for s in specs),
            int(np.sum(~correction.corrects(features))),
        )

    # ---- many at once -------------------------------------------------------------------------
    def estimate_many(self, archs: Sequence[str | Path | Arch | dict[str, Any]]) -> np.ndarray:
        """Estimated latency (ms) of each architecture; blocks shared between them are looked up once."""
        correction = self.correction or IDENTITY
        block_ms: dict[str, float] = {}
        out = np.empty(len(archs))
        for i, model in enumerate(archs):
            arch = resolve_arch(model)
            specs = arch.specs(batch=self.conditions.batch, dtype=self.conditions.dtype)
            self._require(arch, specs)
            total = 0.0
            for spec in specs:
                value = block_ms.get(spec.key)
                if value is None:
                    value = block_ms[spec.key] = self._block_ms(spec, correction)
                total += value
            out[i] = total
        return out + correction.intercept

    def _block_ms(self, spec: BlockSpec, correction: Correction) -> float:
        entry = self._entries[spec.key]
        return float(correction.block_ms(block_features(spec, entry.median_us / 1e3, entry.context)))

    @property
    def intercept_ms(self) -> float:
        return (self.correction or IDENTITY).intercept

    def space_tables(self, space: Space) -> list[np.ndarray]:
        """Per block position of the space, each shape's corrected contribution (ms), indexed
        [input width, mid, output width, resolution]. Raises if a shape has no entry."""
        correction = self.correction or IDENTITY
        tables = []
        for position in space.positions:
            specs = space.position_specs(position, self.conditions.batch, self.conditions.dtype)
            absent = sorted({s.key for s in specs.flat if s.key not in self._entries})
            if absent:
                raise MissingBlocksError(
                    f"{len(absent)} block shapes of space '{space.name}' are not in the table for "
                    f"{self.conditions.device}/{self.conditions.backend}; fill them with "
                    f"`lut profile --space {space.name} --device {self.conditions.device}`.",
                    absent,
                )
            table = np.empty(specs.shape)
            for index, spec in np.ndenumerate(specs):
                table[index] = self._block_ms(spec, correction)
            tables.append(table)
        return tables

    def estimate_space(self, space: Space, indices: np.ndarray, tables: list[np.ndarray] | None = None) -> np.ndarray:
        """Vectorised estimates (ms) of many points of a space, given as an (n, dimensions) int array
        of choice indices (`Space.sample_indices`)."""
        tables = tables if tables is not None else self.space_tables(space)
        n_groups = len(space.groups)
        columns = np.ascontiguousarray(np.asarray(indices, dtype=np.intp).T)
        total = np.zeros(len(indices))
        for position, table in zip(space.positions, tables, strict=True):
            # One flat gather per position (2-3x faster than indexing four axes).
            flat = np.ascontiguousarray(table).ravel()
            axes = (
                1 + space.groups.index(position.in_group) if position.in_group else None,
                1 + n_groups + position.mid_dim if position.mid_dim is not None else None,
                1 + space.groups.index(position.out_group) if position.out_group else None,
                0 if table.shape[3] > 1 else None,
            )
            strides = np.cumprod((1, *table.shape[:0:-1]))[::-1]
            offset = None
            for column, stride in zip(axes, strides, strict=True):
                if column is not None:
                    term = columns[column] * int(stride)
                    offset = term if offset is None else offset + term
            total += flat.take(offset) if offset is not None else flat[0]
        return total + self.intercept_ms


def _target_option(arch: Arch) -> str:

    return f"--models {arch.name}" if arch.name in list_models() else "--arch ARCH.json"


__all__ = ["FEATURES", "BlockEstimate", "Entry", "Estimate", "Estimator", "MissingBlocksError"]
