"""The exchange room: the CSV merge (all or nothing, each row checked) and the pandas export."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from latency.vocab.timing import STAT_COLUMNS
from lut_db import csvio
from lut_db.checks import RowError, check_label, check_measurement
from lut_db.core import StoreCore, chunks, utcnow
from lut_db.errors import StoreError, one_line
from lut_db.measurements import KEYS_CHUNK, MEASUREMENT_VALUES
from lut_db.models import (
    BLOCK_COLUMNS,
    MEASUREMENT_KEY,
    SOURCES,
    Block,
    DeviceRow,
    E2ERun,
    Measurement,
)
from lut_db.records import (
    ImportSummary,
)
from lut_db.runs import E2E_VALUES

if TYPE_CHECKING:
    import pandas as pd


TABLES = ("measurements", "e2e_runs", "devices", "blocks")


class Exchange(StoreCore):
    def _export_select(self, device: str | None) -> Select[Any]:
        m, b, d = Measurement, Block, DeviceRow
        own = {name: getattr(m, name) for name in ("block_key", *MEASUREMENT_KEY[2:], *MEASUREMENT_VALUES)}
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
        checked = _check_rows(rows, os.fspath(path))
        return self._write(lambda session: self._merge(session, checked, os.fspath(path), replace))

    def _merge(self, session: Session, checked: _CheckedRows, name: str, replace: bool) -> ImportSummary:
        """Write checked rows: devices (their identity checked against the table's), blocks, measurements."""
        devices, blocks, chosen, rows = checked.devices, checked.blocks, checked.chosen, checked.rows
        now = utcnow()
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
            session.execute(self._insert(DeviceRow).values(**values).on_conflict_do_nothing(index_elements=["name"]))
            stored = session.scalars(select(DeviceRow).where(DeviceRow.name == device)).one()
            try:
                self._check_identity(device, stored.kind, stored.identity, row["device_kind"], row["device_identity"])
            except StoreError as exc:
                raise StoreError(f"{name}: line {line}: {exc}") from None
            ids[device] = stored.id
        if blocks:
            session.execute(self._insert(Block).on_conflict_do_nothing(index_elements=["key"]), list(blocks.values()))
        wanted = [(ids[r["device"]], r["block_key"]) for _, r in chosen.values()]
        existing = self._existing_measurements(session, wanted)
        own = ("block_key", *MEASUREMENT_KEY[2:], *MEASUREMENT_VALUES)
        counts = {"new": 0, "updated": 0, "unchanged": 0, "kept": 0}
        to_write = []
        for _, row in chosen.values():
            values = {**{c: row[c] for c in own}, "device_id": ids[row["device"]]}
            current = existing.get(tuple(values[c] for c in MEASUREMENT_KEY))
            if current is None:
                counts["new"] += 1
            elif all(getattr(current, c) == values[c] for c in MEASUREMENT_VALUES):
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
        return ImportSummary(rows=rows, duplicates=checked.duplicates, **counts)

    def _existing_measurements(
        self, session: Session, wanted: list[tuple[int, str]]
    ) -> dict[tuple[Any, ...], Measurement]:
        """The table's measurements of these (device id, block key) pairs, by MEASUREMENT_KEY."""
        by_device: dict[int, list[str]] = {}
        for device_id, key in wanted:
            by_device.setdefault(device_id, []).append(key)
        found: dict[tuple[Any, ...], Measurement] = {}
        for device_id, keys in by_device.items():
            for chunk in chunks(sorted(set(keys)), KEYS_CHUNK):
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
            names = ("arch_hash", "arch_name", "arch_json", *conditions, *STAT_COLUMNS, *E2E_VALUES[-4:])
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


def _block_row_from_csv(row: dict[str, Any]) -> dict[str, Any]:
    fields = {f: row[f] for f in BLOCK_COLUMNS if f not in ("kind", "batch", "dtype")}
    return {
        "key": row["block_key"],
        **fields,
        "kind": row["block_kind"],
        "batch": row["block_batch"],
        "dtype": row["block_dtype"],
    }


@dataclass(frozen=True)
class _CheckedRows:
    """A CSV file's rows once every one is checked: its devices, blocks and one row per measurement."""

    rows: int
    devices: dict[str, tuple[int, dict[str, Any]]]
    blocks: dict[str, dict[str, Any]]
    chosen: dict[tuple[Any, ...], tuple[int, dict[str, Any]]]
    duplicates: int


def _check_rows(rows: list[tuple[int, dict[str, Any]]], name: str) -> _CheckedRows:
    """Every row checked (the first impossible one named by file, line and column); two different rows for
    one measurement refused, identical repeats counted once."""
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
    return _CheckedRows(len(rows), devices, blocks, chosen, duplicates)
