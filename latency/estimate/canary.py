"""The table's speed: the median of the canary timed beside every measured block (DESIGN.md). A time
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
    measured = [r for r in rows if r.canary_us and r.source == "measured"] or [
        r for r in rows if r.canary_us and r.source == "transferred"
    ]
    cold = [r.canary_us for r in measured if "cold_heap" in r.protocol]
    canaries = cold or [r.canary_us for r in measured]
    return float(np.median(canaries)) if canaries else None
