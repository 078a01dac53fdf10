"""The devices room: a device's name, kind and identity, created once and checked ever after."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from lut_db.core import StoreCore, utcnow
from lut_db.errors import StoreError
from lut_db.models import (
    DeviceRow,
    E2ERun,
    Measurement,
)
from lut_db.records import (
    DeviceInfo,
    canonical_json,
)

if TYPE_CHECKING:
    pass


class Devices(StoreCore):
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
        now = utcnow()

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


def _describe(kind: str, identity_json: str) -> str:
    identity = json.loads(identity_json)
    items = ", ".join(f"{k}={v}" for k, v in sorted(identity.items()))
    return f"a {kind} device ({items})" if items else f"a {kind} device"
