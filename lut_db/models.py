"""The lookup table's schema: SQLAlchemy 2.0 typed ORM models.

Times are stored in UTC and read back timezone-aware. Dicts (protocol, environment, fingerprints, fit
parameters) are stored as canonical JSON text, never pickled, so that any tool can read them.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from latency.vocab.blocks import BlockSpec

SCHEMA_VERSION = 3  # 2: runs and fits record their deployment environment (deploy_env); 3: transferred rows
APP_MARKER = "lut"

# Stable constraint names, so that a future Alembic migration can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend (SQLite keeps no offset, so it stores UTC wall time)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass a timezone-aware one (e.g. datetime.now(timezone.utc))")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Meta(Base):
    """Key/value facts about the database itself: `schema_version` and the `app` marker."""

    __tablename__ = "meta"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class DeviceRow(Base):
    __tablename__ = "devices"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String)  # cpu, cuda, android, ...
    fingerprint: Mapped[str] = mapped_column(Text)  # JSON: everything known about the machine, refreshed on use
    identity: Mapped[str] = mapped_column(Text)  # JSON: the stable subset that tells two machines apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Block(Base):
    """One block configuration and input shape; the fields are `latency.vocab.blocks.BlockSpec`'s."""

    __tablename__ = "blocks"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    kind: Mapped[str] = mapped_column(String)
    c_in: Mapped[int] = mapped_column(Integer)
    mid: Mapped[int] = mapped_column(Integer)
    c_out: Mapped[int] = mapped_column(Integer)
    kernel: Mapped[int] = mapped_column(Integer)
    stride: Mapped[int] = mapped_column(Integer)
    se: Mapped[int] = mapped_column(Integer)
    act: Mapped[str] = mapped_column(String)
    h: Mapped[int] = mapped_column(Integer)
    w: Mapped[int] = mapped_column(Integer)
    batch: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String)
    bias: Mapped[bool] = mapped_column(Boolean)
    flops: Mapped[int] = mapped_column(BigInteger)
    params: Mapped[int] = mapped_column(BigInteger)


class _ConditionColumns:
    """What a number was measured under, besides the device."""

    backend: Mapped[str] = mapped_column(String)
    backend_version: Mapped[str] = mapped_column(String)
    threads: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String)
    batch: Mapped[int] = mapped_column(Integer)


class _Stats:
    """Latency statistics in microseconds, plus the canary that states them at the machine's current speed."""

    median_us: Mapped[float] = mapped_column(Float)
    p10_us: Mapped[float] = mapped_column(Float)
    p90_us: Mapped[float] = mapped_column(Float)
    iqr_us: Mapped[float] = mapped_column(Float)
    mean_us: Mapped[float] = mapped_column(Float)
    std_us: Mapped[float] = mapped_column(Float)
    min_us: Mapped[float] = mapped_column(Float)
    n: Mapped[int] = mapped_column(Integer)  # timed samples
    trials: Mapped[int] = mapped_column(Integer)
    canary_ratio: Mapped[float | None] = mapped_column(Float)  # median over trials of (this / canary) per trial
    canary_us: Mapped[float | None] = mapped_column(Float)
    protocol: Mapped[str] = mapped_column(Text)  # JSON
    environment: Mapped[str] = mapped_column(Text)  # JSON
    measured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stable: Mapped[bool] = mapped_column(Boolean)


MEASUREMENT_KEY = ("block_key", "device_id", "backend", "backend_version", "threads", "dtype", "batch")
E2E_KEY = ("arch_hash", "device_id", "backend", "backend_version", "threads", "dtype", "batch", "deploy_env", "tag")
FIT_KEY = ("device_id", "backend", "backend_version", "threads", "dtype", "batch", "deploy_env", "purpose")
# Where a row's time comes from, weakest first: the block predictor, a transfer from another device's table
# fitted on this device's whole-network runs (latency.jobs.transfer), a measurement of the block itself.
SOURCES = ("predicted", "transferred", "measured")


class Measurement(_ConditionColumns, _Stats, Base):
    __tablename__ = "measurements"
    __table_args__ = (
        UniqueConstraint(*MEASUREMENT_KEY),
        Index(None, "device_id", "backend", "threads", "batch"),
        CheckConstraint("source IN ('predicted', 'transferred', 'measured')", name="source"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    block_key: Mapped[str] = mapped_column(String, ForeignKey("blocks.key"))
    device_id: Mapped[int] = mapped_column(Integer, ForeignKey("devices.id"))
    # sort_order: after the mixins' columns, so the table reads key, conditions, stats, provenance
    source: Mapped[str] = mapped_column(String, default="measured", sort_order=1)
    expected_error: Mapped[float | None] = mapped_column(Float, sort_order=1)  # relative error of a derived row


class E2ERun(_ConditionColumns, _Stats, Base):
    __tablename__ = "e2e_runs"
    __table_args__ = (UniqueConstraint(*E2E_KEY), Index(None, "device_id", "backend", "tag"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    arch_hash: Mapped[str] = mapped_column(String)  # sha256 of the canonical arch JSON
    arch_name: Mapped[str] = mapped_column(String)
    arch_json: Mapped[str] = mapped_column(Text)
    device_id: Mapped[int] = mapped_column(Integer, ForeignKey("devices.id"))
    # '' stands for "no tag": NULLs never collide in a unique constraint (SQLite, PostgreSQL < 15),
    # which would let an untagged run be inserted twice instead of upserted.
    tag: Mapped[str] = mapped_column(String, default="", sort_order=1)
    deploy_env: Mapped[str] = mapped_column(String, default="default", sort_order=1)


class Fit(_ConditionColumns, Base):
    """A fitted model (calibration, block predictor, ...) as JSON parameters and its metrics."""

    __tablename__ = "fits"
    __table_args__ = (UniqueConstraint(*FIT_KEY),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_id: Mapped[int] = mapped_column(Integer, ForeignKey("devices.id"))
    purpose: Mapped[str] = mapped_column(String, sort_order=1)
    deploy_env: Mapped[str] = mapped_column(String, default="default", sort_order=1)
    params_json: Mapped[str] = mapped_column(Text, sort_order=1)
    metrics_json: Mapped[str] = mapped_column(Text, sort_order=1)
    n_samples: Mapped[int] = mapped_column(Integer, sort_order=1)
    fitted_at: Mapped[datetime] = mapped_column(UTCDateTime, sort_order=1)


# The columns of a block: BlockSpec's fields, then what the table adds about it.
BLOCK_COLUMNS = (*(f.name for f in dataclasses.fields(BlockSpec)), "flops", "params")
