"""lut_db.LutStore on SQLite and PostgreSQL (the same tests), plus the SQLite-only opening rules."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from latency.vocab.blocks import BlockSpec
from latency.vocab.conditions import Conditions
from latency.vocab.timing import TIMES_US
from lut_db import (
    SCHEMA_VERSION,
    E2ERecord,
    FitRecord,
    LutStore,
    MeasurementRecord,
    StoreError,
    default_sqlite_path,
    resolve_url,
)
from lut_db.csvio import COLUMN_NAMES
from lut_db.records import columns, from_columns
from tests.pg import fresh_schema_url, pg_server_url  # noqa: F401  (pg_server_url is a fixture)
from tests.records import measurement, run

T0 = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone.utc)
SPECS = [
    BlockSpec("ir", 8, 48, 24, 5, 2, 0, "relu", 64, 64),
    BlockSpec("ir", 24, 72, 24, 3, 1, 16, "hswish", 32, 32),
    BlockSpec("stem", 3, 16, 16, 3, 2, 0, "hswish", 224, 224),
    BlockSpec("ir", 24, 72, 24, 3, 1, 16, "hswish", 32, 32, batch=8, dtype="fp16", bias=True),
]
KEYS = [s.key for s in SPECS]
IDENTITY = {"cpu_model": "AMD EPYC 7B13", "machine": "x86_64"}


def block_dict(spec: BlockSpec) -> dict:
    return {**spec.to_dict(), "key": spec.key, "flops": spec.flops, "params": spec.params}


def rec(key: str = KEYS[0], device: str = "pc", **changes) -> MeasurementRecord:
    # odd numbers on purpose: they must come back from every backend and the CSV bit for bit
    base = measurement(
        key,
        101.5,
        Conditions(device, "torch_cpu"),
        p10_us=99.25,
        p90_us=110.125,
        iqr_us=3.5,
        mean_us=102.0,
        std_us=2.75,
        min_us=98.0,
        n=60,
        canary_ratio=1.2345678901234567,
        canary_us=82.25,
        protocol={"warmup_runs": 10, "runs": 50, "cuda_graph": False},
        environment={"governor": "performance", "temps_c": [41.5, 42.0]},
        measured_at=T0,
    )
    return _changed(base, changes)


def _changed(base: MeasurementRecord | E2ERecord, changes: dict) -> MeasurementRecord | E2ERecord:
    """`base` with `changes` given as the table's columns (a condition or a statistic among them). A new
    median moves the other times with it, so that the row stays possible (p10 <= median <= p90)."""
    flat = columns(base)
    if "median_us" in changes:
        scale = changes["median_us"] / base.stats.median_us
        flat |= {name: flat[name] * scale for name in TIMES_US}
    values = {**flat, **changes}
    values.pop("arch_hash", None)
    return from_columns(type(base), values)


def e2e(tag: str | None = "validation", arch_json: str = '{"name": "tiny", "resolution": 224}', **changes) -> E2ERecord:
    base = run(
        "tiny",
        arch_json,
        5000.0,
        tag,
        Conditions("pc", "torch_cpu"),
        p10_us=4900.0,
        p90_us=5200.0,
        iqr_us=80.0,
        mean_us=5010.0,
        std_us=60.0,
        min_us=4850.0,
        n=30,
        canary_ratio=61.0,
        canary_us=82.0,
        protocol={"runs": 30},
        measured_at=T0,
    )
    return _changed(base, changes)


# ---- fixtures: every store test runs on SQLite and on PostgreSQL ------------------------------
@pytest.fixture(params=["sqlite", "postgresql"])
def new_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], str]]:
    """Makes URLs of new, empty databases of the parameter's kind."""
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            server = request.getfixturevalue("pg_server_url")
            yield lambda: stack.enter_context(fresh_schema_url(server))
        else:
            counter = itertools.count()
            yield lambda: str(tmp_path / f"lut{next(counter)}.sqlite")


@pytest.fixture
def store_url(new_url: Callable[[], str]) -> str:
    return new_url()


@pytest.fixture
def store(store_url: str) -> Iterator[LutStore]:
    with LutStore(store_url) as s:
        yield s


@pytest.fixture
def filled(store: LutStore) -> LutStore:
    """A device, the blocks and one measurement of each block."""
    store.get_or_create_device("pc", "cpu", {"os": "Debian 12", **IDENTITY}, IDENTITY)
    store.upsert_blocks(block_dict(s) for s in SPECS)
    for spec in SPECS:
        store.put_measurement(rec(spec.key, batch=spec.batch, dtype=spec.dtype))
    return store


def count(store: LutStore, table: str) -> int:
    with store.engine.connect() as conn:
        return conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()


# ---- schema, devices, blocks -------------------------------------------------------------------
def test_schema_and_meta(store_url: str) -> None:
    with LutStore(store_url) as store:
        with store.engine.connect() as conn:
            meta = dict(conn.execute(text("SELECT key, value FROM meta")).all())
        assert meta == {"schema_version": str(SCHEMA_VERSION), "app": "lut"}
        for table in ("devices", "blocks", "measurements", "e2e_runs", "fits"):
            assert count(store, table) == 0
        store.get_or_create_device("pc", "cpu", {}, IDENTITY)
    with LutStore(store_url) as again:  # reopening keeps the rows and adds no meta rows
        assert [d.name for d in again.devices()] == ["pc"]
        with again.engine.connect() as conn:
            meta = dict(conn.execute(text("SELECT key, value FROM meta")).all())
        # on PostgreSQL the write counted itself (LutStore.revision); SQLite has data_version instead
        assert meta == {"schema_version": str(SCHEMA_VERSION), "app": "lut"} | (
            {} if "://" not in store_url else {"writes": "1"}
        )


