"""Upgrading a table written by an older lut, in place and in one transaction.

Schema 1 -> 2: end-to-end runs and fits gain `deploy_env`, part of their unique keys. Schema-1 runs on
this host were timed in lut's tuned worker processes (glibc keeping freed memory), so they are marked
`tuned-malloc`, never mixed with runs in a user's plain process; a phone's runner ran as its runtime
does by default there, so its runs stay `default`.

Schema 2 -> 3: a measurement's source may be `transferred` (the table's check constraint is rebuilt).
"""

from __future__ import annotations

from sqlalchemy import Table, select
from sqlalchemy.engine import Connection

from lut_db.models import DeviceRow, E2ERun, Fit, Measurement

LEGACY_HOST_DEPLOY_ENV = "tuned-malloc"


def _rebuild(conn: Connection, table: Table, new_columns: tuple[str, ...] = ()) -> list[dict]:
    """Copy the rows out and recreate the table as this lut defines it (its columns, keys and checks; ids
    are not kept: nothing refers to runs, fits or measurements); the caller fills `new_columns` in and
    inserts the rows back."""
    old_columns = [c for c in table.c if c.name not in ("id", *new_columns)]
    rows = [dict(row) for row in conn.execute(select(*old_columns)).mappings()]
    table.drop(conn)
    table.create(conn)
    return rows


def _rebuild_with_deploy_env(conn: Connection, table: Table, kinds: dict[int, str]) -> None:
    rows = _rebuild(conn, table, ("deploy_env",))
    for row in rows:
        row["deploy_env"] = "default" if kinds.get(row["device_id"]) == "android" else LEGACY_HOST_DEPLOY_ENV
    if rows:
        conn.execute(table.insert(), rows)


def upgrade(conn: Connection, version: int) -> None:
    """Bring a lut table at schema `version` to the current one (the caller commits and records it)."""
    if version < 2:
        kinds = dict(conn.execute(select(DeviceRow.id, DeviceRow.kind)).all())
        for model in (E2ERun, Fit):
            _rebuild_with_deploy_env(conn, model.__table__, kinds)  # type: ignore[arg-type]
    if version < 3:
        rows = _rebuild(conn, Measurement.__table__)  # type: ignore[arg-type]
        if rows:
            conn.execute(Measurement.__table__.insert(), rows)
