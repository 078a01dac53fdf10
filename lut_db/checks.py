"""What a row must satisfy to enter the table, whether a backend measured it or a CSV file brings it.

Every check raises `RowError` naming the offending field, so that an import can say file, line and
column. A table that accepted a negative median would print it as an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import Any

from latency.vocab.blocks import DTYPES, BlockSpec, BlockSpecError
from latency.vocab.conditions import MAX_DEVICE_CHARS, MAX_LABEL_CHARS, is_device_name, is_label
from latency.vocab.errors import shown
from latency.vocab.timing import POSITIVE_TIMES_US, SPREAD_TIMES_US
from lut_db.errors import StoreError
from lut_db.models import SOURCES


class RowError(StoreError):
    """A row that cannot be true; `column` is the field at fault."""

    def __init__(self, column: str, message: str) -> None:
        super().__init__(message)
        self.column = column


def _number(values: Mapping[str, Any], name: str) -> float:
    value = values[name]
    if not isinstance(value, Real) or isinstance(value, bool) or not math.isfinite(value):
        raise RowError(name, f"{name} must be a finite number, not {value!r}.")
    return float(value)


def _whole(values: Mapping[str, Any], name: str, minimum: int) -> int:
    value = values[name]
    if not isinstance(value, Integral) or isinstance(value, bool) or value < minimum:
        raise RowError(name, f"{name} must be a whole number >= {minimum}, not {value!r}.")
    return value


def check_timing(values: Mapping[str, Any], *, predicted: bool = False) -> None:
    """Times positive and finite, p10 <= median <= p90, min <= median, counts >= 1 (a predicted row may have 0)."""
    for name in POSITIVE_TIMES_US:
        if _number(values, name) <= 0:
            raise RowError(name, f"{name} must be positive, not {values[name]!r}.")
    for name in SPREAD_TIMES_US:
        if _number(values, name) < 0:
            raise RowError(name, f"{name} must not be negative, not {values[name]!r}.")
    median, p10, p90 = values["median_us"], values["p10_us"], values["p90_us"]
    if p10 > median:
        raise RowError("p10_us", f"p10_us ({p10!r}) must not exceed median_us ({median!r}).")
    if p90 < median:
        raise RowError("p90_us", f"p90_us ({p90!r}) must not be below median_us ({median!r}).")
    if values["min_us"] > median:
        raise RowError("min_us", f"min_us ({values['min_us']!r}) must not exceed median_us ({median!r}).")
    for name in ("canary_ratio", "canary_us"):
        if values.get(name) is not None and _number(values, name) <= 0:
            raise RowError(name, f"{name} must be positive or empty, not {values[name]!r}.")
    for name in ("n", "trials"):
        _whole(values, name, 0 if predicted else 1)


def check_label(values: Mapping[str, Any], name: str) -> None:
    if not is_label(values[name]):
        raise RowError(
            name,
            f"{name} must be letters, digits and _.:+- (at most {MAX_LABEL_CHARS} characters), "
            f"not {shown(values[name])}.",
        )


def check_conditions(values: Mapping[str, Any]) -> None:
    """A device's name, a backend and its version as labels, threads and batch >= 1, a known dtype."""
    if not is_device_name(values["device"]):
        raise RowError(
            "device",
            f"device must be a device's name (letters, digits and _.:-, at most {MAX_DEVICE_CHARS} characters, "
            f"as --device takes it), not {shown(values['device'])}.",
        )
    for name in ("backend", "backend_version"):
        if name in values:
            check_label(values, name)
    _whole(values, "threads", 1)
    _whole(values, "batch", 1)
    if values["dtype"] not in DTYPES:
        raise RowError("dtype", f"dtype must be one of {', '.join(DTYPES)}, not {values['dtype']!r}.")


def check_run(values: Mapping[str, Any]) -> None:
    """An end-to-end run (E2ERecord's fields): its timing and its conditions."""
    check_timing(values)
    check_conditions(values)


def check_measurement(values: Mapping[str, Any], block: Mapping[str, Any] | None = None) -> None:
    """A measurement row (MeasurementRecord's fields); `block`, when given, holds the block's own fields
    as the row states them (a CSV row does), which must agree with what its key says (a field the
    measurement also has is named as the CSV names it: block_kind, block_batch, block_dtype)."""
    source = values["source"]
    if source not in SOURCES:
        raise RowError("source", f"source must be one of {', '.join(SOURCES)}, not {source!r}.")
    derived = source != "measured"
    check_timing(values, predicted=derived)
    check_conditions(values)
    error = values.get("expected_error")
    if derived and (error is None or _number(values, "expected_error") <= 0):
        raise RowError("expected_error", f"a {source} row needs a positive expected_error, not {error!r}.")
    key = values["block_key"]
    try:
        spec = BlockSpec.from_key(key)
    except BlockSpecError as exc:
        raise RowError("block_key", f"block_key {key!r} does not parse: {exc}") from None
    for name in ("batch", "dtype"):
        if getattr(spec, name) != values[name]:
            raise RowError(name, f"{name} is {values[name]!r} but block_key {key!r} says {getattr(spec, name)!r}.")
    if block is not None:
        for name, stated in block.items():
            if name in spec.__dataclass_fields__ and getattr(spec, name) != stated:
                column = f"block_{name}" if name in ("kind", "batch", "dtype") else name
                raise RowError(column, f"{column} is {stated!r} but block_key {key!r} says {getattr(spec, name)!r}.")