def test_device_created_refreshed_and_identity_checked(store: LutStore) -> None:
    first = store.get_or_create_device("pc", "cpu", {"kernel": "6.1"}, IDENTITY)
    assert (first.name, first.kind, first.identity, first.n_measurements) == ("pc", "cpu", IDENTITY, 0)
    assert first.created_at.tzinfo is not None
    again = store.get_or_create_device("pc", "cpu", {"kernel": "6.2"}, dict(reversed(IDENTITY.items())))
    assert again.fingerprint == {"kernel": "6.2"}
    assert again.created_at == first.created_at and again.last_seen_at >= first.last_seen_at
    with pytest.raises(StoreError) as err:
        store.get_or_create_device("pc", "cpu", {}, {**IDENTITY, "cpu_model": "Intel Xeon 8481C"})
    message = str(err.value)
    assert "'pc'" in message and "AMD EPYC 7B13" in message and "Intel Xeon 8481C" in message
    assert "use another device name" in message
    with pytest.raises(StoreError, match="another device name"):
        store.get_or_create_device("pc", "cuda", {}, IDENTITY)
    assert store.device("pc").fingerprint == {"kernel": "6.2"}  # the refused call changed nothing
    assert store.device("phone") is None
    store.get_or_create_device("phone", "android", {"build": "x"}, {"model": "Pixel 8"})
    assert [d.name for d in store.devices()] == ["pc", "phone"]


def test_upsert_blocks(store: LutStore) -> None:
    store.upsert_blocks([block_dict(SPECS[0]), block_dict(SPECS[1])])
    store.upsert_blocks([block_dict(s) for s in SPECS])  # existing keys are kept, new ones added
    store.upsert_blocks([])
    blocks = store.to_pandas("blocks").set_index("key")
    assert list(blocks.index) == sorted(KEYS)
    row = blocks.loc[SPECS[3].key]
    assert (row["batch"], row["dtype"], bool(row["bias"]), row["flops"], row["params"]) == (
        8,
        "fp16",
        True,
        SPECS[3].flops,
        SPECS[3].params,
    )
    with pytest.raises(StoreError, match="lacks the field 'flops'"):
        store.upsert_blocks([{**SPECS[0].to_dict(), "key": SPECS[0].key}])


# ---- measurements -------------------------------------------------------------------------------
def test_measurement_upsert_replaces_stats(filled: LutStore) -> None:
    assert count(filled, "measurements") == len(SPECS)
    later = T0 + timedelta(hours=1)
    filled.put_measurement(rec(median_us=120.0, canary_ratio=None, canary_us=None, stable=False, measured_at=later))
    assert count(filled, "measurements") == len(SPECS)  # same unique key: replaced
    [row] = filled.measurements(Conditions("pc"), keys=[KEYS[0]])
    assert (
        row.stats.median_us,
        row.provenance.canary_ratio,
        row.provenance.canary_us,
        row.provenance.stable,
        row.provenance.measured_at,
    ) == (
        120.0,
        None,
        None,
        False,
        later,
    )
    filled.put_measurement(rec(threads=2))
    filled.put_measurement(rec(backend_version="2.14.0", median_us=90.0, measured_at=later + timedelta(hours=1)))
    assert count(filled, "measurements") == len(SPECS) + 2
    assert len(filled.measurements(keys=[KEYS[0]])) == 3
    assert [r.conditions.threads for r in filled.measurements(keys=[KEYS[0]], backend_version="2.13.0")] == [1, 2]
    # several backend versions for one key: the map takes the newest
    newest = filled.measurement_map(Conditions("pc", "torch_cpu", 1))
    assert newest[KEYS[0]].backend_version == "2.14.0" and newest[KEYS[0]].stats.median_us == 90.0
    assert set(newest) == set(KEYS[:3])  # KEYS[3] is batch 8, fp16


def test_measurement_round_trips_every_field(filled: LutStore) -> None:
    paris = timezone(timedelta(hours=2))
    original = rec(KEYS[1], measured_at=datetime(2025, 6, 1, 14, 0, 0, 123456, tzinfo=paris), threads=4)
    filled.put_measurement(original)
    [back] = filled.measurements(Conditions("pc", threads=4), keys=[KEYS[1]])
    assert back.conditions == Conditions("pc", "torch_cpu", 4)
    assert back == original
    assert back.provenance.measured_at.utcoffset() == timedelta(0) and back.provenance.measured_at.hour == 12


def test_put_measurement_needs_block_device_and_sane_values(filled: LutStore) -> None:
    with pytest.raises(StoreError, match="pass it to upsert_blocks"):
        filled.put_measurement(rec("ir_k3_s1_c1-1-1_se0_relu_1x1_b1_fp32"))
    with pytest.raises(StoreError, match="no device 'nope'"):
        filled.put_measurement(rec(device="nope"))
    with pytest.raises(StoreError, match="timezone-aware"):
        filled.put_measurement(rec(measured_at=datetime(2025, 1, 1)))
    with pytest.raises(StoreError, match="median_us must be a finite number"):
        filled.put_measurement(rec(median_us=float("nan")))
    with pytest.raises(StoreError, match="source must be one of"):
        filled.put_measurement(rec(source="guessed"))
    impossible = {
        "median_us must be positive": {"median_us": -1e9},
        r"p10_us \(99.25\) must not exceed median_us \(90.0\)": {"median_us": 90.0, "p10_us": 99.25},
        "p90_us .* must not be below median_us": {"median_us": 120.0, "p90_us": 110.125},
        "n must be a whole number >= 1, not 0": {"n": 0},
        "threads must be a whole number >= 1": {"threads": 0},
        "dtype must be one of fp32, fp16, bf16, int8, not 'int3'": {"dtype": "int3"},
        "batch is 2 but block_key .* says 1": {"batch": 2},
        "block_key 'nonsense' does not parse": {"block_key": "nonsense"},
        "a predicted row needs a positive expected_error": {"source": "predicted"},
    }
    for message, changes in impossible.items():
        with pytest.raises(StoreError, match=message):
            filled.put_measurement(rec(**changes))
    with pytest.raises(StoreError, match="median_us must be positive"):
        filled.put_e2e_run(e2e(median_us=-5.0))
    assert count(filled, "measurements") == len(SPECS) and count(filled, "e2e_runs") == 0


