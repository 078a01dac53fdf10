"""The store's core: opening SQLite or PostgreSQL, the schema and its upgrade, and short transactions.

Every write is its own short transaction that commits before returning, so that a process killed at any
moment loses at most the row being written. Opening never modifies a database that is not ours or was
written by a newer lut.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import BigInteger, Select, Text, cast, inspect, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from latency.vocab.conditions import Conditions
from lut_db.engine import (
    WRITE_OPTION,
    build_engine,
    ensure_parent,
    is_sqlite,
    read_only_connect,
    resolve_url,
    sqlite_file,
    sqlite_read_only,
)
from lut_db.errors import StoreError, one_line
from lut_db.models import (
    APP_MARKER,
    SCHEMA_VERSION,
    Base,
    DeviceRow,
    Meta,
)
from lut_db.records import canonical_json, column_names, from_columns
from lut_db.upgrade import upgrade

if TYPE_CHECKING:
    pass

T = TypeVar("T")
S = TypeVar("S", bound="StoreCore")  # the store itself (typing.Self needs Python 3.11)
R = TypeVar("R")

REVISION_KEY = "writes"  # meta's count of write transactions (revision() on PostgreSQL)
_LOCK_RETRIES = 5  # last resort on SQLite: busy_timeout and BEGIN IMMEDIATE normally make writers wait
_PG_SCHEMA_LOCK = 0x6C7574  # advisory lock id ("lut") serialising schema creation on PostgreSQL


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def under(stmt: Select[Any], table: Any, conditions: Conditions | None) -> Select[Any]:
    """Rows measured under `conditions` (a backend of None: any)."""
    if conditions is None:
        return stmt
    stmt = stmt.where(DeviceRow.name == conditions.device)
    return filtered(
        stmt,
        table,
        backend=conditions.backend,
        threads=conditions.threads,
        batch=conditions.batch,
        dtype=conditions.dtype,
    )


def filtered(stmt: Select[Any], table: Any, **filters: Any) -> Select[Any]:
    for column, value in filters.items():
        if value is not None:
            stmt = stmt.where(getattr(table, column) == value)
    return stmt


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


_JSON_COLUMNS = {
    "protocol": "protocol",
    "environment": "environment",
    "params": "params_json",
    "metrics": "metrics_json",
}


def without_device(conditions: Conditions) -> dict[str, Any]:
    """The conditions' columns but the device, which a row holds by its id."""
    return {k: v for k, v in conditions.columns().items() if k != "device"}


def row_values(flat: dict[str, Any]) -> dict[str, Any]:
    """A record's columns (records.columns) as its table's row takes them: the device left for its id, the
    JSON columns as canonical text."""
    values = {name: value for name, value in flat.items() if name != "device"}
    for name in ("protocol", "environment"):
        values[name] = canonical_json(values[name], name)
    values["stable"] = bool(values["stable"])
    return values


def as_record(cls: type[R], row: Any, device: str) -> R:
    """A stored row as its record (MeasurementRecord, E2ERecord, FitRecord): its conditions with the
    device's name in place of its id, the JSON columns parsed, an end-to-end run's empty tag as None."""
    values: dict[str, Any] = {}
    for name in column_names(cls):
        if name == "device":
            values[name] = device
        elif name in _JSON_COLUMNS:
            values[name] = json.loads(getattr(row, _JSON_COLUMNS[name]))
        else:
            values[name] = getattr(row, name)
    if "tag" in values:
        values["tag"] = values["tag"] or None
    return from_columns(cls, values)


