"""The fits room: calibrations and other fitted corrections, by purpose and deployment."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from latency.vocab.conditions import Conditions
from lut_db.core import StoreCore, as_record, filtered, under, without_device
from lut_db.models import (
    FIT_KEY,
    DeviceRow,
    Fit,
)
from lut_db.records import (
    FitRecord,
    canonical_json,
    check_aware,
)

if TYPE_CHECKING:
    pass


_FIT_VALUES = ("params_json", "metrics_json", "n_samples", "fitted_at")


class Fits(StoreCore):
    def put_fit(self, rec: FitRecord) -> None:
        """Store a fitted model; it replaces the fit of the same device, conditions and purpose."""
        check_aware(rec.fitted_at, "fitted_at")
        values = {
            **without_device(rec.conditions),
            "backend_version": rec.backend_version,
            "purpose": rec.purpose,
            "deploy_env": rec.deploy_env,
            "params_json": canonical_json(rec.params, "fit parameters"),
            "metrics_json": canonical_json(rec.metrics, "fit metrics"),
            "n_samples": rec.n_samples,
            "fitted_at": rec.fitted_at,
        }
        self._put_one(Fit, FIT_KEY, _FIT_VALUES, rec.conditions.device, values)

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
            under(select(Fit, DeviceRow.name).join(DeviceRow), Fit, conditions)
            .where(Fit.purpose == purpose)
            .order_by(Fit.fitted_at.desc(), Fit.id.desc())
            .limit(1)
        )
        stmt = filtered(stmt, Fit, backend_version=backend_version, deploy_env=deploy_env)

        def read(session: Session) -> FitRecord | None:
            row = session.execute(stmt).first()
            return None if row is None else as_record(FitRecord, *row)

        return self._read(read)

    def fits(self, purpose: str = "calibration", device: str | None = None) -> list[FitRecord]:
        """Every fit of this purpose (one device's, or all), by device and conditions, newest first."""
        stmt = (
            select(Fit, DeviceRow.name)
            .join(DeviceRow)
            .where(Fit.purpose == purpose)
            .order_by(DeviceRow.name, Fit.fitted_at.desc(), Fit.id.desc())
        )
        if device is not None:
            stmt = stmt.where(DeviceRow.name == device)
        return self._read(lambda session: [as_record(FitRecord, *row) for row in session.execute(stmt)])