def test_measured_keys_filters(filled: LutStore) -> None:
    filled.put_measurement(rec(KEYS[1], source="predicted", expected_error=0.08, threads=1, backend_version="p"))
    filled.put_measurement(rec(KEYS[2], threads=4))
    one = Conditions("pc", "torch_cpu", 1)
    assert filled.measured_keys(one) == set(KEYS[:3])
    assert filled.measured_keys(dataclasses.replace(one, batch=8, dtype="fp16")) == {KEYS[3]}
    assert filled.measured_keys(dataclasses.replace(one, batch=8)) == set()
    assert filled.measured_keys(dataclasses.replace(one, threads=4)) == {KEYS[2]}
    assert filled.measured_keys(one, backend_version="p") == set()  # predicted only
    assert filled.measured_keys(one, backend_version="p", source="predicted") == {KEYS[1]}
    assert filled.measured_keys(one, backend_version="p", source=None) == {KEYS[1]}
    assert filled.measured_keys(one.with_backend("onnxruntime")) == set()
    assert filled.measured_keys(dataclasses.replace(one, device="unknown")) == set()
    [predicted] = filled.measurements(source="predicted")
    assert predicted.expected_error == 0.08


def _sourced(source: str, median_us: float, threads: int = 3) -> MeasurementRecord:
    error = None if source == "measured" else 0.1
    return rec(KEYS[0], threads=threads, source=source, median_us=median_us, expected_error=error)


@pytest.mark.parametrize("old", ["predicted", "transferred", "measured"])
@pytest.mark.parametrize("new", ["predicted", "transferred", "measured"])
def test_a_row_replaces_its_own_source_or_a_weaker_one(filled: LutStore, old: str, new: str) -> None:
    order = ["predicted", "transferred", "measured"]  # weakest first
    filled.put_measurement(_sourced(old, 50.0))
    filled.put_measurement(_sourced(new, 70.0))
    [row] = filled.measurements(Conditions("pc", threads=3), keys=[KEYS[0]])
    replaced = order.index(new) >= order.index(old)
    assert (row.source, row.stats.median_us) == ((new, 70.0) if replaced else (old, 50.0))
    assert (row.expected_error is None) == (row.source == "measured")


def test_measurements_many_keys(filled: LutStore) -> None:
    wanted = [f"absent_{i}" for i in range(1200)] + [KEYS[0], KEYS[2]]  # more keys than one IN (...) holds
    assert [r.block_key for r in filled.measurements(keys=wanted)] == sorted([KEYS[0], KEYS[2]])


# ---- end-to-end runs and fits -------------------------------------------------------------------
def test_e2e_runs_upsert_and_filter(filled: LutStore) -> None:
    filled.put_e2e_run(e2e())
    filled.put_e2e_run(e2e(arch_json='{"resolution":224,"name":"tiny"}', median_us=5100.0))  # same arch, same tag
    assert count(filled, "e2e_runs") == 1
    filled.put_e2e_run(e2e(tag=None))
    filled.put_e2e_run(e2e(tag=None, median_us=4999.0))  # no tag twice: still one row
    filled.put_e2e_run(e2e(tag="calibration"))
    filled.put_e2e_run(e2e(threads=2))
    assert count(filled, "e2e_runs") == 4
    runs = filled.e2e_runs()
    assert len(runs) == 4
    assert len(filled.e2e_runs(Conditions("pc"))) == 3  # one thread
    [validation] = filled.e2e_runs(Conditions("pc", threads=1), tag="validation")
    assert validation.stats.median_us == 5100.0 and validation.arch_hash == e2e().arch_hash
    expected_hash = hashlib.sha256(b'{"name":"tiny","resolution":224}').hexdigest()
    assert validation.arch_hash == expected_hash
    untagged = [r for r in runs if r.tag is None]
    assert [r.stats.median_us for r in untagged] == [4999.0]
    assert untagged[0] == e2e(tag=None, median_us=4999.0)
    assert filled.e2e_runs(Conditions("pc", "onnxruntime")) == []
    assert filled.device("pc").n_e2e_runs == 4
    with pytest.raises(StoreError, match="no device"):
        filled.put_e2e_run(e2e(device="ghost"))
    with pytest.raises(StoreError, match="not valid JSON"):
        e2e(arch_json="{nope")


def test_fits_upsert_and_newest(filled: LutStore) -> None:
    fit = FitRecord(
        Conditions("pc", "torch_cpu"), "2.13.0", "calibration", {"a": 1.1, "b": 20.0}, {"mape": 0.05}, 12, T0
    )
    conditions = Conditions("pc", "torch_cpu")
    assert fit.conditions == conditions
    assert filled.get_fit(conditions, "calibration") is None
    filled.put_fit(fit)
    filled.put_fit(dataclasses.replace(fit, params={"a": 1.2, "b": 19.0}, n_samples=15))  # replaces
    assert count(filled, "fits") == 1
    got = filled.get_fit(conditions, "calibration")
    assert got == dataclasses.replace(fit, params={"a": 1.2, "b": 19.0}, n_samples=15)
    newer = dataclasses.replace(fit, backend_version="2.14.0", params={"a": 2.0}, fitted_at=T0 + timedelta(days=1))
    filled.put_fit(newer)
    assert filled.get_fit(conditions, "calibration") == newer
    assert filled.get_fit(conditions, "calibration", backend_version="2.13.0").params["a"] == 1.2
    assert filled.get_fit(conditions, "block_predictor") is None
    assert filled.get_fit(conditions.with_backend("onnxruntime"), "calibration") is None
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        filled.put_fit(dataclasses.replace(fit, params={"f": object()}))


