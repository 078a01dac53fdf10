"""End-to-end latency from the lookup table: the sum of block times, corrected by the calibration.

No torch import on this path: `lut estimate` answers from the table in well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latency.arch import Arch
from latency.blocks import BlockSpec
from latency.correction import FEATURES, Correction, block_features
from latency.errors import LutError
from latency.models import resolve_arch
from latency.space import Space
from lut_db import LutStore, MeasurementRecord


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
    units: float  # in canary units
    expected_error: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"key": self.key, "kind": self.kind, "latency_ms": self.latency_ms, "source": self.source}
        if self.expected_error is not None:
            out["expected_error"] = self.expected_error
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
    canary_ref_us: float
    units: float  # the corrected estimate in canary units
    calibration: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "device": self.device,
            "backend": self.backend,
            "threads": self.threads,
            "batch": self.batch,
            "dtype": self.dtype,
            "latency_ms": self.latency_ms,
            "sum_ms": self.sum_ms,
            "interval_ms": list(self.interval_ms),
            "calibrated": self.calibrated,
            "canary_ref_us": self.canary_ref_us,
            "calibration": self.calibration,
            "blocks": [b.to_dict() for b in self.blocks],
        }


@dataclass(frozen=True)
class Entry:
    """What the table says about one block, in the units the estimate needs."""

    median_us: float
    units: float
    source: str
    p10_us: float
    p90_us: float
    expected_error: float | None


class Estimator:
    """Estimates for one (device, backend, threads, batch, dtype), from one table.

    `backend=None` takes the backend with the most entries for the device in the table.
    `use_calibration=False` ignores a stored calibration (the raw sum; what calibration fits on).
    """

    def __init__(
        self,
        device: str = "cpu",
        db: str | None = None,
        backend: str | None = None,
        threads: int = 1,
        batch: int = 1,
        dtype: str = "fp32",
        store: LutStore | None = None,
        use_calibration: bool = True,
    ) -> None:
        self.store = store or LutStore(db)
        self.device, self.threads, self.batch, self.dtype = device, threads, batch, dtype
        self.use_calibration = use_calibration
        self.backend = backend or self._default_backend()
        self.reload()

    def _default_backend(self) -> str:
        rows = self.store.measurements(device=self.device, threads=self.threads, batch=self.batch, dtype=self.dtype)
        if not rows:
            return "torch"
        backends = [r.backend for r in rows]
        return max(set(backends), key=backends.count)

    def reload(self) -> None:
        """Re-read the table (after profiling or calibrating)."""
        rows = self.store.measurement_map(
            device=self.device, backend=self.backend, threads=self.threads, batch=self.batch, dtype=self.dtype
        )
        fit = self.store.get_fit(self.device, self.backend, self.threads, self.dtype, self.batch, "calibration")
        use = fit is not None and self.use_calibration
        self.correction = Correction.from_params(fit.params, fit.metrics) if use else None
        canaries = [r.canary_us for r in rows.values() if r.canary_us and r.source == "measured"]
        if self.correction is not None:
            self.canary_ref_us = self.correction.canary_ref_us
        else:
            self.canary_ref_us = float(np.median(canaries)) if canaries else math.nan
        self._entries = {key: self._entry(rec) for key, rec in rows.items()}

    def _entry(self, rec: MeasurementRecord) -> Entry:
        if rec.canary_ratio is not None and rec.canary_ratio > 0:
            units = rec.canary_ratio
        elif self.canary_ref_us and not math.isnan(self.canary_ref_us):
            units = rec.median_us / self.canary_ref_us
        else:
            units = math.nan
        return Entry(rec.median_us, units, rec.source, rec.p10_us, rec.p90_us, rec.expected_error)

    @property
    def calibrated(self) -> bool:
        return self.correction is not None

    @property
    def entries(self) -> int:
        return len(self._entries)

    def entry(self, spec: BlockSpec) -> Entry | None:
        return self._entries.get(spec.key)

    def missing(self, model: str | Path | Arch | dict[str, Any]) -> list[BlockSpec]:
        specs = resolve_arch(model).specs(batch=self.batch, dtype=self.dtype)
        unique = {s.key: s for s in specs if s.key not in self._entries}
        return list(unique.values())

    def _require(self, arch: Arch, specs: Sequence[BlockSpec]) -> list[Entry]:
        absent = sorted({s.key for s in specs if s.key not in self._entries})
        if absent:
            shown = ", ".join(absent[:3]) + (f", and {len(absent) - 3} more" if len(absent) > 3 else "")
            raise MissingBlocksError(
                f"{len(absent)} blocks of {arch.name} are not in the table for {self.device}/{self.backend} "
                f"(threads {self.threads}, batch {self.batch}, {self.dtype}): {shown}; measure them with "
                f"`lut profile --device {self.device} --backend {self.backend} --threads {self.threads} "
                f"--batch {self.batch} --dtype {self.dtype} {_target_option(arch)}`.",
                absent,
            )
        return [self._entries[s.key] for s in specs]

    def estimate(self, model: str | Path | Arch | dict[str, Any]) -> Estimate:
        arch = resolve_arch(model)
        specs = arch.specs(batch=self.batch, dtype=self.dtype)
        entries = self._require(arch, specs)
        sum_us = sum(e.median_us for e in entries)
        blocks = tuple(
            BlockEstimate(s.key, s.kind, e.median_us / 1e3, e.source, e.units, e.expected_error)
            for s, e in zip(specs, entries, strict=True)
        )
        if self.correction is None:
            low = sum(e.p10_us for e in entries) / 1e3
            high = sum(e.p90_us for e in entries) / 1e3
            return Estimate(
                arch.name,
                self.device,
                self.backend,
                self.threads,
                self.batch,
                self.dtype,
                sum_us / 1e3,
                sum_us / 1e3,
                (low, high),
                False,
                blocks,
                self.canary_ref_us,
                sum(e.units for e in entries),
            )
        features = np.stack([block_features(s, e.units) for s, e in zip(specs, entries, strict=True)])
        units = float(self.correction.block_units(features).sum() + self.correction.intercept)
        latency_ms = units * self.canary_ref_us / 1e3
        q_low = self.correction.metrics.get("residual_q05", 0.0)
        q_high = self.correction.metrics.get("residual_q95", 0.0)
        predicted_error = max((e.expected_error or 0.0) for e in entries)
        interval = (latency_ms * (1 + q_low - predicted_error), latency_ms * (1 + q_high + predicted_error))
        return Estimate(
            arch.name,
            self.device,
            self.backend,
            self.threads,
            self.batch,
            self.dtype,
            latency_ms,
            sum_us / 1e3,
            interval,
            True,
            blocks,
            self.canary_ref_us,
            units,
            calibration={"model": self.correction.model, **self.correction.metrics},
        )

    # ---- many at once -------------------------------------------------------------------------
    def estimate_many(self, archs: Sequence[str | Path | Arch | dict[str, Any]]) -> np.ndarray:
        """Estimated latency (ms) of each architecture; blocks shared between them are looked up once."""
        weights = self._weights()
        block_units: dict[str, float] = {}
        out = np.empty(len(archs))
        for i, model in enumerate(archs):
            arch = resolve_arch(model)
            specs = arch.specs(batch=self.batch, dtype=self.dtype)
            self._require(arch, specs)
            total = 0.0
            for spec in specs:
                value = block_units.get(spec.key)
                if value is None:
                    value = block_units[spec.key] = float(block_features(spec, self._entries[spec.key].units) @ weights)
                total += value
            out[i] = total
        return self._to_ms(out)

    def _weights(self) -> np.ndarray:
        if self.correction is not None:
            return self.correction.weights
        # Uncalibrated: the plain sum of medians (units * canary = median by construction).
        return np.array([1.0, 0.0, 0.0, 0.0])

    def _to_ms(self, units: np.ndarray) -> np.ndarray:
        intercept = self.correction.intercept if self.correction is not None else 0.0
        return (units + intercept) * self.canary_ref_us / 1e3

    def space_tables(self, space: Space) -> list[np.ndarray]:
        """Per block position of the space, each shape's corrected contribution in canary units,
        indexed [input width, mid, output width, resolution]. Raises if a shape has no entry."""
        weights = self._weights()
        tables = []
        for position in space.positions:
            specs = space.position_specs(position, self.batch, self.dtype)
            absent = sorted({s.key for s in specs.flat if s.key not in self._entries})
            if absent:
                raise MissingBlocksError(
                    f"{len(absent)} block shapes of space '{space.name}' are not in the table for "
                    f"{self.device}/{self.backend}; fill them with `lut profile --space {space.name} "
                    f"--device {self.device}`.",
                    absent,
                )
            table = np.empty(specs.shape)
            for index, spec in np.ndenumerate(specs):
                table[index] = block_features(spec, self._entries[spec.key].units) @ weights
            tables.append(table)
        return tables

    def estimate_space(self, space: Space, indices: np.ndarray, tables: list[np.ndarray] | None = None) -> np.ndarray:
        """Vectorised estimates (ms) of many points of a space, given as an (n, dimensions) int array
        of choice indices (`Space.sample_indices`)."""
        tables = tables if tables is not None else self.space_tables(space)
        n_groups = len(space.groups)
        total = np.zeros(len(indices))
        for position, table in zip(space.positions, tables, strict=True):
            a = indices[:, 1 + space.groups.index(position.in_group)] if position.in_group else 0
            m = indices[:, 1 + n_groups + position.mid_dim] if position.mid_dim is not None else 0
            b = indices[:, 1 + space.groups.index(position.out_group)] if position.out_group else 0
            r = indices[:, 0] if table.shape[3] > 1 else 0
            total += table[a, m, b, r]
        return self._to_ms(total)


def _target_option(arch: Arch) -> str:
    from latency.models import list_models

    return f"--models {arch.name}" if arch.name in list_models() else "--arch ARCH.json"


__all__ = ["FEATURES", "BlockEstimate", "Entry", "Estimate", "Estimator", "MissingBlocksError"]