class StoreCore:
    """The engine and its schema, and the short transactions every room writes and reads through.

    `url`: a SQLAlchemy URL (`sqlite:///PATH`, `postgresql+psycopg://USER@HOST/DB`) or a file path; by
    default `$LUT_DB_URL`, else `$XDG_CACHE_HOME/lut/lut.sqlite` (`~/.cache/lut/lut.sqlite`).
    `read_only=True` opens an existing, current table for reading only: no schema is created or upgraded,
    and every connection refuses writes (what `lut serve` answers from).
    """

    def __init__(self, url: str | os.PathLike[str] | None = None, read_only: bool = False) -> None:
        self._url = resolve_url(url)
        self._sqlite = is_sqlite(self._url)
        self._version_lock = threading.Lock()
        self._version_conn: Any = None  # revision()'s own SQLite connection
        self._asked_read_only = read_only
        if not read_only:
            ensure_parent(self._url)
        self._read_only = read_only or sqlite_read_only(self._url)
        path = sqlite_file(self._url)
        if read_only and path is not None and not path.is_file():
            raise StoreError(f"There is no lut table to read at {self._url}; fill one with `lut profile`.")
        version = self._check_existing()
        if read_only and version != SCHEMA_VERSION:
            raise StoreError(
                f"There is no lut table to read at {self._url}; fill one with `lut profile`."
                if version is None
                else f"{self._url} holds an older lut table (schema {version}); any lut command that writes "
                "(`lut profile`, `lut calibrate`) upgrades it first."
            )
        self._engine = build_engine(self._url, read_only=read_only)
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
        # read-only when asked: closing a read-write probe would checkpoint the WAL into the file (a write)
        probe = build_engine(self._url, probe=True, read_only=self._asked_read_only)
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
        with self._version_lock:
            if self._version_conn is not None:
                self._version_conn.close()
                self._version_conn = None

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LutStore({str(self._url)!r})"

    # ---- plumbing ---------------------------------------------------------------------------
    def _insert(self, mapped: Any) -> Any:
        """The dialect's INSERT into a mapped class's table, which has on_conflict_do_update / _do_nothing."""
        table = mapped.__table__
        return postgresql.insert(table) if self._engine.dialect.name == "postgresql" else sqlite.insert(table)

    def _put_one(
        self, mapped: Any, key: Sequence[str], value_columns: Sequence[str], device: str, values: dict[str, Any]
    ) -> None:
        """Insert one row of `mapped` for `device`, or replace the `value_columns` of the row with the same
        `key` (a fit, a run)."""
        stmt = self._insert(mapped)
        stmt = stmt.on_conflict_do_update(index_elements=list(key), set_={c: stmt.excluded[c] for c in value_columns})

        def write(session: Session) -> None:
            session.execute(stmt, {**values, "device_id": self._device_id(session, device)})

        self._write(write)

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
                done = fn(session)
                if not self._sqlite:  # revision(): PostgreSQL has no data_version; the write is counted instead
                    session.execute(self._revision_bump())
                return done

        try:
            return self._retry(attempt)
        except StoreError:
            raise
        except SQLAlchemyError as exc:
            if self._asked_read_only:
                raise StoreError(f"The lut database {self._url} was opened for reading only.") from exc
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

    def revision(self) -> tuple[Any, ...]:
        """A value that changes whenever a row is written or replaced: a reader that caches what it derived
        from the table compares it before each use. On SQLite, the file's data version as one connection of
        its own sees it (it moves on any other connection's commit, in any process: microseconds); on
        PostgreSQL, a counter every write transaction of the table bumps in `meta` (one row read by key)."""
        path = sqlite_file(self._url) if self._sqlite else None
        if path is not None:
            return ("sqlite", self._data_version(path))
        try:
            with self._engine.connect() as conn:  # a bare connection: a session costs more than the query
                return ("writes", conn.execute(select(Meta.value).where(Meta.key == REVISION_KEY)).scalar())
        except SQLAlchemyError as exc:
            raise StoreError(f"Reading the lut database {self._url} failed: {one_line(exc)}.") from exc

    def _revision_bump(self) -> Any:
        """The statement that counts a write transaction (a row in `meta`, made by the first write)."""
        bumped = cast(cast(Meta.value, BigInteger) + 1, Text)
        return (
            self._insert(Meta)
            .values(key=REVISION_KEY, value="1")
            .on_conflict_do_update(index_elements=["key"], set_={"value": bumped})
        )

    def _data_version(self, path: Path) -> int:
        with self._version_lock:
            if self._version_conn is None:
                self._version_conn = read_only_connect(path, others_write=True)()
            return int(self._version_conn.execute("PRAGMA data_version").fetchone()[0])

    def _device_id(self, session: Session, name: str) -> int:
        device_id = session.scalar(select(DeviceRow.id).where(DeviceRow.name == name))
        if device_id is None:
            raise StoreError(
                f"There is no device '{name}' in {self._url}; register it with get_or_create_device first."
            )
        return device_id
