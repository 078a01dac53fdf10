"""The statistics a latency is stated with, defined once: what a block row and an end-to-end run hold
(`TimingStats`), what the table checks, what scales together when blocks are brought to their network's
time."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import TypeVar

S = TypeVar("S", bound="SampleStats")


@dataclass(frozen=True)
class SampleStats:
    """A set of per-call times summarised, in microseconds: what one set of samples gives (profilers.stats)."""

    median_us: float
    p10_us: float
    p90_us: float
    iqr_us: float
    mean_us: float
    std_us: float
    min_us: float
    n: int

    @property
    def iqr_ratio(self) -> float:
        return self.iqr_us / self.median_us if self.median_us > 0 else math.inf

    def scaled(self: S, factor: float) -> S:
        """Every time multiplied by `factor` (the counts stay)."""
        return replace(self, **{name: getattr(self, name) * factor for name in TIMES_US})


@dataclass(frozen=True)
class TimingStats(SampleStats):
    """A latency's statistics as a row states them: its samples' summary over `trials` trials."""

    trials: int


# Times in microseconds, in the table's column order.
TIMES_US = tuple(f.name for f in fields(TimingStats) if f.name.endswith("_us"))
SPREAD_TIMES_US = ("iqr_us", "std_us")  # zero is possible (a constant-time block, a predicted row)
POSITIVE_TIMES_US = tuple(name for name in TIMES_US if name not in SPREAD_TIMES_US)
# A row's statistics as the table's columns: TimingStats's, then the canary timed beside them.
STAT_COLUMNS = (*(f.name for f in fields(TimingStats)), "canary_ratio", "canary_us")
