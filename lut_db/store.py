"""LutStore: the lookup table's API over SQLite (default) or PostgreSQL (a team table), same code.

Every `put_*` is its own short transaction that commits before returning, so that a process killed at
any moment loses at most the row being written. Opening never modifies a database that is not ours
or was written by a newer lut.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Select, func, inspect, or_, select, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from lut_db import csvio
from lut_db.engine import WRITE_OPTION, build_engine, ensure_parent, is_sqlite, resolve_url
from lut_db.errors import StoreError, one_line
from lut_db.models import (
    APP_MARKER,
    BLOCK_FIELDS,
    E2E_KEY,
    FIT_KEY,
    MEASUREMENT_KEY,
    SCHEMA_VERSION,
    SOURCES,
    STAT_COLUMNS,
    Base,
    Block,
    Device,
    E2ERun,
    Fit,
    Measurement,
    Meta,
)
from lut_db.records import (
    DeviceInfo,
    E2ERecord,
    FitRecord,
    MeasurementRecord,
    canonical_json,
    check_aware,
    check_stats,
)

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")

_LOCK_RETRIES = 5  # last resort on SQLite: busy_timeout and BEGIN IMMEDIATE normally make writers wait
_PG_SCHEMA_LOCK = 0x6C7574  # advisory lock id ("lut") serialising schema creation on PostgreSQL
_KEYS_CHUNK = 500  # bound parameters per IN (...) query
TABLES = ("measurements", "e2e_runs", "devices", "blocks")

_MEASUREMENT_VALUES = (*STAT_COLUMNS, "protocol", "environment", "measured_at", "stable", "source", "expected_error")
_E2E_VALUES = (*STAT_COLUMNS, "arch_name", "arch_json", "protocol", "environment", "measured_at", "stable")
_FIT_VALUES = ("params_json", "metrics_json", "n_samples", "fitted_at")


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LutStore:
    """The latency lookup table.

    `url`: a SQLAlchemy URL (`sqlite:///PATH`, `postgresql+psycopg://USER@HOST/DB`) or a file path; by
    default `$LUT_DB_URL`, else `$XDG_CACHE_HOME/lut/lut.sqlite` (`~/.cache/lut/lut.sqlite`).
    """

    def __init__(self, url: str | os.PathLike[str] | None = None) -> None:
        self._url = resolve_url(url)
        ensure_parent(self._url)
        self._sqlite = is_sqlite(self._url)
        exists = self._check_existing()
        self._engine = build_engine(self._url)
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        if not exists:  # an existing table is opened without a write (it may be a read-only file)
            try:
                self._create_schema()
            except BaseException:
                self._engine.dispose()
                raise

    # ---- opening ----------------------------------------------------------------------------
    @property
    def url(self) -> URL:
        """The resolved URL; `str(store.url)` masks the password."""
        return self._url

    @property
    def engine(self) -> Engine:
        return self._engine

    def _fail_open(self, exc: BaseException) -> StoreError:
        return StoreError(f"Cannot open the lut database {self._url}: {one_line(exc)}.")

    def _check_existing(self) -> bool:
        """Whether our table exists; refuses a database that is not ours or is too new before anything
        (even WAL mode) touches it."""
        # On SQLite a bare engine reads the file without the pragmas; on PostgreSQL reading changes nothing.
        probe = build_engine(self._url, probe=True)
        try:
            with probe.connect() as conn:
                return self._validate(conn)
        except StoreError:
            raise
        except DBAPIError as exc:
            if "file is not a database" in str(exc.orig):
                raise StoreError(f"{self._url} is not a lut database (the file is not an SQLite database).") from exc
            raise self._fail_open(exc) from exc
        except SQLAlchemyError as exc:
            raise self._fail_open(exc) from exc
        finally:
            probe.dispose()

    def _validate(self, conn: Connection) -> bool:
        """True when the database holds a lut table of this schema, False when it is empty; else StoreError."""
        names = set(inspect(conn).get_table_names())
        if not names:
            return False
        not_ours = StoreError(
            f"{self._url} is not a lut database (it has tables but no lut meta table); "
            "point LUT_DB_URL at a lut database or at an empty one."
        )
        if Meta.__tablename__ not in names:
            raise not_ours
        try:
            meta = dict(conn.execute(select(Meta.key, Meta.value)).all())
        except DBAPIError as exc:
            raise not_ours from exc
        if meta.get("app") != APP_MARKER:
            raise not_ours
        try:
            version = int(meta.get("schema_version", ""))
        except ValueError:
            raise not_ours from None
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self._url} was written by a newer lut (schema {version}); "
                f"this lut reads schema {SCHEMA_VERSION} — upgrade lut."
            )
        if version < SCHEMA_VERSION:
            raise StoreError(
                f"{self._url} has lut schema {version}, which this lut (schema {SCHEMA_VERSION}) cannot read."
            )
        return True

    def _create_schema(self) -> None:
        def create(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
            # Checked again under the write lock: another process may have created it since the probe.
            if self._validate(conn):
                return
            Base.metadata.create_all(conn)
            rows = [{"key": "schema_version", "value": str(SCHEMA_VERSION)}, {"key": "app", "value": APP_MARKER}]
            conn.execute(self._insert(Meta).on_conflict_do_nothing(index_elements=["key"]), rows)

        def attempt() -> None:
            with self._write_engine.begin() as conn:
                create(conn)

        try:
            self._retry(attempt)
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise self._fail_open(exc) from exc

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> LutStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LutStore({str(self._url)!r})"

    # ---- plumbing ---------------------------------------------------------------------------
    def _insert(self, model: Any) -> Any:
        """The dialect's INSERT, which has on_conflict_do_update / on_conflict_do_nothing."""
        table = model.__table__
        return postgresql.insert(table) if self._engine.dialect.name == "postgresql" else sqlite.insert(table)

    def _retry(self, fn: Callable[[], T]) -> T:
        for attempt in range(_LOCK_RETRIES):
            try:
                return fn()
            except OperationalError as exc:
                if not (self._sqlite and "locked" in str(exc.orig)) or attempt + 1 == _LOCK_RETRIES:
                    raise
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def _write(self, fn: Callable[[Session], T]) -> T:
        """Run `fn` in its own write transaction (BEGIN IMMEDIATE on SQLite), committed on return."""

        def attempt() -> T:
            with Session(self._write_engine, expire_on_commit=False) as session, session.begin():
                return fn(session)

        try:
            return self._retry(attempt)
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"Writing to the lut database {self._url} failed: {one_line(exc)}.") from exc

    def _read(self, fn: Callable[[Session], T]) -> T:
        try:
            with Session(self._engine) as session, session.begin():
                return fn(session)
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"Reading the lut database {self._url} failed: {one_line(exc)}.") from exc

    def _device_id(self, session: Session, name: str) -> int:
        device_id = session.scalar(select(Device.id).where(Device.name == name))
        if device_id is None:
            raise StoreError(
                f"There is no device '{name}' in {self._url}; register it with get_or_create_device first."
            )
        return device_id

    # ---- devices ----------------------------------------------------------------------------
    def get_or_create_device(
        self, name: str, kind: str, fingerprint: dict[str, Any], identity: dict[str, Any]
    ) -> DeviceInfo:
        """The device `name`, created if new; refreshes its fingerprint and last-seen time.

        Raises StoreError when the table's device of that name has another identity (other hardware).
        """
        if not name or not isinstance(name, str):
            raise StoreError(f"A device name must be a non-empty string, not {name!r}.")
        fingerprint_json = canonical_json(fingerprint, "device fingerprint")
        identity_json = canonical_json(identity, "device identity")
        now = _utcnow()

        def write(session: Session) -> DeviceInfo:
            values = {"name": name, "kind": kind, "fingerprint": fingerprint_json, "identity": identity_json}
            session.execute(
                self._insert(Device)
                .values(**values, created_at=now, last_seen_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            device = session.scalars(select(Device).where(Device.name == name)).one()
            self._check_identity(name, device.kind, device.identity, kind, identity_json)
            device.fingerprint = fingerprint_json
            device.last_seen_at = now
            session.flush()
            return self._device_infos(session, name)[0]

        return self._write(write)

    def _check_identity(self, name: str, kind: str, identity: str, new_kind: str, new_identity: str) -> None:
        if kind == new_kind and json.loads(identity) == json.loads(new_identity):
            return
        raise StoreError(
            f"The table's device '{name}' is {_describe(kind, identity)} but this device is "
            f"{_describe(new_kind, new_identity)}; use another device name."
        )

    def devices(self) -> list[DeviceInfo]:
        return self._read(lambda session: self._device_infos(session))

    def device(self, name: str) -> DeviceInfo | None:
        found = self._read(lambda session: self._device_infos(session, name))
        return found[0] if found else None

    def _device_infos(self, session: Session, name: str | None = None) -> list[DeviceInfo]:
        n_meas = select(func.count(Measurement.id)).where(Measurement.device_id == Device.id).scalar_subquery()
        n_e2e = select(func.count(E2ERun.id)).where(E2ERun.device_id == Device.id).scalar_subquery()
        stmt = select(Device, n_meas, n_e2e).order_by(Device.name)
        if name is not None:
            stmt = stmt.where(Device.name == name)
        return [
            DeviceInfo(
                name=d.name,
                kind=d.kind,
                fingerprint=json.loads(d.fingerprint),
                identity=json.loads(d.identity),
                n_measurements=n1,
                n_e2e_runs=n2,
                created_at=d.created_at,
                last_seen_at=d.last_seen_at,
            )
            for d, n1, n2 in session.execute(stmt)
        ]

    # ---- blocks -----------------------------------------------------------------------------
    def upsert_blocks(self, blocks: Iterable[dict[str, Any]]) -> None:
        """Add blocks not yet in the table (a key's fields never change, so existing rows are kept).

        Each dict holds `key` and the BlockSpec fields plus `flops` and `params`; other keys are ignored.
        """
        rows = [_block_row(b) for b in blocks]
        if not rows:
            return
        stmt = self._insert(Block).on_conflict_do_nothing(index_elements=["key"])
        self._write(lambda session: session.execute(stmt, rows))

    # ---- measurements -----------------------------------------------------------------------
    def put_measurement(self, rec: MeasurementRecord) -> None:
        """Insert or replace the row of (block, device, backend, version, threads, dtype, batch).

        A predicted row never replaces a measured one (nothing measured is lost).
        """
        check_stats(rec)
        if rec.source not in SOURCES:
            raise StoreError(f"source must be one of {', '.join(SOURCES)}, not {rec.source!r}.")
        values = {
            "block_key": rec.block_key,
            "backend": rec.backend,
            "backend_version": rec.backend_version,
            "threads": rec.threads,
            "dtype": rec.dtype,
            "batch": rec.batch,
            **{c: getattr(rec, c) for c in STAT_COLUMNS},
            "protocol": canonical_json(rec.protocol, "protocol"),
            "environment": canonical_json(rec.environment, "environment"),
            "measured_at": rec.measured_at,
            "stable": bool(rec.stable),
            "source": rec.source,
            "expected_error": rec.expected_error,
        }

        def write(session: Session) -> None:
            values["device_id"] = self._device_id(session, rec.device)
            if session.get(Block, rec.block_key) is None:
                raise StoreError(
                    f"Block '{rec.block_key}' is not in {self._url}; pass it to upsert_blocks before put_measurement."
                )
            session.execute(self._measurement_upsert(), values)

        self._write(write)

    def _measurement_upsert(self) -> Any:
        stmt = self._insert(Measurement)
        table = Measurement.__table__
        return stmt.on_conflict_do_update(
            index_elements=list(MEASUREMENT_KEY),
            set_={c: stmt.excluded[c] for c in _MEASUREMENT_VALUES},
            where=or_(stmt.excluded.source == "measured", table.c.source == "predicted"),
        )

    def measured_keys(
        self,
        device: str,
        backend: str,
        threads: int,
        batch: int | None = None,
        dtype: str | None = None,
        backend_version: str | None = None,
        source: str | None = "measured",
    ) -> set[str]:
        """Block keys with a row for these conditions (`source=None`: measured and predicted)."""
        stmt = (
            select(Measurement.block_key)
            .join(Device)
            .where(Device.name == device, Measurement.backend == backend, Measurement.threads == threads)
        )
        stmt = _filtered(stmt, Measurement, batch=batch, dtype=dtype, backend_version=backend_version, source=source)
        return self._read(lambda session: set(session.scalars(stmt)))

    def measurements(
        self,
        device: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        batch: int | None = None,
        dtype: str | None = None,
        keys: Iterable[str] | None = None,
        backend_version: str | None = None,
        source: str | None = None,
    ) -> list[MeasurementRecord]:
        """Rows matching every filter given (None: any), ordered by key, backend, version, threads, dtype, batch."""
        stmt = select(Measurement, Device.name).join(Device)
        stmt = _filtered(stmt, Measurement, backend=backend, threads=threads, batch=batch, dtype=dtype)
        stmt = _filtered(stmt, Measurement, backend_version=backend_version, source=source)
        if device is not None:
            stmt = stmt.where(Device.name == device)
        order = (
            Measurement.block_key,
            Device.name,
            Measurement.backend,
            Measurement.backend_version,
            Measurement.threads,
            Measurement.dtype,
            Measurement.batch,
        )

        def read(session: Session) -> list[MeasurementRecord]:
            if keys is None:
                found = session.execute(stmt.order_by(*order)).all()
            else:
                found = []
                for chunk in _chunks(sorted(set(keys)), _KEYS_CHUNK):
                    found += session.execute(stmt.where(Measurement.block_key.in_(chunk)).order_by(*order))
            return [_measurement_record(m, name) for m, name in found]

        return self._read(read)

    def measurement_map(
        self,
        device: str | None = None,
        backend: str | None = None,
        threads: int | None = None,
        batch: int | None = None,
        dtype: str | None = None,
        keys: Iterable[str] | None = None,
        backend_version: str | None = None,
        source: str | None = None,
    ) -> dict[str, MeasurementRecord]:
        """`measurements(...)` by block key; where a key has several rows (backend versions), the newest."""
        rows = self.measurements(device, backend, threads, batch, dtype, keys, backend_version, source)
        best: dict[str, MeasurementRecord] = {}
        for rec in rows:
            held = best.get(rec.block_key)
            if held is None or rec.measured_at > held.measured_at:
                best[rec.block_key] = rec
        return best

    # ---- end-to-end runs --------------------------------------------------------------------
    def put_e2e_run(self, rec: E2ERecord) -> None:
        """Insert or replace the run of (architecture, device, backend, version, threads, dtype, batch, tag)."""
        check_stats(rec)
        values = {
            "arch_hash": rec.arch_hash,
            "backend": rec.backend,
            "backend_version": rec.backend_version,
            "threads": rec.threads,
            "dtype": rec.dtype,
            "batch": rec.batch,
            "tag": rec.tag or "",
            **{c: getattr(rec, c) for c in STAT_COLUMNS},
            "arch_name": rec.arch_name,
            "arch_json": rec.arch_json,
            "protocol": canonical_json(rec.protocol, "protocol"),
            "environment": canonical_json(rec.environment, "environment"),
            "measured_at": rec.measured_at,
            "stable": bool(rec.stable),
        }
        stmt = self._insert(E2ERun)
        stmt = stmt.on_conflict_do_update(index_elements=list(E2E_KEY), set_={c: stmt.excluded[c] for c in _E2E_VALUES})

        def write(session: Session) -> None:
            values["device_id"] = self._device_id(session, rec.device)
            session.execute(stmt, values)

        self._write(write)

    def e2e_runs(
        self,
        device: str | None,
        backend: str | None = None,
        tag: str | None = None,
        threads: int | None = None,
        batch: int | None = None,
        dtype: str | None = None,
    ) -> list[E2ERecord]:
        """Runs matching every filter given (None: any), ordered by architecture name and conditions."""
        stmt = select(E2ERun, Device.name).join(Device)
        stmt = _filtered(stmt, E2ERun, backend=backend, tag=tag, threads=threads, batch=batch, dtype=dtype)
        if device is not None:
            stmt = stmt.where(Device.name == device)
        stmt = stmt.order_by(
            E2ERun.arch_name,
            E2ERun.arch_hash,
            Device.name,
            E2ERun.backend,
            E2ERun.backend_version,
            E2ERun.threads,
            E2ERun.dtype,
            E2ERun.batch,
            E2ERun.tag,
        )
        return self._read(lambda session: [_e2e_record(r, name) for r, name in session.execute(stmt)])

    # ---- fits -------------------------------------------------------------------------------
    def put_fit(self, rec: FitRecord) -> None:
        """Store a fitted model; it replaces the fit of the same device, conditions and purpose."""
        check_aware(rec.fitted_at, "fitted_at")
        values = {
            "backend": rec.backend,
            "backend_version": rec.backend_version,
            "threads": rec.threads,
            "dtype": rec.dtype,
            "batch": rec.batch,
            "purpose": rec.purpose,
            "params_json": canonical_json(rec.params, "fit parameters"),
            "metrics_json": canonical_json(rec.metrics, "fit metrics"),
            "n_samples": rec.n_samples,
            "fitted_at": rec.fitted_at,
        }
        stmt = self._insert(Fit)
        stmt = stmt.on_conflict_do_update(index_elements=list(FIT_KEY), set_={c: stmt.excluded[c] for c in _FIT_VALUES})

        def write(session: Session) -> None:
            values["device_id"] = self._device_id(session, rec.device)
            session.execute(stmt, values)

        self._write(write)

    def get_fit(
        self,
        device: str,
        backend: str,
        threads: int,
        dtype: str,
        batch: int,
        purpose: str,
        backend_version: str | None = None,
    ) -> FitRecord | None:
        """The fit for these conditions; without `backend_version`, the newest over all versions."""
        stmt = (
            select(Fit, Device.name)
            .join(Device)
            .where(Device.name == device, Fit.purpose == purpose)
            .order_by(Fit.fitted_at.desc(), Fit.id.desc())
            .limit(1)
        )
        stmt = _filtered(stmt, Fit, backend=backend, threads=threads, dtype=dtype, batch=batch)
        stmt = _filtered(stmt, Fit, backend_version=backend_version)

        def read(session: Session) -> FitRecord | None:
            row = session.execute(stmt).first()
            return None if row is None else _fit_record(*row)

        return self._read(read)

    # ---- exchange ---------------------------------------------------------------------------
    def _export_select(self, device: str | None) -> Select[Any]:
        m, b, d = Measurement, Block, Device
        own = {name: getattr(m, name) for name in ("block_key", *MEASUREMENT_KEY[2:], *_MEASUREMENT_VALUES)}
        named: dict[str, ColumnElement[Any]] = {
            **own,
            "device": d.name,
            "device_kind": d.kind,
            "block_kind": b.kind,
            "block_batch": b.batch,
            "block_dtype": b.dtype,
            **{f: getattr(b, f) for f in BLOCK_FIELDS if f not in ("kind", "batch", "dtype")},
            "device_fingerprint": d.fingerprint,
            "device_identity": d.identity,
        }
        stmt = (
            select(*(named[c].label(c) for c in csvio.COLUMN_NAMES))
            .join_from(m, b, m.block_key == b.key)
            .join(d, m.device_id == d.id)
            .order_by(d.name, m.block_key, m.backend, m.backend_version, m.threads, m.dtype, m.batch)
        )
        return stmt if device is None else stmt.where(d.name == device)

    def export_csv(self, path: str | os.PathLike[str], device: str | None = None) -> int:
        """Write the measurements (all, or one device's) with their block and device as CSV; returns the rows."""
        if device is not None and self.device(device) is None:
            raise StoreError(f"There is no device '{device}' in {self._url}.")
        stmt = self._export_select(device)
        rows = self._read(lambda session: [dict(r) for r in session.execute(stmt).mappings()])
        return csvio.write_csv(path, rows)

    def import_csv(self, path: str | os.PathLike[str]) -> int:
        """Add a CSV export's devices, blocks and measurements, all or nothing; returns the rows read."""
        rows = csvio.read_csv(path)
        name = os.fspath(path)
        devices: dict[str, tuple[int, dict[str, Any]]] = {}
        blocks: dict[str, dict[str, Any]] = {}
        for line, row in rows:
            held = devices.setdefault(row["device"], (line, row))[1]
            if (held["device_kind"], held["device_identity"]) != (row["device_kind"], row["device_identity"]):
                raise StoreError(
                    f"{name}: line {line}: device '{row['device']}' has another kind or identity than on line "
                    f"{devices[row['device']][0]}."
                )
            if row["source"] not in SOURCES:
                raise StoreError(
                    f"{name}: line {line}, column 'source': {row['source']!r} is not one of {', '.join(SOURCES)}."
                )
            blocks.setdefault(row["block_key"], _block_row_from_csv(row))
        now = _utcnow()

        def write(session: Session) -> int:
            ids: dict[str, int] = {}
            for device, (line, row) in devices.items():
                values = {
                    "name": device,
                    "kind": row["device_kind"],
                    "fingerprint": row["device_fingerprint"],
                    "identity": row["device_identity"],
                    "created_at": now,
                    "last_seen_at": now,
                }
                session.execute(self._insert(Device).values(**values).on_conflict_do_nothing(index_elements=["name"]))
                stored = session.scalars(select(Device).where(Device.name == device)).one()
                try:
                    self._check_identity(
                        device, stored.kind, stored.identity, row["device_kind"], row["device_identity"]
                    )
                except StoreError as exc:
                    raise StoreError(f"{name}: line {line}: {exc}") from None
                ids[device] = stored.id
            if blocks:
                session.execute(
                    self._insert(Block).on_conflict_do_nothing(index_elements=["key"]), list(blocks.values())
                )
            own = ("block_key", *MEASUREMENT_KEY[2:], *_MEASUREMENT_VALUES)
            values = [{**{c: row[c] for c in own}, "device_id": ids[row["device"]]} for _, row in rows]
            if values:
                session.execute(self._measurement_upsert(), values)
            return len(values)

        return self._write(write)

    def to_pandas(self, table: str = "measurements", device: str | None = None) -> pd.DataFrame:
        """A table as a DataFrame: measurements (with block fields and device, as in the CSV), e2e_runs
        (with the device name), devices (with counts) or blocks (those measured on `device`, if given)."""
        import pandas as pd  # only here: importing the store must stay fast

        if table not in TABLES:
            raise StoreError(f"Unknown table '{table}' (one of {', '.join(TABLES)}).")
        if table == "measurements":
            stmt: Select[Any] = self._export_select(device)
        elif table == "e2e_runs":
            e2e = E2ERun.__table__.c
            conditions = ("backend", "backend_version", "threads", "dtype", "batch")
            names = ("arch_hash", "arch_name", "arch_json", *conditions, *STAT_COLUMNS, *_E2E_VALUES[-4:])
            stmt = (
                select(
                    *(e2e[c] for c in names[:3]),
                    Device.name.label("device"),
                    Device.kind.label("device_kind"),
                    *(e2e[c] for c in names[3:]),
                    func.nullif(E2ERun.tag, "").label("tag"),  # '' is how the table spells "no tag"
                )
                .join(Device)
                .order_by(E2ERun.arch_name, Device.name, E2ERun.backend, E2ERun.threads, E2ERun.batch, E2ERun.id)
            )
            stmt = stmt if device is None else stmt.where(Device.name == device)
        elif table == "devices":
            n_meas = select(func.count(Measurement.id)).where(Measurement.device_id == Device.id).scalar_subquery()
            n_e2e = select(func.count(E2ERun.id)).where(E2ERun.device_id == Device.id).scalar_subquery()
            cols = [c for c in Device.__table__.c if c.name != "id"]
            stmt = select(*cols, n_meas.label("n_measurements"), n_e2e.label("n_e2e_runs")).order_by(Device.name)
            stmt = stmt if device is None else stmt.where(Device.name == device)
        else:
            stmt = select(*Block.__table__.c).order_by(Block.key)
            if device is not None:
                measured = (
                    select(Measurement.id).join(Device).where(Measurement.block_key == Block.key, Device.name == device)
                )
                stmt = stmt.where(measured.exists())
        try:
            with self._engine.connect() as conn:
                return pd.read_sql(stmt, conn)
        except SQLAlchemyError as exc:
            raise StoreError(f"Reading the lut database {self._url} failed: {one_line(exc)}.") from exc


# ---- helpers --------------------------------------------------------------------------------
def _describe(kind: str, identity_json: str) -> str:
    identity = json.loads(identity_json)
    items = ", ".join(f"{k}={v}" for k, v in sorted(identity.items()))
    return f"a {kind} device ({items})" if items else f"a {kind} device"


def _filtered(stmt: Select[Any], model: Any, **filters: Any) -> Select[Any]:
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, column) == value)
    return stmt


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _block_row(block: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in ("key", *BLOCK_FIELDS) if f not in block]
    if missing:
        raise StoreError(f"Block {block.get('key', block)!r} lacks the field '{missing[0]}'.")
    row = {f: block[f] for f in ("key", *BLOCK_FIELDS)}
    row["bias"] = bool(row["bias"])
    return row