# ---- CSV and pandas -----------------------------------------------------------------------------
def _varied(store: LutStore) -> None:
    """Rows exercising every kind of value: None, predicted, non-UTC times, two devices, quotes."""
    store.get_or_create_device("phone", "android", {"build": 'QP1A "quoted", comma'}, {"model": "Pixel 8"})
    store.put_measurement(rec(KEYS[1], device="phone", backend="executorch", canary_ratio=None, canary_us=None))
    paris = timezone(timedelta(hours=2))
    store.put_measurement(rec(KEYS[2], threads=2, measured_at=datetime(2025, 1, 1, 0, 0, tzinfo=paris)))
    store.put_measurement(
        rec(
            KEYS[0],
            threads=4,
            source="predicted",
            expected_error=0.125,
            median_us=0.1 + 0.2,
            p10_us=0.25,
            p90_us=0.375,
            min_us=0.25,
            mean_us=0.3,
            n=0,
            trials=0,
        )
    )


def test_export_import_round_trip(filled: LutStore, new_url: Callable[[], str], tmp_path: Path) -> None:
    _varied(filled)
    first = tmp_path / "first.csv"
    assert filled.export_csv(first) == len(SPECS) + 3
    with LutStore(new_url()) as target:
        summary = target.import_csv(first)
        assert (summary.rows, summary.new, summary.updated, summary.unchanged) == (len(SPECS) + 3, len(SPECS) + 3, 0, 0)
        second = tmp_path / "second.csv"
        target.export_csv(second)
        assert first.read_bytes() == second.read_bytes()
        pd.testing.assert_frame_equal(filled.to_pandas(), target.to_pandas())
        assert target.measurements() == filled.measurements()
        for a, b in zip(filled.devices(), target.devices(), strict=True):
            assert (a.name, a.kind, a.fingerprint, a.identity, a.n_measurements) == (
                b.name,
                b.kind,
                b.fingerprint,
                b.identity,
                b.n_measurements,
            )
        again = target.import_csv(first)  # importing again changes nothing
        assert (again.new, again.updated, again.unchanged, again.kept) == (0, 0, len(SPECS) + 3, 0)
        assert count(target, "measurements") == len(SPECS) + 3
    one = tmp_path / "phone.csv"
    assert filled.export_csv(one, device="phone") == 1
    with pytest.raises(StoreError, match="no device 'ghost'"):
        filled.export_csv(tmp_path / "ghost.csv", device="ghost")


def test_csv_between_sqlite_and_postgresql(pg_server_url: str, tmp_path: Path) -> None:  # noqa: F811
    with LutStore(tmp_path / "a.sqlite") as lite, fresh_schema_url(pg_server_url) as url, LutStore(url) as pg:
        lite.get_or_create_device("pc", "cpu", {}, IDENTITY)
        lite.upsert_blocks(block_dict(s) for s in SPECS)
        for spec in SPECS:
            lite.put_measurement(rec(spec.key, batch=spec.batch, dtype=spec.dtype))
        _varied(lite)
        lite.export_csv(tmp_path / "a.csv")
        pg.import_csv(tmp_path / "a.csv")
        pg.export_csv(tmp_path / "b.csv")
        assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
        pd.testing.assert_frame_equal(lite.to_pandas(), pg.to_pandas())


def _csv_lines(store: LutStore, path: Path) -> list[str]:
    store.export_csv(path)
    return path.read_text().splitlines()


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("median_us", "fast", "line 3, column 'median_us': 'fast' is not a number"),
        ("threads", "1.5", "line 3, column 'threads': '1.5' is not an integer"),
        ("stable", "maybe", "line 3, column 'stable': 'maybe' is not true or false"),
        ("protocol", "[1]", "line 3, column 'protocol': '[1]' is not a JSON object"),
        ("measured_at", "2025-01-01 00:00:00", "line 3, column 'measured_at': '2025-01-01 00:00:00' is not a time"),
        ("measured_at", "yesterday", "line 3, column 'measured_at': 'yesterday' is not an ISO-8601 time"),
        ("canary_us", "inf", "line 3, column 'canary_us': 'inf' is not a finite number"),
        (
            "source",
            "guessed",
            "line 3, column 'source': source must be one of predicted, transferred, measured, not 'guessed'",
        ),
        # values that parse but cannot be true
        ("median_us", "-1000000000.0", "line 3, column 'median_us': median_us must be positive"),
        ("p10_us", "1000.0", "line 3, column 'p10_us': p10_us (1000.0) must not exceed median_us"),
        ("p90_us", "1.0", "line 3, column 'p90_us': p90_us (1.0) must not be below median_us"),
        ("n", "0", "line 3, column 'n': n must be a whole number >= 1, not 0"),
        ("trials", "-1", "line 3, column 'trials': trials must be a whole number >= 1, not -1"),
        ("threads", "0", "line 3, column 'threads': threads must be a whole number >= 1, not 0"),
        ("batch", "0", "line 3, column 'batch': batch must be a whole number >= 1, not 0"),
        ("dtype", "int3", "line 3, column 'dtype': dtype must be one of fp32, fp16, bf16, int8, not 'int3'"),
        ("block_key", "x_y", "line 3, column 'block_key': block_key 'x_y' does not parse"),
        ("kernel", "7", "line 3, column 'kernel': kernel is 7 but block_key"),
        ("block_dtype", "bf16", "line 3, column 'block_dtype': block_dtype is 'bf16' but block_key"),
        # device names a later `--device` could never ask for (PostgreSQL refuses a NUL in a text outright)
        ("device", "p" * 100_000, "line 3, column 'device': device must be a device's name"),
        ("device", "Pixel 8 Pro 日本語", "line 3, column 'device': device must be a device's name"),
        ("device", "", "line 3, column 'device': device must be a device's name (letters, digits and _.:-, at most"),
        ("device", "pi\x00xel", "not 'pi\\x00xel'"),
        ("device", "../../etc", "line 3, column 'device': device must be a device's name"),
        ("backend", "t" * 100_000, "line 3, column 'backend': backend must be letters, digits and _.:+-"),
        ("backend_version", "2.13\x00", "line 3, column 'backend_version': backend_version must be letters"),
        ("device_kind", "cp\x00u", "line 3, column 'device_kind': device_kind must be letters"),
    ],
)
def test_malformed_csv_names_file_line_and_column(
    filled: LutStore, new_url: Callable[[], str], tmp_path: Path, column: str, value: str, expected: str
) -> None:
    import csv

    lines = _csv_lines(filled, tmp_path / "good.csv")
    rows = list(csv.reader(lines))
    rows[2][rows[0].index(column)] = value
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    with LutStore(new_url()) as target:
        with pytest.raises(StoreError) as err:
            target.import_csv(bad)
        assert str(bad) in str(err.value) and expected in str(err.value)
        assert count(target, "measurements") == 0 and target.devices() == []  # all or nothing
        target.import_csv(tmp_path / "good.csv")
        before = target.measurements()
        with pytest.raises(StoreError):
            target.import_csv(bad)
        assert target.measurements() == before  # whole rows, not only keys


