"""The end-to-end runs room: whole networks timed as a deployment runs them, by tag."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select

from latency.vocab.conditions import Conditions
from latency.vocab.timing import STAT_COLUMNS
from lut_db.checks import check_run
from lut_db.core import StoreCore, as_record, filtered, row_values, under
from lut_db.models import (
    E2E_KEY,
    DeviceRow,
    E2ERun,
)
from lut_db.records import (
    E2ERecord,
    check_aware,
    columns,
)

if TYPE_CHECKING:
    pass


E2E_VALUES = (*STAT_COLUMNS, "arch_name", "arch_json", "protocol", "environment", "measured_at", "stable")


class Runs(StoreCore):
    def put_e2e_run(self, rec: E2ERecord) -> None:
        """Insert or replace the run of (architecture, device, backend, version, threads, dtype, batch, tag)."""
        check_aware(rec.provenance.measured_at, "measured_at")
        flat = columns(rec)
        check_run(flat)
        values = {**row_values(flat), "arch_hash": rec.arch_hash, "tag": rec.tag or ""}
        self._put_one(E2ERun, E2E_KEY, E2E_VALUES, rec.conditions.device, values)

    def e2e_runs(
        self, conditions: Conditions | None = None, tag: str | None = None, deploy_env: str | None = None
    ) -> list[E2ERecord]:
        """Runs under `conditions` (None: every run; a backend of None: any backend) with this tag and
        deployment (None: any), ordered by architecture name and conditions."""
        stmt = under(select(E2ERun, DeviceRow.name).join(DeviceRow), E2ERun, conditions)
        stmt = filtered(stmt, E2ERun, tag=tag, deploy_env=deploy_env)
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
        return self._read(lambda session: [as_record(E2ERecord, r, name) for r, name in session.execute(stmt)])
