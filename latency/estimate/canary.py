"""The table's speed: the median of the canary timed beside every measured block (docs/design.md). A time
measured while the canary took c us is stated at the table's speed by multiplying it by table/c."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np


def table_canary_us(rows: Iterable[Any]) -> float | None:
    """The canary's median over the measured rows; None when no row has a canary.

    The canary is a block too: compare like with like, so cold-heap canaries (Protocol.cold_heap) when
    the table has any."""
    rows = list(rows)
    # A transferred table (latency.jobs.transfer) has no measured rows: its rows carry the target's canary.
    measured = [r for r in rows if r.provenance.canary_us and r.source == "measured"] or [
        r for r in rows if r.provenance.canary_us and r.source == "transferred"
    ]
    cold = [r.provenance.canary_us for r in measured if "cold_heap" in r.provenance.protocol]
    canaries = cold or [r.provenance.canary_us for r in measured]
    return float(np.median(canaries)) if canaries else None


def unit_speeds(rows: Iterable[Any], table_canary_us: float | None) -> dict[str | None, float]:
    """Per physical unit that measured rows (a phone's serial; None: the host), the factor that states its
    rows at the table's speed: the table's canary median over the unit's own. Units of one phone model
    differ in speed by several percent (a farm: latency.jobs.farm); within a unit, rows are used as
    measured (dividing each by its own trial's canary added more per-process noise than it removed:
    docs/design.md), so a table measured on one unit is read exactly as before."""
    rows = list(rows)
    measured = [r for r in rows if r.source == "measured" and r.provenance.canary_us]
    cold = [r for r in measured if "cold_heap" in r.provenance.protocol]
    canaries: dict[str | None, list[float]] = {}
    for r in cold or measured:  # the kind of canary the table's median is of (table_canary_us)
        canaries.setdefault(r.provenance.environment.get("serial"), []).append(r.provenance.canary_us)
    if not table_canary_us or len(canaries) < 2:
        return {}
    return {unit: table_canary_us / float(np.median(values)) for unit, values in canaries.items()}
