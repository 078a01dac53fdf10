"""What the store hands in and out: frozen dataclasses, independent of the ORM session that made them."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lut_db.errors import StoreError


def canonical_json(obj: Any, what: str = "value") -> str:
    """Sorted keys, no spaces: equal dicts give equal text (identity checks, hashes, exact CSV round trips)."""
    try:
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"The {what} cannot be stored as JSON: {exc}.") from exc


def arch_hash(arch_json: str) -> str:
    """sha256 of the canonical form of an architecture's JSON, so that formatting does not matter."""
    try:
        obj = json.loads(arch_json)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"arch_json is not valid JSON: {exc}.") from exc
    return hashlib.sha256(canonical_json(obj, "architecture").encode()).hexdigest()


@dataclass(frozen=True)
class MeasurementRecord:
    """One block's latency on one device under one backend/threads/dtype/batch; times in microseconds."""

    block_key: str
    device: str  # the device's name
    backend: str
    backend_version: str
    threads: int
    dtype: str
    batch: int
    median_us: float
    p10_us: float
    p90_us: float
    iqr_us: float
    mean_us: float
    std_us: float
    min_us: float
    n: int
    trials: int
    canary_ratio: float | None
    canary_us: float | None
    protocol: dict[str, Any]
    environment: dict[str, Any]
    measured_at: datetime
    stable: bool
    source: str = "measured"  # or "predicted"
    expected_error: float | None = None  # relative error of a predicted row


@dataclass(frozen=True)
class E2ERecord:
    """An end-to-end run of a whole architecture; `arch_hash` is computed from `arch_json`."""

    arch_name: str
    arch_json: str
    device: str
    backend: str
    backend_version: str
    threads: int
    dtype: str
    batch: int
    median_us: float
    p10_us: float
    p90_us: float
    iqr_us: float
    mean_us: float
    std_us: float
    min_us: float
    n: int
    trials: int
    canary_ratio: float | None
    canary_us: float | None
    tag: str | None  # "calibration", "validation", ... or None
    protocol: dict[str, Any]
    environment: dict[str, Any]
    measured_at: datetime
    stable: bool
    arch_hash: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_hash", arch_hash(self.arch_json))


@dataclass(frozen=True)
class FitRecord:
    """A fitted model stored as JSON: `params` rebuild it, `metrics` say how good it was."""

    device: str
    backend: str
    backend_version: str
    threads: int
    dtype: str
    batch: int
    purpose: str  # "calibration", "block_predictor", ...
    params: dict[str, Any]
    metrics: dict[str, Any]
    n_samples: int
    fitted_at: datetime


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    kind: str
    fingerprint: dict[str, Any]
    identity: dict[str, Any]
    n_measurements: int
    n_e2e_runs: int
    created_at: datetime
    last_seen_at: datetime


def check_stats(rec: MeasurementRecord | E2ERecord) -> None:
    """Finite statistics only: SQLite would silently turn a NaN into NULL."""
    for name in ("median_us", "p10_us", "p90_us", "iqr_us", "mean_us", "std_us", "min_us"):
        check_finite(getattr(rec, name), name, nullable=False)
    for name in ("canary_ratio", "canary_us"):
        check_finite(getattr(rec, name), name, nullable=True)
    check_aware(rec.measured_at, "measured_at")


def check_finite(value: Any, name: str, *, nullable: bool) -> None:
    if value is None and nullable:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise StoreError(f"{name} must be a finite number, not {value!r}.")


def check_aware(value: Any, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StoreError(f"{name} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), not {value!r}.")
