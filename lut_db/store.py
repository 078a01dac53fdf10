"""LutStore: the lookup table's API over SQLite (default) or PostgreSQL (a team table), same code.

One class, its rooms each in a module of its own: the core (opening, schema, transactions), devices,
measurements, end-to-end runs, fits, and the CSV/pandas exchange.
"""

from __future__ import annotations

from lut_db.devices import Devices
from lut_db.exchange import Exchange
from lut_db.fits import Fits
from lut_db.measurements import Measurements
from lut_db.runs import Runs


class LutStore(Exchange, Fits, Runs, Measurements, Devices):
    """The latency lookup table.

    `url`: a SQLAlchemy URL (`sqlite:///PATH`, `postgresql+psycopg://USER@HOST/DB`) or a file path; by
    default `$LUT_DB_URL`, else `$XDG_CACHE_HOME/lut/lut.sqlite` (`~/.cache/lut/lut.sqlite`).
    `read_only=True`: an existing table, read and never written (StoreCore).
    """
