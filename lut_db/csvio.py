"""The CSV exchange format: one row per measurement with its block fields and device.

Floats are written with `repr` (shortest text that reads back to the same double), times as ISO-8601
UTC, dicts as canonical JSON and missing values as empty cells, so that export -> import -> export
gives the same bytes.
"""

from __future__ import annotations

import csv
import json
import math
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lut_db.errors import StoreError
from lut_db.records import canonical_json

# (column, kind); kinds: str, int, float (finite), float? (finite or empty), json (an object), time, bool
COLUMNS: tuple[tuple[str, str], ...] = (
    ("block_key", "str"),
    ("device", "str"),
    ("device_kind", "str"),
    ("backend", "str"),
    ("backend_version", "str"),
    ("threads", "int"),
    ("dtype", "str"),
    ("batch", "int"),
    ("median_us", "float"),
    ("p10_us", "float"),
    ("p90_us", "float"),
    ("iqr_us", "float"),
    ("mean_us", "float"),
    ("std_us", "float"),
    ("min_us", "float"),
    ("n", "int"),
    ("trials", "int"),
    ("canary_ratio", "float?"),
    ("canary_us", "float?"),
    ("protocol", "json"),
    ("environment", "json"),
    ("measured_at", "time"),
    ("stable", "bool"),
    ("source", "str"),
    ("expected_error", "float?"),
    # the block's fields (`kind`, `batch` and `dtype` prefixed: the device and the measurement have their own)
    ("block_kind", "str"),
    ("c_in", "int"),
    ("mid", "int"),
    ("c_out", "int"),
    ("kernel", "int"),
    ("stride", "int"),
    ("se", "int"),
    ("act", "str"),
    ("h", "int"),
    ("w", "int"),
    ("block_batch", "int"),
    ("block_dtype", "str"),
    ("bias", "bool"),
    ("flops", "int"),
    ("params", "int"),
    # enough of the device to recreate it in another table
    ("device_fingerprint", "json"),
    ("device_identity", "json"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)
_KINDS = dict(COLUMNS)


def format_value(kind: str, value: Any) -> str:
    if value is None:
        return ""
    if kind == "bool":
        return "true" if value else "false"
    if kind in ("float", "float?"):
        return repr(float(value))
    if kind == "time":
        return value.astimezone(timezone.utc).isoformat()
    return str(value)


def write_csv(path: str | os.PathLike[str], rows: list[dict[str, Any]]) -> int:
    """Write through a temporary file and rename, so that a failed export leaves no half file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(COLUMN_NAMES)
            for row in rows:
                writer.writerow([format_value(kind, row[name]) for name, kind in COLUMNS])
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise StoreError(f"Cannot write {target}: {exc.strerror or exc}.") from exc
    return len(rows)


def read_csv(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """Every row parsed and checked, with its line number; the first problem raises naming file, line and column."""
    name = os.fspath(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise StoreError(f"{name} is empty (expected a header line with {', '.join(COLUMN_NAMES[:3])}, ...).")
            missing = [col for col in COLUMN_NAMES if col not in header]
            if missing:
                raise StoreError(
                    f"{name}: line 1: missing column '{missing[0]}' (a lut CSV export has {len(COLUMNS)})."
                )
            index = {col: header.index(col) for col in COLUMN_NAMES}
            rows = []
            for cells in reader:
                if not cells:
                    continue  # a blank line
                line = reader.line_num
                if len(cells) != len(header):
                    raise StoreError(f"{name}: line {line} has {len(cells)} cells where the header has {len(header)}.")
                rows.append((line, {col: _parse(name, line, col, cells[i]) for col, i in index.items()}))
            return rows
    except OSError as exc:
        raise StoreError(f"Cannot read {name}: {exc.strerror or exc}.") from exc
    except UnicodeDecodeError as exc:
        raise StoreError(f"{name} is not a UTF-8 text file ({exc.reason} at byte {exc.start}).") from exc
    except csv.Error as exc:
        raise StoreError(f"{name} is not a readable CSV file: {exc}.") from exc


def _parse(name: str, line: int, col: str, text: str) -> Any:
    kind = _KINDS[col]

    def bad(expected: str) -> StoreError:
        return StoreError(f"{name}: line {line}, column '{col}': {text!r} is not {expected}.")

    if kind == "str":
        return text
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise bad("an integer") from None
    if kind in ("float", "float?"):
        if text == "" and kind == "float?":
            return None
        try:
            value = float(text)
        except ValueError:
            raise bad("a number") from None
        if not math.isfinite(value):
            raise bad("a finite number")
        return value
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("true", "1"):
            return True
        if lowered in ("false", "0"):
            return False
        raise bad("true or false")
    if kind == "json":
        try:
            obj = json.loads(text)
        except ValueError:
            raise bad("a JSON object") from None
        if not isinstance(obj, dict):
            raise bad("a JSON object")
        return canonical_json(obj)
    if kind == "time":
        try:
            # Python < 3.11 does not read a trailing Z
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            raise bad("an ISO-8601 time") from None
        if value.tzinfo is None:
            raise bad("a time with a UTC offset")
        return value.astimezone(timezone.utc)
    raise AssertionError(kind)
