"""`lut profile`, `lut devices`, `lut export`/`import`: real processes, a real SQLite file.

The quick protocol keeps these fast; the measurement path is the same as the standard one.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from latency.models import blocks_of
from lut_db import LutStore

LUT = [sys.executable, "-m", "latency.cli"]


def lut(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*LUT, *args], capture_output=True, text=True, env={**os.environ, **(env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"lut {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def unique_keys(*models: str) -> set[str]:
    return {s.key for m in models for s in blocks_of(m)}


def test_profile_fills_the_table_then_measures_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    first = json.loads(lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db, "--json").stdout)
    expected = unique_keys("dmasking_f1")
    assert first["requested"] == len(expected) == first["measured"] and first["already_present"] == 0
    with LutStore(db) as store:
        assert store.measured_keys("cpu", "torch", threads=1) == expected
        rows = store.measurements(device="cpu")
        assert all(r.median_us > 0 and r.trials == 3 and r.p10_us <= r.median_us <= r.p90_us for r in rows)
        assert all(r.canary_ratio and r.protocol["name"] == "quick" for r in rows)
        assert {r.backend_version for r in rows} == {first["backend_version"]}
    second = json.loads(lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db, "--json").stdout)
    assert second["measured"] == 0 and second["already_present"] == len(expected)
    table = lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db).stdout
    assert f"0 measured, {len(expected)} already in the table" in table


def test_arch_file_threads_and_force(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    arch = tmp_path / "tiny.json"
    arch.write_text(
        json.dumps(
            {
                "resolution": 32,
                "blocks": [
                    {"op": "conv_k3_hs", "c_out": 8, "stride": 2},
                    {"op": "ir_k3", "c_out": 8, "mid": 16},
                    {"op": "ir_pool_hs", "c_out": 32},
                    {"op": "fc", "c_out": 10},
                ],
            }
        )
    )
    out = json.loads(
        lut("profile", "--arch", str(arch), "--threads", "2", "--protocol", "quick", "--db", db, "--json").stdout
    )
    assert out["measured"] == 4 and out["threads"] == 2
    forced = json.loads(
        lut(
            "profile", "--arch", str(arch), "--threads", "2", "--force", "--protocol", "quick", "--db", db, "--json"
        ).stdout
    )
    assert forced["measured"] == 4
    with LutStore(db) as store:
        assert len(store.measurements(device="cpu", threads=2)) == 4  # upserted, not duplicated
        assert store.measured_keys("cpu", "torch", threads=1) == set()


def test_four_concurrent_profiles_lose_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    models = ["dmasking_f1", "dmasking_f2", "dmasking_f3", "dmasking_f1"]  # overlapping on purpose
    procs = [
        subprocess.Popen(
            [*LUT, "profile", "--models", m, "--protocol", "quick", "--db", db, "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for m in models
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr
        assert "database is locked" not in stderr
    with LutStore(db) as store:
        assert store.measured_keys("cpu", "torch", threads=1) == unique_keys(*models)
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def count_rows(db: str) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM measurements").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def test_sigkill_midway_then_resume_measures_only_what_is_missing(tmp_path: Path) -> None:
    db = str(tmp_path / "lut.sqlite")
    args = ["profile", "--models", "dmasking_f1,dmasking_f4,dmasking_l1", "--protocol", "quick", "--db", db, "--json"]
    proc = subprocess.Popen([*LUT, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while count_rows(db) < 8 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stored = count_rows(db)
    total = len(unique_keys("dmasking_f1", "dmasking_f4", "dmasking_l1"))
    assert 8 <= stored < total
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    resumed = json.loads(lut(*args).stdout)
    assert resumed["already_present"] == stored and resumed["measured"] == total - stored
    assert count_rows(db) == total


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--device", "tpu 0"], 2, "'tpu 0' is not a device name: use cpu, cuda[:N], or a phone's name"),
        (["--backend", "tflite"], 2, "Device 'cpu' has no backend 'tflite'; its backends: torch"),
        (["--models", "dmasking_p2"], 2, "dmasking_p2 cannot be used: no public architecture"),
        (["--models", "resnet50"], 2, "Unknown model 'resnet50'; known models:"),
        (["--protocol", "slow"], 2, "Unknown protocol 'slow'"),
        (["--db", "mysql+nodriver://x/y"], 1, "Cannot open the lut database"),
    ],
)
def test_bad_input_exits_with_one_sentence(args: list[str], code: int, message: str, tmp_path: Path) -> None:
    base = ["profile", "--models", "dmasking_f1", "--db", str(tmp_path / "t.sqlite")]
    proc = lut(*base, *args, check=False)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_a_file_that_is_not_a_lut_table_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    before = path.read_bytes()
    proc = lut("profile", "--models", "dmasking_f1", "--db", str(path), check=False)
    assert proc.returncode == 1 and "is not a lut database" in proc.stderr
    assert path.read_bytes() == before


def test_devices_export_and_import(tmp_path: Path) -> None:
    db, copy, csv = str(tmp_path / "a.sqlite"), str(tmp_path / "b.sqlite"), tmp_path / "cpu.csv"
    lut("profile", "--models", "dmasking_f1", "--protocol", "quick", "--db", db)
    devices = json.loads(lut("devices", "--db", db, "--json").stdout)
    assert [d["name"] for d in devices] == ["cpu"] and devices[0]["measurements"] == len(unique_keys("dmasking_f1"))
    assert devices[0]["fingerprint"]["logical_cpus"] == os.cpu_count()
    exported = json.loads(lut("export", "--device", "cpu", "--out", str(csv), "--db", db, "--json").stdout)
    assert exported["rows"] == devices[0]["measurements"]
    imported = json.loads(lut("import", str(csv), "--db", copy, "--json").stdout)
    assert imported["rows"] == exported["rows"]
    with LutStore(db) as a, LutStore(copy) as b:
        assert (
            a.to_pandas()
            .sort_values("block_key")
            .reset_index(drop=True)
            .equals(b.to_pandas().sort_values("block_key").reset_index(drop=True))
        )
    missing = lut("export", "--device", "pixel", "--out", str(csv), "--db", db, check=False)
    assert missing.returncode == 1 and "Device 'pixel' is not in" in missing.stderr


@pytest.mark.parametrize("backend", ["onnxruntime", "executorch"])
def test_profile_with_other_host_backends(backend: str, tmp_path: Path) -> None:
    pytest.importorskip(backend)
    db = str(tmp_path / "lut.sqlite")
    out = json.loads(
        lut(
            "profile", "--models", "dmasking_f1", "--backend", backend, "--protocol", "quick", "--db", db, "--json"
        ).stdout
    )
    assert out["backend"] == backend and out["measured"] == len(unique_keys("dmasking_f1")) and not out["failed"]
    with LutStore(db) as store:
        assert {r.backend for r in store.measurements(device="cpu")} == {backend}
