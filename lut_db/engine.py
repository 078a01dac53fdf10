"""Where the table lives (URL resolution) and how to talk to it (engine, SQLite pragmas, write transactions)."""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import NullPool

from latency.vocab.paths import user_cache_dir
from lut_db.errors import StoreError

ENV_URL = "LUT_DB_URL"
# Execution option that marks a write transaction: on SQLite it begins with BEGIN IMMEDIATE.
WRITE_OPTION = "lut_write"
SQLITE_BUSY_TIMEOUT_MS = 30_000


def default_sqlite_path() -> Path:
    """`$XDG_CACHE_HOME/lut/lut.sqlite`, `~/.cache/lut/lut.sqlite` without it (the XDG base directory spec)."""
    return user_cache_dir() / "lut.sqlite"


def resolve_url(url: str | os.PathLike[str] | None = None) -> URL:
    """An explicit URL or path, else `$LUT_DB_URL`, else the SQLite file in the user's cache directory."""
    raw: str | os.PathLike[str] | None = url if url is not None else os.environ.get(ENV_URL) or None
    if raw is None:
        return _sqlite_url(default_sqlite_path())
    text = os.fspath(raw)
    if "://" not in text:  # a plain filesystem path
        return _sqlite_url(Path(text))
    try:
        parsed = make_url(text)
    except ArgumentError as exc:
        raise StoreError(
            f"'{text}' is not a database URL (expected sqlite:///PATH or postgresql+psycopg://...)."
        ) from exc
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver this project installs
    return parsed


def _sqlite_url(path: Path) -> URL:
    return URL.create("sqlite", database=str(path.expanduser().absolute()))


def is_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite"


def sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL; None for in-memory or URI-style databases."""
    db = url.database
    if not is_sqlite(url) or not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def sqlite_read_only(url: URL) -> bool:
    """True for an existing SQLite file that this process cannot write (the file, its directory for the
    WAL's side files, or a read-only file system): such a table is opened for reading only."""
    path = sqlite_file(url)
    if path is None or not path.exists():
        return False
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


def read_only_connect(path: Path, others_write: bool = False) -> Any:
    """Connections that read `path` only. Without write access to the directory SQLite cannot make the
    WAL's -shm file, so a file nobody writes is opened as immutable; one that others write
    (`others_write`, what `lut serve` reads while `lut profile` writes) never is: SQLite would then ignore
    the WAL and miss their rows."""
    immutable = not others_write and not os.access(path.parent, os.W_OK)
    flags = "mode=ro&immutable=1" if immutable else "mode=ro"
    uri = f"file:{urllib.parse.quote(str(path))}?{flags}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False)

    return connect


def ensure_parent(url: URL) -> None:
    path = sqlite_file(url)
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise StoreError(
            f"Cannot open the lut database {url}: cannot create directory {path.parent} ({reason})."
        ) from exc


def build_engine(url: URL, *, probe: bool = False, read_only: bool = False) -> Engine:
    """The engine for `url`; `probe=True` gives a bare one that changes nothing on connect (for checking a file);
    `read_only=True` one whose every connection refuses writes (SQLite opened read-only, PostgreSQL sessions
    in read-only transactions)."""
    kwargs: dict[str, Any] = {}
    connect_args: dict[str, Any] = {}
    asked, read_only = read_only, read_only or sqlite_read_only(url)
    if is_sqlite(url):
        connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_MS / 1000
        if probe:
            kwargs["poolclass"] = NullPool  # really close the file afterwards
        if read_only:
            kwargs["creator"] = read_only_connect(Path(url.database or ""), others_write=asked)
    else:
        kwargs["pool_pre_ping"] = True
        if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
            connect_args["connect_timeout"] = 10
        if read_only and url.get_backend_name() == "postgresql":
            given = url.query.get("options", "")  # a URL's own options (a search_path) are kept
            given = given if isinstance(given, str) else " ".join(given)
            connect_args["options"] = f"{given} -c default_transaction_read_only=on".strip()
    try:
        engine = create_engine(url, connect_args=connect_args, **kwargs)
    except NoSuchModuleError as exc:
        raise StoreError(
            f"Cannot open the lut database {url}: unknown database driver '{url.drivername}' "
            "(use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)."
        ) from exc
    except ImportError as exc:
        raise StoreError(
            f"Cannot open the lut database {url}: its driver is not installed ({exc}); "
            "for PostgreSQL install psycopg (pip install 'psycopg[binary]')."
        ) from exc
    except ArgumentError as exc:
        raise StoreError(f"Cannot open the lut database {url}: {exc}.") from exc
    if is_sqlite(url) and not probe:
        event.listen(engine, "connect", lambda conn, record: _sqlite_on_connect(conn, record, read_only))
        event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _sqlite_on_connect(dbapi_conn: Any, _record: Any, read_only: bool = False) -> None:
    # SQLAlchemy's documented recipe: stop sqlite3 from emitting BEGIN itself, _sqlite_on_begin does it.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    try:
        # busy_timeout first: switching to WAL can itself have to wait for another connection's lock.
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        if not read_only:  # both settings write to the file
            cur.execute("PRAGMA journal_mode=WAL")  # readers no longer block the writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes, fsyncs only at checkpoints
        cur.execute("PRAGMA foreign_keys=ON")
    finally:
        cur.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes must upgrade its lock, and SQLite fails such an
    # upgrade at once ("database is locked") instead of waiting; BEGIN IMMEDIATE takes the write lock up
    # front, so concurrent writers queue on busy_timeout.
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
