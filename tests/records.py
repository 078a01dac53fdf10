"""Records for tests, from one factory each: a block's measurement or a network's end-to-end run from its
median and conditions, the other times in a fixed spread around the median (p10 <= median <= p90), the
provenance filled in. Any field can be given instead."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from latency.vocab.conditions import Conditions
from lut_db import E2ERecord, MeasurementRecord
from lut_db.records import from_columns

CPU_TORCH = Conditions("cpu", "torch")
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
# The other times as fractions of the median: a block's, and a whole network's (less spread).
BLOCK_SPREAD = {"p10_us": 0.95, "p90_us": 1.1, "iqr_us": 0.05, "mean_us": 1.0, "std_us": 0.03, "min_us": 0.9}
RUN_SPREAD = {"p10_us": 0.97, "p90_us": 1.04, "iqr_us": 0.03, "mean_us": 1.0, "std_us": 0.02, "min_us": 0.95}


def _defaults(median_us: float, spread: dict[str, float], n: int) -> dict[str, Any]:
    return {
        "median_us": median_us,
        **{name: median_us * fraction for name, fraction in spread.items()},
        "n": n,
        "trials": 3,
        "canary_ratio": None,
        "canary_us": None,
        "protocol": {},
        "environment": {},
        "measured_at": T0,
        "stable": True,
        "backend_version": "2.13.0",
    }


def measurement(
    block_key: str,
    median_us: float,
    conditions: Conditions = CPU_TORCH,
    spread: dict[str, float] = BLOCK_SPREAD,
    **fields: Any,
) -> MeasurementRecord:
    """A block's row (100 samples, 3 trials; cpu/torch unless `conditions` say otherwise)."""
    values = {**_defaults(median_us, spread, n=100), **fields}
    return from_columns(MeasurementRecord, {"block_key": block_key, **conditions.columns(), **values})


def run(
    arch_name: str,
    arch_json: str,
    median_us: float,
    tag: str | None,
    conditions: Conditions = CPU_TORCH,
    spread: dict[str, float] = RUN_SPREAD,
    **fields: Any,
) -> E2ERecord:
    """A network's end-to-end run (50 samples, 3 trials; cpu/torch unless `conditions` say otherwise)."""
    values = {**_defaults(median_us, spread, n=50), **fields}
    own = {"arch_name": arch_name, "arch_json": arch_json, "tag": tag}
    return from_columns(E2ERecord, {**own, **conditions.columns(), **values})
