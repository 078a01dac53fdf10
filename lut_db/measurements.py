"""The measurements room: blocks and their measured, predicted and transferred rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from latency.vocab.conditions import Conditions
from latency.vocab.timing import STAT_COLUMNS
from lut_db.checks import check_measurement
from lut_db.core import StoreCore, as_record, chunks, filtered, row_values, under
from lut_db.errors import StoreError
from lut_db.models import (
    BLOCK_COLUMNS,
    MEASUREMENT_KEY,
    SOURCES,
    Block,
    DeviceRow,
    Measurement,
)
from lut_db.records import (
    MeasurementRecord,
    check_aware,
    columns,
)

if TYPE_CHECKING:
    pass


KEYS_CHUNK = 500  # bound parameters per IN (...) query

MEASUREMENT_VALUES = (*STAT_COLUMNS, "protocol", "environment", "measured_at", "stable", "source", "expected_error")


@dataclass(frozen=True)
class Coverage:
    """What the table holds for one device under one set of conditions (any backend version)."""

    conditions: Conditions
    rows: dict[str, int]  # by source: measured, transferred, predicted
    last_measured_at: datetime


class Measurements(StoreCore):
    def upsert_blocks(self, blocks: Iterable[dict[str, Any]]) -> None:
        """Add blocks not yet in the table (a key's fields never change, so existing rows are kept).

        Each dict holds `key` and the BlockSpec fields plus `flops` and `params`; other keys are ignored.
        """
        rows = [block_values(b) for b in blocks]
        if not rows:
            return
        stmt = self._insert(Block).on_conflict_do_nothing(index_elements=["key"])
        self._write(lambda session: session.execute(stmt, rows))

    def coverage(self, device: str | None = None) -> list[Coverage]:
        """Rows per source and the newest row, per device (one, or all) and conditions."""
        groups = (DeviceRow.name, Measurement.backend, Measurement.threads, Measurement.batch, Measurement.dtype)
        stmt = (
            select(*groups, Measurement.source, func.count(), func.max(Measurement.measured_at))
            .join(DeviceRow)
            .group_by(*groups, Measurement.source)
            .order_by(*groups)
        )
        if device is not None:
            stmt = stmt.where(DeviceRow.name == device)
        found: dict[Conditions, tuple[dict[str, int], datetime]] = {}
        for name, backend, threads, batch, dtype, source, count, newest in self._read(
            lambda session: session.execute(stmt).all()
        ):
            conditions = Conditions(name, backend, threads, batch, dtype)
            rows, last = found.get(conditions, ({}, newest))
            rows[source] = count
            found[conditions] = (rows, max(last, newest))
        return [Coverage(c, rows, last) for c, (rows, last) in found.items()]

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
            check_aware(rec.provenance.measured_at, "measured_at")
            flat = columns(rec)
            check_measurement(flat)
            rows.append(row_values(flat))

        def write(session: Session) -> None:
            device_ids: dict[str, int] = {}
            for rec, values in zip(recs, rows, strict=True):
                device = rec.conditions.device
                if device not in device_ids:
                    device_ids[device] = self._device_id(session, device)
                values["device_id"] = device_ids[device]
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
            set_={c: stmt.excluded[c] for c in MEASUREMENT_VALUES},
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
        stmt = under(select(Measurement.block_key).join(DeviceRow), Measurement, conditions)
        stmt = filtered(stmt, Measurement, backend_version=backend_version, source=source)
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
        stmt = under(select(Measurement, DeviceRow.name).join(DeviceRow), Measurement, conditions)
        stmt = filtered(stmt, Measurement, backend_version=backend_version, source=source)
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
                for chunk in chunks(sorted(set(keys)), KEYS_CHUNK):
                    found += session.execute(stmt.where(Measurement.block_key.in_(chunk)).order_by(*order))
            return [as_record(MeasurementRecord, m, name) for m, name in found]

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
            if held is None or rec.provenance.measured_at > held.provenance.measured_at:
                best[rec.block_key] = rec
        return best


def block_values(block: dict[str, Any]) -> dict[str, Any]:
    missing = [f for f in ("key", *BLOCK_COLUMNS) if f not in block]
    if missing:
        raise StoreError(f"Block {block.get('key', block)!r} lacks the field '{missing[0]}'.")
    row = {f: block[f] for f in ("key", *BLOCK_COLUMNS)}
    row["bias"] = bool(row["bias"])
    return row
