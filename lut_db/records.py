"""What the store hands in and out: frozen dataclasses, independent of the ORM session that made them."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any, TypeVar

from latency.vocab.arch import Arch
from latency.vocab.conditions import Conditions
from latency.vocab.timing import TimingStats
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
class Provenance:
    """How a number came to be: the canary timed beside it (its ratio to it, and its own median), the
    protocol and the machine's environment, when, and whether its trials agreed."""

    canary_ratio: float | None
    canary_us: float | None
    protocol: dict[str, Any]
    environment: dict[str, Any]
    measured_at: datetime
    stable: bool


@dataclass(frozen=True)
class MeasurementRecord:
    """One block's latency on one device under one backend/threads/dtype/batch; times in microseconds."""

    block_key: str
    conditions: Conditions  # the device's name, the backend (resolved), threads, batch, dtype
    backend_version: str
    stats: TimingStats
    provenance: Provenance
    source: str = "measured"  # or "transferred", "predicted" (lut_db.models.SOURCES)
    expected_error: float | None = None  # relative error of a derived (not measured) row

    def __post_init__(self) -> None:
        _check_resolved(self.conditions)


@dataclass(frozen=True)
class E2ERecord:
    """An end-to-end run of a whole architecture; `arch_hash` is computed from `arch_json`."""

    arch_name: str
    arch_json: str
    conditions: Conditions
    backend_version: str
    stats: TimingStats
    provenance: Provenance
    tag: str | None  # "calibration", "validation", ... or None
    deploy_env: str = "default"  # the process the network ran in (latency.vocab.deploy_env's name)
    arch_hash: str = field(init=False)

    def __post_init__(self) -> None:
        _check_resolved(self.conditions)
        object.__setattr__(self, "arch_hash", arch_hash(self.arch_json))

    @functools.cached_property
    def arch(self) -> Arch:
        """The architecture that ran, parsed once from `arch_json`."""
        return Arch.from_dict(json.loads(self.arch_json))


@dataclass(frozen=True)
class ImportSummary:
    """What `LutStore.import_csv` did with a file's rows."""

    rows: int  # read from the file
    new: int  # measurements the table did not have
    updated: int  # replaced the table's older row
    unchanged: int  # equal to the table's row
    kept: int  # the table's row stayed: newer than the file's, or measured where the file's is predicted
    duplicates: int  # repeats of an identical row in the file, counted once

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class FitRecord:
    """A fitted model stored as JSON: `params` rebuild it, `metrics` say how good it was."""

    conditions: Conditions
    backend_version: str
    purpose: str  # "calibration", "block_predictor", ...
    params: dict[str, Any]
    metrics: dict[str, Any]
    n_samples: int
    fitted_at: datetime
    deploy_env: str = "default"  # the deployment whose end-to-end times the fit predicts

    def __post_init__(self) -> None:
        _check_resolved(self.conditions)


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

    def to_dict(self) -> dict[str, Any]:
        """What `lut devices --json` and the service say of the device (times in ISO 8601)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "fingerprint": self.fingerprint,
            "measurements": self.n_measurements,
            "e2e_runs": self.n_e2e_runs,
            "created_at": self.created_at.isoformat(),
            "last_seen_at": self.last_seen_at.isoformat(),
        }


def _check_resolved(conditions: Conditions) -> None:
    if not isinstance(conditions, Conditions) or conditions.backend is None:
        raise StoreError(f"A record is stored under conditions with a resolved backend, not {conditions!r}.")


_COMPOSED = ("conditions", "stats", "provenance")
_CONDITION_COLUMNS = ("device", "backend", "threads", "batch", "dtype")  # Conditions' fields, in its order


@functools.cache
def _own_names(cls: type) -> tuple[str, ...]:
    """A record's own fields, its composed parts left out (cached: every stored row is read through here)."""
    return tuple(f.name for f in fields(cls) if f.init and f.name not in _COMPOSED)


@functools.cache
def _has_parts(cls: type) -> bool:
    """Whether a record holds stats and provenance (a measurement, a run) or not (a fit)."""
    return "stats" in {f.name for f in fields(cls)}


@functools.cache
def column_names(cls: type) -> tuple[str, ...]:
    """The table's columns a record of `cls` is made of: its conditions, its parts flattened, its own fields."""
    parts = (*_own_names(TimingStats), *_own_names(Provenance)) if _has_parts(cls) else ()
    return (*_CONDITION_COLUMNS, *parts, *_own_names(cls))


@functools.cache
def _known_columns(cls: type) -> frozenset[str]:
    return frozenset(column_names(cls)) | {f.name for f in fields(cls)}  # a run's derived arch_hash too


def columns(record: MeasurementRecord | E2ERecord | FitRecord) -> dict[str, Any]:
    """The record as the table's columns: its conditions and statistics flattened beside its other fields."""
    values = {name: getattr(record, name) for name in _own_names(type(record))}
    if not isinstance(record, (MeasurementRecord, E2ERecord)):
        return {**record.conditions.columns(), **values}
    return {**record.conditions.columns(), **asdict(record.stats), **asdict(record.provenance), **values}


R = TypeVar("R", "MeasurementRecord", "E2ERecord", "FitRecord")


def from_columns(cls: type[R], values: Mapping[str, Any]) -> R:
    """A record from the table's columns (the inverse of `columns`): unknown columns are an error."""
    unknown = sorted(set(values) - _known_columns(cls))
    if unknown:
        raise TypeError(f"{cls.__name__} has no column {unknown[0]!r}")
    own = {name: values[name] for name in _own_names(cls) if name in values}
    if _has_parts(cls):
        own["stats"] = TimingStats(**{name: values[name] for name in _own_names(TimingStats)})
        own["provenance"] = Provenance(**{name: values[name] for name in _own_names(Provenance)})
    return cls(conditions=Conditions(*(values[c] for c in _CONDITION_COLUMNS)), **own)


def check_aware(value: Any, name: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise StoreError(f"{name} must be a timezone-aware datetime (e.g. datetime.now(timezone.utc)), not {value!r}.")
