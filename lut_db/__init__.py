"""lut_db: the latency lookup table (SQLAlchemy; SQLite by default, PostgreSQL by URL). Never imports torch."""

from lut_db.engine import ENV_URL, default_sqlite_path, resolve_url
from lut_db.errors import StoreError
from lut_db.exchange import TABLES
from lut_db.models import SCHEMA_VERSION
from lut_db.records import DeviceInfo, E2ERecord, FitRecord, MeasurementRecord, arch_hash, canonical_json
from lut_db.store import LutStore

__all__ = [
    "ENV_URL",
    "SCHEMA_VERSION",
    "TABLES",
    "DeviceInfo",
    "E2ERecord",
    "FitRecord",
    "LutStore",
    "MeasurementRecord",
    "StoreError",
    "arch_hash",
    "canonical_json",
    "default_sqlite_path",
    "resolve_url",
]
