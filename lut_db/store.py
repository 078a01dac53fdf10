"""LutStore: the lookup table's API over SQLite (default) or PostgreSQL (a team table), same code.

Every `put_*` is its own short transaction that commits before returning, so that a process killed at
any moment loses at most the row being written. Opening never modifies a database that is not ours
or was written by a newer lut.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import ColumnElement, Select, and_, func, inspect, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from latency.vocab.conditions import Conditions
from lut_db import csvio
from lut_db.checks import RowError, check_label, check_measurement, check_run
from lut_db.engine import WRITE_OPTION, build_engine, ensure_parent, is_sqlite, resolve_url, sqlite_read_only
from lut_db.errors import StoreError, one_line
from lut_db.models import (
    APP_MARKER,
    BLOCK_COLUMNS,
    E2E_KEY,
    FIT_KEY,
    MEASUREMENT_KEY,
    SCHEMA_VERSION,
    SOURCES,
    STAT_COLUMNS,
    Base,
    Block,
    DeviceRow,
    E2ERun,
    Fit,
    Measurement,
    Meta,
)
from lut_db.records import (
    DeviceInfo,
    E2ERecord,
    FitRecord,
    ImportSummary,
    MeasurementRecord,
    canonical_json,
    check_aware,
)
from lut_db.upgrade import upgrade

if TYPE_CHECKING:
    import pandas as pd

T = TypeVar("T")
R = TypeVar("R")

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
        self._read_only = sqlite_read_only(self._url)
        version = self._check_existing()
        self._engine = build_engine(self._url)
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        # A current table is opened without a write (it may be a read-only file).
        if version is None or version < SCHEMA_VERSION:
            try:
                self._create_schema(upgrading=version)
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

    def _check_existing(self) -> int | None:
        """Our table's schema version, None for an empty database; refuses a database that is not ours
        or is too new before anything (even WAL mode) touches it."""
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

    def _validate(self, conn: Connection) -> int | None:
        """The schema version of the lut table the database holds, None when it is empty; else StoreError."""
        names = set(inspect(conn).get_table_names())
        if not names:
            return None
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
        if version < 1:
            raise not_ours
        return version

    def _create_schema(self, upgrading: int | None = None) -> None:
        """Create the table in an empty database, or upgrade an older lut's (`upgrading`: its version),
        in one transaction."""

        def create(conn: Connection) -> None:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SCHEMA_LOCK})
            # Checked again under the write lock: another process may have created or upgraded it since.
            version = self._validate(conn)
            if version == SCHEMA_VERSION:
                return
            if version is not None:
                upgrade(conn, version)
                conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=str(SCHEMA_VERSION)))
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
            if upgrading:
                raise StoreError(
                    f"{self._url} has lut schema {upgrading}; this lut upgrades it to schema {SCHEMA_VERSION} "
                    f"in place, which failed ({one_line(exc)}): open it once where it can be written."
                ) from exc
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
            if self._read_only:
                raise StoreError(
                    f"The lut database {self._url} is read-only here (no write access to the file or its "
                    "directory): it can be read, not changed; copy it somewhere writable or pass another --db."
                ) from exc
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
        device_id = session.scalar(select(DeviceRow.id).where(DeviceRow.name == name))
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
                self._insert(DeviceRow)
                .values(**values, created_at=now, last_seen_at=now)
                .on_conflict_do_nothing(index_elements=["name"])
            )
            device = session.scalars(select(DeviceRow).where(DeviceRow.name == name)).one()
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
        n_meas = select(func.count(Measurement.id)).where(Measurement.device_id == DeviceRow.id).scalar_subquery()
        n_e2e = select(func.count(E2ERun.id)).where(E2ERun.device_id == DeviceRow.id).scalar_subquery()
        stmt = select(DeviceRow, n_meas, n_e2e).order_by(DeviceRow.name)
        if name is not None:
            stmt = stmt.where(DeviceRow.name == name)
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

        A row never replaces one of a stronger source (SOURCES: nothing measured is lost).
        """
        self.put_measurements([rec])

    def put_measurements(self, recs: Sequence[MeasurementRecord]) -> None:
        """put_measurement for many rows, in one transaction: all are written or none."""
        rows = []
        for rec in recs:
            check_aware(rec.measured_at, "measured_at")
            check_measurement(dataclasses.asdict(rec))
            rows.append(
                {
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
            )

        def write(session: Session) -> None:
            device_ids: dict[str, int] = {}
            for rec, values in zip(recs, rows, strict=True):
                if rec.device not in device_ids:
                    device_ids[rec.device] = self._device_id(session, rec.device)
                values["device_id"] = device_ids[rec.device]
                if session.get(Block, rec.block_key) is None:
                    raise StoreError(
                        f"Block '{rec.block_key}' is not in {self._url}; pass it to upsert_blocks before "
                        "put_measurement."
                    )
            if rows:
                session.execute(self._measurement_upsert(), rows)

        self._write(write)

    def _measurement_upsert(self) -> Any:
        stmt = self._insert(Measurement)
        table = Measurement.__table__
        return stmt.on_conflict_do_update(
            index_elements=list(MEASUREMENT_KEY),
            set_={c: stmt.excluded[c] for c in _MEASUREMENT_VALUES},
            # A row replaces one of its own source or a weaker one (SOURCES), never a stronger one.
            where=or_(
                *(
                    # or_ of equalities, not in_(): an expanding IN cannot run with executemany()
                    and_(
                        stmt.excluded.source == source,
                        or_(*(table.c.source == weaker for weaker in SOURCES[: rank + 1])),
                    )
                    for rank, source in enumerate(SOURCES)
                )
            ),
        )

    def measured_keys(
        self, conditions: Conditions, backend_version: str | None = None, source: str | None = "measured"
    ) -> set[str]:
        """Block keys with a row under these conditions (`source=None`: measured and predicted)."""
        stmt = _under(select(Measurement.block_key).join(DeviceRow), Measurement, conditions)
        stmt = _filtered(stmt, Measurement, backend_version=backend_version, source=source)
        return self._read(lambda session: set(session.scalars(stmt)))

    def measurements(
        self,
        conditions: Conditions | None = None,
        keys: Iterable[str] | None = None,
        backend_version: str | None = None,
        source: str | None = None,
    ) -> list[MeasurementRecord]:
        """Rows under `conditions` (None: every row; a backend of None: any backend) and every other filter
        given (None: any), ordered by key, device, backend, version, threads, dtype, batch."""
        stmt = _under(select(Measurement, DeviceRow.name).join(DeviceRow), Measurement, conditions)
        stmt = _filtered(stmt, Measurement, backend_version=backend_version, source=source)
        order = (
            Measurement.block_key,
            DeviceRow.name,
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
            return [_record(MeasurementRecord, m, name) for m, name in found]

        return self._read(read)

    def measurement_map(
        self,
        conditions: Conditions,
        keys: Iterable[str] | None = None,
        backend_version: str | None = None,
        source: str | None = None,
    ) -> dict[str, MeasurementRecord]:
        """`measurements(...)` by block key; where a key has several rows (backend versions), the newest."""
        rows = self.measurements(conditions, keys, backend_version, source)
        best: dict[str, MeasurementRecord] = {}
        for rec in rows:
            held = best.get(rec.block_key)
            if held is None or rec.measured_at > held.measured_at:
                best[rec.block_key] = rec
        return best

    # ---- end-to-end runs --------------------------------------------------------------------
    def put_e2e_run(self, rec: E2ERecord) -> None:
        """Insert or replace the run of (architecture, device, backend, version, threads, dtype, batch, tag)."""
        check_aware(rec.measured_at, "measured_at")
        check_run(dataclasses.asdict(rec))
        values = {
            "arch_hash": rec.arch_hash,
            "backend": rec.backend,
            "backend_version": rec.backend_version,
            "threads": rec.threads,
            "dtype": rec.dtype,
            "batch": rec.batch,
            "tag": rec.tag or "",
            "deploy_env": rec.deploy_env,
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
        self, conditions: Conditions | None = None, tag: str | None = None, deploy_env: str | None = None
    ) -> list[E2ERecord]:
        """Runs under `conditions` (None: every run; a backend of None: any backend) with this tag and
        deployment (None: any), ordered by architecture name and conditions."""
        stmt = _under(select(E2ERun, DeviceRow.name).join(DeviceRow), E2ERun, conditions)
        stmt = _filtered(stmt, E2ERun, tag=tag, deploy_env=deploy_env)
        stmt = stmt.order_by(
            E2ERun.arch_name,
            E2ERun.arch_hash,
            DeviceRow.name,
            E2ERun.backend,
            E2ERun.backend_version,
            E2ERun.threads,
            E2ERun.dtype,
            E2ERun.batch,
            E2ERun.deploy_env,
            E2ERun.tag,
        )
        return self._read(lambda session: [_record(E2ERecord, r, name) for r, name in session.execute(stmt)])

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
            "deploy_env": rec.deploy_env,
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
        conditions: Conditions,
        purpose: str,
        backend_version: str | None = None,
        deploy_env: str | None = "default",
    ) -> FitRecord | None:
        """The fit for these conditions and purpose; without `backend_version`, the newest over all versions;
        `deploy_env=None`: the newest over all deployment environments."""
        stmt = (
            _under(select(Fit, DeviceRow.name).join(DeviceRow), Fit, conditions)
            .where(Fit.purpose == purpose)
            .order_by(Fit.fitted_at.desc(), Fit.id.desc())
            .limit(1)
        )
        stmt = _filtered(stmt, Fit, backend_version=backend_version, deploy_env=deploy_env)

        def read(session: Session) -> FitRecord | None:
            row = session.execute(stmt).first()
            return None if row is None else _record(FitRecord, *row)

        return self._read(read)

    # ---- exchange ---------------------------------------------------------------------------
    def _export_select(self, device: str | None) -> Select[Any]:
        m, b, d = Measurement, Block, DeviceRow
        own = {name: getattr(m, name) for name in ("block_key", *MEASUREMENT_KEY[2:], *_MEASUREMENT_VALUES)}
        named: dict[str, ColumnElement[Any]] = {
            **own,
            "device": d.name,
            "device_kind": d.kind,
            "block_kind": b.kind,
            "block_batch": b.batch,
            "block_dtype": b.dtype,
            **{f: getattr(b, f) for f in BLOCK_COLUMNS if f not in ("kind", "batch", "dtype")},
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

    def import_csv(self, path: str | os.PathLike[str], replace: bool = False) -> ImportSummary:
        """Merge a CSV export's devices, blocks and measurements, all or nothing.

        Every row is checked first (the first impossible one is named by file, line and column, and the
        table is left unchanged); two different rows for one measurement are refused. A row replaces the
        table's only when it is at least as new (`replace=True`: whatever its age); a predicted row never
        replaces a measured one.
        """
        rows = csvio.read_csv(path)
        name = os.fspath(path)
        devices: dict[str, tuple[int, dict[str, Any]]] = {}
        blocks: dict[str, dict[str, Any]] = {}
        chosen: dict[tuple[Any, ...], tuple[int, dict[str, Any]]] = {}
        duplicates = 0
        for line, row in rows:
            try:
                check_label(row, "device_kind")
            except RowError as exc:
                raise StoreError(f"{name}: line {line}, column '{exc.column}': {exc}") from None
            held = devices.setdefault(row["device"], (line, row))[1]
            if (held["device_kind"], held["device_identity"]) != (row["device_kind"], row["device_identity"]):
                raise StoreError(
                    f"{name}: line {line}: device '{row['device']}' has another kind or identity than on line "
                    f"{devices[row['device']][0]}."
                )
            block = _block_row_from_csv(row)
            try:
                check_measurement(row, block={f: block[f] for f in BLOCK_COLUMNS if f not in ("flops", "params")})
            except RowError as exc:
                raise StoreError(f"{name}: line {line}, column '{exc.column}': {exc}") from None
            key = (row["block_key"], row["device"], *(row[c] for c in MEASUREMENT_KEY[2:]))
            if key in chosen:
                first_line, first = chosen[key]
                differ = [c for c in csvio.COLUMN_NAMES if first[c] != row[c]]
                if differ:
                    raise StoreError(
                        f"{name}: lines {first_line} and {line} are two different rows for one measurement "
                        f"({row['block_key']} on {row['device']}, {row['backend']} {row['backend_version']}, "
                        f"{row['threads']} threads; column '{differ[0]}' differs): keep one of them."
                    )
                duplicates += 1
                continue
            chosen[key] = (line, row)
            blocks.setdefault(row["block_key"], block)
        now = _utcnow()

        def write(session: Session) -> ImportSummary:
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
                session.execute(
                    self._insert(DeviceRow).values(**values).on_conflict_do_nothing(index_elements=["name"])
                )
                stored = session.scalars(select(DeviceRow).where(DeviceRow.name == device)).one()
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
            wanted = [(ids[r["device"]], r["block_key"]) for _, r in chosen.values()]
            existing = self._existing_measurements(session, wanted)
            own = ("block_key", *MEASUREMENT_KEY[2:], *_MEASUREMENT_VALUES)
            counts = {"new": 0, "updated": 0, "unchanged": 0, "kept": 0}
            to_write = []
            for _, row in chosen.values():
                values = {**{c: row[c] for c in own}, "device_id": ids[row["device"]]}
                current = existing.get(tuple(values[c] for c in MEASUREMENT_KEY))
                if current is None:
                    counts["new"] += 1
                elif all(getattr(current, c) == values[c] for c in _MEASUREMENT_VALUES):
                    counts["unchanged"] += 1
                    continue
                elif SOURCES.index(current.source) > SOURCES.index(row["source"]) or (
                    not replace and current.measured_at > row["measured_at"]
                ):
                    counts["kept"] += 1
                    continue
                else:
                    counts["updated"] += 1
                to_write.append(values)
            if to_write:
                session.execute(self._measurement_upsert(), to_write)
            return ImportSummary(rows=len(rows), duplicates=duplicates, **counts)

        return self._write(write)

    def _existing_measurements(
        self, session: Session, wanted: list[tuple[int, str]]
    ) -> dict[tuple[Any, ...], Measurement]:
        """The table's measurements of these (device id, block key) pairs, by MEASUREMENT_KEY."""
        by_device: dict[int, list[str]] = {}
        for device_id, key in wanted:
            by_device.setdefault(device_id, []).append(key)
        found: dict[tuple[Any, ...], Measurement] = {}
        for device_id, keys in by_device.items():
            for chunk in _chunks(sorted(set(keys)), _KEYS_CHUNK):
                stmt = select(Measurement).where(Measurement.device_id == device_id, Measurement.block_key.in_(chunk))
                for m in session.scalars(stmt):
                    found[tuple(getattr(m, c) for c in MEASUREMENT_KEY)] = m
        return found

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
            conditions = ("backend", "backend_version", "threads", "dtype", "batch", "deploy_env")
            names = ("arch_hash", "arch_name", "arch_json", *conditions, *STAT_COLUMNS, *_E2E_VALUES[-4:])
            stmt = (
                select(
                    *(e2e[c] for c in names[:3]),
                    DeviceRow.name.label("device"),
                    DeviceRow.kind.label("device_kind"),
                    *(e2e[c] for c in names[3:]),
                    func.nullif(E2ERun.tag, "").label("tag"),  # '' is how the table spells "no tag"
                )
                .join(DeviceRow)
                .order_by(E2ERun.arch_name, DeviceRow.name, E2ERun.backend, E2ERun.threads, E2ERun.batch, E2ERun.id)
            )
            stmt = stmt if device is None else stmt.where(DeviceRow.name == device)
        elif table == "devices":
            n_meas = select(func.count(Measurement.id)).where(Measurement.device_id == DeviceRow.id).scalar_subquery()
            n_e2e = select(func.count(E2ERun.id)).where(E2ERun.device_id == DeviceRow.id).scalar_subquery()
            cols = [c for c in DeviceRow.__table__.c if c.name != "id"]
            stmt = select(*cols, n_meas.label("n_measurements"), n_e2e.label("n_e2e_runs")).order_by(DeviceRow.name)
            stmt = stmt if device is None else stmt.where(DeviceRow.name == device)
        else:
            stmt = select(*Block.__table__.c).order_by(Block.key)
            if device is not None:
                measured = (
                    select(Measurement.id)
                    .join(DeviceRow)
                    .where(Measurement.block_key == Block.key, DeviceRow.name == device)
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


def _under(stmt: Select[Any], model: Any, conditions: Conditions | None) -> Select[Any]:
    """Rows measured under `conditions` (a backend of None: any)."""
    if conditions is None:
        return stmt
    stmt = stmt.where(DeviceRow.name == conditions.device)
    return _filtered(
        stmt,
        model,
        backend=conditions.backend,
        threads=conditions.threads,
        batch=conditions.batch,
        dtype=conditions.dtype,
    )


def _filtered(stmt: Select[Any], model: Any, **filters: Any) -> Select[Any]:
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(model, column) == value)
    return stmt


def _chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _block_row(block: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in ("key", *BLOCK_COLUMNS) if f not in block]
    if missing:
        raise StoreError(f"Block {block.get('key', block)!r} lacks the field '{missing[0]}'.")
    row = {f: block[f] for f in ("key", *BLOCK_COLUMNS)}
    row["bias"] = bool(row["bias"])
    return row


def _block_row_from_csv(row: dict[str, Any]) -> dict[str, Any]:
    fields = {f: row[f] for f in BLOCK_COLUMNS if f not in ("kind", "batch", "dtype")}
    return {
        "key": row["block_key"],
        **fields,
        "kind": row["block_kind"],
        "batch": row["block_batch"],
        "dtype": row["block_dtype"],
    }


_JSON_COLUMNS = {
    "protocol": "protocol",
    "environment": "environment",
    "params": "params_json",
    "metrics": "metrics_json",
}


def _record(cls: type[R], row: Any, device: str) -> R:
    """A stored row as its record (MeasurementRecord, E2ERecord, FitRecord): the device's name in place
    of its id, the JSON columns parsed, an end-to-end run's empty tag as None."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name == "device":
            values[f.name] = device
        elif f.name in _JSON_COLUMNS:
            values[f.name] = json.loads(getattr(row, _JSON_COLUMNS[f.name]))
        else:
            values[f.name] = getattr(row, f.name)
    if "tag" in values:
        values["tag"] = values["tag"] or None
    return cls(**values)
