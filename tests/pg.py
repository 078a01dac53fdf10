"""A PostgreSQL server for tests: `$LUT_TEST_PG_URL`, else a throw-away cluster started from the local binaries.

The throw-away cluster lives in a temporary directory, listens only on a unix socket there (no TCP port),
trusts local connections and is stopped and deleted at the end of the session. initdb refuses to run as
root, so as root it runs as the `postgres` user (created by Debian's `postgresql` package) through
`runuser`. Each test gets its own schema (`pg_store_url`), so tests never see each other's tables and
an external `$LUT_TEST_PG_URL` database is never emptied.

Use in a test module or conftest.py:  `from tests.pg import pg_server_url, pg_store_url  # noqa: F401`
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ENV = "LUT_TEST_PG_URL"
HOW_TO_ENABLE = (
    f"set {ENV}=postgresql+psycopg://USER@HOST/DB (a database the tests may create schemas in), "
    "or install the PostgreSQL server (Debian: apt-get install -y postgresql) so that a throw-away one is started"
)
_DB = "lut_test"
_USER = "lut"


class PostgresUnavailable(RuntimeError):
    """No way to get a PostgreSQL server here; the message says how to get one."""


def _bindir() -> Path | None:
    """The newest server binaries: Debian's /usr/lib/postgresql/N/bin, else initdb on PATH."""

    def version(path: str) -> int:
        match = re.search(r"/postgresql/(\d+)/", path)
        return int(match.group(1)) if match else 0

    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(str(Path(on_path).parent))
    for cand in candidates:
        if (Path(cand) / "initdb").is_file() and (Path(cand) / "pg_ctl").is_file():
            return Path(cand)
    return None


def _run(cmd: list[str], user: str | None) -> None:
    if user is not None:
        runuser = shutil.which("runuser")
        # -u runs the command directly (no shell, no login), which keeps the arguments intact
        cmd = [runuser, "-u", user, "--", *cmd] if runuser else ["su", user, "-s", "/bin/sh", "-c", _quote(cmd)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


def _quote(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    """Yield a `postgresql+psycopg://` URL to a database the caller may use; raises PostgresUnavailable."""
    external = os.environ.get(ENV)
    if external:
        yield external
        return
    bindir = _bindir()
    if bindir is None:
        raise PostgresUnavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) found; {HOW_TO_ENABLE}")
    user: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                f"running as root and there is no 'postgres' user to run initdb as; {HOW_TO_ENABLE}"
            ) from None
        user = "postgres"
    # A short path: a unix socket's path is limited to about 100 bytes.
    base = "/tmp" if len(tempfile.gettempdir()) > 40 else None
    tmp = Path(tempfile.mkdtemp(prefix="lutpg-", dir=base))
    data = tmp / "data"
    started = False
    try:
        if user is not None:
            shutil.chown(tmp, user=user)
        _run([str(bindir / "initdb"), "-D", str(data), "-U", _USER, "--auth=trust", "-E", "UTF8", "--no-sync"], user)
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"\nlisten_addresses = ''\nunix_socket_directories = '{tmp}'\nport = 5432\n"
                # a throw-away cluster: durability buys nothing, speed does
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 50\n"
            )
        _run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(tmp / "server.log"), "-w", "-t", "60", "start"], user)
        started = True
        _run([str(bindir / "createdb"), "-h", str(tmp), "-U", _USER, _DB], user)
        yield f"postgresql+psycopg://{_USER}@/{_DB}?host={tmp}"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"], user)
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def fresh_schema_url(server_url: str) -> Iterator[str]:
    """`server_url` with its own new schema first on the search path, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"lut_t_{uuid.uuid4().hex[:12]}"
    url = make_url(server_url)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    options = f"{url.query.get('options', '')} -csearch_path={schema}".strip()
    try:
        yield url.update_query_dict({"options": options}).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def pg_server_url() -> Iterator[str]:
    """A PostgreSQL URL for the whole session; skips the test (saying how to enable it) when there is none."""
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(postgres_url())
        except PostgresUnavailable as exc:
            pytest.skip(f"PostgreSQL tests skipped: {exc}")
        yield url


@pytest.fixture
def pg_store_url(pg_server_url: str) -> Iterator[str]:
    """A PostgreSQL URL whose default schema is new and empty for this test."""
    with fresh_schema_url(pg_server_url) as url:
        yield url
