"""The statistics a latency is stated with, named once: what a block row and an end-to-end run hold, what
the table checks, what scales together when blocks are brought to their network's time."""

from __future__ import annotations

# Times in microseconds: their order is the table's column order.
TIMES_US = ("median_us", "p10_us", "p90_us", "iqr_us", "mean_us", "std_us", "min_us")
SPREAD_TIMES_US = ("iqr_us", "std_us")  # zero is possible (a constant-time block, a predicted row)
POSITIVE_TIMES_US = tuple(name for name in TIMES_US if name not in SPREAD_TIMES_US)
# A row's statistics: the times, how many samples and trials gave them, and the canary beside them.
STAT_COLUMNS = (*TIMES_US, "n", "trials", "canary_ratio", "canary_us")
