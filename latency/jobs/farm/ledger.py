"""The device farm's ledger beside the table: which workers are alive on which unit, and why jobs failed.

The queue itself is procrastinate's (latency.jobs.farm.queue); it knows jobs and anonymous worker heartbeats
only. A farm's operator asks which unit of which device a worker drives, what it is doing, and what the
runner printed when a block failed: that is kept here, in two tables of the table's own PostgreSQL
database, apart from the lut schema (the lookup table's rows never depend on them).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import DateTime, Float, Integer, String, Text, delete, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class FarmBase(DeclarativeBase):
    pass


class FarmWorkerRow(FarmBase):
    __tablename__ = "lut_farm_workers"

    unit: Mapped[str] = mapped_column(String(256), primary_key=True)
    device: Mapped[str] = mapped_column(String(128), index=True)
    host: Mapped[str] = mapped_column(String(256))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    heartbeat_s: Mapped[float] = mapped_column(Float)  # its own interval: silent for three, it is gone
    job_id: Mapped[int | None] = mapped_column(Integer, nullable=True)


class FarmFailureRow(FarmBase):
    __tablename__ = "lut_farm_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    device: Mapped[str] = mapped_column(String(128), index=True)
    unit: Mapped[str] = mapped_column(String(256))
    block_key: Mapped[str] = mapped_column(String(512))
    message: Mapped[str] = mapped_column(Text)
    failed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class FarmWorker:
    unit: str
    device: str
    host: str
    pid: int
    started_at: datetime
    heartbeat_at: datetime
    heartbeat_s: float
    job_id: int | None


@dataclass(frozen=True)
class FarmFailure:
    job_id: int
    device: str
    unit: str
    block_key: str
    message: str
    failed_at: datetime


def _now() -> datetime:
    return datetime.now(timezone.utc)


class FarmLedger:
    """Workers and failures of the farm, on the engine of a PostgreSQL LutStore."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @staticmethod
    def create(conn: Connection) -> None:
        """The ledger's tables, on a connection that holds the farm's set-up lock (a no-op once they exist)."""
        FarmBase.metadata.create_all(conn)

    def beat(self, unit: str, device: str, host: str, pid: int, job_id: int | None, heartbeat_s: float) -> None:
        """A worker's heartbeat: it drives `unit` and runs `job_id` (None: idle)."""
        now = _now()
        values = {
            "device": device,
            "host": host,
            "pid": pid,
            "heartbeat_at": now,
            "heartbeat_s": heartbeat_s,
            "job_id": job_id,
        }
        stmt = insert(FarmWorkerRow).values(unit=unit, started_at=now, **values)
        with Session(self._engine) as session, session.begin():
            session.execute(stmt.on_conflict_do_update(index_elements=["unit"], set_=values))

    def start(self, unit: str, device: str, host: str, pid: int, heartbeat_s: float) -> None:
        """A worker took `unit` (the unit's lock is held): its row starts afresh."""
        with Session(self._engine) as session, session.begin():
            session.execute(delete(FarmWorkerRow).where(FarmWorkerRow.unit == unit))
        self.beat(unit, device, host, pid, None, heartbeat_s)

    def stop(self, unit: str, pid: int) -> None:
        with Session(self._engine) as session, session.begin():
            session.execute(delete(FarmWorkerRow).where(FarmWorkerRow.unit == unit, FarmWorkerRow.pid == pid))

    def workers(self, device: str | None = None) -> list[FarmWorker]:
        stmt = select(FarmWorkerRow).order_by(FarmWorkerRow.device, FarmWorkerRow.unit)
        if device is not None:
            stmt = stmt.where(FarmWorkerRow.device == device)
        with Session(self._engine) as session:
            return [
                FarmWorker(r.unit, r.device, r.host, r.pid, r.started_at, r.heartbeat_at, r.heartbeat_s, r.job_id)
                for r in session.scalars(stmt)
            ]

    def record_failure(self, job_id: int, device: str, unit: str, block_key: str, message: str) -> None:
        row = FarmFailureRow(
            job_id=job_id, device=device, unit=unit, block_key=block_key, message=message, failed_at=_now()
        )
        with Session(self._engine) as session, session.begin():
            session.add(row)

    def failures(self, job_ids: list[int]) -> list[FarmFailure]:
        """Every failed attempt of these jobs, oldest first."""
        if not job_ids:
            return []
        stmt = select(FarmFailureRow).where(FarmFailureRow.job_id.in_(job_ids)).order_by(FarmFailureRow.id)
        with Session(self._engine) as session:
            return [
                FarmFailure(r.job_id, r.device, r.unit, r.block_key, r.message, r.failed_at)
                for r in session.scalars(stmt)
            ]