def _block_row_from_csv(row: dict[str, Any]) -> dict[str, Any]:
    fields = {f: row[f] for f in BLOCK_FIELDS if f not in ("kind", "batch", "dtype")}
    return {
        "key": row["block_key"],
        **fields,
        "kind": row["block_kind"],
        "batch": row["block_batch"],
        "dtype": row["block_dtype"],
    }


def _measurement_record(m: Measurement, device: str) -> MeasurementRecord:
    return MeasurementRecord(
        block_key=m.block_key,
        device=device,
        backend=m.backend,
        backend_version=m.backend_version,
        threads=m.threads,
        dtype=m.dtype,
        batch=m.batch,
        **{c: getattr(m, c) for c in STAT_COLUMNS},
        protocol=json.loads(m.protocol),
        environment=json.loads(m.environment),
        measured_at=m.measured_at,
        stable=m.stable,
        source=m.source,
        expected_error=m.expected_error,
    )


def _e2e_record(r: E2ERun, device: str) -> E2ERecord:
    return E2ERecord(
        arch_name=r.arch_name,
        arch_json=r.arch_json,
        device=device,
        backend=r.backend,
        backend_version=r.backend_version,
        threads=r.threads,
        dtype=r.dtype,
        batch=r.batch,
        **{c: getattr(r, c) for c in STAT_COLUMNS},
        tag=r.tag or None,
        protocol=json.loads(r.protocol),
        environment=json.loads(r.environment),
        measured_at=r.measured_at,
        stable=r.stable,
    )


def _fit_record(f: Fit, device: str) -> FitRecord:
    return FitRecord(
        device=device,
        backend=f.backend,
        backend_version=f.backend_version,
        threads=f.threads,
        dtype=f.dtype,
        batch=f.batch,
        purpose=f.purpose,
        params=json.loads(f.params_json),
        metrics=json.loads(f.metrics_json),
        n_samples=f.n_samples,
        fitted_at=f.fitted_at,
    )
