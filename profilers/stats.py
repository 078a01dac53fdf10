"""Robust statistics of timing samples (microseconds), and how trials combine."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from latency.vocab.timing import SampleStats


def summarize(samples_us: Sequence[float]) -> SampleStats:
    if len(samples_us) == 0:
        raise ValueError("no samples to summarize")
    arr = np.asarray(samples_us, dtype=np.float64)
    p10, q1, median, q3, p90 = np.percentile(arr, [10, 25, 50, 75, 90])
    return SampleStats(
        median_us=float(median),
        p10_us=float(p10),
        p90_us=float(p90),
        iqr_us=float(q3 - q1),
        mean_us=float(arr.mean()),
        std_us=float(arr.std(ddof=1)) if arr.size > 1 else 0.0,
        min_us=float(arr.min()),
        n=int(arr.size),
    )


def median_ci_halfwidth(samples_us: Sequence[float], z: float = 1.96) -> float:
    """Half-width of the distribution-free 95% confidence interval of the median, relative to it.

    Uses the binomial order statistics at ranks n/2 +- z*sqrt(n)/2; infinite for tiny samples.
    """
    n = len(samples_us)
    if n < 8:
        return math.inf
    ordered = np.sort(np.asarray(samples_us, dtype=np.float64))
    half = z * math.sqrt(n) / 2
    lo = ordered[max(0, math.floor(n / 2 - half))]
    hi = ordered[min(n - 1, math.ceil(n / 2 + half))]
    median = float(np.median(ordered))
    return float(hi - lo) / (2 * median) if median > 0 else math.inf


def relative_spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far apart the trials' medians are."""
    if len(values) < 2:
        return 0.0
    median = float(np.median(values))
    return (max(values) - min(values)) / median if median > 0 else math.inf