def _write_rows(path: Path, rows: list[list[str]]) -> Path:
    import csv

    with open(path, "w", newline="") as fh:
        csv.writer(fh, lineterminator="\n").writerows(rows)
    return path


def test_duplicate_rows_of_one_file(filled: LutStore, new_url: Callable[[], str], tmp_path: Path) -> None:
    import csv

    rows = list(csv.reader(_csv_lines(filled, tmp_path / "good.csv")))
    same = _write_rows(tmp_path / "same.csv", [*rows, rows[1]])
    changed = list(rows[1])
    changed[rows[0].index("median_us")] = "105.0"
    conflict = _write_rows(tmp_path / "conflict.csv", [*rows, changed])
    with LutStore(new_url()) as target:
        with pytest.raises(StoreError) as err:
            target.import_csv(conflict)
        assert f"lines 2 and {len(rows) + 1} are two different rows for one measurement" in str(err.value)
        assert "column 'median_us' differs" in str(err.value)
        assert count(target, "measurements") == 0
        summary = target.import_csv(same)
        assert (summary.rows, summary.new, summary.duplicates) == (len(SPECS) + 1, len(SPECS), 1)
        assert count(target, "measurements") == len(SPECS)


def test_an_older_export_never_replaces_newer_rows(
    filled: LutStore, new_url: Callable[[], str], tmp_path: Path
) -> None:
    old = tmp_path / "old.csv"
    filled.export_csv(old)  # every row measured at T0
    newer = rec(measured_at=T0 + timedelta(minutes=6), median_us=104.0)
    with LutStore(new_url()) as target:
        target.import_csv(old)
        target.put_measurement(newer)
        summary = target.import_csv(old)
        assert (summary.new, summary.updated, summary.unchanged, summary.kept) == (0, 0, len(SPECS) - 1, 1)
        assert target.measurements(keys=[KEYS[0]]) == [newer]
        newer_file = tmp_path / "newer.csv"
        target.export_csv(newer_file)
        assert filled.import_csv(newer_file).updated == 1  # the newer row does replace the older one
        assert filled.measurements(keys=[KEYS[0]]) == [newer]
        forced = target.import_csv(old, replace=True)  # the user asks
        assert (forced.updated, forced.kept) == (1, 0)
        assert target.measurements(keys=[KEYS[0]]) == [rec()]
        # a predicted row never replaces a measured one, asked or not
        predicted = rec(
            measured_at=T0 + timedelta(hours=1), source="predicted", expected_error=0.2, n=0, trials=0, stable=False
        )
        with LutStore(new_url()) as other:
            other.get_or_create_device("pc", "cpu", {"os": "Debian 12", **IDENTITY}, IDENTITY)
            other.upsert_blocks(block_dict(s) for s in SPECS)
            other.put_measurement(predicted)
            other.export_csv(tmp_path / "predicted.csv")
        assert target.import_csv(tmp_path / "predicted.csv", replace=True).kept == 1
        assert target.measurements(keys=[KEYS[0]]) == [rec()]


def test_malformed_csv_files(filled: LutStore, tmp_path: Path) -> None:
    lines = _csv_lines(filled, tmp_path / "good.csv")
    header = lines[0].split(",")
    cases = {
        "missing.csv": (",".join(h for h in header if h != "p90_us"), "line 1: missing column 'p90_us'"),
        "empty.csv": ("", "is empty"),
        "short.csv": ("\n".join([lines[0], lines[1], "a,b,c"]), "line 3 has 3 cells where the header has"),
        "binary.csv": (None, "is not a UTF-8 text file"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        if content is None:
            path.write_bytes(b"\xff\xfe\x00garbage")
        else:
            path.write_text(content)
        with pytest.raises(StoreError) as err:
            filled.import_csv(path)
        assert str(path) in str(err.value) and expected in str(err.value), name
    with pytest.raises(StoreError, match=r"Cannot read .*nowhere\.csv"):
        filled.import_csv(tmp_path / "nowhere.csv")


def test_import_rolls_back_on_device_conflict(filled: LutStore, new_url: Callable[[], str], tmp_path: Path) -> None:
    _varied(filled)
    path = tmp_path / "all.csv"
    filled.export_csv(path)  # rows of 'pc' then 'phone'
    with LutStore(new_url()) as target:
        target.get_or_create_device("phone", "android", {}, {"model": "Galaxy S24"})
        with pytest.raises(StoreError, match=r"all.csv: line \d+: The table's device 'phone' is"):
            target.import_csv(path)
        assert [d.name for d in target.devices()] == ["phone"]  # 'pc', created first, was rolled back
        assert count(target, "blocks") == 0 and count(target, "measurements") == 0


def test_to_pandas_columns(filled: LutStore) -> None:
    filled.put_e2e_run(e2e(tag=None))
    measurements = filled.to_pandas()
    assert tuple(measurements.columns) == COLUMN_NAMES
    assert len(measurements) == len(SPECS)
    when = measurements["measured_at"].dtype
    assert isinstance(when, pd.DatetimeTZDtype) and str(when.tz) == "UTC", when
    assert json.loads(measurements["protocol"][0]) == rec().provenance.protocol
    runs = filled.to_pandas("e2e_runs", device="pc")
    assert {"arch_hash", "arch_name", "device", "device_kind", "median_us", "canary_ratio", "tag"} <= set(runs.columns)
    assert "device_id" not in runs.columns and runs["tag"].isna().all()
    devices = filled.to_pandas("devices")
    assert list(devices["name"]) == ["pc"] and list(devices["n_measurements"]) == [len(SPECS)]
    assert set(filled.to_pandas("blocks")["key"]) == set(KEYS)
    assert filled.to_pandas("blocks", device="nobody").empty
    assert filled.to_pandas(device="nobody").empty
    with pytest.raises(StoreError, match="Unknown table 'fits2'"):
        filled.to_pandas("fits2")


def test_foreign_keys_enforced(filled: LutStore) -> None:
    with pytest.raises(IntegrityError), filled.engine.begin() as conn:
        conn.execute(text("DELETE FROM blocks WHERE key = :k"), {"k": KEYS[0]})
    with pytest.raises(IntegrityError), filled.engine.begin() as conn:
        conn.execute(text("UPDATE measurements SET device_id = 999"))
    assert count(filled, "blocks") == len(SPECS)


# ---- opening: URLs and databases that are not ours (SQLite) --------------------------------------
def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_not_a_lut_sqlite_database_is_refused_untouched(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("INSERT INTO notes (body) VALUES ('keep me')")
        conn.commit()
    before = _digest(other)
    with pytest.raises(StoreError) as err:
        LutStore(other)
    assert str(err.value) == (
        f"sqlite:///{other} is not a lut database (it has tables but no lut meta table); "
        "point LUT_DB_URL at a lut database or at an empty one."
    )
    assert _digest(other) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.db"]  # no -wal/-shm left either
    with contextlib.closing(sqlite3.connect(other)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_a_foreign_meta_table_is_not_ours(tmp_path: Path) -> None:
    other = tmp_path / "meta.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE meta (name TEXT, data BLOB)")
        conn.commit()
    before = _digest(other)
    with pytest.raises(StoreError, match="is not a lut database"):
        LutStore(other)
    assert _digest(other) == before


def test_text_file_is_refused_untouched(tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("These are my notes, not a database.\n" * 50)
    before = _digest(notes)
    with pytest.raises(StoreError, match=r"notes.txt is not a lut database \(the file is not an SQLite database\)"):
        LutStore(f"sqlite:///{notes}")
    assert _digest(notes) == before


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    with LutStore(path) as store:
        store.get_or_create_device("pc", "cpu", {}, IDENTITY)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'")
        conn.commit()
    before = _digest(path)
    with pytest.raises(StoreError) as err:
        LutStore(path)
    assert str(err.value) == (
        f"sqlite:///{path} was written by a newer lut (schema 7); this lut reads schema {SCHEMA_VERSION} — upgrade lut."
    )
    assert _digest(path) == before


def test_default_url_is_in_the_cache_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LUT_DB_URL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_sqlite_path() == tmp_path / "cache" / "lut" / "lut.sqlite"
    with LutStore() as store:
        assert str(store.url) == f"sqlite:///{tmp_path}/cache/lut/lut.sqlite"
    assert (tmp_path / "cache" / "lut" / "lut.sqlite").is_file()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_sqlite_path() == tmp_path / "home" / ".cache" / "lut" / "lut.sqlite"
    monkeypatch.setenv("LUT_DB_URL", f"sqlite:///{tmp_path}/env.sqlite")
    assert str(resolve_url()) == f"sqlite:///{tmp_path}/env.sqlite"
    assert str(resolve_url(tmp_path / "explicit.sqlite")) == f"sqlite:///{tmp_path}/explicit.sqlite"


def test_sqlite_pragmas(tmp_path: Path) -> None:
    with LutStore(tmp_path / "p.sqlite") as store, store.engine.connect() as conn:
        pragma = {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("busy_timeout", "journal_mode")}
        pragma |= {p: conn.exec_driver_sql(f"PRAGMA {p}").scalar() for p in ("synchronous", "foreign_keys")}
    assert pragma == {"busy_timeout": 30000, "journal_mode": "wal", "synchronous": 1, "foreign_keys": 1}


def test_unusable_urls_give_one_sentence(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases = {
        "nosuchdb://host/db": "unknown database driver 'nosuchdb'",
        "postgresql+psycopg://ann:s3cret@/lut?host=/nonexistent-socket-dir": "Cannot open the lut database",
        str(blocker / "sub" / "lut.sqlite"): "cannot create directory",
    }
    for url, expected in cases.items():
        with pytest.raises(StoreError) as err:
            LutStore(url)
        message = str(err.value)
        assert expected in message, message
        assert "\n" not in message and "s3cret" not in message
    assert "***" in str(resolve_url("postgresql://ann:s3cret@db.example/lut"))
    assert resolve_url("postgresql://ann@db.example/lut").drivername == "postgresql+psycopg"


# ---- deployment environments and the upgrade from schema 1 ---------------------------------------
def test_runs_and_fits_are_kept_per_deployment(filled: LutStore) -> None:
    filled.put_e2e_run(e2e(median_us=6000.0))  # "default": a plain process
    filled.put_e2e_run(e2e(median_us=5000.0, deploy_env="tuned-malloc"))
    pc = Conditions("pc", "torch_cpu")
    assert {r.deploy_env: r.stats.median_us for r in filled.e2e_runs(pc)} == {"default": 6000.0, "tuned-malloc": 5000.0}
    assert [r.stats.median_us for r in filled.e2e_runs(pc, deploy_env="default")] == [6000.0]
    fit = FitRecord(Conditions("pc", "torch_cpu"), "2.13.0", "calibration", {"a": 1}, {}, 12, T0, "tuned-malloc")
    filled.put_fit(fit)
    assert filled.get_fit(pc, "calibration") is None  # never another deployment's
    assert filled.get_fit(pc, "calibration", deploy_env=None) == fit
    filled.put_fit(dataclasses.replace(fit, deploy_env="default", params={"a": 2}))
    assert filled.get_fit(pc, "calibration").params == {"a": 2}
    assert filled.get_fit(pc, "calibration", deploy_env="tuned-malloc") == fit
    assert sorted(filled.to_pandas("e2e_runs")["deploy_env"]) == ["default", "tuned-malloc"]


def _as_schema_1(store: LutStore) -> None:
    """Rebuild runs and fits as lut schema 1 had them: no deploy_env, keys without it."""
    from sqlalchemy import MetaData, Table, UniqueConstraint, update

    from lut_db.models import NAMING_CONVENTION, DeviceRow, E2ERun, Fit, Meta

    old_keys = {
        "e2e_runs": ("arch_hash", "device_id", "backend", "backend_version", "threads", "dtype", "batch", "tag"),
        "fits": ("device_id", "backend", "backend_version", "threads", "dtype", "batch", "purpose"),
    }
    with store.engine.begin() as conn:
        metadata = MetaData(naming_convention=NAMING_CONVENTION)
        DeviceRow.__table__.to_metadata(metadata)
        for model in (E2ERun, Fit):
            name = model.__tablename__
            model.__table__.drop(conn)
            columns = [c._copy() for c in model.__table__.c if c.name != "deploy_env"]
            Table(name, metadata, *columns, UniqueConstraint(*old_keys[name])).create(conn)
        conn.execute(update(Meta).where(Meta.key == "schema_version").values(value="1"))


def test_a_schema_1_table_is_upgraded_in_place(new_url: Callable[[], str]) -> None:
    url = new_url()
    with LutStore(url) as store:
        store.get_or_create_device("pc", "cpu", {}, IDENTITY)
        store.get_or_create_device("phone", "android", {}, {"model": "Pixel 8"})
        _as_schema_1(store)
        with store.engine.begin() as conn:  # rows as lut schema 1 wrote them
            device_ids = dict(conn.execute(text("SELECT name, id FROM devices")).all())
            for device in ("pc", "phone"):
                conn.execute(
                    text(
                        "INSERT INTO e2e_runs (arch_hash, arch_name, arch_json, device_id, backend, backend_version,"
                        " threads, dtype, batch, tag, median_us, p10_us, p90_us, iqr_us, mean_us, std_us, min_us, n,"
                        " trials, canary_ratio, canary_us, protocol, environment, measured_at, stable) VALUES ('h',"
                        " 'tiny', '{}', :d, 'torch', '2.13.0', 1, 'fp32', 1, 'calibration', 5000, 4900, 5200, 80,"
                        " 5010, 60, 4850, 30, 3, 61, 82, '{}', '{}', :t, true)"
                    ),
                    {"d": device_ids[device], "t": T0.replace(tzinfo=None)},
                )
            conn.execute(
                text(
                    "INSERT INTO fits (device_id, backend, backend_version, threads, dtype, batch, purpose,"
                    " params_json, metrics_json, n_samples, fitted_at) VALUES (:d, 'torch', '2.13.0', 1, 'fp32', 1,"
                    " 'calibration', '{\"a\": 1}', '{}', 20, :t)"
                ),
                {"d": device_ids["pc"], "t": T0.replace(tzinfo=None)},
            )
    with LutStore(url) as store:  # opening upgrades, in place
        with store.engine.connect() as conn:
            version = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).scalar()
            assert version == str(SCHEMA_VERSION)
        runs = {r.conditions.device: r for r in store.e2e_runs()}
        # Host runs were timed in lut's tuned workers; a phone's runner ran as its runtime does by default.
        assert {d: r.deploy_env for d, r in runs.items()} == {"pc": "tuned-malloc", "phone": "default"}
        assert (
            runs["pc"].stats.median_us == 5000.0
            and runs["pc"].provenance.measured_at == T0
            and runs["pc"].tag == "calibration"
        )
        assert store.get_fit(Conditions("pc", "torch"), "calibration") is None
        legacy = store.get_fit(Conditions("pc", "torch"), "calibration", deploy_env="tuned-malloc")
        assert legacy is not None and legacy.params == {"a": 1} and legacy.n_samples == 20
        store.put_e2e_run(e2e(device="pc", backend="torch", tag="calibration", arch_json=runs["pc"].arch_json))
        assert len(store.e2e_runs(Conditions("pc"))) == 2  # a new run in a plain process sits beside the old one
    with LutStore(url) as store:
        assert len(store.e2e_runs()) == 3  # a second open changes nothing


def _as_schema_2(store: LutStore) -> None:
    """Rebuild the measurements as lut schema 2 had them: a source is measured or predicted."""
    from sqlalchemy import CheckConstraint, MetaData, Table, UniqueConstraint, select, update

    from lut_db.models import MEASUREMENT_KEY, NAMING_CONVENTION, Block, DeviceRow, Measurement, Meta

    table = Measurement.__table__
    with store.engine.begin() as conn:
        rows = [dict(r) for r in conn.execute(select(*[c for c in table.c if c.name != "id"])).mappings()]
        table.drop(conn)
        metadata = MetaData(naming_convention=NAMING_CONVENTION)
        for model in (DeviceRow, Block):
            model.__table__.to_metadata(metadata)
        old = Table(
            "measurements",
            metadata,
            *[c._copy() for c in table.c],
            UniqueConstraint(*MEASUREMENT_KEY),
            CheckConstraint("source IN ('measured', 'predicted')", name="source"),
        )
        old.create(conn)
        conn.execute(old.insert(), rows)
        conn.execute(update(Meta).where(Meta.key == "schema_version").values(value="2"))


def test_a_schema_2_table_is_upgraded_to_take_transferred_rows(new_url: Callable[[], str]) -> None:
    url = new_url()
    with LutStore(url) as store:
        store.get_or_create_device("pc", "cpu", {}, IDENTITY)
        store.upsert_blocks(block_dict(s) for s in SPECS)
        store.put_measurement(rec(KEYS[0]))
        store.put_measurement(rec(KEYS[1], source="predicted", expected_error=0.08))
        before = sorted(store.measurements(source=None), key=lambda r: r.block_key)
        _as_schema_2(store)
        with pytest.raises(StoreError):  # the old check refuses the new source
            store.put_measurement(rec(KEYS[2], source="transferred", expected_error=0.05))
    with LutStore(url) as store:  # opening upgrades, in place, keeping every row
        assert sorted(store.measurements(source=None), key=lambda r: r.block_key) == before
        store.put_measurement(rec(KEYS[2], source="transferred", expected_error=0.05))
        assert store.measured_keys(Conditions("pc"), source="transferred") == {KEYS[2]}


def test_the_statistics_are_named_once() -> None:
    """latency.vocab.timing defines them; the profilers' summary, the records and the ORM's tables hold them."""
    from latency.vocab.timing import POSITIVE_TIMES_US, SPREAD_TIMES_US, STAT_COLUMNS, TIMES_US
    from lut_db.models import E2ERun, Measurement
    from profilers.stats import summarize

    assert [f.name for f in dataclasses.fields(summarize([1.0, 2.0]))] == [*TIMES_US, "n"]
    assert set(POSITIVE_TIMES_US) | set(SPREAD_TIMES_US) == set(TIMES_US)
    for record in (rec(), e2e()):  # composed of TimingStats, flattened to the table's columns in its order
        assert [name for name in columns(record) if name in STAT_COLUMNS] == list(STAT_COLUMNS)
    for model in (Measurement, E2ERun):
        assert set(STAT_COLUMNS) <= set(model.__table__.columns.keys())


def test_a_table_opened_read_only_reads_sees_later_writes_and_refuses_its_own(
    filled: LutStore, store_url: str, new_url: Callable[[], str]
) -> None:
    with LutStore(store_url, read_only=True) as reader:
        conditions = Conditions("pc", "torch_cpu")
        assert reader.measurement_map(conditions) == filled.measurement_map(conditions) != {}
        filled.put_e2e_run(e2e())  # another process writes while it reads: the next read sees it
        assert len(reader.e2e_runs(Conditions("pc", "torch_cpu"))) == 1
        with pytest.raises(StoreError, match="was opened for reading only"):
            reader.put_e2e_run(e2e(tag="calibration"))
        with pytest.raises(StoreError, match="was opened for reading only"):
            reader.get_or_create_device("phone", "android", {"what": "phone"}, {"what": "phone"})
    assert len(filled.e2e_runs(Conditions("pc", "torch_cpu"))) == 1
    empty = new_url()
    with pytest.raises(StoreError, match="There is no lut table to read"):
        LutStore(empty, read_only=True)
    if "://" not in empty:
        assert not Path(empty).exists()  # nothing was created to read from


def test_revision_changes_with_every_write_and_coverage_counts_rows_by_source(filled: LutStore) -> None:
    first = filled.revision()
    assert filled.revision() == first  # reading changes nothing
    pc = Conditions("pc", "torch_cpu")
    filled.put_measurement(rec(KEYS[0], measured_at=T0 + timedelta(days=1)))  # a row replaced, none added
    replaced = filled.revision()
    assert replaced != first
    filled.put_e2e_run(e2e())
    ran = filled.revision()
    assert ran != replaced
    filled.put_fit(FitRecord(pc, "2.13.0", "calibration", {"a": 1}, {"cv_rmspe": 0.05}, 12, T0, "default"))
    assert filled.revision() != ran
    assert [(f.conditions, f.metrics) for f in filled.fits()] == [(pc, {"cv_rmspe": 0.05})]
    assert filled.fits(device="phone") == [] and filled.fits(purpose="other") == []
    coverage = {c.conditions: c for c in filled.coverage()}
    rows = filled.measurements(pc)
    assert coverage[pc].rows == {source: sum(r.source == source for r in rows) for source in {r.source for r in rows}}
    assert coverage[pc].rows == {"measured": len(rows)}
    assert coverage[pc].last_measured_at == max(r.provenance.measured_at for r in rows)
    assert sum(sum(c.rows.values()) for c in coverage.values()) == sum(len(filled.measurements(c)) for c in coverage)
